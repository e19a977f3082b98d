use fixture::{PgUserStore, UserStore};

#[test]
fn seeds_rows() {
    let store = PgUserStore::default();
    store.insert(5).unwrap();
}
