//! Every parameter of an iterator adaptor's closure is typed from the
//! adaptor's shape.
use std::collections::HashMap;

use crate::store::{MongoOrders, OrderStore, PgOrders};

pub struct Fleet {
    pg: Vec<PgOrders>,
    mongo: Vec<MongoOrders>,
    ids: Vec<u64>,
    by_region: HashMap<String, PgOrders>,
}

impl Fleet {
    fn zipped(&self) {
        self.pg.iter().zip(&self.mongo).for_each(|(a, b)| {
            a.insert(1, "a".into()).unwrap(); // DW001: first of a zipped pair
            b.delete(1).unwrap(); // DW001: second of a zipped pair
        });
        for (id, m) in self.ids.iter().zip(self.mongo.iter()) {
            m.insert(*id, "b".into()).unwrap(); // DW001: `for` over a zip
            let _ = id;
        }
    }

    fn folded(&self) -> usize {
        let n = self.pg.iter().fold(0, |n, s| {
            s.delete(2).unwrap(); // DW001: second parameter of `fold`
            n + 1
        });
        let _ = self
            .mongo
            .iter()
            .try_fold(0_u64, |acc, m| m.insert(acc, "c".into()).map(|_| acc + 1)); // DW001: `try_fold`
        n
    }

    fn enumerated(&self) {
        self.pg.iter().enumerate().for_each(|(i, s)| {
            s.insert(i as u64, "d".into()).unwrap(); // DW001: `enumerate()` pair
        });
        self.mongo[..].iter().enumerate().for_each(|(i, m)| {
            m.delete(i as u64).unwrap(); // DW001: `enumerate()` over a slice
        });
    }

    fn both_elements(&self) {
        let _ = self.pg.iter().reduce(|a, b| {
            b.delete(3).unwrap(); // DW001: second parameter of `reduce`
            a
        });
        let _ = self.mongo.iter().max_by(|a, b| {
            a.insert(4, "e".into()).unwrap(); // DW001: first parameter of `max_by`
            std::cmp::Ordering::Equal
        });
        let _ = self.by_region.get("eu").map_or(0, |s| {
            s.insert(5, "f".into()).unwrap(); // DW001: `map_or`'s closure
            1
        });
    }

    fn must_stay_clean(&self, mut seen: Vec<u64>) {
        self.ids.iter().zip(&self.pg).for_each(|(id, s)| {
            seen.insert(0, *id); // Vec::insert: fine
            s.get(*id).unwrap(); // a read: fine
        });
        let _ = self.ids.iter().fold(Vec::new(), |mut acc: Vec<u64>, id| {
            acc.insert(0, *id); // Vec::insert: fine
            acc
        });
    }
}
