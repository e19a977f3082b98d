// A write's argument type need not be `Debug`: the command enum shows such a
// field by its type name.
use dualwrite_runtime::{Migration, Phase, dual_write};

#[derive(Clone)]
pub struct Row {
    pub id: u64,
}

#[dual_write]
pub trait UserStore {
    fn insert(&self, row: Row, note: &str) -> bool;
}

struct Store;

impl UserStore for Store {
    fn insert(&self, row: Row, _note: &str) -> bool {
        row.id > 0
    }
}

fn main() {
    let command = UserStoreWrite::Insert { row: Row { id: 1 }, note: "n".to_owned() };
    let shown = format!("{command:?}");
    assert!(shown.contains("row: <"), "{shown}");
    assert!(shown.contains("note: \"n\""), "{shown}");
    let copy = command.clone();
    assert!(copy.apply(&Store).is_ok());
    let adapter = UserStoreDualWrite::new(Store, Store, Migration::new(Phase::DualWrite));
    assert!(adapter.insert(Row { id: 2 }, "x"));
}
