//! Finding the files to check: the given paths, minus `target/`, hidden
//! entries, `.gitignore`d paths (in a git repository or not) and the
//! config's `exclude` globs.
//!
//! Symlinks: the walker itself never follows them, so a loop cannot make it
//! spin. Each symlink is resolved once: a target inside the root is checked
//! (a directory is walked unless a walk already covers it, which is what
//! makes a link to an ancestor harmless); a target outside the root, or one
//! that cannot be resolved (a loop, a dangling link), is reported as a
//! [`WalkNotice`] so nothing is skipped silently (links to files that are
//! not Rust sources excepted). So are directories the walk cannot read and
//! `.rs` names on FIFOs, sockets or devices, each with its own path.
//!
//! The root ([`resolve_root`]) is found by walking up from the current
//! directory to the nearest `dualwrite.toml` or workspace `Cargo.toml`, so
//! the lint works the same from any subdirectory.

use std::collections::{HashSet, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;
use ignore::WalkBuilder;

use crate::error::DriverError;
use crate::intake::Unchecked;

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

/// A path the walk could not check (reported as DW000 at the `unchecked`
/// level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkNotice {
    /// The path, relative to the root (`.` for the root itself).
    pub rel: String,
    /// Why.
    pub kind: crate::intake::Unchecked,
    /// Why, for people.
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
/// The root is `root` when given (every path must lie inside it). Else the
/// search starts at the current directory when it contains every path,
/// else at the deepest directory containing them all, and walks up to the
/// nearest directory with a `dualwrite.toml` or a `Cargo.toml` with a
/// `[workspace]` table (else the nearest `Cargo.toml`), not past the top
/// of a git repository; that directory is the root when it contains every
/// path, else the start is.
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
    let start = if canonical.iter().all(|p| p.starts_with(&cwd)) {
        cwd
    } else {
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
        common
    };
    let root = discover_root(&start)
        .filter(|found| canonical.iter().all(|p| p.starts_with(found)))
        .unwrap_or(start);
    Ok((root, canonical))
}

/// The nearest ancestor of `start` (itself included) holding a
/// `dualwrite.toml` or a workspace `Cargo.toml`, else the nearest holding
/// a `Cargo.toml`; the search stops at the top of a git repository.
pub fn discover_root(start: &Path) -> Option<PathBuf> {
    let mut nearest_manifest = None;
    for dir in start.ancestors() {
        if dir.join("dualwrite.toml").is_file() {
            return Some(dir.to_path_buf());
        }
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file() {
            if is_workspace_manifest(&manifest) {
                return Some(dir.to_path_buf());
            }
            nearest_manifest.get_or_insert_with(|| dir.to_path_buf());
        }
        if dir.join(".git").exists() {
            break;
        }
    }
    nearest_manifest
}

/// Whether a `Cargo.toml` has a `[workspace]` table (one that cannot be
/// read or parsed has not; loading the config reports it if it is used).
fn is_workspace_manifest(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|table| table.contains_key("workspace"))
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
    if parts.is_empty() {
        // The root itself.
        return ".".to_owned();
    }
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
    walk.notices
        .sort_by(|a, b| (&a.rel, a.kind).cmp(&(&b.rel, b.kind)));
    walk.notices
        .dedup_by(|a, b| a.rel == b.rel && a.kind == b.kind);
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

    fn notice(&mut self, path: &Path, kind: crate::intake::Unchecked, reason: String) {
        self.walk.notices.push(WalkNotice {
            rel: relative(&self.options.root, path),
            kind,
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
                    self.walk_error(dir, &error);
                    continue;
                }
            };
            if entry.depth() == 0 {
                continue;
            }
            let path = entry.path();
            if entry.path_is_symlink() {
                self.follow_symlink(path, queue);
            } else if let Some(file_type) = entry.file_type()
                && is_rust(path)
                && !file_type.is_dir()
            {
                if file_type.is_file() {
                    self.add_file(path.to_path_buf());
                } else {
                    self.notice(
                        path,
                        Unchecked::NotAFile,
                        "file not checked: it is not a regular file (a FIFO, socket or device)"
                            .to_owned(),
                    );
                }
            }
        }
    }

    /// An error of the walk: a directory (or an ignore file) it could not
    /// read, reported at the path the error names.
    fn walk_error(&mut self, dir: &Path, error: &ignore::Error) {
        let path = error_path(error).unwrap_or(dir).to_path_buf();
        let cause = error
            .io_error()
            .map_or_else(|| error.to_string(), ToString::to_string);
        let (kind, reason) = if error.io_error().is_some() && !path.is_file() {
            (
                Unchecked::UnreadableDir,
                format!("directory not checked: cannot read it: {cause}"),
            )
        } else {
            (
                Unchecked::WalkError,
                format!("not checked: the walk failed here: {cause}"),
            )
        };
        self.notice(&path, kind, reason);
    }

    fn follow_symlink(&mut self, link: &Path, queue: &mut VecDeque<PathBuf>) {
        // A link to a file that is not Rust source (by its name or its
        // target's) hides no code; one without an extension may be a
        // directory.
        let may_hold_rust = |target: Option<&Path>| {
            is_rust(link)
                || target.is_some_and(is_rust)
                || target.map_or(link.extension().is_none(), Path::is_dir)
        };
        match std::fs::canonicalize(link) {
            Err(error) => {
                if may_hold_rust(None) {
                    self.notice(
                        link,
                        Unchecked::SymlinkBroken,
                        format!("symlink not followed: cannot resolve it ({error})"),
                    );
                }
            }
            Ok(target) if !target.starts_with(&self.options.root) => {
                if may_hold_rust(Some(&target)) {
                    self.notice(
                        link,
                        Unchecked::SymlinkOutside,
                        format!(
                            "symlink not followed: it points outside the root, to {}",
                            target.display()
                        ),
                    );
                }
            }
            Ok(target) if target.is_dir() => {
                let rel = relative(&self.options.root, &target);
                if !self.options.exclude.is_match(&rel) {
                    queue.push_back(target);
                }
            }
            Ok(target) => {
                let rel = relative(&self.options.root, &target);
                if !is_rust(link) || self.options.exclude.is_match(&rel) {
                    return;
                }
                if target.is_file() {
                    self.add_file(target);
                } else {
                    self.notice(
                        link,
                        Unchecked::NotAFile,
                        "file not checked: the symlink points to something that is not a regular file (a FIFO, socket or device)".to_owned(),
                    );
                }
            }
        }
    }
}

/// The path an error of the walk is about.
fn error_path(error: &ignore::Error) -> Option<&Path> {
    match error {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errors) => errors.iter().find_map(error_path),
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
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
