pub use super::user::Entity as User;
