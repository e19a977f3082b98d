//! sea-orm under another name: its rules apply.
use orm::EntityTrait;

pub mod product {
    pub struct Entity;
}

pub async fn reprice(db: &orm::DatabaseConnection) {
    product::Entity::update_many().exec(db).await.unwrap(); // DW002
}
