//! What an SQL text does: its leading keyword, after whitespace, comments and
//! a leading `WITH … AS (…)` list, decides whether it writes.

/// The statement verbs that modify data.
pub const WRITE_VERBS: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "TRUNCATE",
];

/// Longest keyword kept: no SQL verb or redis command is longer, and a cap
/// keeps summaries small when a string starts with a long word.
const MAX_KEYWORD: usize = 24;

/// Whether `keyword` (as returned by [`leading_keyword`]) is a write verb.
pub fn is_write_verb(keyword: &str) -> bool {
    WRITE_VERBS.contains(&keyword)
}

/// The keyword that says what `text` does, upper-cased. Each statement's
/// first keyword is read after whitespace, `--` line comments and (nested)
/// `/* */` block comments, skipping a leading `WITH name [(cols)] AS [NOT]
/// [MATERIALIZED] (…), …` list. The first write verb of any statement wins
/// (`BEGIN; DELETE FROM t; COMMIT` is a `DELETE`); otherwise the first
/// statement's keyword is returned. `None` when the text does not start
/// with a word.
pub fn leading_keyword(text: &str) -> Option<Box<str>> {
    let mut cursor = Cursor {
        bytes: text.as_bytes(),
        at: 0,
    };
    let first = cursor.statement_keyword()?;
    if is_write_verb(&first) {
        return Some(first);
    }
    while cursor.skip_statement() {
        if let Some(keyword) = cursor.statement_keyword()
            && is_write_verb(&keyword)
        {
            return Some(keyword);
        }
    }
    Some(first)
}

fn upper(word: &str) -> Box<str> {
    word.to_ascii_uppercase().into_boxed_str()
}

/// A byte cursor over SQL text (keywords are ASCII, so bytes suffice).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The keyword of the statement at the cursor.
    fn statement_keyword(&mut self) -> Option<Box<str>> {
        let first = self.word()?;
        if !first.eq_ignore_ascii_case("WITH") {
            return Some(upper(first));
        }
        match self.skip_ctes() {
            Some(()) => self.word().map(upper).or(Some("WITH".into())),
            None => Some("WITH".into()),
        }
    }

    /// Moves past the next `;` outside strings, quoted names and comments;
    /// `false` at the end of the text.
    fn skip_statement(&mut self) -> bool {
        loop {
            self.skip_trivia();
            let Some(b) = self.peek(0) else {
                return false;
            };
            self.at += 1;
            match b {
                b';' => return true,
                b'\'' | b'"' | b'`' => {
                    while let Some(c) = self.peek(0) {
                        self.at += 1;
                        if c == b {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.at + offset).copied()
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b), _) if b.is_ascii_whitespace() => self.at += 1,
                (Some(b'-'), Some(b'-')) => {
                    while let Some(b) = self.peek(0) {
                        self.at += 1;
                        if b == b'\n' {
                            break;
                        }
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.at += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (None, _) => return,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.at += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.at += 2;
                            }
                            _ => self.at += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// The next word (letters, digits, `_`, starting with a letter or `_`).
    fn word(&mut self) -> Option<&'a str> {
        self.skip_trivia();
        let start = self.at;
        match self.peek(0) {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
            _ => return None,
        }
        while matches!(self.peek(0), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
            self.at += 1;
        }
        if self.at - start > MAX_KEYWORD {
            return None;
        }
        std::str::from_utf8(&self.bytes[start..self.at]).ok()
    }

    /// Consumes `expected` (a word, case-insensitively) if it comes next.
    fn eat_word(&mut self, expected: &str) -> bool {
        let save = self.at;
        if self
            .word()
            .is_some_and(|w| w.eq_ignore_ascii_case(expected))
        {
            true
        } else {
            self.at = save;
            false
        }
    }

    /// A CTE name: a word or a quoted identifier.
    fn name(&mut self) -> Option<()> {
        self.skip_trivia();
        match self.peek(0)? {
            quote @ (b'"' | b'`' | b'[') => {
                let close = if quote == b'[' { b']' } else { quote };
                self.at += 1;
                while self.peek(0)? != close {
                    self.at += 1;
                }
                self.at += 1;
                Some(())
            }
            _ => self.word().map(|_| ()),
        }
    }

    /// Skips a parenthesised group, strings and comments included.
    fn group(&mut self) -> Option<()> {
        self.skip_trivia();
        if self.peek(0)? != b'(' {
            return None;
        }
        let mut depth = 0usize;
        loop {
            self.skip_trivia();
            let b = self.peek(0)?;
            self.at += 1;
            match b {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                b'\'' | b'"' => {
                    while self.peek(0)? != b {
                        self.at += 1;
                    }
                    self.at += 1;
                }
                _ => {}
            }
        }
    }

    /// After `WITH`: `[RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (…)`, repeated with `,`.
    fn skip_ctes(&mut self) -> Option<()> {
        self.eat_word("RECURSIVE");
        loop {
            self.name()?;
            self.skip_trivia();
            if self.peek(0)? == b'(' {
                self.group()?;
            }
            if !self.eat_word("AS") {
                return None;
            }
            self.eat_word("NOT");
            self.eat_word("MATERIALIZED");
            self.group()?;
            self.skip_trivia();
            if self.peek(0) == Some(b',') {
                self.at += 1;
            } else {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(text: &str) -> Option<String> {
        leading_keyword(text).map(String::from)
    }

    #[test]
    fn plain_verbs_any_case() {
        assert_eq!(kw("INSERT INTO t VALUES (1)").as_deref(), Some("INSERT"));
        assert_eq!(kw("  update t set a = 1").as_deref(), Some("UPDATE"));
        assert_eq!(kw("\n\tDelete from t").as_deref(), Some("DELETE"));
        assert_eq!(kw("select * from t").as_deref(), Some("SELECT"));
        assert_eq!(kw("").as_deref(), None);
        assert_eq!(kw("  (select 1)").as_deref(), None);
        assert_eq!(kw("SET").as_deref(), Some("SET"));
    }

    #[test]
    fn comments_are_skipped() {
        assert_eq!(
            kw("-- add a user\nINSERT INTO t").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            kw("/* a /* nested */ comment */ merge into t").as_deref(),
            Some("MERGE")
        );
        assert_eq!(kw("-- only a comment").as_deref(), None);
        assert_eq!(kw("/* unterminated").as_deref(), None);
        assert_eq!(
            kw("--x\n/*y*/ -- z\n  truncate t").as_deref(),
            Some("TRUNCATE")
        );
    }

    #[test]
    fn common_table_expressions_are_skipped() {
        let sql = "WITH old AS (SELECT id FROM t WHERE a = ')') DELETE FROM t USING old";
        assert_eq!(kw(sql).as_deref(), Some("DELETE"));
        let sql = "with recursive r(n) as (select 1 union select n+1 from r), \
                   \"q\" as materialized (select 2) insert into t select * from r";
        assert_eq!(kw(sql).as_deref(), Some("INSERT"));
        assert_eq!(
            kw("WITH x AS (SELECT 1) SELECT * FROM x").as_deref(),
            Some("SELECT")
        );
        assert_eq!(kw("WITH broken AS SELECT").as_deref(), Some("WITH"));
    }

    #[test]
    fn any_write_statement_of_a_batch() {
        assert_eq!(
            kw("BEGIN; DELETE FROM t; COMMIT;").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            kw("SELECT ';'; -- ;\n update t set a = 1").as_deref(),
            Some("UPDATE")
        );
        assert_eq!(kw("SELECT 1; SELECT 2").as_deref(), Some("SELECT"));
        assert_eq!(kw("SELECT 'a; DELETE'").as_deref(), Some("SELECT"));
    }

    #[test]
    fn write_verbs() {
        for verb in [
            "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "TRUNCATE",
        ] {
            assert!(is_write_verb(verb), "{verb}");
        }
        for verb in ["SELECT", "WITH", "CREATE", "EXPLAIN"] {
            assert!(!is_write_verb(verb), "{verb}");
        }
    }
}
