//! Finding the files to check: the given paths, minus `target/`, hidden
//! entries, `.gitignore`d paths (in a git repository or not) and the
//! config's `exclude` globs.
//!
//! Symlinks: the walker itself never follows them, so a loop cannot make it
//! spin. Each symlink is resolved once: a target inside the root is checked
//! (a directory is walked unless a walk already covers it, which is what
//! makes a link to an ancestor harmless); a target outside the root, or one
//! that cannot be resolved (a loop, a dangling link), is reported as a
//! [`WalkNotice`] so nothing is skipped silently.

use std::collections::{HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;
use ignore::WalkBuilder;

use crate::error::DriverError;

/// A file to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePath {
    /// Where to read it.
    pub abs: PathBuf,
    /// Relative to the root, `/`-separated: the name in every finding.
    pub rel: String,
    /// Under a `tests/` directory.
    pub is_test_file: bool,
}

/// Something the walk could not follow (reported as a DW000 note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkNotice {
    /// The path, relative to the root.
    pub rel: String,
    /// Why it was not followed.
    pub reason: String,
}

/// The result of a walk.
#[derive(Debug, Default)]
pub struct Walk {
    /// The files, sorted by relative path, each once.
    pub files: Vec<SourcePath>,
    /// Entries not followed.
    pub notices: Vec<WalkNotice>,
}

/// What to walk.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// The canonical root; every path is inside it.
    pub root: PathBuf,
    /// Canonical paths (directories or files) inside the root.
    pub paths: Vec<PathBuf>,
    /// Globs (relative to the root) never walked.
    pub exclude: GlobSet,
    /// Leave out `tests/` directories.
    pub skip_test_files: bool,
}

/// The root and the canonical paths to check.
///
/// The root is `root` when given (every path must lie inside it), else the
/// current directory when it contains every path, else the deepest
/// directory containing them all.
pub fn resolve_root(
    paths: &[PathBuf],
    root: Option<&Path>,
) -> Result<(PathBuf, Vec<PathBuf>), DriverError> {
    let canonical: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            std::fs::canonicalize(p)
                .map_err(|error| DriverError::new(format!("{}: {error}", p.display())))
        })
        .collect::<Result<_, _>>()?;
    if let Some(root) = root {
        let root = std::fs::canonicalize(root)
            .map_err(|error| DriverError::new(format!("--root {}: {error}", root.display())))?;
        if let Some(outside) = canonical.iter().find(|p| !p.starts_with(&root)) {
            return Err(DriverError::new(format!(
                "{} is outside the root {}",
                outside.display(),
                root.display()
            )));
        }
        return Ok((root, canonical));
    }
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|error| DriverError::new(format!("cannot read the current directory: {error}")))?;
    if canonical.iter().all(|p| p.starts_with(&cwd)) {
        return Ok((cwd, canonical));
    }
    let mut dirs = canonical.iter().map(|p| {
        if p.is_dir() {
            p.clone()
        } else {
            p.parent().map_or_else(|| p.clone(), Path::to_path_buf)
        }
    });
    let mut common = dirs.next().unwrap_or(cwd);
    for dir in dirs {
        while !dir.starts_with(&common) {
            if !common.pop() {
                break;
            }
        }
    }
    Ok((common, canonical))
}

/// `path` relative to `root`, `/`-separated.
pub fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Whether a relative path lies under a `tests` directory.
pub fn is_test_path(rel: &str) -> bool {
    let mut dirs: Vec<&str> = rel.split('/').collect();
    dirs.pop();
    dirs.contains(&"tests")
}

/// Walks the paths.
pub fn walk(options: &WalkOptions) -> Walk {
    let mut state = WalkState {
        options,
        walk: Walk::default(),
        seen: HashSet::new(),
        walked_dirs: Vec::new(),
    };
    let mut queue: VecDeque<PathBuf> = VecDeque::new();
    for path in &options.paths {
        if path.is_dir() {
            queue.push_back(path.clone());
        } else {
            // A file named on the command line is checked whatever its name
            // and the ignore rules say: the user asked for it.
            state.add_file(path.clone());
        }
    }
    while let Some(dir) = queue.pop_front() {
        if state.walked_dirs.iter().any(|w| dir.starts_with(w)) {
            continue;
        }
        state.walked_dirs.push(dir.clone());
        state.walk_dir(&dir, &mut queue);
    }
    let mut walk = state.walk;
    walk.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    walk.notices.sort_by(|a, b| a.rel.cmp(&b.rel));
    walk
}

struct WalkState<'a> {
    options: &'a WalkOptions,
    walk: Walk,
    seen: HashSet<PathBuf>,
    walked_dirs: Vec<PathBuf>,
}

impl WalkState<'_> {
    fn add_file(&mut self, abs: PathBuf) {
        let rel = relative(&self.options.root, &abs);
        let is_test_file = is_test_path(&rel);
        if is_test_file && self.options.skip_test_files {
            return;
        }
        if self.seen.insert(abs.clone()) {
            self.walk.files.push(SourcePath {
                abs,
                rel,
                is_test_file,
            });
        }
    }

    fn notice(&mut self, path: &Path, reason: String) {
        self.walk.notices.push(WalkNotice {
            rel: relative(&self.options.root, path),
            reason,
        });
    }

    fn walk_dir(&mut self, dir: &Path, queue: &mut VecDeque<PathBuf>) {
        let root = Arc::new(self.options.root.clone());
        let exclude = Arc::new(self.options.exclude.clone());
        let skip_tests = self.options.skip_test_files;
        let walker = WalkBuilder::new(dir)
            .hidden(true)
            .git_ignore(true)
            .git_exclude(true)
            .git_global(false)
            .require_git(false)
            .follow_links(false)
            .filter_entry(move |entry| {
                if entry.depth() == 0 {
                    return true;
                }
                let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
                let name = entry.file_name();
                if is_dir && (name == "target" || (skip_tests && name == "tests")) {
                    return false;
                }
                !exclude.is_match(relative(&root, entry.path()))
            })
            .build();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    self.walk.notices.push(WalkNotice {
                        rel: relative(&self.options.root, dir),
                        reason: format!("cannot walk: {error}"),
                    });
                    continue;
                }
            };
            if entry.depth() == 0 {
                continue;
            }
            let path = entry.path();
            if entry.path_is_symlink() {
                self.follow_symlink(path, queue);
            } else if entry.file_type().is_some_and(|t| t.is_file()) && is_rust(path) {
                self.add_file(path.to_path_buf());
            }
        }
    }

    fn follow_symlink(&mut self, link: &Path, queue: &mut VecDeque<PathBuf>) {
        match std::fs::canonicalize(link) {
            Err(error) => {
                self.notice(
                    link,
                    format!("symlink not followed: cannot resolve it ({error})"),
                );
            }
            Ok(target) if !target.starts_with(&self.options.root) => {
                self.notice(
                    link,
                    format!(
                        "symlink not followed: it points outside the root, to {}",
                        target.display()
                    ),
                );
            }
            Ok(target) if target.is_dir() => {
                let rel = relative(&self.options.root, &target);
                if !self.options.exclude.is_match(&rel) {
                    queue.push_back(target);
                }
            }
            Ok(target) => {
                let rel = relative(&self.options.root, &target);
                if is_rust(link) && !self.options.exclude.is_match(&rel) {
                    self.add_file(target);
                }
            }
        }
    }
}

fn is_rust(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_paths() {
        assert!(is_test_path("tests/a.rs"));
        assert!(is_test_path("crate/tests/deep/a.rs"));
        assert!(!is_test_path("src/tests.rs"));
    }
}
