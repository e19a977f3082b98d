//! The nesting pre-check: whether syn can parse a file, and the lint walk
//! its syntax tree, without overflowing the stack.
//!
//! syn parses recursively, and a syntax tree is as deep as the code is
//! nested; its drop and every visitor recurse as deep. A stack overflow
//! cannot be caught (the process aborts), so before a file is parsed its
//! tokens ([`crate::lex`]) are read once and two quantities are bounded,
//! each an upper bound on a kind of recursion:
//!
//! * **Nesting** (at most `max_nesting`): what syn parses by recursion, at
//!   a cost of up to tens of KiB of stack per level. It is the sum, over
//!   the open brackets, of one per bracket plus what is open inside it
//!   at this point: generic `<` not yet closed; a run of prefix operators
//!   (`!`, `-`, `*`, `&`, `&&`, `box`) until a binary operator ends their
//!   operand; and, until the next `,` `;` or `=>`, every closure (`|..|`
//!   and `||`), `return`/`break`/`yield`/`become`, prefix range (`..x`),
//!   assignment (`=`, `+=`... which are right-associative), subpattern
//!   (`@`) and return type (`->`); plus every `if`/`match`/`while`/`for`
//!   whose block has not closed yet.
//! * **Chains** (at most [`CHAIN_LIMIT`]): what syn parses in a loop but
//!   builds as a left-leaning tree, as deep as the chain is long, at a
//!   cost of a few hundred bytes of stack per link when the tree is walked
//!   or dropped: binary operators, `as` casts, method calls, field
//!   accesses, call and index brackets, `?`, `else` branches. Counted
//!   until the next `,` `;` or `=>` and summed over the open brackets.
//!
//! A `}` followed by the start of a new statement, item or match arm (a
//! name or keyword other than `as` and `else`, a literal, a label, `#`)
//! ends everything open at its level, as a `;` does.
//!
//! The counts are conservative: they never undercount what syn recurses
//! through, and overcount only in code no person writes (hundreds of
//! unparenthesized comparisons in one expression, an `else if` chain of
//! hundreds of `if let` branches).

use crate::lex::{Delim, Keyword, Kind, Lexer, Punct, keyword};

/// The longest chain of operators, method calls, casts and `else`
/// branches in one expression (see the module documentation). The
/// longest in the cargo registry's 7,500 files is under 1,000 (unicode
/// tables written as or-patterns).
pub const CHAIN_LIMIT: usize = 16_384;

/// The largest `max_nesting` the configuration accepts: the parsing
/// threads' stack holds this much nesting of the costliest kind (generic
/// arguments) in a debug build, with a wide margin.
pub const MAX_NESTING_LIMIT: usize = 1024;

/// The longest numeric literal (digits, `_`, prefix and suffix) the parser
/// is given. syn evaluates an integer literal's value digit by digit in
/// time quadratic in its length (a literal of 100,000 digits takes
/// minutes); no real literal comes near this (`u128::MAX` has 39 digits).
pub const NUMBER_LIMIT: usize = 512;

/// What made a file too complex: the kind of construct most open at the
/// point where a limit was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `(`, `[`, `{`.
    Brackets,
    /// Generic arguments `<..>` (and qualified paths `<T as Trait>`).
    Generics,
    /// Prefix operators: `!`, `-`, `*`, `&`, `&&`, `box`.
    PrefixOperators,
    /// Closures: `|x| ..`, `|| ..`.
    Closures,
    /// `return`, `break`, `yield`, `become` with an operand.
    JumpExpressions,
    /// `if`, `match`, `while`, `for` whose condition holds another.
    Conditions,
    /// Assignments `a = b = ..`, `+=`...
    Assignments,
    /// Prefix ranges `..x`.
    Ranges,
    /// Subpatterns `a @ b @ ..`.
    Subpatterns,
    /// Return types `fn() -> fn() -> ..`.
    ReturnTypes,
    /// A chain of binary operators, casts, method calls, field accesses,
    /// calls, indexing, `?` or `else` branches.
    Chain,
    /// A numeric literal longer than [`NUMBER_LIMIT`] characters.
    LongNumber,
}

impl Cause {
    /// What nests, in a sentence: "closures nested ...".
    pub fn describe(self) -> &'static str {
        match self {
            Cause::Brackets => "brackets",
            Cause::Generics => "generic arguments",
            Cause::PrefixOperators => "prefix operators (`!`, `-`, `*`, `&`)",
            Cause::Closures => "closures",
            Cause::JumpExpressions => "`return`/`break`/`yield` expressions",
            Cause::Conditions => "`if`/`match`/`while` conditions",
            Cause::Assignments => "assignments",
            Cause::Ranges => "ranges",
            Cause::Subpatterns => "`@` subpatterns",
            Cause::ReturnTypes => "return types (`->`)",
            Cause::Chain => {
                "operators, method calls, casts or `else` branches chained in one expression"
            }
            Cause::LongNumber => "a numeric literal",
        }
    }
}

/// A file the parser cannot take safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooComplex {
    /// The construct that nests most there.
    pub cause: Cause,
    /// The byte offset of the token that crossed it: the deepest point so far.
    pub offset: usize,
    /// The limit crossed.
    pub limit: usize,
}

impl TooComplex {
    /// The reason, for the finding's message.
    pub fn reason(&self) -> String {
        match self.cause {
            Cause::Chain => format!("more than {} {}", self.limit, self.cause.describe()),
            Cause::LongNumber => format!("a numeric literal longer than {} characters", self.limit),
            cause => format!(
                "{} nested deeper than {} levels",
                cause.describe(),
                self.limit
            ),
        }
    }

    /// What to do about it, fitting the cause.
    pub fn help(&self) -> String {
        match self.cause {
            Cause::LongNumber => "No Rust integer type holds a number this long: write it as a string (or bytes) and parse it at run time; if the file is generated, exclude it in dualwrite.toml (`exclude = [\"path/**\"]`).".to_owned(),
            Cause::Chain => "Break the expression into several statements with `let` bindings; if the file is generated, exclude it in dualwrite.toml (`exclude = [\"path/**\"]`).".to_owned(),
            Cause::Generics => format!(
                "Name the inner types with `type` aliases; if the file is generated, exclude it in dualwrite.toml, or raise `max_nesting` (now {}, at most {MAX_NESTING_LIMIT}).",
                self.limit
            ),
            _ => format!(
                "Move the inner parts into `let` bindings or helper functions; if the file is generated, exclude it in dualwrite.toml, or raise `max_nesting` (now {}, at most {MAX_NESTING_LIMIT}).",
                self.limit
            ),
        }
    }
}

/// What is open at one bracket level (the file's top level included).
#[derive(Debug, Clone, Copy, Default)]
struct Level {
    /// This level is the parameter list of a closure (`|a, b|`).
    closure_params: bool,
    /// Open until the next `,` `;` `=>`: closures, jumps, prefix ranges,
    /// assignments, `@`, `->`.
    open: u32,
    /// What was last counted in `open` (for the message).
    open_cause: Option<Cause>,
    /// Prefix operators, until a binary operator.
    run: u32,
    /// Generic `<` not closed.
    angle: u32,
    /// `if`/`match`/`while`/`for` whose block has not closed.
    cond: u32,
    /// Chain links, until the next `,` `;` `=>`.
    chain: u32,
}

impl Level {
    fn nest(&self) -> usize {
        (self.open + self.run + self.angle + self.cond) as usize
    }
}

/// The previous token, as far as the next one cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Nothing, an operator, an opening bracket, a separator or a keyword:
    /// an operand starts here (`-` is negation, `|` opens a closure).
    Start,
    /// `::`: an operand continues (`<` opens generic arguments).
    PathSep,
    /// `#`: an attribute starts (`!` in `#![..]` is no operator).
    Pound,
    /// A name (or `self`, `true`...): `<` may open generic arguments.
    Word,
    /// A literal, a closing bracket, `?` or a closing `>`: an operand ends.
    Value,
}

impl Prev {
    fn operand_starts(self) -> bool {
        matches!(self, Prev::Start | Prev::PathSep | Prev::Pound)
    }
}

/// Which counter of a level to raise.
#[derive(Clone, Copy)]
enum Counter {
    Open,
    Run,
    Angle,
    Cond,
}

struct Checker {
    levels: Vec<Level>,
    /// Open brackets plus the nesting counters of every level.
    nest: usize,
    /// The chain counters of every level.
    chain: usize,
    max_nesting: usize,
    prev: Prev,
    /// A `}` was just closed: the next token may start a new statement.
    after_brace: bool,
}

/// Checks that `text` can be parsed and walked safely with nesting up to
/// `max_nesting` levels; [`TooComplex`] at the first point that cannot.
pub fn check(text: &str, max_nesting: usize) -> Result<(), TooComplex> {
    let mut checker = Checker {
        levels: vec![Level::default()],
        nest: 0,
        chain: 0,
        max_nesting,
        prev: Prev::Start,
        after_brace: false,
    };
    let bytes = text.as_bytes();
    for token in Lexer::new(text) {
        if token.kind == Kind::Literal
            && token.end - token.start > NUMBER_LIMIT
            && bytes[token.start].is_ascii_digit()
        {
            return Err(TooComplex {
                cause: Cause::LongNumber,
                offset: token.start,
                limit: NUMBER_LIMIT,
            });
        }
        checker.token(token.kind, &bytes[token.start..token.end], token.start)?;
    }
    Ok(())
}

impl Checker {
    fn top(&mut self) -> &mut Level {
        let last = self.levels.len() - 1;
        &mut self.levels[last]
    }

    fn raise(
        &mut self,
        counter: Counter,
        by: u32,
        cause: Cause,
        at: usize,
    ) -> Result<(), TooComplex> {
        let top = self.top();
        if let Counter::Open = counter {
            top.open_cause = Some(cause);
        }
        let field = match counter {
            Counter::Open => &mut top.open,
            Counter::Run => &mut top.run,
            Counter::Angle => &mut top.angle,
            Counter::Cond => &mut top.cond,
        };
        *field = field.saturating_add(by);
        self.nest += by as usize;
        self.check_nest(cause, at)
    }

    fn check_nest(&self, cause: Cause, at: usize) -> Result<(), TooComplex> {
        if self.nest > self.max_nesting {
            return Err(TooComplex {
                cause: self.dominant(cause),
                offset: at,
                limit: self.max_nesting,
            });
        }
        Ok(())
    }

    /// The kind of construct that nests most here (`last` on a tie).
    fn dominant(&self, last: Cause) -> Cause {
        let mut counts: Vec<(Cause, usize)> = vec![(last, 0)];
        let mut add = |cause: Cause, n: usize| match counts.iter_mut().find(|c| c.0 == cause) {
            Some(entry) => entry.1 += n,
            None => counts.push((cause, n)),
        };
        for (index, level) in self.levels.iter().enumerate() {
            if index > 0 {
                add(
                    if level.closure_params {
                        Cause::Closures
                    } else {
                        Cause::Brackets
                    },
                    1,
                );
            }
            add(Cause::Generics, level.angle as usize);
            add(Cause::PrefixOperators, level.run as usize);
            add(Cause::Conditions, level.cond as usize);
            add(
                level.open_cause.unwrap_or(Cause::Closures),
                level.open as usize,
            );
        }
        counts
            .iter()
            .fold((last, 0), |best, c| if c.1 > best.1 { *c } else { best })
            .0
    }

    /// One more link in a chain; a binary operator also ends the operand
    /// of the prefix operators before it.
    fn link(&mut self, binary: bool, at: usize) -> Result<(), TooComplex> {
        if binary {
            let top = self.top();
            let run = std::mem::take(&mut top.run) as usize;
            self.nest -= run;
        }
        self.top().chain += 1;
        self.chain += 1;
        if self.chain > CHAIN_LIMIT {
            return Err(TooComplex {
                cause: Cause::Chain,
                offset: at,
                limit: CHAIN_LIMIT,
            });
        }
        Ok(())
    }

    /// `&&` and `||` between operands: a `<` before them compared, it did
    /// not open generic arguments (types hold no `&&` or `||`).
    fn close_comparisons(&mut self) {
        let top = self.top();
        let angle = std::mem::take(&mut top.angle) as usize;
        self.nest -= angle;
    }

    /// Ends what is open at this level (a `,` `;` `=>` or a new statement).
    fn end_segment(&mut self, keep_angle: bool) {
        let top = self.top();
        let mut freed = top.open + top.run + top.cond;
        if !keep_angle {
            freed += top.angle;
            top.angle = 0;
        }
        let chain = top.chain as usize;
        top.open = 0;
        top.run = 0;
        top.cond = 0;
        top.chain = 0;
        self.nest -= freed as usize;
        self.chain -= chain;
    }

    fn push(&mut self, closure_params: bool, cause: Cause, at: usize) -> Result<(), TooComplex> {
        self.levels.push(Level {
            closure_params,
            ..Level::default()
        });
        self.nest += 1;
        self.check_nest(cause, at)
    }

    /// Leaves the innermost level (never the top level of the file).
    fn pop(&mut self) {
        if self.levels.len() > 1
            && let Some(level) = self.levels.pop()
        {
            self.nest -= 1 + level.nest();
            self.chain -= level.chain as usize;
        }
    }

    /// Leaves closure parameter lists a `)`, `;` or `=>` shows unclosed.
    fn pop_closure_params(&mut self) {
        while self.levels.len() > 1 && self.top().closure_params {
            self.pop();
        }
    }

    /// The `|` closing a closure's parameters: the closure's body is open
    /// until the end of the segment.
    fn close_params(&mut self, at: usize) -> Result<(), TooComplex> {
        self.pop();
        self.raise(Counter::Open, 1, Cause::Closures, at)
    }

    fn token(&mut self, kind: Kind, text: &[u8], at: usize) -> Result<(), TooComplex> {
        if matches!(kind, Kind::LineComment { .. } | Kind::BlockComment { .. }) {
            return Ok(());
        }
        let word = if kind == Kind::Ident {
            keyword(text)
        } else {
            None
        };
        if std::mem::take(&mut self.after_brace) {
            let new_statement = match kind {
                Kind::Ident => !matches!(word, Some(Keyword::As | Keyword::Else)),
                Kind::Literal | Kind::Lifetime => true,
                Kind::Punct(Punct::Pound | Punct::Dollar) => true,
                _ => false,
            };
            if new_statement {
                self.end_segment(false);
            }
        }
        match kind {
            Kind::Open(delim) => {
                if delim != Delim::Brace && !self.prev.operand_starts() {
                    // A call or an index on the operand before.
                    self.link(false, at)?;
                }
                if delim == Delim::Brace {
                    // Generic arguments do not span a block; a `<` before
                    // one compared (`if a < b {`).
                    let top = self.top();
                    let angle = std::mem::take(&mut top.angle) as usize;
                    self.nest -= angle;
                }
                self.push(false, Cause::Brackets, at)?;
                self.prev = Prev::Start;
            }
            Kind::Close(delim) => {
                self.pop_closure_params();
                self.pop();
                if delim == Delim::Brace {
                    // The block of the innermost `if`/`match`/`while`/`for`.
                    let top = self.top();
                    if top.cond > 0 {
                        top.cond -= 1;
                        self.nest -= 1;
                    }
                    self.after_brace = true;
                }
                self.prev = Prev::Value;
            }
            Kind::Punct(punct) => self.punct(punct, at)?,
            Kind::Ident => match word {
                None | Some(Keyword::Value) => self.prev = Prev::Word,
                Some(Keyword::As) => {
                    self.link(true, at)?;
                    self.prev = Prev::Start;
                }
                Some(Keyword::Else) => {
                    self.link(false, at)?;
                    self.prev = Prev::Start;
                }
                Some(Keyword::Return | Keyword::Break | Keyword::Yield | Keyword::Become) => {
                    self.raise(Counter::Open, 1, Cause::JumpExpressions, at)?;
                    self.prev = Prev::Start;
                }
                Some(Keyword::Box) => {
                    self.raise(Counter::Run, 1, Cause::PrefixOperators, at)?;
                    self.prev = Prev::Start;
                }
                Some(Keyword::If | Keyword::Match | Keyword::While | Keyword::For) => {
                    self.raise(Counter::Cond, 1, Cause::Conditions, at)?;
                    self.prev = Prev::Start;
                }
                // `mut`, `const`, `dyn`, `impl`, `move`, `fn`, `let`, `in`...:
                // an operand or a type starts after them.
                Some(_) => self.prev = Prev::Start,
            },
            // `&'a T`, `break 'a`, `'a: loop`: what comes next decides.
            Kind::Lifetime => {}
            Kind::Literal => self.prev = Prev::Value,
            Kind::Unknown => self.prev = Prev::Start,
            Kind::LineComment { .. } | Kind::BlockComment { .. } => {}
        }
        Ok(())
    }

    fn punct(&mut self, punct: Punct, at: usize) -> Result<(), TooComplex> {
        let operand_starts = self.prev.operand_starts();
        let mut next = Prev::Start;
        match punct {
            Punct::Semi | Punct::FatArrow => {
                self.pop_closure_params();
                self.end_segment(false);
            }
            Punct::Comma => {
                // In generic arguments a comma separates the arguments, and
                // what encloses the list stays open.
                let top = *self.top();
                if top.angle == 0 || top.closure_params {
                    self.end_segment(true);
                }
            }
            Punct::Or => {
                if self.top().closure_params {
                    self.close_params(at)?;
                } else if operand_starts {
                    self.push(true, Cause::Closures, at)?;
                } else {
                    self.link(true, at)?;
                }
            }
            Punct::OrOr => {
                if self.top().closure_params {
                    // `|a||b| ..`: the end of one parameter list, the start of the next.
                    self.close_params(at)?;
                    self.push(true, Cause::Closures, at)?;
                } else if operand_starts {
                    self.raise(Counter::Open, 1, Cause::Closures, at)?;
                } else {
                    self.close_comparisons();
                    self.link(true, at)?;
                }
            }
            Punct::AndAnd => {
                if operand_starts {
                    self.raise(Counter::Run, 2, Cause::PrefixOperators, at)?;
                } else {
                    self.close_comparisons();
                    self.link(true, at)?;
                }
            }
            Punct::Not => {
                if matches!(self.prev, Prev::Word | Prev::Pound) {
                    // `name!(..)`: a macro; `#![..]`: an inner attribute.
                } else {
                    self.raise(Counter::Run, 1, Cause::PrefixOperators, at)?;
                }
            }
            Punct::Minus | Punct::Star | Punct::And => {
                if operand_starts {
                    self.raise(Counter::Run, 1, Cause::PrefixOperators, at)?;
                } else {
                    self.link(true, at)?;
                }
            }
            Punct::DotDot | Punct::DotDotEq | Punct::DotDotDot => {
                if operand_starts {
                    self.raise(Counter::Open, 1, Cause::Ranges, at)?;
                } else {
                    self.link(true, at)?;
                }
            }
            Punct::Eq
            | Punct::PlusEq
            | Punct::MinusEq
            | Punct::StarEq
            | Punct::SlashEq
            | Punct::PercentEq
            | Punct::CaretEq
            | Punct::AndEq
            | Punct::OrEq
            | Punct::ShlEq => self.assignment(at)?,
            Punct::At => self.raise(Counter::Open, 1, Cause::Subpatterns, at)?,
            Punct::RArrow => self.raise(Counter::Open, 1, Cause::ReturnTypes, at)?,
            Punct::Lt => {
                if self.prev == Prev::Value {
                    self.link(true, at)?;
                } else {
                    self.raise(Counter::Angle, 1, Cause::Generics, at)?;
                }
            }
            Punct::Shl => {
                if self.prev == Prev::Value {
                    self.link(true, at)?;
                } else {
                    // `<<T as A>::B as C>::D`, `Vec<<T as A>::B>`.
                    self.raise(Counter::Angle, 2, Cause::Generics, at)?;
                }
            }
            Punct::Gt | Punct::Shr | Punct::Ge | Punct::ShrEq => {
                let closes: u32 = if matches!(punct, Punct::Shr | Punct::ShrEq) {
                    2
                } else {
                    1
                };
                let top = self.top();
                if top.angle > 0 {
                    let closed = closes.min(top.angle);
                    top.angle -= closed;
                    self.nest -= closed as usize;
                    if matches!(punct, Punct::Ge | Punct::ShrEq) {
                        // `let v: Vec<u8>= ..`
                        self.assignment(at)?;
                    } else {
                        next = Prev::Value;
                    }
                } else if punct == Punct::ShrEq {
                    self.assignment(at)?;
                } else {
                    self.link(true, at)?;
                }
            }
            Punct::Dot => self.link(false, at)?,
            Punct::Question => {
                self.link(false, at)?;
                next = Prev::Value;
            }
            Punct::PathSep => next = Prev::PathSep,
            Punct::Pound => next = Prev::Pound,
            Punct::Plus
            | Punct::Slash
            | Punct::Percent
            | Punct::Caret
            | Punct::EqEq
            | Punct::Ne
            | Punct::Le => self.link(true, at)?,
            Punct::Colon | Punct::Dollar | Punct::Tilde => {}
        }
        self.prev = next;
        Ok(())
    }

    /// `=` and compound assignments: right-associative, so open until the
    /// end of the segment; they end the operand of prefix operators.
    fn assignment(&mut self, at: usize) -> Result<(), TooComplex> {
        let top = self.top();
        let run = std::mem::take(&mut top.run) as usize;
        self.nest -= run;
        self.raise(Counter::Open, 1, Cause::Assignments, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(text: &str, limit: usize) -> Option<Cause> {
        check(text, limit).err().map(|e| e.cause)
    }

    #[test]
    fn every_nesting_form_is_bounded() {
        let n = 300;
        let forms: Vec<(String, Cause)> = vec![
            (
                format!("fn f() {{ {}1{} }}", "(".repeat(n), ")".repeat(n)),
                Cause::Brackets,
            ),
            (
                format!("fn f() {{ {}1{} }}", "[".repeat(n), "]".repeat(n)),
                Cause::Brackets,
            ),
            (
                format!("type T = {}u8{};", "Vec<".repeat(n), ">".repeat(n)),
                Cause::Generics,
            ),
            (
                format!("type T = {}u8{};", "HashMap<u8, ".repeat(n), ">".repeat(n)),
                Cause::Generics,
            ),
            (
                format!("type T = {}u8;", "&".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("type T = {}u8;", "&mut ".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("type T = {}u8;", "*const ".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("fn f() {{ {}x }}", "!".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("fn f() {{ {}f(1) }}", "!-*&".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("fn f() {{ {}x }}", "&&".repeat(n)),
                Cause::PrefixOperators,
            ),
            (
                format!("fn f() {{ {}1 }}", "|| ".repeat(n)),
                Cause::Closures,
            ),
            (
                format!("fn f() {{ {}1 }}", "|x| ".repeat(n)),
                Cause::Closures,
            ),
            (
                format!("fn f() {{ {}1 }}", "|a, b| ".repeat(n)),
                Cause::Closures,
            ),
            (
                format!("fn f() {{ {}1 }}", "move || ".repeat(n)),
                Cause::Closures,
            ),
            (
                format!("fn f() {{ {}1 }}", "return ".repeat(n)),
                Cause::JumpExpressions,
            ),
            (
                format!("fn f() {{ {}1 }}", "a = ".repeat(n)),
                Cause::Assignments,
            ),
            (
                format!("fn f() {{ {}1 }}", "a += ".repeat(n)),
                Cause::Assignments,
            ),
            (format!("fn f() {{ {}1 }}", ".. ".repeat(n)), Cause::Ranges),
            (
                format!("fn f() {{ let {}x = 1; }}", "a @ ".repeat(n)),
                Cause::Subpatterns,
            ),
            (
                format!("type T = {}u8;", "fn() -> ".repeat(n)),
                Cause::ReturnTypes,
            ),
            (
                format!("fn f() {{ {}a {} }}", "if ".repeat(n), "{} ".repeat(n)),
                Cause::Conditions,
            ),
            (
                format!("fn f() {{ {}x {} }}", "match ".repeat(n), "{} ".repeat(n)),
                Cause::Conditions,
            ),
            (
                format!("type T = {}u8{};", "<".repeat(n), " as A>::B".repeat(n)),
                Cause::Generics,
            ),
            (
                format!("type T = {}u8{};", "Vec<<".repeat(n), ">".repeat(2 * n)),
                Cause::Generics,
            ),
            // A level of prefix operators inside each of a few brackets.
            (
                format!(
                    "fn f() {{ {}x{} }}",
                    "!!!!!!!!!!f(".repeat(30),
                    ")".repeat(30)
                ),
                Cause::PrefixOperators,
            ),
            (
                format!(
                    "fn f() {{ {}x{} }}",
                    "!!!!!!!!!!Vec::<".repeat(30),
                    ">".repeat(30)
                ),
                Cause::PrefixOperators,
            ),
            (
                format!(
                    "fn f() {{ {}x{} }}",
                    "return if a {".repeat(100),
                    "}".repeat(100)
                ),
                Cause::JumpExpressions,
            ),
        ];
        for (text, expected) in forms {
            assert_eq!(
                cause(&text, 256),
                Some(expected),
                "{}",
                &text[..text.len().min(60)]
            );
        }
    }

    #[test]
    fn long_numeric_literals_are_bounded() {
        for text in [
            format!("const N: u128 = {};", "9".repeat(100_000)),
            format!("fn f() {{ let x = 0x{}u64; }}", "f".repeat(NUMBER_LIMIT)),
            format!("fn f() {{ m!({}); }}", "7".repeat(NUMBER_LIMIT + 1)),
        ] {
            assert_eq!(
                cause(&text, 256),
                Some(Cause::LongNumber),
                "{}",
                &text[..30]
            );
        }
        let fine = format!(
            "const N: u128 = {}; const S: &str = \"{}\";",
            "9".repeat(39),
            "1".repeat(10_000)
        );
        assert_eq!(cause(&fine, 256), None);
    }

    #[test]
    fn every_chain_form_is_bounded() {
        let n = CHAIN_LIMIT + 10;
        for text in [
            format!("fn f() {{ x{}; }}", ".a()".repeat(n)),
            format!("fn f() {{ x{}; }}", ".a".repeat(n)),
            format!("fn f() {{ x{}; }}", "?".repeat(n)),
            format!("fn f() {{ x{}; }}", "()".repeat(n)),
            format!("fn f() {{ x{}; }}", "[0]".repeat(n)),
            format!("fn f() {{ x{}; }}", " + x".repeat(n)),
            format!("fn f() {{ x{}; }}", " as u8".repeat(n)),
            format!("fn f() {{ if a {{}}{} }}", " else if a {}".repeat(n)),
            format!("fn f() {{ x{}; }}", " || x".repeat(n)),
            format!("fn f() {{ a(){}; }}", " + b()".repeat(n)),
        ] {
            assert_eq!(cause(&text, 256), Some(Cause::Chain), "{}", &text[..60]);
        }
    }

    #[test]
    fn ordinary_code_passes() {
        let ordinary = [
            "fn f() -> Vec<Vec<u8>> { if a < b && c > d { x } else if e { y } else { z } }",
            "fn f<T: A<B = C>, U>(x: &mut T, y: &&U) where T: for<'a> Fn(&'a u8) -> bool {}",
            "fn f() { let v: Vec<u8>= vec![]; let s = x >> 2; a <<= 1; b >>= 1; }",
            "fn f() { v.iter().map(|x| x + 1).filter(|&x| x > 2).collect::<Vec<_>>(); }",
            "fn f() { match x { A | B => 1, C if c => { 2 } D => 3 } }",
            "impl<'a> Tr for &'a S { fn g(&self) -> impl Iterator<Item = &'a u8> + 'a { todo!() } }",
            "fn f() { let x = if let Some(y) = z { y } else { return; }; }",
            "macro_rules! m { ($($x:expr),*) => { $( f($x); )* }; }",
        ];
        for text in ordinary {
            assert_eq!(cause(text, 8), None, "{text}");
        }
        // Many statements, items and arms: each starts afresh.
        let many = format!(
            "fn f() {{ {} }} {} fn g() {{ match x {{ {} }} }} {}",
            "if a { b } else if c { d }\n".repeat(10_000),
            "fn h() -> Result<u8, E> where T: A { x.y()?.z() }\n".repeat(10_000),
            "A(x) => { x.y().z() }\n".repeat(10_000),
            "let a = b.c(d).e() + f;\n".repeat(10_000),
        );
        assert_eq!(cause(&many, 256), None);
        // Long flat lists: arguments, or-patterns, paths.
        let table = format!(
            "fn t(c: char) -> bool {{ matches!(c, 'a'..='b'{}) }}",
            " | '\\u{16100}'..='\\u{16139}'".repeat(5000)
        );
        assert_eq!(cause(&table, 256), None);
        let list = format!("const X: [u8; 100000] = [{}];", "!1, ".repeat(100_000));
        assert_eq!(cause(&list, 256), None);
        let path = format!("use {}x;", "a::".repeat(100_000));
        assert_eq!(cause(&path, 256), None);
        // Comparisons in a long condition are not generics.
        let condition = format!("fn f() {{ if {} true {{}} }}", "a < b && ".repeat(1000));
        assert_eq!(cause(&condition, 256), None);
        // Nothing in comments or strings counts.
        let hidden = format!(
            "// {}\n/* {} */ const S: &str = \"{}\"; const R: &str = r#\"{}\"#;",
            "(".repeat(1000),
            "|| ".repeat(1000),
            "{".repeat(1000),
            "<".repeat(1000)
        );
        assert_eq!(cause(&hidden, 256), None);
    }

    #[test]
    fn the_offset_is_the_deepest_point() {
        let text = "fn f() {\n    g((((1))));\n}\n";
        let error = check(text, 4).unwrap_err();
        assert_eq!(&text[error.offset..error.offset + 1], "(");
        assert_eq!(error.offset, text.find("((((").unwrap() + 3);
        assert_eq!(error.cause, Cause::Brackets);
    }
}
