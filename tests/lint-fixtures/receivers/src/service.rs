//! Every way the lint learns a receiver's type. Each function has exactly
//! the bypasses its name says.
use std::sync::Arc;

use crate::store::PgUserStore as Pg;
use crate::store::{MongoUserStore, PgUserStore, UserStore, UserStoreDualWrite};
use crate::types::{Db, SharedDb};

pub struct OrderService {
    db: PgUserStore,
    shared: Arc<PgUserStore>,
    users: UserStoreDualWrite<PgUserStore, MongoUserStore>,
}

impl OrderService {
    pub fn place(&self, id: u64) {
        self.db.insert(id, "a".into()).unwrap(); // DW001: struct field
        self.shared.delete(id).unwrap(); // DW001: field behind Arc
        self.users.insert(id, "a".into()).unwrap(); // adapter: fine
        self.db.get(id).unwrap(); // a read: fine
    }
}

fn let_with_annotation(pool: Pool) {
    let store: PgUserStore = PgUserStore::new(pool);
    store.insert(1, "a".into()).unwrap();
}

fn constructor(pool: Pool) {
    let store = PgUserStore::new(pool);
    store.delete(1).unwrap();
}

async fn async_constructor() -> Result<(), String> {
    let store = PgUserStore::connect("postgres://").await?;
    store.insert(1, "a".into())?;
    Ok(())
}

fn struct_literal(pool: Pool) {
    let store = PgUserStore { pool };
    store.insert(1, "a".into()).unwrap();
}

fn default_with_annotation() {
    let store: PgUserStore = Default::default();
    store.insert(1, "a".into()).unwrap();
    let other = PgUserStore::default();
    other.delete(1).unwrap();
}

fn param_ref(store: &PgUserStore) {
    store.insert(1, "a".into()).unwrap();
}

fn param_arc(store: Arc<PgUserStore>) {
    store.insert(1, "a".into()).unwrap();
}

fn param_mut(store: &mut PgUserStore) {
    store.delete(1).unwrap();
}

fn param_box(store: Box<PgUserStore>) {
    store.delete(1).unwrap();
}

fn param_ref_arc(store: &Arc<PgUserStore>) {
    store.insert(1, "a".into()).unwrap();
}

fn use_as_alias(store: &Pg) {
    store.insert(1, "a".into()).unwrap();
    let built = Pg::new(Pool::default());
    built.delete(1).unwrap();
}

fn type_aliases(store: Db, shared: SharedDb) {
    store.insert(1, "a".into()).unwrap();
    shared.delete(1).unwrap();
}

fn ufcs(pg: &PgUserStore) {
    UserStore::insert(pg, 1, "a".into()).unwrap();
    <PgUserStore as UserStore>::delete(pg, 1).unwrap();
    PgUserStore::insert(pg, 2, "b".into()).unwrap();
    UserStore::get(pg, 1).unwrap(); // a read: fine
}

fn copies(store: PgUserStore) {
    let cloned = store.clone();
    cloned.insert(1, "a".into()).unwrap();
    let borrowed = &store;
    borrowed.delete(1).unwrap();
    let shared = Arc::new(PgUserStore::new(Pool::default()));
    let again = Arc::clone(&shared);
    again.insert(2, "b".into()).unwrap();
}

fn closures_and_async_blocks(store: PgUserStore) {
    let save = |s: &PgUserStore| s.insert(1, "a".into());
    let _ = save(&store);
    let task = async move {
        store.delete(1).unwrap();
    };
    drop(task);
}

fn nested_scopes(store: PgUserStore) {
    {
        let store = std::collections::HashMap::<u64, String>::new();
        store.insert(1, "a".into()); // a HashMap: fine
    }
    store.insert(1, "a".into()).unwrap(); // the outer store again
    for store in [1, 2] {
        store.insert(); // a loop variable of unknown type: fine
    }
}

fn unit_struct() {
    let mongo = MongoUserStore;
    mongo.insert(1, "a".into()).unwrap();
}
