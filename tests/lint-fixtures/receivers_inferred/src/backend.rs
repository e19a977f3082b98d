//! An associated type that names a raw store.
use crate::store::{OrderStore, PgOrders};

pub trait Backend {
    type Store: OrderStore;
    fn store(&self) -> &Self::Store;
}

pub struct PgBackend {
    orders: PgOrders,
}

impl Backend for PgBackend {
    type Store = PgOrders;
    fn store(&self) -> &Self::Store {
        &self.orders
    }
}

pub fn through_the_associated_type(backend: &PgBackend) {
    backend.store().insert(1, "a".into()).unwrap(); // DW001: associated type
    let direct: <PgBackend as Backend>::Store = PgOrders::open("x").unwrap();
    direct.delete(1).unwrap(); // DW001: `<X as Trait>::Store`
}

pub fn generic_over_the_trait<B: Backend, S: OrderStore>(backend: &B, store: &S) {
    backend.store().insert(1, "a".into()).unwrap(); // generic: fine
    store.insert(1, "a".into()).unwrap(); // generic: fine
}
