//! Reading one file and deciding whether it can be parsed: too large, not
//! UTF-8, empty, or nested deeper than the parser can take are each a
//! reason (DW000), never a silent skip.

use std::io::Read;
use std::path::Path;

use crate::finding::Severity;

/// Why a file is not parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A stable tag for the fingerprint: `too-large`, `not-utf8`, `empty`,
    /// `too-deep`, `unreadable`, `parse-error`, `panic`.
    pub kind: &'static str,
    /// The reason, for people.
    pub message: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// How serious it is.
    pub severity: Severity,
}

impl Rejection {
    fn at_start(kind: &'static str, message: String, severity: Severity) -> Self {
        Rejection {
            kind,
            message,
            line: 1,
            column: 1,
            severity,
        }
    }
}

/// Reads `path` as Rust source text.
pub fn read_source(path: &Path, max_size: u64, max_nesting: usize) -> Result<String, Rejection> {
    let text = read_text(path, max_size)?;
    if let Some(deep) = too_deep(&text, max_nesting) {
        return Err(deep);
    }
    Ok(text)
}

/// The first checks of [`read_source`]: readable, within `max_size`, UTF-8
/// and not empty (nesting is not checked).
pub fn read_text(path: &Path, max_size: u64) -> Result<String, Rejection> {
    let unreadable = |error: std::io::Error| {
        Rejection::at_start(
            "unreadable",
            format!("cannot read the file: {error}"),
            Severity::Error,
        )
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    if size > max_size {
        return Err(Rejection::at_start(
            "too-large",
            format!("file not checked: {size} bytes is more than max_file_size ({max_size} bytes)"),
            Severity::Error,
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // Read at most one byte past the limit: the file may grow meanwhile.
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max_size {
        return Err(Rejection::at_start(
            "too-large",
            format!("file not checked: it is larger than max_file_size ({max_size} bytes)"),
            Severity::Error,
        ));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let valid = error.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&error.as_bytes()[..valid]);
            let (line, column) = end_position(&prefix);
            return Err(Rejection {
                kind: "not-utf8",
                message: format!(
                    "file not checked: it is not valid UTF-8 (invalid byte at offset {valid})"
                ),
                line,
                column,
                severity: Severity::Error,
            });
        }
    };
    if text.trim().is_empty() {
        return Err(Rejection::at_start(
            "empty",
            "file not checked: it is empty".to_owned(),
            Severity::Warning,
        ));
    }
    Ok(text)
}

/// 1-based line and column just past the end of `text`.
fn end_position(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count() + 1;
    let last = text.rfind('\n').map_or(text, |i| &text[i + 1..]);
    (line, last.chars().count() + 1)
}

/// Finds nesting the parser would have to recurse through too deeply:
/// brackets deeper than `limit` (outside comments, strings and character
/// literals), generic angle brackets deeper than `limit`, a run of prefix
/// operators longer than `limit` (`!!!!x`, `&&&&x`), or more than
/// `8 * limit` words and prefix operators without a separator (`;`, `,` or
/// a bracket), which is how closures (`|x| |y| ..`), `return return ..`
/// and other bracket-free forms nest. Binary operators, `|` and literals
/// are not counted, so long or-patterns and operator chains (which syn
/// parses in a loop) pass.
///
/// syn parses recursively; checking first keeps a hostile or generated file
/// from overflowing the stack, which no `catch_unwind` can catch.
pub fn too_deep(text: &str, limit: usize) -> Option<Rejection> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut prefix_run = 0usize;
    let mut angle = 0usize;
    let mut segment = 0usize;
    let segment_limit = limit.saturating_mul(8);
    let mut i = 0;
    // Lines and columns are counted only for the rejection.
    let reject = |what: &str, at: usize| {
        let line_start = memchr::memrchr(b'\n', &bytes[..at]).map_or(0, |p| p + 1);
        let line = memchr::memchr_iter(b'\n', &bytes[..line_start]).count() + 1;
        let column = text[line_start..at].chars().count() + 1;
        let why = if what == "tokens" {
            format!(
                "more than {segment_limit} words without `;`, `,` or a bracket (deeply nested expressions or types)"
            )
        } else {
            format!("{what} nested deeper than {limit} levels")
        };
        Some(Rejection {
            kind: "too-deep",
            message: format!("file not checked: {why}"),
            line,
            column,
            severity: Severity::Error,
        })
    };
    while i < bytes.len() {
        let b = bytes[i];
        // Most bytes change no state: blanks, and identifier characters
        // after the first (except `r`, which may start a raw string).
        if BLANK[usize::from(b)] || b == b'\n' {
            i += 1;
            continue;
        }
        if IDENT_NOT_R[usize::from(b)] && i > 0 && IDENT[usize::from(bytes[i - 1])] {
            i += 1;
            while i < bytes.len() && IDENT_NOT_R[usize::from(bytes[i])] {
                i += 1;
            }
            continue;
        }
        match b {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |p| i + p);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut comment_depth = 0usize;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        comment_depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        comment_depth -= 1;
                        i += 2;
                        if comment_depth == 0 {
                            break;
                        }
                    } else {
                        // To the next `*` or `/`.
                        i = memchr::memchr2(b'*', b'/', &bytes[i + 1..])
                            .map_or(bytes.len(), |p| i + 1 + p);
                    }
                }
                continue;
            }
            b'r' if is_raw_string_start(bytes, i) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                j += 1; // the opening quote
                loop {
                    let Some(quote) = bytes.get(j..).and_then(|rest| memchr::memchr(b'"', rest))
                    else {
                        j = bytes.len();
                        break;
                    };
                    j += quote;
                    if bytes[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == b'#')
                        .count()
                        == hashes
                    {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                i = j;
                prefix_run = 0;
                continue;
            }
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() {
                    match memchr::memchr2(b'"', b'\\', &bytes[j..]) {
                        None => j = bytes.len(),
                        Some(p) if bytes[j + p] == b'\\' => j += p + 2,
                        Some(p) => {
                            j += p;
                            break;
                        }
                    }
                }
                i = j + 1;
                prefix_run = 0;
                continue;
            }
            b'\'' => {
                // A character literal (`'('`, `'\''`) rather than a lifetime.
                if bytes.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < bytes.len() && bytes[j] != b'\'' && bytes[j] != b'\n' {
                        j += 1;
                    }
                    i = j + 1;
                    continue;
                }
                let next_len = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                if next_len > 0 && bytes.get(i + 1 + next_len) == Some(&b'\'') {
                    i += 2 + next_len;
                    continue;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return reject("brackets", i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            // `Vec<Vec<..>>`: an angle bracket right after a name or `::`.
            b'<' if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || matches!(bytes[i - 1], b'_' | b':')) =>
            {
                angle += 1;
                if angle > limit {
                    return reject("generic arguments", i);
                }
            }
            b'>' if i > 0 && !matches!(bytes[i - 1], b'-' | b'=') => {
                angle = angle.saturating_sub(1)
            }
            _ => {}
        }
        if matches!(b, b';' | b'{' | b'}') {
            angle = 0;
        }
        if matches!(b, b';' | b',' | b'(' | b')' | b'[' | b']' | b'{' | b'}') {
            segment = 0;
        } else if matches!(b, b'!' | b'-' | b'*' | b'&')
            || (b.is_ascii_alphanumeric() || b == b'_')
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            segment += 1;
            if segment > segment_limit {
                return reject("tokens", i);
            }
        }
        if matches!(b, b'!' | b'-' | b'*' | b'&') {
            prefix_run += 1;
            if prefix_run > limit {
                return reject("prefix operators", i);
            }
        } else if !b.is_ascii_whitespace() {
            prefix_run = 0;
        }
        i += 1;
    }
    None
}

/// The byte classes [`too_deep`] looks up.
#[derive(Clone, Copy)]
enum ByteClass {
    /// Whitespace other than a newline (as `u8::is_ascii_whitespace`).
    Blank,
    /// ASCII identifier characters.
    Ident,
    /// ASCII identifier characters other than `r`.
    IdentNotR,
}

const fn byte_table(class: ByteClass) -> [bool; 256] {
    let mut table = [false; 256];
    let mut index = 0;
    while index < 256 {
        let b = index as u8;
        let ident = b.is_ascii_alphanumeric() || b == b'_';
        table[index] = match class {
            ByteClass::Blank => matches!(b, b' ' | b'\t' | b'\r' | 0x0c),
            ByteClass::Ident => ident,
            ByteClass::IdentNotR => ident && b != b'r',
        };
        index += 1;
    }
    table
}

static BLANK: [bool; 256] = byte_table(ByteClass::Blank);
static IDENT: [bool; 256] = byte_table(ByteClass::Ident);
static IDENT_NOT_R: [bool; 256] = byte_table(ByteClass::IdentNotR);

/// `r"`, `r#"`, `br"`... but not an identifier ending in `r`.
fn is_raw_string_start(bytes: &[u8], i: usize) -> bool {
    let before = i.checked_sub(1).map(|p| bytes[p]);
    let ident_before = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    let byte_prefix = before == Some(b'b') || before == Some(b'c');
    let starts_ident = !ident_before
        || (byte_prefix
            && i.checked_sub(2)
                .map(|p| bytes[p])
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == b'_')));
    if !starts_ident {
        return false;
    }
    let mut j = i + 1;
    while bytes.get(j) == Some(&b'#') {
        j += 1;
    }
    bytes.get(j) == Some(&b'"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_point_at_the_line_and_column() {
        // An escaped newline in a string and a block comment on the way.
        let text = "let s = \"a\\\nb\";\n/* x\n y */ f((((1))));";
        let rejection = too_deep(text, 3).expect("too deep");
        assert_eq!((rejection.line, rejection.column), (4, 11));
        assert_eq!(
            rejection.message,
            "file not checked: brackets nested deeper than 3 levels"
        );
    }

    #[test]
    fn ignores_brackets_in_strings_comments_and_chars() {
        let text =
            "fn f() { let a = \"((((\"; let b = '('; let c = r#\"{{{\"#; // (((\n /* [[[ */ }";
        assert!(too_deep(text, 2).is_none());
        assert!(too_deep("fn f<'a>(x: &'a u8) { g((((1)))) }", 3).is_some());
    }

    #[test]
    fn finds_deep_nesting_and_operator_runs() {
        let deep = format!("fn f() {{ {}1{} }}", "(".repeat(300), ")".repeat(300));
        let found = too_deep(&deep, 256).unwrap();
        assert_eq!((found.line, found.column), (1, 265));
        assert!(too_deep(&format!("fn f() {{ {}x }}", "!".repeat(300)), 256).is_some());
        assert!(too_deep("fn f() { a && !b || -c * *d }", 256).is_none());
        let generic = format!("type T = {}u8{};", "Vec<".repeat(300), ">".repeat(300));
        assert!(too_deep(&generic, 256).is_some());
        let generic = format!("type T = {}u8{};", "Vec<".repeat(200), ">".repeat(200));
        assert!(too_deep(&generic, 256).is_none());
        let closures = format!("fn f() {{ let c = {}1; }}", "|x| ".repeat(3000));
        assert!(too_deep(&closures, 256).is_some());
        assert!(too_deep("fn f() -> Vec<u8> { if a<b && c>=d { x => y } }", 2).is_none());
        // A long or-pattern of literals (unicode tables) is not deep.
        let table = format!(
            "fn t(c: char) -> bool {{ matches!(c, 'a'..='b'{}) }}",
            " | '\\u{16100}'..='\\u{16139}'".repeat(5000)
        );
        assert!(too_deep(&table, 256).is_none());
    }
}
