//! Calls inside macro invocations are code too.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(key = id)]
    fn insert(&self, id: u64) -> Result<(), String>;
    #[dual_write(key = id)]
    fn get(&self, id: u64) -> Result<Option<String>, String>;
}

pub struct PgUserStore;

impl UserStore for PgUserStore {
    fn insert(&self, _id: u64) -> Result<(), String> {
        // Inside the implementation: raw SQL is the point of a store.
        db_run! { conn: { diesel::insert_into(users::table).execute(conn) } };
        Ok(())
    }
    fn get(&self, _id: u64) -> Result<Option<String>, String> {
        Ok(None)
    }
}

macro_rules! db_run {
    ($conn:ident: $body:block) => {
        $body
    };
}

fn in_vec(store: &PgUserStore) {
    let results = vec![store.insert(1), store.get(2).map(|_| ())];
    let filled = vec![store.insert(3); 2];
    drop((results, filled));
}

fn in_assert(store: &PgUserStore) {
    assert!(store.insert(1).is_ok());
    assert_eq!(store.insert(2), Ok(()), "inserted {}", 2);
    debug_assert!(store.get(3).is_ok()); // a read: fine
}

fn in_format(store: &PgUserStore) {
    println!("{:?}", store.insert(1));
    let text = format!("{}-{:?}", 1, store.insert(2));
    drop(text);
}

async fn in_select(store: &PgUserStore, other: &PgUserStore) {
    tokio::select! {
        biased;
        done = async { store.insert(1) } => drop(done),
        _ = async { other.get(2) } => {
            other.insert(3).unwrap();
        }
    }
}

fn in_custom_macro(conn: &mut Conn, store: &PgUserStore) {
    db_run! { conn: { diesel::insert_into(users::table).values(&row).execute(conn) } };
    db_run!(conn => {
        let saved = store.insert(4);
        saved
    });
}

fn nested(store: &PgUserStore) {
    let all = vec![format!("{:?}", store.insert(1)), format!("{}", vec![store.insert(2)].len())];
    assert!(matches!(store.insert(3), Ok(())));
    drop(all);
}

fn local_binding_inside_a_macro(pool: Pool) {
    my_block! {
        let local = PgUserStore::new(pool);
        local.insert(5).unwrap();
    }
}

fn quoted_code_is_not_run() -> TokenStream {
    quote! { store.insert(1) }
}
