//! Which database clients a file's crate depends on: read from the
//! nearest `Cargo.toml` with a `[package]` between the file and the
//! checked root (every dependency table, renamed dependencies by their
//! `package`), and, when a `Cargo.lock` sits between that manifest and the
//! root, everything the package depends on through it (so a client reached
//! through a pool crate, `deadpool-postgres` -> `tokio-postgres`, counts).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Manifests and lock files larger than this are not read.
const MAX_MANIFEST: u64 = 8 << 20;

/// The package names a crate depends on (`-` and `_` the same).
#[derive(Debug, Default)]
pub struct CrateDeps {
    names: HashSet<String>,
    /// Renamed dependencies as paths name them: (`kv`, `redis`) for
    /// `kv = { package = "redis" }`.
    renames: Vec<(String, String)>,
}

impl CrateDeps {
    /// Whether `package` is among the dependencies.
    pub fn contains(&self, package: &str) -> bool {
        self.names.contains(&normalize(package))
    }

    /// `path` with a renamed dependency's name replaced by its package's
    /// crate name (`kv::cmd` -> `redis::cmd`); `None` when it starts with
    /// no renamed dependency.
    pub fn unrename(&self, path: &str) -> Option<String> {
        let (first, rest) = path.split_once("::")?;
        let (_, package) = self.renames.iter().find(|(local, _)| local == first)?;
        Some(format!("{package}::{rest}"))
    }
}

fn normalize(name: &str) -> String {
    name.replace('_', "-").to_ascii_lowercase()
}

/// Looks dependencies up per directory, reading each manifest and each
/// lock file once; shared by the threads of the analysis (no lock is held
/// while a file is read: two threads may read the same one at once, and
/// agree).
#[derive(Debug)]
pub struct DepsCache {
    root: PathBuf,
    /// Directory (relative to the root) -> its crate's dependencies;
    /// `None` when no manifest was found.
    by_dir: Mutex<HashMap<String, Option<Arc<CrateDeps>>>>,
    /// `Cargo.lock` path -> its parsed text (`None`: unreadable).
    locks: Mutex<HashMap<PathBuf, Option<Arc<toml::Table>>>>,
}

impl DepsCache {
    /// A cache for files under `root`.
    pub fn new(root: &Path) -> Self {
        DepsCache {
            root: root.to_path_buf(),
            by_dir: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The dependencies of the crate that holds `file` (relative to the
    /// root, `/`-separated); `None` when no manifest with a `[package]`
    /// lies between the file and the root.
    pub fn for_file(&self, file: &str) -> Option<Arc<CrateDeps>> {
        let dir = file.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.for_dir(dir)
    }

    fn for_dir(&self, dir: &str) -> Option<Arc<CrateDeps>> {
        if let Some(found) = lock(&self.by_dir).get(dir) {
            return found.clone();
        }
        let abs = self.root.join(dir);
        let found = match read_manifest(&abs.join("Cargo.toml")) {
            Some(manifest) if manifest.get("package").is_some() => {
                Some(Arc::new(self.deps_of(&manifest, dir)))
            }
            _ if dir.is_empty() => None,
            _ => {
                let parent = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
                self.for_dir(parent)
            }
        };
        lock(&self.by_dir).insert(dir.to_owned(), found.clone());
        found
    }

    /// The dependencies a manifest declares, and, through the nearest
    /// `Cargo.lock` up to the root, what they depend on.
    fn deps_of(&self, manifest: &toml::Table, dir: &str) -> CrateDeps {
        let mut names = HashSet::new();
        let mut renames = Vec::new();
        collect_tables(manifest, &mut names, &mut renames);
        if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
            for target in targets.values().filter_map(|t| t.as_table()) {
                collect_tables(target, &mut names, &mut renames);
            }
        }
        let package = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .map(normalize);
        if let Some(package) = package
            && let Some(lock) = self.lock_above(dir)
        {
            names.extend(lock_closure(&lock, &package));
        }
        CrateDeps { names, renames }
    }

    /// The nearest `Cargo.lock` from `dir` up to the root, parsed once per
    /// path.
    fn lock_above(&self, dir: &str) -> Option<Arc<toml::Table>> {
        let mut dir = dir;
        loop {
            let path = self.root.join(dir).join("Cargo.lock");
            if path.is_file() {
                if let Some(parsed) = lock(&self.locks).get(&path) {
                    return parsed.clone();
                }
                let parsed = read_manifest(&path).map(Arc::new);
                lock(&self.locks).insert(path, parsed.clone());
                return parsed;
            }
            if dir.is_empty() {
                return None;
            }
            dir = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }
}

/// A mutex's data, even if a thread panicked holding it (the maps hold
/// whole entries only).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_manifest(path: &Path) -> Option<toml::Table> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return None;
    }
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// The package names of `[dependencies]`, `[dev-dependencies]` and
/// `[build-dependencies]` (a renamed one by its `package`).
fn collect_tables(
    table: &toml::Table,
    out: &mut HashSet<String>,
    renames: &mut Vec<(String, String)>,
) {
    for key in [
        "dependencies",
        "dev-dependencies",
        "dev_dependencies",
        "build-dependencies",
        "build_dependencies",
    ] {
        let Some(deps) = table.get(key).and_then(|d| d.as_table()) else {
            continue;
        };
        for (name, spec) in deps {
            let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
            if package != name {
                renames.push((name.replace('-', "_"), package.replace('-', "_")));
            }
            out.insert(normalize(package));
        }
    }
}

/// Every package `package` reaches through the lock file's dependency
/// lists (all versions of a name merged).
fn lock_closure(lock: &toml::Table, package: &str) -> HashSet<String> {
    let mut graph: HashMap<String, Vec<String>> = HashMap::new();
    for entry in lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let Some(name) = entry.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let deps = graph.entry(normalize(name)).or_default();
        for dep in entry
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
        {
            // "name", "name version" or "name version (source)".
            if let Some(dep) = dep.split_whitespace().next() {
                deps.push(normalize(dep));
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack = vec![package.to_owned()];
    while let Some(name) = stack.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_renames_and_lock_files() {
        let root = std::env::temp_dir().join(format!("dw-deps-{}", std::process::id()));
        let app = root.join("app");
        std::fs::create_dir_all(app.join("src/db")).unwrap();
        std::fs::write(
            app.join("Cargo.toml"),
            "[package]\nname = \"app\"\n[dependencies]\norm = { package = \"sea-orm\", version = \"1\" }\ndeadpool-postgres = \"0.14\"\n[target.'cfg(unix)'.dev-dependencies]\nredis = \"0.27\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("Cargo.lock"),
            "version = 3\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"deadpool-postgres\", \"sea-orm\"]\n[[package]]\nname = \"deadpool-postgres\"\nversion = \"0.14.0\"\ndependencies = [\"tokio-postgres 0.7.12 (registry+https://github.com/rust-lang/crates.io-index)\"]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"app\"]\n",
        )
        .unwrap();
        let cache = DepsCache::new(&root);
        let deps = cache.for_file("app/src/db/mod.rs").unwrap();
        for name in ["sea-orm", "sea_orm", "redis", "tokio-postgres"] {
            assert!(deps.contains(name), "{name}");
        }
        assert!(!deps.contains("orm"));
        assert_eq!(
            deps.unrename("orm::Entity::update_many").as_deref(),
            Some("sea_orm::Entity::update_many")
        );
        assert_eq!(deps.unrename("sqlx::query"), None);
        assert!(!deps.contains("sqlx"));
        assert!(cache.for_file("build.rs").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
