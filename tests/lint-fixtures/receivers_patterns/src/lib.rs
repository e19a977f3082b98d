pub mod enums;
pub mod closures;
pub mod store;
