//! A crate that depends on sea-orm and mongodb: their name-based rules
//! apply to entities and collections only, not to the crate's own types
//! or to other receivers that carry the same method names.
pub mod entities;

use mongodb::bson::{doc, Document};
use mongodb::{Collection, Database};
use sea_orm::{DatabaseConnection, EntityTrait};

use crate::entities::prelude::User;
use crate::entities::user;

pub async fn sea_orm_writes(db: &DatabaseConnection) {
    user::Entity::update_many().exec(db).await.unwrap(); // DW002: `Entity::update_many`
    User::delete_many().exec(db).await.unwrap(); // DW002: `Entity` re-exported as `User`
    User::delete_by_id(1).exec(db).await.unwrap(); // DW002: `Entity` re-exported as `User`
    let _ = user::Entity::find().all(db).await; // a read: fine
}

pub async fn mongodb_writes(db: &Database, typed: Collection<Document>) {
    typed.insert_one(doc! {}).await.unwrap(); // DW002: a `Collection<_>` parameter
    db.collection::<Document>("users") // a read of the handle: fine
        .update_many(doc! {}, doc! {}) // DW002: `db.collection(..)`
        .await
        .unwrap();
    let users: Collection<Document> = db.collection("users");
    users.delete_one(doc! {}).await.unwrap(); // DW002: annotated `Collection<_>`
    let events = db.collection::<Document>("events");
    events.delete_many(doc! {}).await.unwrap(); // DW002: bound to `db.collection(..)`
    let _ = users.find_one(doc! {}).await; // a read: fine
}

/// The crate's own types with the clients' method names.
pub struct CommunityTag;

impl CommunityTag {
    pub fn update_many(ids: &[i32]) -> usize {
        ids.len()
    }
    pub fn delete_many(ids: &[i32]) -> usize {
        ids.len()
    }
    pub fn delete_by_id(id: i32) -> i32 {
        id
    }
}

pub fn own_types_stay_clean(remote: &tags::TagService, cache: &mut tags::Cache) {
    CommunityTag::update_many(&[1, 2]); // a type of this crate: fine
    CommunityTag::delete_many(&[3]); // fine
    CommunityTag::delete_by_id(4); // fine
    tags::Tag::update_many(&[5]); // not an entity: fine
    remote.update_many(&[6]); // not a `Collection`: fine
    remote.delete_one(7); // fine
    cache.insert_one(8); // fine
}
