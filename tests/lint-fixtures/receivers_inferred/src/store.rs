//! The repository trait, its raw stores and the functions that build them.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait OrderStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64, item: String) -> Result<(), Error>;
    #[dual_write(key = id)]
    fn delete(&self, id: u64) -> Result<(), Error>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<String>, Error>;
}

pub struct PgOrders {
    pool: Pool,
}

pub struct MongoOrders;

impl PgOrders {
    pub fn open(url: &str) -> Result<Self, Error> {
        Ok(PgOrders { pool: Pool::open(url)? })
    }

    pub fn replica(&self) -> Option<&PgOrders> {
        None
    }

    pub fn rebuild() -> Result<Self, Error> {
        let fresh = Self::open("postgres://")?;
        fresh.insert(0, "seed".into())?; // DW001: `Self::open(..)?`
        Ok(fresh)
    }
}

impl OrderStore for PgOrders {
    fn insert(&self, _id: u64, _item: String) -> Result<(), Error> {
        Ok(())
    }
    fn delete(&self, _id: u64) -> Result<(), Error> {
        Ok(())
    }
    fn get(&self, _id: u64) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

impl OrderStore for MongoOrders {
    fn insert(&self, _id: u64, _item: String) -> Result<(), Error> {
        Ok(())
    }
    fn delete(&self, _id: u64) -> Result<(), Error> {
        Ok(())
    }
    fn get(&self, _id: u64) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

pub fn connect(url: &str) -> Result<PgOrders, Error> {
    PgOrders::open(url)
}

pub fn connect_both() -> (PgOrders, MongoOrders) {
    (PgOrders::open("postgres://").unwrap(), MongoOrders)
}

pub fn maybe_legacy() -> Option<MongoOrders> {
    None
}
