use dualwrite_runtime::dual_write;

#[dual_write(adapter = Orders, colour = blue)]
pub trait OrderStore {
    #[dual_write(write, read)]
    fn place(&self, id: u64);
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Option<u64>;
}
