//! The repository trait and its raw stores.
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

pub struct PgOrders;

pub struct MongoOrders;

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
