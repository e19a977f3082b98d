//! What an SQL text does: a statement writes when any part of it writes
//! (its leading verb, or a data-modifying CTE or subquery at any depth).

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
/// [MATERIALIZED] (…), …` list. A write verb anywhere in a statement that
/// is not DDL counts too (`WITH x AS (INSERT … RETURNING id) SELECT …`,
/// `SELECT * FROM (DELETE … RETURNING *)`), except where it is no
/// statement: `FOR UPDATE`, `ON DELETE`/`ON UPDATE`, `FOR NO KEY UPDATE`,
/// a qualified name (`t.update`) or a function call (`replace(a, b)`). The
/// first write of any statement wins (`BEGIN; DELETE FROM t; COMMIT` is a
/// `DELETE`); otherwise the first statement's keyword is returned. `None`
/// when the text does not start with a word.
pub fn leading_keyword(text: &str) -> Option<Box<str>> {
    let mut cursor = Cursor {
        bytes: text.as_bytes(),
        at: 0,
    };
    let start = cursor.at;
    let first = cursor.statement_keyword()?;
    if is_write_verb(&first) {
        return Some(first);
    }
    cursor.at = start;
    let mut keyword = Some(first.clone());
    loop {
        let scan = keyword.as_deref().is_none_or(|k| !is_ddl(k));
        let (write, more) = cursor.scan_statement(scan);
        if write.is_some() {
            return write;
        }
        if !more {
            return Some(first);
        }
        let start = cursor.at;
        keyword = cursor.statement_keyword();
        if let Some(k) = &keyword
            && is_write_verb(k)
        {
            return keyword;
        }
        cursor.at = start;
    }
}

/// Statements whose inner verbs are definitions, not writes
/// (`CREATE TRIGGER … AFTER INSERT`), or not run (`EXPLAIN DELETE …`).
fn is_ddl(keyword: &str) -> bool {
    matches!(
        keyword,
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE" | "EXPLAIN" | "PREPARE"
    )
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

    /// Reads the statement at the cursor up to and past its `;`; with
    /// `scan`, returns its first write verb that is a statement of its own
    /// (see [`leading_keyword`]). The flag is `false` at the end of the text.
    fn scan_statement(&mut self, scan: bool) -> (Option<Box<str>>, bool) {
        let mut previous: Option<&str> = None;
        let mut after_dot = false;
        loop {
            self.skip_trivia();
            let Some(b) = self.peek(0) else {
                return (None, false);
            };
            match b {
                b';' => {
                    self.at += 1;
                    return (None, true);
                }
                b'\'' | b'"' | b'`' => {
                    self.at += 1;
                    while let Some(c) = self.peek(0) {
                        self.at += 1;
                        if c == b {
                            break;
                        }
                    }
                    previous = None;
                    after_dot = false;
                }
                b'$' => {
                    // A dollar-quoted body (`$$ … $$`, `$tag$ … $tag$`) is
                    // read as SQL: a `DO` block's writes are writes.
                    self.at += 1;
                    after_dot = false;
                }
                b if b.is_ascii_alphabetic() || b == b'_' => {
                    let start = self.at;
                    while matches!(self.peek(0), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
                    {
                        self.at += 1;
                    }
                    let word = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or("");
                    if scan && !after_dot && word.len() <= MAX_KEYWORD {
                        let upper = word.to_ascii_uppercase();
                        let qualified = previous.is_some_and(|p| {
                            ["FOR", "ON", "KEY", "BEFORE", "AFTER", "OF", "INSTEAD"]
                                .iter()
                                .any(|q| p.eq_ignore_ascii_case(q))
                        });
                        if is_write_verb(&upper) && !qualified && !self.next_is(b'(') {
                            return (Some(upper.into_boxed_str()), true);
                        }
                    }
                    previous = Some(word);
                    after_dot = false;
                }
                b'.' => {
                    self.at += 1;
                    after_dot = true;
                }
                _ => {
                    self.at += 1;
                    after_dot = false;
                    if !b.is_ascii_digit() {
                        previous = None;
                    }
                }
            }
        }
    }

    /// Whether the next byte after whitespace and comments is `b`.
    fn next_is(&mut self, b: u8) -> bool {
        let save = self.at;
        self.skip_trivia();
        let found = self.peek(0) == Some(b);
        self.at = save;
        found
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
    fn writes_anywhere_in_a_statement() {
        let cte = "WITH new_user AS (INSERT INTO users (name) VALUES ($1) RETURNING id) SELECT id FROM new_user";
        assert_eq!(kw(cte).as_deref(), Some("INSERT"));
        let deep = "WITH a AS (SELECT 1), b AS (SELECT * FROM (WITH c AS (DELETE FROM t RETURNING *) SELECT * FROM c) d) SELECT * FROM b";
        assert_eq!(kw(deep).as_deref(), Some("DELETE"));
        assert_eq!(
            kw("SELECT * FROM t WHERE id = (UPDATE t SET a = 1 RETURNING id)").as_deref(),
            Some("UPDATE")
        );
        // Not statements: locking reads, DDL, names, functions, strings.
        assert_eq!(kw("SELECT * FROM t FOR UPDATE").as_deref(), Some("SELECT"));
        assert_eq!(
            kw("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED").as_deref(),
            Some("SELECT")
        );
        assert_eq!(
            kw("CREATE TABLE t (a INT REFERENCES u ON DELETE CASCADE)").as_deref(),
            Some("CREATE")
        );
        assert_eq!(
            kw("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()").as_deref(),
            Some("CREATE")
        );
        assert_eq!(
            kw("SELECT t.update, replace(a, 'x', 'y') FROM t").as_deref(),
            Some("SELECT")
        );
        assert_eq!(
            kw("SELECT 'INSERT' AS kind, \"delete\" FROM t").as_deref(),
            Some("SELECT")
        );
        assert_eq!(kw("SELECT updated_at FROM t").as_deref(), Some("SELECT"));
        assert_eq!(kw("EXPLAIN DELETE FROM t").as_deref(), Some("EXPLAIN"));
        // Several statements: a later CTE write counts.
        assert_eq!(
            kw("SELECT 1; WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x").as_deref(),
            Some("UPDATE")
        );
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
