//! Every receiver form of this crate; each function has exactly the
//! bypasses its comments say.
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::store::{
    MongoOrders, OrderStore, OrderStoreDualWrite, PgOrders, connect, connect_both, maybe_legacy,
};

pub struct OrderService {
    stores: Vec<PgOrders>,
    legacy: Option<MongoOrders>,
    locked: Mutex<PgOrders>,
    shared: Arc<RwLock<PgOrders>>,
    by_region: HashMap<String, PgOrders>,
    pair: (PgOrders, MongoOrders),
    orders: OrderStoreDualWrite<PgOrders, MongoOrders>,
}

impl OrderService {
    fn loop_over_a_field(&self) {
        for s in &self.stores {
            s.insert(1, "a".into()).unwrap(); // DW001: `for` over a Vec field
        }
        for s in self.stores.iter() {
            s.delete(1).unwrap(); // DW001: `.iter()`
        }
        for (i, s) in self.stores.iter().enumerate() {
            s.delete(i as u64).unwrap(); // DW001: `.enumerate()` and a tuple pattern
        }
        self.stores[0].insert(1, "a".into()).unwrap(); // DW001: indexing
        self.stores.first().unwrap().delete(1).unwrap(); // DW001: `.first().unwrap()`
        for s in self.by_region.values() {
            s.insert(1, "a".into()).unwrap(); // DW001: map values
        }
        for (_region, s) in &self.by_region {
            s.delete(1).unwrap(); // DW001: map entries
        }
    }

    fn options_and_matches(&self) {
        if let Some(s) = &self.legacy {
            s.insert(1, "a".into()).unwrap(); // DW001: `if let Some`
        }
        match &self.legacy {
            Some(legacy) => legacy.delete(1).unwrap(), // DW001: `match`
            None => {}
        }
        self.legacy.as_ref().unwrap().delete(2).unwrap(); // DW001: `.as_ref().unwrap()`
        let Some(m) = maybe_legacy() else { return };
        m.insert(3, "c".into()).unwrap(); // DW001: `let else` on a function's Option
    }

    fn guards(&self) {
        self.locked.lock().unwrap().insert(1, "a".into()).unwrap(); // DW001: Mutex guard
        let guard = self.shared.read().unwrap();
        guard.delete(1).unwrap(); // DW001: RwLock guard behind Arc
        self.shared.write().unwrap().insert(2, "b".into()).unwrap(); // DW001: write guard
    }

    fn patterns(&self) {
        let (pg, mongo) = &self.pair;
        pg.insert(1, "a".into()).unwrap(); // DW001: tuple pattern
        mongo.delete(1).unwrap(); // DW001: tuple pattern, second element
        self.pair.1.insert(2, "b".into()).unwrap(); // DW001: tuple field
        let OrderService { locked, .. } = self;
        locked.lock().unwrap().delete(2).unwrap(); // DW001: struct pattern
    }

    fn adapter_accessors(&self) {
        self.orders.new_store().insert(1, "a".into()).unwrap(); // DW001: raw accessor
        self.orders.old_store().delete(1).unwrap(); // DW001: raw accessor
        self.orders.insert(1, "a".into()).unwrap(); // the adapter: fine
    }

    fn containers_themselves(&mut self) {
        self.stores.insert(0, PgOrders::open("x").unwrap()); // Vec::insert: fine
        self.legacy.insert(MongoOrders); // Option::insert: fine
        self.by_region.insert("eu".into(), PgOrders::open("y").unwrap()); // HashMap::insert: fine
        self.by_region.get("eu").unwrap().get(1).unwrap(); // a read: fine
    }
}

fn returned_by_functions() -> Result<(), Error> {
    let pg = connect("postgres://")?;
    pg.insert(1, "a".into())?; // DW001: `fn connect() -> Result<PgOrders, _>` and `?`
    connect("x").unwrap().delete(1)?; // DW001: `.unwrap()` on the call
    let (a, b) = connect_both();
    a.insert(2, "b".into())?; // DW001: tuple returned
    b.delete(2)?; // DW001: tuple returned, second element
    let opened = PgOrders::open("x").expect("open");
    opened.replica().unwrap().insert(3, "c".into())?; // DW001: method returning Option<&PgOrders>
    Ok(())
}

fn iteration_over_collections(stores: &[PgOrders], named: Vec<(String, MongoOrders)>) {
    for s in stores {
        s.insert(1, "a".into()).unwrap(); // DW001: slice parameter
    }
    for (_name, s) in named {
        s.delete(1).unwrap(); // DW001: Vec of tuples
    }
    let built = vec![PgOrders::open("a").unwrap(), PgOrders::open("b").unwrap()];
    for s in &built {
        s.delete(1).unwrap(); // DW001: `vec![..]` of stores
    }
}

fn trait_objects() {
    let boxed: Box<dyn OrderStore> = Box::new(PgOrders::open("x").unwrap());
    boxed.insert(1, "a".into()).unwrap(); // DW001: `Box<dyn _>` built from a raw store
    let pg = MongoOrders;
    let object: &dyn OrderStore = &pg;
    object.delete(1).unwrap(); // DW001: `&dyn _` of a raw store
}

fn trait_objects_from_elsewhere(store: &dyn OrderStore, boxed: Box<dyn OrderStore>) {
    store.insert(1, "a".into()).unwrap(); // unknown implementation: fine
    boxed.delete(1).unwrap(); // unknown implementation: fine
}

fn ref_cells(cell: &RefCell<PgOrders>) {
    cell.borrow_mut().insert(1, "a".into()).unwrap(); // DW001: RefCell guard
}

impl OrderService {
    fn closures_of_adaptors(&self) {
        self.stores.iter().for_each(|s| {
            s.insert(9, "i".into()).unwrap(); // DW001: an iterator adaptor's closure
        });
        let _ = self.legacy.as_ref().map(|m| m.delete(9)); // DW001: `Option::map`'s closure
        let _ = self.by_region.iter().any(|(_, s)| s.get(1).is_ok()); // a read: fine
        let ids = vec![1_u64, 2];
        ids.iter().for_each(|id| drop(id)); // not a store: fine
    }
}
