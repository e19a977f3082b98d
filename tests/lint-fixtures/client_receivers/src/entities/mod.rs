pub mod prelude;
pub mod user;
