//! The lint's one Rust lexer, shared by the nesting pre-check
//! ([`crate::nesting`]) and the suppression scanner ([`crate::suppress`]).
//!
//! It splits source text into tokens the way `rustc` does, closely enough
//! to know what is code and what is not: comments (line and nested block,
//! doc or not), string literals (plain, byte, C, raw with any number of
//! `#`), character and byte literals versus lifetimes, numbers, identifiers
//! (raw ones too), brackets and punctuation, with multi-character
//! operators glued (`&&`, `||`, `->`, `>>=`...). It works on any text,
//! including text that is not valid Rust: an unterminated string or comment
//! runs to the end, a stray character becomes an [`Kind::Unknown`] token,
//! and nothing panics. It allocates nothing.

/// The nightly-only syntax `text` uses, if any: what to name in the message
/// of a file that does not parse (syn parses stable Rust only).
pub fn nightly_syntax(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    let mut prev: &[u8] = b"";
    let tokens = Lexer::new(text)
        .filter(|t| !matches!(t.kind, Kind::LineComment { .. } | Kind::BlockComment { .. }));
    for token in tokens {
        let word = &bytes[token.start..token.end];
        let found = match (prev, word) {
            (b"try", b"{") => Some("`try` blocks"),
            (b"do", b"yeet") => Some("`do yeet` expressions"),
            (b"gen", b"{") | (b"gen", b"move") => Some("`gen` blocks"),
            (b"yield", _) if token.kind != Kind::Punct(Punct::Not) => Some("`yield` (coroutines)"),
            (b"box", _) if matches!(token.kind, Kind::Ident | Kind::Literal | Kind::Open(_)) => {
                Some("`box` patterns or expressions")
            }
            (b"k", b"#") => Some("`k#` keywords"),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
        prev = if token.kind == Kind::Ident || word == b"{" || word == b"#" {
            word
        } else {
            b""
        };
    }
    None
}

/// A bracket kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delim {
    /// `(` `)`
    Paren,
    /// `[` `]`
    Bracket,
    /// `{` `}`
    Brace,
}

/// Punctuation, multi-character operators glued as the parser reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Punct {
    Semi,
    Comma,
    Dot,
    DotDot,
    DotDotDot,
    DotDotEq,
    Colon,
    PathSep,
    RArrow,
    FatArrow,
    Pound,
    Dollar,
    Question,
    Tilde,
    At,
    Eq,
    EqEq,
    Ne,
    Lt,
    Le,
    Shl,
    ShlEq,
    Gt,
    Ge,
    Shr,
    ShrEq,
    Not,
    Plus,
    PlusEq,
    Minus,
    MinusEq,
    Star,
    StarEq,
    Slash,
    SlashEq,
    Percent,
    PercentEq,
    Caret,
    CaretEq,
    And,
    AndAnd,
    AndEq,
    Or,
    OrOr,
    OrEq,
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An identifier or keyword (`r#raw` included; see [`keyword`]).
    Ident,
    /// `'a`, `'static`, `'_`.
    Lifetime,
    /// A number, string, byte string, C string, character or byte
    /// literal, with its suffix.
    Literal,
    /// An opening bracket.
    Open(Delim),
    /// A closing bracket.
    Close(Delim),
    /// Punctuation.
    Punct(Punct),
    /// `// ...` to the end of the line (not including the newline);
    /// `doc` for `///` (not `////`) and `//!`.
    LineComment {
        /// A doc comment.
        doc: bool,
    },
    /// `/* ... */`, nested; `doc` for `/** */` (not `/***` or `/**/`) and `/*! */`.
    BlockComment {
        /// A doc comment.
        doc: bool,
    },
    /// A character that starts no token (`\`, `€`...), or a lone `'`.
    Unknown,
}

/// A token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// First byte.
    pub start: usize,
    /// Just past the last byte.
    pub end: usize,
}

/// The keywords the pre-check tells apart (others are [`Keyword::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Keyword {
    As,
    Async,
    Become,
    Box,
    Break,
    Const,
    Dyn,
    Else,
    Extern,
    For,
    If,
    Impl,
    Match,
    Move,
    Mut,
    Raw,
    Ref,
    Return,
    Static,
    Unsafe,
    While,
    Yield,
    /// `self`, `Self`, `super`, `crate`, `true`, `false`, `await`: they
    /// end an operand like any name.
    Value,
    /// Every other keyword (`fn`, `let`, `in`, `where`, `struct`...).
    Other,
}

/// The keyword an identifier's text is, if any (`r#` identifiers never are).
pub fn keyword(text: &[u8]) -> Option<Keyword> {
    // Every keyword is 2 to 8 lowercase ASCII letters, or `Self`.
    if text.len() < 2 || text.len() > 8 || !(text[0].is_ascii_lowercase() || text[0] == b'S') {
        return None;
    }
    Some(match text {
        b"as" => Keyword::As,
        b"async" => Keyword::Async,
        b"become" => Keyword::Become,
        b"box" => Keyword::Box,
        b"break" => Keyword::Break,
        b"const" => Keyword::Const,
        b"dyn" => Keyword::Dyn,
        b"else" => Keyword::Else,
        b"extern" => Keyword::Extern,
        b"for" => Keyword::For,
        b"if" => Keyword::If,
        b"impl" => Keyword::Impl,
        b"match" => Keyword::Match,
        b"move" => Keyword::Move,
        b"mut" => Keyword::Mut,
        b"raw" => Keyword::Raw,
        b"ref" => Keyword::Ref,
        b"return" => Keyword::Return,
        b"static" => Keyword::Static,
        b"unsafe" => Keyword::Unsafe,
        b"while" => Keyword::While,
        b"yield" => Keyword::Yield,
        b"self" | b"Self" | b"super" | b"crate" | b"true" | b"false" | b"await" => Keyword::Value,
        b"abstract" | b"continue" | b"default" | b"do" | b"enum" | b"final" | b"fn" | b"gen"
        | b"in" | b"let" | b"loop" | b"macro" | b"mod" | b"override" | b"priv" | b"pub"
        | b"struct" | b"trait" | b"try" | b"type" | b"typeof" | b"union" | b"unsized" | b"use"
        | b"virtual" | b"where" => Keyword::Other,
        _ => return None,
    })
}

/// Byte classes, looked up per byte.
const WS: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const DIGIT: u8 = 8;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= WS;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            class |= IDENT_START | IDENT_CONT;
        }
        if b.is_ascii_digit() {
            class |= IDENT_CONT | DIGIT;
        }
        table[i] = class;
        i += 1;
    }
    table
};

fn is(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// The tokens of a text, in order. Whitespace is skipped; comments are
/// tokens. A byte-order mark and a `#!` shebang line at the start are
/// skipped, as `rustc` does.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over `text`.
    pub fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut pos = 0;
        if text.starts_with('\u{feff}') {
            pos = 3;
        }
        // `#!/usr/bin/env ...` but not `#![attribute]` (even with blanks
        // or comments between `#!` and `[`, which are rare enough to keep
        // the check to blanks).
        if bytes[pos..].starts_with(b"#!") {
            let after = bytes[pos + 2..]
                .iter()
                .position(|b| !is(*b, WS))
                .map(|p| bytes[pos + 2 + p]);
            if after != Some(b'[') {
                pos = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |p| pos + p);
            }
        }
        Lexer { text, bytes, pos }
    }

    /// The character at byte `at` (which must be a character boundary) and
    /// its length.
    fn char_at(&self, at: usize) -> Option<(char, usize)> {
        let c = self.text.get(at..)?.chars().next()?;
        Some((c, c.len_utf8()))
    }

    /// Skips identifier-continue characters from `at`; returns the end.
    fn ident_end(&self, mut at: usize) -> usize {
        loop {
            match self.bytes.get(at) {
                Some(&b) if b < 0x80 && is(b, IDENT_CONT) => at += 1,
                Some(&b) if b < 0x80 => return at,
                Some(_) => match self.char_at(at) {
                    Some((c, len)) if c.is_alphanumeric() => at += len,
                    _ => return at,
                },
                None => return at,
            }
        }
    }

    /// Just past the closing `"` of a string whose body starts at `at`
    /// (escapes honoured); the end of the text if unterminated.
    fn string_end(&self, mut at: usize) -> usize {
        loop {
            match memchr::memchr2(b'"', b'\\', self.bytes.get(at..).unwrap_or(&[])) {
                None => return self.bytes.len(),
                Some(p) if self.bytes[at + p] == b'\\' => at += p + 2,
                Some(p) => return at + p + 1,
            }
        }
    }

    /// At `at`: `#`* then `"`, the start of a raw string's body. Returns
    /// the number of `#` if so.
    fn raw_string_hashes(&self, at: usize) -> Option<usize> {
        let hashes = self
            .bytes
            .get(at..)?
            .iter()
            .take_while(|b| **b == b'#')
            .count();
        (self.bytes.get(at + hashes) == Some(&b'"')).then_some(hashes)
    }

    /// Just past a raw string whose body starts at `at` and ends with `"`
    /// and `hashes` `#`; the end of the text if unterminated.
    fn raw_string_end(&self, mut at: usize, hashes: usize) -> usize {
        loop {
            let Some(p) = memchr::memchr(b'"', self.bytes.get(at..).unwrap_or(&[])) else {
                return self.bytes.len();
            };
            let quote = at + p;
            let closing = self
                .bytes
                .get(quote + 1..quote + 1 + hashes)
                .is_some_and(|h| h.iter().all(|b| *b == b'#'));
            if closing {
                return quote + 1 + hashes;
            }
            at = quote + 1;
        }
    }

    /// Just past a character or byte literal whose opening `'` is at
    /// `quote`, if there is one there (else a lifetime or a lone `'`).
    fn char_literal_end(&self, quote: usize) -> Option<usize> {
        let body = quote + 1;
        match self.bytes.get(body)? {
            b'\\' => {
                // An escape: to the closing quote, on this line.
                let mut at = body + 2;
                while let Some(&b) = self.bytes.get(at) {
                    match b {
                        b'\'' => return Some(at + 1),
                        b'\n' => return Some(at),
                        _ => at += 1,
                    }
                }
                Some(self.bytes.len())
            }
            b'\n' => None,
            _ => {
                let (_, len) = self.char_at(body)?;
                (self.bytes.get(body + len) == Some(&b'\'')).then_some(body + len + 1)
            }
        }
    }

    /// The end of a number starting at `at` (a digit).
    fn number_end(&self, at: usize) -> usize {
        let hex =
            self.bytes.get(at..at + 2) == Some(b"0x") || self.bytes.get(at..at + 2) == Some(b"0X");
        let mut end = self.ident_end(at);
        // A fraction: `1.5`, not `1..2` nor `1.max(2)`.
        if self.bytes.get(end) == Some(&b'.')
            && self.bytes.get(end + 1).is_some_and(|b| is(*b, DIGIT))
        {
            end = self.ident_end(end + 1);
        } else if self.bytes.get(end) == Some(&b'.')
            && !self
                .bytes
                .get(end + 1)
                .is_some_and(|b| *b == b'.' || is(*b, IDENT_START) || *b >= 0x80)
        {
            // `1.` is a float.
            return end + 1;
        }
        // An exponent's sign: `1e-5`, `2.5E+3`.
        if !hex
            && matches!(self.bytes.get(end - 1), Some(b'e' | b'E'))
            && matches!(self.bytes.get(end), Some(b'+' | b'-'))
            && self.bytes.get(end + 1).is_some_and(|b| is(*b, DIGIT))
        {
            end = self.ident_end(end + 1);
        }
        end
    }

    /// The end of a block comment starting at `at` (its `/*`).
    fn block_comment_end(&self, mut at: usize) -> usize {
        let mut depth = 0usize;
        let bytes = self.bytes;
        while at < bytes.len() {
            match memchr::memchr2(b'*', b'/', &bytes[at..]) {
                None => return bytes.len(),
                Some(p) => at += p,
            }
            if bytes[at] == b'/' && bytes.get(at + 1) == Some(&b'*') {
                depth += 1;
                at += 2;
            } else if bytes[at] == b'*' && bytes.get(at + 1) == Some(&b'/') {
                depth = depth.saturating_sub(1);
                at += 2;
                if depth == 0 {
                    return at;
                }
            } else {
                at += 1;
            }
        }
        bytes.len()
    }

    /// Punctuation at `at`: the operator and its length (longest match).
    fn punct(&self, at: usize) -> Option<(Punct, usize)> {
        let b = |i: usize| self.bytes.get(at + i).copied().unwrap_or(0);
        let (first, second, third) = (b(0), b(1), b(2));
        use Punct::*;
        Some(match (first, second, third) {
            (b'.', b'.', b'.') => (DotDotDot, 3),
            (b'.', b'.', b'=') => (DotDotEq, 3),
            (b'<', b'<', b'=') => (ShlEq, 3),
            (b'>', b'>', b'=') => (ShrEq, 3),
            (b'.', b'.', _) => (DotDot, 2),
            (b':', b':', _) => (PathSep, 2),
            (b'-', b'>', _) => (RArrow, 2),
            (b'=', b'>', _) => (FatArrow, 2),
            (b'=', b'=', _) => (EqEq, 2),
            (b'!', b'=', _) => (Ne, 2),
            (b'<', b'=', _) => (Le, 2),
            (b'>', b'=', _) => (Ge, 2),
            (b'<', b'<', _) => (Shl, 2),
            (b'>', b'>', _) => (Shr, 2),
            (b'&', b'&', _) => (AndAnd, 2),
            (b'|', b'|', _) => (OrOr, 2),
            (b'+', b'=', _) => (PlusEq, 2),
            (b'-', b'=', _) => (MinusEq, 2),
            (b'*', b'=', _) => (StarEq, 2),
            (b'/', b'=', _) => (SlashEq, 2),
            (b'%', b'=', _) => (PercentEq, 2),
            (b'^', b'=', _) => (CaretEq, 2),
            (b'&', b'=', _) => (AndEq, 2),
            (b'|', b'=', _) => (OrEq, 2),
            (b';', _, _) => (Semi, 1),
            (b',', _, _) => (Comma, 1),
            (b'.', _, _) => (Dot, 1),
            (b':', _, _) => (Colon, 1),
            (b'#', _, _) => (Pound, 1),
            (b'$', _, _) => (Dollar, 1),
            (b'?', _, _) => (Question, 1),
            (b'~', _, _) => (Tilde, 1),
            (b'@', _, _) => (At, 1),
            (b'=', _, _) => (Eq, 1),
            (b'<', _, _) => (Lt, 1),
            (b'>', _, _) => (Gt, 1),
            (b'!', _, _) => (Not, 1),
            (b'+', _, _) => (Plus, 1),
            (b'-', _, _) => (Minus, 1),
            (b'*', _, _) => (Star, 1),
            (b'/', _, _) => (Slash, 1),
            (b'%', _, _) => (Percent, 1),
            (b'^', _, _) => (Caret, 1),
            (b'&', _, _) => (And, 1),
            (b'|', _, _) => (Or, 1),
            _ => return None,
        })
    }

    /// The token starting at `start` (not whitespace): its kind and end.
    fn token_at(&self, start: usize) -> (Kind, usize) {
        let bytes = self.bytes;
        let b = bytes[start];
        let next = bytes.get(start + 1).copied();
        match b {
            b'/' if next == Some(b'/') => {
                let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |p| start + p);
                let third = bytes.get(start + 2).copied();
                let doc = (third == Some(b'/') && bytes.get(start + 3) != Some(&b'/'))
                    || third == Some(b'!');
                (Kind::LineComment { doc }, end)
            }
            b'/' if next == Some(b'*') => {
                let end = self.block_comment_end(start);
                let third = bytes.get(start + 2).copied();
                let doc = (third == Some(b'*')
                    && !matches!(bytes.get(start + 3), Some(b'*' | b'/')))
                    || third == Some(b'!');
                (Kind::BlockComment { doc }, end)
            }
            b'"' => (Kind::Literal, self.ident_end(self.string_end(start + 1))),
            b'\'' => match self.char_literal_end(start) {
                Some(end) => (Kind::Literal, self.ident_end(end)),
                None => {
                    // A lifetime (`'a`, `'r#a`) or a lone quote.
                    let mut at = start + 1;
                    if bytes.get(at..at + 2) == Some(b"r#") {
                        at += 2;
                    }
                    let starts_ident = match bytes.get(at) {
                        Some(&c) if c < 0x80 => is(c, IDENT_START),
                        Some(_) => self.char_at(at).is_some_and(|(c, _)| c.is_alphabetic()),
                        None => false,
                    };
                    if starts_ident {
                        (Kind::Lifetime, self.ident_end(at))
                    } else {
                        (Kind::Unknown, start + 1)
                    }
                }
            },
            b'0'..=b'9' => (Kind::Literal, self.number_end(start)),
            b'(' => (Kind::Open(Delim::Paren), start + 1),
            b'[' => (Kind::Open(Delim::Bracket), start + 1),
            b'{' => (Kind::Open(Delim::Brace), start + 1),
            b')' => (Kind::Close(Delim::Paren), start + 1),
            b']' => (Kind::Close(Delim::Bracket), start + 1),
            b'}' => (Kind::Close(Delim::Brace), start + 1),
            _ if is(b, IDENT_START) => self.word_or_prefixed_literal(start),
            _ if b >= 0x80 => match self.char_at(start) {
                Some((c, len)) if c.is_alphabetic() => (Kind::Ident, self.ident_end(start + len)),
                Some((_, len)) => (Kind::Unknown, start + len),
                None => (Kind::Unknown, start + 1),
            },
            _ => match self.punct(start) {
                Some((punct, len)) => (Kind::Punct(punct), start + len),
                None => (Kind::Unknown, start + 1),
            },
        }
    }

    /// An identifier, or a literal with a prefix (`b"..."`, `r#"..."#`,
    /// `c"..."`, `b'x'`), or a raw identifier (`r#type`).
    fn word_or_prefixed_literal(&self, start: usize) -> (Kind, usize) {
        let bytes = self.bytes;
        let at = |i: usize| bytes.get(start + i).copied();
        match (bytes[start], at(1)) {
            (b'b', Some(b'\'')) => {
                if let Some(end) = self.char_literal_end(start + 1) {
                    return (Kind::Literal, self.ident_end(end));
                }
            }
            (b'b' | b'c', Some(b'"')) => {
                return (Kind::Literal, self.ident_end(self.string_end(start + 2)));
            }
            (b'b' | b'c', Some(b'r')) => {
                if let Some(hashes) = self.raw_string_hashes(start + 2) {
                    let end = self.raw_string_end(start + 3 + hashes, hashes);
                    return (Kind::Literal, self.ident_end(end));
                }
            }
            (b'r', Some(b'"' | b'#')) => {
                if let Some(hashes) = self.raw_string_hashes(start + 1) {
                    let end = self.raw_string_end(start + 2 + hashes, hashes);
                    return (Kind::Literal, self.ident_end(end));
                }
                if at(1) == Some(b'#') && at(2).is_some_and(|c| is(c, IDENT_START) || c >= 0x80) {
                    return (Kind::Ident, self.ident_end(start + 2));
                }
            }
            _ => {}
        }
        (Kind::Ident, self.ident_end(start + 1))
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let bytes = self.bytes;
        loop {
            let b = *bytes.get(self.pos)?;
            if is(b, WS) {
                self.pos += 1;
                continue;
            }
            if b >= 0x80
                && let Some((c, len)) = self.char_at(self.pos)
                && is_unicode_whitespace(c)
            {
                self.pos += len;
                continue;
            }
            break;
        }
        let start = self.pos;
        let (kind, end) = self.token_at(start);
        // Every token is at least one byte long and ends on a character
        // boundary, so the lexer always advances and never splits a
        // character.
        let mut end = end.clamp(start + 1, bytes.len());
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

/// Unicode `Pattern_White_Space` beyond ASCII, which Rust treats as blanks.
fn is_unicode_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{85}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Kind, &str)> {
        Lexer::new(text)
            .map(|t| (t.kind, &text[t.start..t.end]))
            .collect()
    }

    #[test]
    fn comments_strings_and_chars() {
        use Kind::*;
        let text = "a /* x /* y */ z */ b // c\n/// d\n//// e\n//! f\n\"s\\\"t\" r#\"u\"v\"# 'g' '\\'' 'h b'x' br\"y\" c\"z\" 'é' '\\u{1F600}' /**/ /** doc */";
        assert_eq!(
            kinds(text),
            vec![
                (Ident, "a"),
                (BlockComment { doc: false }, "/* x /* y */ z */"),
                (Ident, "b"),
                (LineComment { doc: false }, "// c"),
                (LineComment { doc: true }, "/// d"),
                (LineComment { doc: false }, "//// e"),
                (LineComment { doc: true }, "//! f"),
                (Literal, "\"s\\\"t\""),
                (Literal, "r#\"u\"v\"#"),
                (Literal, "'g'"),
                (Literal, "'\\''"),
                (Lifetime, "'h"),
                (Literal, "b'x'"),
                (Literal, "br\"y\""),
                (Literal, "c\"z\""),
                (Literal, "'é'"),
                (Literal, "'\\u{1F600}'"),
                (BlockComment { doc: false }, "/**/"),
                (BlockComment { doc: true }, "/** doc */"),
            ]
        );
    }

    #[test]
    fn numbers_identifiers_and_operators() {
        use self::Punct::*;
        use Kind::{Close, Ident, Literal, Open};
        let p = Kind::Punct;
        let text = "1..2 1.5e-3f64 x.0 1.max(2) r#type 0x1E-1 a&&b||c>>=d ..= :: -> =>";
        assert_eq!(
            kinds(text),
            vec![
                (Literal, "1"),
                (p(DotDot), ".."),
                (Literal, "2"),
                (Literal, "1.5e-3f64"),
                (Ident, "x"),
                (p(Dot), "."),
                (Literal, "0"),
                (Literal, "1"),
                (p(Dot), "."),
                (Ident, "max"),
                (Open(Delim::Paren), "("),
                (Literal, "2"),
                (Close(Delim::Paren), ")"),
                (Ident, "r#type"),
                (Literal, "0x1E"),
                (p(Minus), "-"),
                (Literal, "1"),
                (Ident, "a"),
                (p(AndAnd), "&&"),
                (Ident, "b"),
                (p(OrOr), "||"),
                (Ident, "c"),
                (p(ShrEq), ">>="),
                (Ident, "d"),
                (p(DotDotEq), "..="),
                (p(PathSep), "::"),
                (p(RArrow), "->"),
                (p(FatArrow), "=>"),
            ]
        );
        assert_eq!(keyword(b"return"), Some(Keyword::Return));
        assert_eq!(keyword(b"Self"), Some(Keyword::Value));
        assert_eq!(keyword(b"r#return"), None);
        assert_eq!(keyword(b"returns"), None);
    }

    #[test]
    fn unterminated_and_odd_input_never_panics() {
        for text in [
            "\"open",
            "r#\"open",
            "/* open /* nested */",
            "'",
            "'\\",
            "b'",
            "br#",
            "r#",
            "1e",
            "0x",
            "é€\\",
            "\u{feff}#!/bin/sh\nfn",
            "#![allow(x)]",
            "'\u{2028}",
            "x\u{2028}y",
        ] {
            let tokens: Vec<Token> = Lexer::new(text).collect();
            let mut at = 0;
            for t in &tokens {
                assert!(
                    t.start >= at && t.end > t.start && t.end <= text.len(),
                    "{text:?}"
                );
                assert!(text.is_char_boundary(t.start) && text.is_char_boundary(t.end));
                at = t.end;
            }
        }
        assert_eq!(kinds("#!/bin/sh\nfn"), vec![(Kind::Ident, "fn")]);
        assert_eq!(kinds("#![x]").len(), 5);
    }
}
