pub mod queries;
pub mod repo;
pub mod jobs;
