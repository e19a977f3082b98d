// The macro rejects this trait (`frobnicate` has no kind), yet the lint must
// guard its writes exactly as the macro classifies them: an explicit `write`
// after another option, an explicit `write` on a default method, and verbs
// of the name vocabulary.
use dualwrite_runtime::dual_write;

#[dual_write(adapter = LedgerAdapter)]
pub trait Ledger {
    fn frobnicate(&self);
    #[dual_write(key = id, write)]
    fn record(&self, id: u64);
    #[dual_write(write)]
    fn touch(&self, id: u64) {
        let _ = id;
    }
    fn upload(&self, id: u64, blob: Vec<u8>);
    fn incr_by(&self, id: u64, by: i64);
    fn lookup(&self, id: u64) -> Option<i64>;
    #[dual_write(read, key = id)]
    fn total(&self, id: u64) -> i64;
}

pub struct PgLedger;

impl Ledger for PgLedger {
    fn frobnicate(&self) {}
    fn record(&self, _id: u64) {}
    fn upload(&self, _id: u64, _blob: Vec<u8>) {}
    fn incr_by(&self, _id: u64, _by: i64) {}
    fn lookup(&self, _id: u64) -> Option<i64> {
        None
    }
    fn total(&self, _id: u64) -> i64 {
        0
    }
}

fn bypasses(pg: &PgLedger) {
    pg.record(1);
    pg.touch(1);
    pg.upload(1, Vec::new());
    pg.incr_by(1, 2);
    // Reads are not bypasses.
    let _ = pg.lookup(1);
    let _ = pg.total(1);
}
