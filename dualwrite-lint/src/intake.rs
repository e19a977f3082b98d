//! Reading one file and deciding whether it can be parsed: not a regular
//! file, unreadable, too large, not UTF-8, empty, or too complex to parse
//! safely ([`crate::nesting`]) are each a reason (DW000), never a silent
//! skip.

use std::io::Read;
use std::path::Path;

use crate::nesting;

/// Why a file is not checked (or, for [`Unchecked::Empty`], has nothing to
/// check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The cause.
    pub kind: Unchecked,
    /// The reason, for people.
    pub message: String,
    /// What to do about it.
    pub help: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Why a path is not checked: one cause per kind, each with its stable tag
/// (the fingerprint's callee, the key of `summary.not_checked_causes`), its
/// label in the summary line (`3 not checked: 1 too large, 2 symlinks
/// outside the root`) and its help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unchecked {
    /// A syntax error (reported as an error whatever `unchecked` says).
    ParseError,
    /// Does not parse, and uses nightly-only syntax.
    NightlySyntax,
    /// Too complex to parse safely (see [`crate::nesting`]).
    TooDeep,
    /// Larger than `max_file_size`.
    TooLarge,
    /// Not UTF-8.
    NotUtf8,
    /// Cannot be opened or read.
    Unreadable,
    /// A directory that cannot be listed.
    UnreadableDir,
    /// A `.rs` name on a FIFO, socket or device.
    NotAFile,
    /// A symlink to a directory or Rust file outside the root.
    SymlinkOutside,
    /// A symlink that cannot be resolved (dangling, a loop).
    SymlinkBroken,
    /// Any other error of the walk.
    WalkError,
    /// The parser panicked.
    Panic,
    /// The file is empty: checked (there is nothing in it), but warned about.
    Empty,
}

impl Unchecked {
    /// The stable tag.
    pub fn tag(self) -> &'static str {
        match self {
            Self::ParseError => "parse-error",
            Self::NightlySyntax => "nightly-syntax",
            Self::TooDeep => "too-deep",
            Self::TooLarge => "too-large",
            Self::NotUtf8 => "not-utf8",
            Self::Unreadable => "unreadable",
            Self::UnreadableDir => "unreadable-dir",
            Self::NotAFile => "not-a-file",
            Self::SymlinkOutside => "symlink-outside-root",
            Self::SymlinkBroken => "symlink-broken",
            Self::WalkError => "walk-error",
            Self::Panic => "panic",
            Self::Empty => "empty",
        }
    }

    /// The label in the summary line.
    pub fn label(self) -> &'static str {
        match self {
            Self::ParseError => "parse error",
            Self::NightlySyntax => "nightly-only syntax",
            Self::TooDeep => "too complex to parse safely",
            Self::TooLarge => "too large",
            Self::NotUtf8 => "not UTF-8",
            Self::Unreadable => "unreadable",
            Self::UnreadableDir => "unreadable directory",
            Self::NotAFile => "not a regular file",
            Self::SymlinkOutside => "symlink outside the root",
            Self::SymlinkBroken => "broken symlink",
            Self::WalkError => "walk error",
            Self::Panic => "internal error",
            Self::Empty => "empty file",
        }
    }

    /// The label on the finding's location.
    pub fn finding_label(self) -> &'static str {
        match self {
            Self::ParseError => "cannot parse",
            Self::TooDeep => "too complex to parse",
            other => other.label(),
        }
    }

    /// Whether findings of this kind say a path was not checked (all but
    /// [`Unchecked::Empty`]).
    pub fn is_unchecked(self) -> bool {
        self != Self::Empty
    }

    /// The help of a finding of this kind (the too-deep help depends on
    /// the cause and comes with the rejection).
    pub fn help(self) -> &'static str {
        match self {
            Self::ParseError => {
                "Fix the syntax error (rustc rejects it too); if the file is not meant to be Rust source, exclude it in dualwrite.toml."
            }
            Self::NightlySyntax => {
                "The parser reads stable Rust only: keep nightly-only syntax in files excluded in dualwrite.toml (`exclude = [\"path/**\"]`), or write the code in stable Rust."
            }
            Self::TooDeep => {
                "Move the inner parts of the expression into `let` bindings or helper functions; if the file is generated, exclude it in dualwrite.toml."
            }
            Self::TooLarge => {
                "Raise `max_file_size` in dualwrite.toml, or exclude the file if it is generated."
            }
            Self::NotUtf8 => {
                "Save the file as UTF-8 (Rust source must be), or exclude it in dualwrite.toml."
            }
            Self::Unreadable => {
                "Make the file readable by the user running the lint (check its permissions), or exclude it in dualwrite.toml."
            }
            Self::UnreadableDir => {
                "Make the directory readable and listable by the user running the lint, or exclude it in dualwrite.toml."
            }
            Self::NotAFile => {
                "Only regular files are read: remove it or rename it, or exclude it in dualwrite.toml."
            }
            Self::SymlinkOutside => {
                "Check the target too: run from (or pass `--root`) a directory that contains both; or exclude the link in dualwrite.toml if its code is checked elsewhere."
            }
            Self::SymlinkBroken => {
                "Fix or remove the dangling link (or the link loop), or exclude it in dualwrite.toml."
            }
            Self::Panic => {
                "This is a bug in dualwrite-lint: please report it with the file. Exclude the file in dualwrite.toml meanwhile."
            }
            Self::Empty => {
                "Delete the empty file, or give it content: there is nothing in it to check."
            }
            Self::WalkError => {
                "Fix what the message names so the walk can read the path, or exclude it in dualwrite.toml."
            }
        }
    }
}

impl Rejection {
    fn at_start(kind: Unchecked, message: String) -> Self {
        Rejection {
            kind,
            message,
            help: kind.help().to_owned(),
            line: 1,
            column: 1,
        }
    }
}

/// Reads `path` as Rust source text that is safe to parse.
pub fn read_source(path: &Path, max_size: u64, max_nesting: usize) -> Result<String, Rejection> {
    let text = read_text(path, max_size)?;
    if let Some(rejection) = too_complex(&text, max_nesting) {
        return Err(rejection);
    }
    Ok(text)
}

/// The first checks of [`read_source`]: a regular file, readable, within
/// `max_size`, UTF-8 and not empty (nesting is not checked).
pub fn read_text(path: &Path, max_size: u64) -> Result<String, Rejection> {
    let unreadable = |error: std::io::Error| {
        Rejection::at_start(
            Unchecked::Unreadable,
            format!("file not checked: cannot read it: {error}"),
        )
    };
    // Opening a FIFO would block; a device could be endless.
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(Rejection::at_start(
            Unchecked::NotAFile,
            format!(
                "file not checked: it is not a regular file but {}",
                file_type_name(&metadata.file_type())
            ),
        ));
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > max_size {
        return Err(Rejection::at_start(
            Unchecked::TooLarge,
            format!("file not checked: {size} bytes is more than max_file_size ({max_size} bytes)"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // Read at most one byte past the limit: the file may grow meanwhile.
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_size {
        return Err(Rejection::at_start(
            Unchecked::TooLarge,
            format!("file not checked: it is larger than max_file_size ({max_size} bytes)"),
        ));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let valid = error.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&error.as_bytes()[..valid]);
            let (line, column) = end_position(&prefix);
            return Err(Rejection {
                line,
                column,
                ..Rejection::at_start(
                    Unchecked::NotUtf8,
                    format!(
                        "file not checked: it is not valid UTF-8 (invalid byte at offset {valid})"
                    ),
                )
            });
        }
    };
    if text.trim().is_empty() {
        return Err(Rejection::at_start(
            Unchecked::Empty,
            "the file is empty".to_owned(),
        ));
    }
    Ok(text)
}

/// `a FIFO`, `a socket`...
fn file_type_name(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// 1-based line and column just past the end of `text`.
fn end_position(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count() + 1;
    let last = text.rfind('\n').map_or(text, |i| &text[i + 1..]);
    (line, last.chars().count() + 1)
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let bytes = text.as_bytes();
    let line_start = memchr::memrchr(b'\n', &bytes[..offset]).map_or(0, |p| p + 1);
    let line = memchr::memchr_iter(b'\n', &bytes[..line_start]).count() + 1;
    (line, text[line_start..offset].chars().count() + 1)
}

/// The rejection of a text too complex to parse safely (see
/// [`crate::nesting`]), pointing at its deepest point.
pub fn too_complex(text: &str, max_nesting: usize) -> Option<Rejection> {
    let error = nesting::check(text, max_nesting).err()?;
    let (line, column) = line_column(text, error.offset);
    Some(Rejection {
        kind: Unchecked::TooDeep,
        message: format!(
            "file not checked: too complex to parse safely: {}",
            error.reason()
        ),
        help: error.help(),
        line,
        column,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_point_at_the_line_and_column() {
        // An escaped newline in a string and a block comment on the way.
        let text = "let s = \"a\\\nb\";\n/* x\n y */ f((((1))));";
        let rejection = too_complex(text, 3).expect("too deep");
        assert_eq!((rejection.line, rejection.column), (4, 11));
        assert_eq!(
            rejection.message,
            "file not checked: too complex to parse safely: brackets nested deeper than 3 levels"
        );
        assert!(rejection.help.contains("max_nesting"), "{}", rejection.help);
    }

    #[test]
    fn ignores_brackets_in_strings_comments_and_chars() {
        let text =
            "fn f() { let a = \"((((\"; let b = '('; let c = r#\"{{{\"#; // (((\n /* [[[ */ }";
        assert!(too_complex(text, 2).is_none());
        assert!(too_complex("fn f<'a>(x: &'a u8) { g((((1)))) }", 3).is_some());
    }

    #[test]
    fn line_columns_count_characters() {
        let text = "é\nab€c\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, text.find('c').unwrap()), (2, 4));
        // Inside a character: its start.
        assert_eq!(line_column(text, 1), (1, 1));
        assert_eq!(line_column(text, 100), (3, 1));
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_not_opened() {
        let dir = std::env::temp_dir().join(format!("dualwrite-lint-fifo-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let fifo = dir.join("pipe.rs");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let rejection = read_text(&fifo, 1 << 20).unwrap_err();
            assert_eq!(rejection.kind, Unchecked::NotAFile);
            assert!(rejection.message.contains("FIFO"), "{}", rejection.message);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
