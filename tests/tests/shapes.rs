//! One test per supported trait shape: each compiles an annotated trait and
//! runs the generated adapter through the phases against two stores.

use std::time::Duration;

use dualwrite_runtime::{LaneConfig, Migration, Phase, PhaseChange, SyncMode, dual_write};
use dualwrite_tests::{MemTable, StoreError, User};

/// How long a test waits for the secondary lanes to drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Moves the global phase past the ordering rules: a test whose point is
/// how a shape routes under `phase`, not the migration's steps.
fn force(migration: &Migration, phase: Phase) {
    migration
        .change(PhaseChange::to(phase).forced())
        .expect("a forced move is allowed");
}

/// Sync `fn`s, `&self`, `Result`, `Option`, `()` and `bool` results.
mod sync_fns {
    use super::*;

    #[dual_write]
    pub trait UserStore {
        #[dual_write(key = user.id)]
        fn insert(&self, user: &User) -> Result<(), StoreError>;
        #[dual_write(key = id)]
        fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
        #[dual_write(key = id)]
        fn delete(&self, id: u64) -> Result<bool, StoreError>;
        fn count(&self) -> usize;
        fn exists(&self, id: u64) -> bool;
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable);

    impl UserStore for Mem {
        fn insert(&self, user: &User) -> Result<(), StoreError> {
            let u = user.clone();
            self.0.write(format!("insert {}", user.id), |rows| {
                rows.insert(u.id, u);
            })
        }
        fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
            Ok(self.0.get(id))
        }
        fn delete(&self, id: u64) -> Result<bool, StoreError> {
            let mut existed = false;
            self.0.write(format!("delete {id}"), |rows| {
                existed = rows.remove(&id).is_some()
            })?;
            Ok(existed)
        }
        fn count(&self) -> usize {
            self.0.rows().len()
        }
        fn exists(&self, id: u64) -> bool {
            self.0.get(id).is_some()
        }
    }

    #[test]
    fn walks_every_phase() {
        let migration = Migration::new(Phase::Prepare);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration.clone());

        store.insert(&User::new(1, "ada")).unwrap();
        assert_eq!(store.old_store().0.rows(), vec![User::new(1, "ada")]);
        assert!(
            store.new_store().0.rows().is_empty(),
            "prepare writes Old only"
        );

        migration.set_phase(Phase::DualWrite).unwrap();
        store.insert(&User::new(2, "bob")).unwrap();
        assert_eq!(store.new_store().0.rows(), vec![User::new(2, "bob")]);
        assert_eq!(
            store.get(1).unwrap(),
            Some(User::new(1, "ada")),
            "reads stay on Old"
        );

        migration.set_phase(Phase::ShadowRead).unwrap();
        assert_eq!(store.get(2).unwrap(), Some(User::new(2, "bob")));
        assert_eq!(
            store.get(1).unwrap(),
            Some(User::new(1, "ada")),
            "Old answers"
        );
        assert_eq!(store.count(), 2);
        let stats = store.stats();
        assert_eq!(stats.reads_compared, 3);
        assert_eq!(stats.reads_matched, 1);
        assert_eq!(stats.reads_mismatched, 2);

        migration.set_phase(Phase::Cutover).unwrap();
        assert_eq!(store.get(1).unwrap(), None, "New answers after cutover");
        assert!(store.delete(2).unwrap());
        assert!(
            store.old_store().0.get(2).is_none(),
            "Old still written after cutover"
        );

        migration.set_phase(Phase::Cleanup).unwrap();
        store.insert(&User::new(3, "cy")).unwrap();
        assert!(
            store.old_store().0.get(3).is_none(),
            "cleanup writes New only"
        );
        assert!(store.exists(3));
        assert!(
            migration.set_phase(Phase::DualWrite).is_err(),
            "cleanup cannot roll back"
        );
    }

    #[test]
    fn per_key_override_routes_one_tenant() {
        let migration = Migration::new(Phase::Prepare);
        migration.set_phase_for(&7u64, Phase::DualWrite).unwrap();
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
        store.insert(&User::new(7, "seven")).unwrap();
        store.insert(&User::new(8, "eight")).unwrap();
        assert_eq!(store.new_store().0.rows(), vec![User::new(7, "seven")]);
        assert_eq!(store.old_store().0.rows().len(), 2);
    }

    #[test]
    fn async_secondary_for_a_sync_trait() {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
            .with_async_secondary(
                LaneConfig::default().with_initial_backoff(Duration::from_millis(1)),
            );
        store.new_store().0.fail_next(2);
        for id in 0..20 {
            store.insert(&User::new(id, "x")).unwrap();
        }
        store.flush(FLUSH_TIMEOUT).expect("flushed");
        assert_eq!(store.new_store().0.rows().len(), 20);
        let stats = store.stats();
        assert_eq!(stats.secondary_retries, 2);
        assert_eq!(stats.dead_letters, 0);
    }

    #[test]
    fn strong_mode_fails_the_call_when_the_secondary_fails() {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
            .with_sync_mode(SyncMode::Strong);
        store.new_store().0.fail_next(1);
        assert!(store.insert(&User::new(1, "a")).is_err());
        assert_eq!(
            store.old_store().0.rows().len(),
            1,
            "the primary write stays"
        );
        let dead = store.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(matches!(&dead[0].command, UserStoreWrite::Insert { user } if user.id == 1));
    }
}

/// Native `async fn` in the trait, sync and async-secondary strategies.
mod native_async {
    use super::*;

    #[dual_write]
    pub trait UserStore {
        #[dual_write(key = user.id)]
        async fn insert(&self, user: &User) -> Result<(), StoreError>;
        #[dual_write(key = id)]
        async fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable);

    impl UserStore for Mem {
        async fn insert(&self, user: &User) -> Result<(), StoreError> {
            tokio::task::yield_now().await;
            let u = user.clone();
            self.0.write(format!("insert {}", user.id), |rows| {
                rows.insert(u.id, u);
            })
        }
        async fn get(&self, id: u64) -> Result<Option<User>, StoreError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(self.0.get(id))
        }
    }

    #[tokio::test]
    async fn sync_strategy_and_shadow_reads() {
        let migration = Migration::new(Phase::ShadowRead);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
        store.insert(&User::new(1, "a")).await.unwrap();
        assert_eq!(store.get(1).await.unwrap(), Some(User::new(1, "a")));
        assert_eq!(store.stats().reads_matched, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_secondary_without_changing_the_trait() {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
            .with_async_secondary(LaneConfig::default());
        for id in 0..10 {
            store.insert(&User::new(id, "n")).await.unwrap();
        }
        store.flush_async(FLUSH_TIMEOUT).await.expect("flushed");
        assert_eq!(store.new_store().0.rows().len(), 10);
    }
}

/// `fn … -> impl Future<Output = …> + Send`.
mod impl_future {
    use super::*;
    use std::future::Future;

    #[dual_write]
    pub trait UserStore {
        #[dual_write(key = user.id)]
        fn insert(&self, user: &User) -> impl Future<Output = Result<(), StoreError>> + Send;
        fn get(&self, id: u64) -> impl Future<Output = Option<User>> + Send;
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable);

    // The shape under test is the explicit `impl Future` form.
    #[allow(clippy::manual_async_fn)]
    impl UserStore for Mem {
        fn insert(&self, user: &User) -> impl Future<Output = Result<(), StoreError>> + Send {
            let u = user.clone();
            async move {
                let id = u.id;
                self.0.write(format!("insert {id}"), |rows| {
                    rows.insert(id, u);
                })
            }
        }
        fn get(&self, id: u64) -> impl Future<Output = Option<User>> + Send {
            async move { self.0.get(id) }
        }
    }

    fn assert_send<F: Future + Send>(f: F) -> F {
        f
    }

    #[tokio::test]
    async fn futures_stay_send() {
        let migration = Migration::new(Phase::ShadowRead);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration);
        assert_send(store.insert(&User::new(1, "a"))).await.unwrap();
        assert_eq!(assert_send(store.get(1)).await, Some(User::new(1, "a")));
        assert_eq!(store.new_store().0.rows().len(), 1);
        assert_eq!(store.stats().reads_matched, 1);
    }
}

/// Traits also marked `#[async_trait]`.
mod with_async_trait {
    use super::*;
    use async_trait::async_trait;

    #[dual_write]
    #[async_trait]
    pub trait UserStore: Send + Sync {
        #[dual_write(key = user.id)]
        async fn insert(&self, user: &User) -> Result<(), StoreError>;
        async fn get(&self, id: u64) -> Option<User>;
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable);

    #[async_trait]
    impl UserStore for Mem {
        async fn insert(&self, user: &User) -> Result<(), StoreError> {
            let u = user.clone();
            self.0.write(format!("insert {}", user.id), |rows| {
                rows.insert(u.id, u);
            })
        }
        async fn get(&self, id: u64) -> Option<User> {
            self.0.get(id)
        }
    }

    #[tokio::test]
    async fn runs_through_boxed_futures() {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration.clone());
        store.insert(&User::new(1, "a")).await.unwrap();
        assert_eq!(store.new_store().0.rows().len(), 1);
        migration.set_phase(Phase::ShadowRead).unwrap();
        assert_eq!(store.get(1).await, Some(User::new(1, "a")));
        let dyn_store: &dyn UserStore = &store;
        assert_eq!(dyn_store.get(1).await, Some(User::new(1, "a")));
    }
}

/// `&mut self` receivers: the adapter owns its stores.
mod mut_receivers {
    use super::*;
    use std::collections::BTreeMap;

    #[dual_write]
    pub trait Counter {
        #[dual_write(key = name)]
        fn bump(&mut self, name: &str, by: u32) -> u32;
        fn get(&self, name: &str) -> Option<u32>;
    }

    #[derive(Default)]
    pub struct Map(pub BTreeMap<String, u32>);

    impl Counter for Map {
        fn bump(&mut self, name: &str, by: u32) -> u32 {
            let v = self.0.entry(name.to_owned()).or_default();
            *v += by;
            *v
        }
        fn get(&self, name: &str) -> Option<u32> {
            self.0.get(name).copied()
        }
    }

    #[test]
    fn mutable_stores_are_both_written() {
        let migration = Migration::new(Phase::DualWrite);
        let mut store = CounterDualWrite::new(Map::default(), Map::default(), migration.clone());
        assert_eq!(store.bump("a", 2), 2);
        assert_eq!(store.bump("a", 3), 5);
        force(&migration, Phase::Cutover);
        assert_eq!(store.get("a"), Some(5));
        let (old, new) = store.into_stores();
        assert_eq!(old.0, new.0);
    }
}

/// Trait generics (type, lifetime, const) and where clauses.
mod trait_generics {
    use super::*;
    use std::fmt::Debug;
    use std::sync::Mutex;

    #[dual_write]
    pub trait Repo<'a, T, const N: usize>
    where
        T: Clone + Debug + PartialEq + Send + 'static,
    {
        fn put(&self, tag: &'a str, item: T) -> Result<(), StoreError>;
        fn list(&self) -> Vec<T>;
    }

    pub struct Vecs<T>(pub Mutex<Vec<T>>);

    impl<T> Default for Vecs<T> {
        fn default() -> Self {
            Self(Mutex::new(Vec::new()))
        }
    }

    impl<'a, T, const N: usize> Repo<'a, T, N> for Vecs<T>
    where
        T: Clone + Debug + PartialEq + Send + 'static,
    {
        fn put(&self, _tag: &'a str, item: T) -> Result<(), StoreError> {
            let mut v = self.0.lock().unwrap();
            if v.len() >= N {
                return Err(StoreError("full".into()));
            }
            v.push(item);
            Ok(())
        }
        fn list(&self) -> Vec<T> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn generic_adapter_runs() {
        let migration = Migration::new(Phase::ShadowRead);
        let store: RepoDualWrite<'static, String, 2, Vecs<String>, Vecs<String>> =
            RepoDualWrite::new(Vecs::default(), Vecs::default(), migration);
        store.put("t", "a".to_owned()).unwrap();
        store.put("t", "b".to_owned()).unwrap();
        assert!(
            store.put("t", "c".to_owned()).is_err(),
            "the const parameter reaches the stores"
        );
        assert_eq!(store.list(), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(store.stats().reads_matched, 1);
        // `put` borrows `&'a str`, which an owned command cannot lend back:
        // it is not in the command enum, and its secondary write stays on the
        // caller's path.
        let none: Option<RepoWrite<'static, String, 2>> = None;
        assert!(none.is_none());
    }
}

/// Generic methods: inferred from arguments, and from the return type.
mod generic_methods {
    use super::*;

    #[dual_write]
    pub trait UserStore {
        fn save_all<I>(&self, users: I) -> Result<usize, StoreError>
        where
            I: IntoIterator<Item = User> + Clone;
        fn find_as<T: From<User> + PartialEq>(&self, id: u64) -> Option<T>;
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable);

    impl UserStore for Mem {
        fn save_all<I>(&self, users: I) -> Result<usize, StoreError>
        where
            I: IntoIterator<Item = User> + Clone,
        {
            let mut n = 0;
            for u in users {
                self.0.write(format!("insert {}", u.id), |rows| {
                    rows.insert(u.id, u.clone());
                })?;
                n += 1;
            }
            Ok(n)
        }
        fn find_as<T: From<User> + PartialEq>(&self, id: u64) -> Option<T> {
            self.0.get(id).map(T::from)
        }
    }

    #[derive(Debug, PartialEq)]
    pub struct Name(String);

    impl From<User> for Name {
        fn from(u: User) -> Self {
            Name(u.name)
        }
    }

    #[test]
    fn generic_writes_and_reads() {
        let migration = Migration::new(Phase::ShadowRead);
        let store = UserStoreDualWrite::new(Mem::default(), Mem::default(), migration)
            .with_async_secondary(LaneConfig::default());
        assert_eq!(
            store
                .save_all(vec![User::new(1, "a"), User::new(2, "b")])
                .unwrap(),
            2
        );
        // Generic writes cannot be carried by the command enum: their secondary
        // write stays on the caller's path, so it is done on return.
        assert_eq!(store.new_store().0.rows().len(), 2);
        assert_eq!(store.find_as::<Name>(1), Some(Name("a".into())));
        assert_eq!(store.stats().reads_matched, 1);
    }
}

/// Associated types and consts.
mod assoc_items {
    use super::*;

    #[dual_write]
    pub trait KeyValue {
        type Key: Clone + Ord + std::hash::Hash + std::fmt::Display + Send + 'static;
        const NAME: &'static str;
        #[dual_write(key = key)]
        fn put(&self, key: Self::Key, value: &str) -> Result<(), StoreError>;
        fn get(&self, key: &Self::Key) -> Option<String>;
    }

    #[derive(Default)]
    pub struct Kv(pub std::sync::Mutex<std::collections::BTreeMap<u32, String>>);

    impl KeyValue for Kv {
        type Key = u32;
        const NAME: &'static str = "kv";
        fn put(&self, key: u32, value: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().insert(key, value.to_owned());
            Ok(())
        }
        fn get(&self, key: &u32) -> Option<String> {
            self.0.lock().unwrap().get(key).cloned()
        }
    }

    #[test]
    fn associated_items_come_from_old() {
        let migration = Migration::new(Phase::DualWrite);
        let store = KeyValueDualWrite::new(Kv::default(), Kv::default(), migration)
            .with_async_secondary(LaneConfig::default());
        store.put(5, "five").unwrap();
        store.flush(FLUSH_TIMEOUT).expect("flushed");
        assert_eq!(store.new_store().get(&5), Some("five".into()));
        assert_eq!(<KeyValueDualWrite<Kv, Kv> as KeyValue>::NAME, "kv");
        let command: KeyValueWrite<u32> = KeyValueWrite::Put {
            key: 1,
            value: "one".into(),
        };
        assert_eq!(command.key_text(), Some("1".to_owned()));
    }
}

/// Default methods and supertraits.
mod defaults_and_supertraits {
    use super::*;

    pub trait Named {
        fn name(&self) -> String;
    }

    #[dual_write]
    pub trait UserStore: Named + Send + Sync {
        #[dual_write(key = user.id)]
        fn insert(&self, user: &User) -> Result<(), StoreError>;
        /// Runs on the adapter and reaches the stores through `insert`.
        fn insert_many(&self, users: &[User]) -> Result<(), StoreError> {
            users.iter().try_for_each(|u| self.insert(u))
        }
        /// Routed explicitly although it has a default body.
        #[dual_write(read)]
        fn describe(&self) -> String {
            self.name()
        }
    }

    #[derive(Default)]
    pub struct Mem(pub MemTable, pub &'static str);

    impl Named for Mem {
        fn name(&self) -> String {
            self.1.to_owned()
        }
    }

    impl UserStore for Mem {
        fn insert(&self, user: &User) -> Result<(), StoreError> {
            let u = user.clone();
            self.0.write(format!("insert {}", user.id), |rows| {
                rows.insert(u.id, u);
            })
        }
    }

    impl<Old: Named, New> Named for UserStoreDualWrite<Old, New> {
        fn name(&self) -> String {
            format!("dual({})", self.old_store().name())
        }
    }

    #[test]
    fn defaults_go_through_the_adapter() {
        let migration = Migration::new(Phase::DualWrite);
        let store = UserStoreDualWrite::new(
            Mem(MemTable::new(), "old"),
            Mem(MemTable::new(), "new"),
            migration.clone(),
        );
        store
            .insert_many(&[User::new(1, "a"), User::new(2, "b")])
            .unwrap();
        assert_eq!(store.new_store().0.rows().len(), 2);
        assert_eq!(store.describe(), "old");
        force(&migration, Phase::Cutover);
        assert_eq!(store.describe(), "new");
        assert_eq!(store.name(), "dual(old)");
    }
}

/// `io::Result`, `anyhow::Result`, by-reference arguments, patterns, cfg and docs.
mod results_refs_patterns {
    use super::*;
    use std::io;

    #[dual_write(serde)]
    pub trait Files {
        /// Writes one file.
        #[dual_write(key = path)]
        fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
        #[dual_write(key = path)]
        fn remove(&self, path: &str) -> anyhow::Result<bool>;
        fn get(&self, path: &str) -> io::Result<Option<Vec<u8>>>;
        /// `mut` and `_` patterns are allowed where the method has a body.
        #[dual_write(write)]
        fn set_tags(&self, mut count: u8, _: &[String]) -> Option<u8> {
            count += 1;
            Some(count)
        }
        #[cfg(any())]
        #[dual_write(read)]
        fn never_compiled(&self) -> u8;
        #[cfg(test)]
        fn save_flag(&self, on: bool);
    }

    #[derive(Default)]
    pub struct Disk(
        pub std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
        pub std::sync::atomic::AtomicBool,
    );

    impl Files for Disk {
        fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
            if path.is_empty() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
            }
            self.0
                .lock()
                .unwrap()
                .insert(path.to_owned(), bytes.to_vec());
            Ok(())
        }
        fn remove(&self, path: &str) -> anyhow::Result<bool> {
            Ok(self.0.lock().unwrap().remove(path).is_some())
        }
        fn get(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().get(path).cloned())
        }
        fn set_tags(&self, mut count: u8, tags: &[String]) -> Option<u8> {
            count += tags.len() as u8;
            Some(count)
        }
        fn save_flag(&self, on: bool) {
            self.1.store(on, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn result_aliases_and_borrowed_arguments() {
        let migration = Migration::new(Phase::ShadowRead);
        let store = FilesDualWrite::new(Disk::default(), Disk::default(), migration);
        store.put("a", b"1").unwrap();
        assert!(store.put("", b"x").is_err());
        assert_eq!(store.get("a").unwrap(), Some(b"1".to_vec()));
        assert!(store.remove("a").unwrap());
        assert_eq!(store.set_tags(0, &["t".to_owned()]), Some(1));
        store.save_flag(true);
        assert!(
            store
                .new_store()
                .1
                .load(std::sync::atomic::Ordering::SeqCst)
        );
        let stats = store.stats();
        assert_eq!(stats.primary_writes_failed, 1);
        assert_eq!(stats.secondary_writes_ok, 4);

        let command = FilesWrite::Put {
            path: "p".into(),
            bytes: vec![1, 2],
        };
        let json = serde_json::to_string(&command).unwrap();
        let back: FilesWrite = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key_text(), Some("p".to_owned()));
        back.apply(store.old_store()).unwrap();
        assert_eq!(store.old_store().get("p").unwrap(), Some(vec![1, 2]));
    }
}
