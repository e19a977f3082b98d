pub mod backend;
pub mod service;
pub mod store;
