//! Raw stores held in the variants of enums declared in the crate.
use std::collections::HashSet;

use crate::store::{MongoOrders, OrderStore, OrderStoreDualWrite, PgOrders};

pub enum Stores {
    Legacy(PgOrders),
    Fresh(MongoOrders),
    Both { old: PgOrders, new: MongoOrders },
    Routed(OrderStoreDualWrite<PgOrders, MongoOrders>),
    Ids(HashSet<u64>),
}

pub enum Backend {
    Pg(PgOrders),
    Mongo(MongoOrders),
}

pub struct Service {
    stores: Option<Stores>,
    backend: Backend,
}

impl Service {
    fn variants_of_fields(&self) {
        if let Some(Stores::Legacy(s)) = &self.stores {
            s.insert(1, "a".into()).unwrap(); // DW001: `Some(Stores::Legacy(s))`
        }
        match &self.backend {
            Backend::Pg(store) => store.insert(2, "b".into()).unwrap(), // DW001: match arm
            Backend::Mongo(store) => store.delete(2).unwrap(), // DW001: match arm
        }
        if let Some(Stores::Both { old, new: fresh }) = &self.stores {
            old.insert(3, "c".into()).unwrap(); // DW001: struct variant
            fresh.delete(3).unwrap(); // DW001: struct variant, renamed binding
        }
    }

    fn variant_named_by_its_path(&self) {
        // The scrutinee's type is not known; the pattern's path names the enum.
        match routing::pick() {
            Backend::Pg(s) => s.delete(4).unwrap(), // DW001: `Backend::Pg(s)`
            Backend::Mongo(_) => {}
        }
        let built = Backend::Mongo(MongoOrders);
        if let Backend::Mongo(m) = built {
            m.insert(5, "e".into()).unwrap(); // DW001: value built from the variant
        }
    }

    fn imported_variants(&self) {
        use Backend::*;
        match &self.backend {
            Pg(s) => s.insert(6, "f".into()).unwrap(), // DW001: variant imported by glob
            Mongo(_) => {}
        }
    }

    fn self_variants(stores: &Stores) {
        if let Stores::Fresh(m) = stores {
            m.delete(7).unwrap(); // DW001: parameter's variant
        }
    }

    fn must_stay_clean(&self, ids: &mut HashSet<u64>) {
        if let Some(Stores::Routed(adapter)) = &self.stores {
            adapter.insert(8, "h".into()).unwrap(); // the adapter: fine
        }
        if let Some(Stores::Ids(set)) = &self.stores {
            let _ = set.insert(8); // HashSet::insert: fine
        }
        if let Some(Stores::Legacy(s)) = &self.stores {
            s.get(8).unwrap(); // a read: fine
        }
        ids.insert(8); // fine
    }
}

impl Stores {
    fn through_self(&self) {
        match self {
            Self::Legacy(s) => s.insert(9, "i".into()).unwrap(), // DW001: `Self::Legacy(s)`
            Self::Both { new, .. } => new.delete(9).unwrap(), // DW001: `Self::Both { new, .. }`
            _ => {}
        }
    }
}

pub fn generic_stays_clean<S: OrderStore>(stores: Option<(S, u64)>) {
    if let Some((s, _)) = stores {
        s.insert(10, "j".into()).unwrap(); // generic: fine
    }
}
