//! Macro bodies: the calls inside `vec![..]`, `assert!(..)`,
//! `tokio::select! { .. }` or a custom `db_run! { conn: { .. } }` are code
//! too.
//!
//! A braced body is first read as statements (block contents, so `let`
//! bindings inside it inform later calls). Otherwise, or when that fails,
//! the body is scanned once, left to right, over a single token buffer:
//! top-level `,` `;` `=>` separate pieces; at each position the longest
//! expression that parses is taken; a token where no expression starts is
//! skipped, and when it is a delimited group its contents are read the same
//! way, recursively. Every step consumes at least one token, so a body costs
//! about one parse of its tokens however foreign its syntax is.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseStream, Parser};
use syn::{Block, Expr, Stmt, Token};

/// How deep groups inside unparsable tokens are descended into (nested
/// macro invocations are bounded separately by the collector).
pub const MAX_GROUP_DEPTH: u32 = 16;

/// A piece of a macro body that parsed.
#[derive(Debug)]
pub enum Piece {
    /// Expressions, in order.
    Exprs(Vec<Expr>),
    /// Statements (block contents).
    Stmts(Vec<Stmt>),
}

/// Macros whose body is code to generate, not code that runs here.
pub fn is_quoting_macro(name: &str) -> bool {
    matches!(
        name,
        "quote" | "quote_spanned" | "parse_quote" | "parse_quote_spanned" | "macro_rules"
    )
}

/// What one cheap walk over a macro body's tokens tells.
#[derive(Debug, Default)]
pub struct BodyFacts {
    /// Somewhere in the body (groups included) a name is directly followed
    /// by parenthesised arguments (and is not a `fn` being declared), or a
    /// `!` by a group (a nested macro). Bodies without either (struct
    /// lists, `bitflags!` tables, plain format arguments) hold no call and
    /// are not parsed.
    pub may_call: bool,
    /// The token that carries the body's SQL: a string literal first
    /// argument, or second after one name (`query_as!(User, "..")`), or a
    /// name first (a constant or a local).
    pub sql: Option<TokenTree>,
}

/// Walks a body's tokens once (each level's token list is copied once by
/// proc-macro2's iterator; nothing is parsed).
pub fn body_facts(tokens: &TokenStream) -> BodyFacts {
    let mut facts = BodyFacts::default();
    let mut commas = 0;
    let mut sql_done = false;
    let mut previous: Option<TokenTree> = None;
    let mut before_previous_is_fn = false;
    for (i, tree) in tokens.clone().into_iter().enumerate() {
        if !sql_done {
            match &tree {
                TokenTree::Literal(_) => {
                    facts.sql = Some(tree.clone());
                    sql_done = true;
                }
                TokenTree::Ident(_) if i == 0 => facts.sql = Some(tree.clone()),
                TokenTree::Punct(p) if p.as_char() == ',' => {
                    commas += 1;
                    sql_done = commas > 1;
                }
                _ => {}
            }
            sql_done |= i > 8;
        }
        if !facts.may_call {
            facts.may_call = is_call_site(&previous, before_previous_is_fn, &tree);
        }
        if facts.may_call && sql_done {
            break;
        }
        before_previous_is_fn = matches!(&previous, Some(TokenTree::Ident(i)) if i == "fn");
        previous = Some(tree);
    }
    facts
}

/// Whether `tree` is the argument group of a call or macro, or a group
/// that holds one.
fn is_call_site(previous: &Option<TokenTree>, fn_before: bool, tree: &TokenTree) -> bool {
    let TokenTree::Group(group) = tree else {
        return false;
    };
    let called = match previous {
        Some(TokenTree::Ident(_)) => group.delimiter() == Delimiter::Parenthesis && !fn_before,
        Some(TokenTree::Punct(p)) => p.as_char() == '!',
        _ => false,
    };
    called || holds_call(&group.stream(), 1)
}

fn holds_call(tokens: &TokenStream, depth: u32) -> bool {
    if depth > MAX_GROUP_DEPTH {
        return false;
    }
    let mut previous: Option<TokenTree> = None;
    let mut before_previous_is_fn = false;
    for tree in tokens.clone() {
        if let TokenTree::Group(group) = &tree {
            let called = match &previous {
                Some(TokenTree::Ident(_)) => {
                    group.delimiter() == Delimiter::Parenthesis && !before_previous_is_fn
                }
                Some(TokenTree::Punct(p)) => p.as_char() == '!',
                _ => false,
            };
            if called || holds_call(&group.stream(), depth + 1) {
                return true;
            }
        }
        before_previous_is_fn = matches!(&previous, Some(TokenTree::Ident(i)) if i == "fn");
        previous = Some(tree);
    }
    false
}

/// Reads a macro body (`braced`: delimited by `{}`) into the pieces that
/// are Rust code.
pub fn parse_body(tokens: &TokenStream, braced: bool) -> Vec<Piece> {
    let mut pieces = Vec::new();
    if !tokens.is_empty() {
        // The scan never fails; a parse error here only means tokens were left.
        let _ =
            (|input: ParseStream<'_>| read(input, braced, 0, &mut pieces)).parse2(tokens.clone());
    }
    pieces
}

/// Statements for a braced stream, else the scan.
fn read(
    input: ParseStream<'_>,
    braced: bool,
    depth: u32,
    pieces: &mut Vec<Piece>,
) -> syn::Result<()> {
    if braced {
        let fork = input.fork();
        if let Ok(stmts) = fork.call(Block::parse_within)
            && fork.is_empty()
        {
            input.advance_to(&fork);
            pieces.push(Piece::Stmts(stmts));
            return Ok(());
        }
    }
    scan(input, depth, pieces)
}

fn scan(input: ParseStream<'_>, depth: u32, pieces: &mut Vec<Piece>) -> syn::Result<()> {
    while !input.is_empty() {
        if input.peek(Token![=>]) {
            input.parse::<Token![=>]>()?;
            continue;
        }
        if input.peek(Token![,]) || input.peek(Token![;]) {
            input.parse::<TokenTree>()?;
            continue;
        }
        let fork = input.fork();
        if let Ok(expr) = fork.parse::<Expr>() {
            input.advance_to(&fork);
            match pieces.last_mut() {
                Some(Piece::Exprs(exprs)) => exprs.push(expr),
                _ => pieces.push(Piece::Exprs(vec![expr])),
            }
            continue;
        }
        if let TokenTree::Group(group) = input.parse::<TokenTree>()?
            && group.delimiter() != Delimiter::None
            && depth < MAX_GROUP_DEPTH
        {
            let braced = group.delimiter() == Delimiter::Brace;
            // Pieces that follow a group start a new run, so a group's
            // expressions are never mistaken for the body's first argument.
            pieces.push(Piece::Exprs(Vec::new()));
            let _ = (|inner: ParseStream<'_>| read(inner, braced, depth + 1, pieces))
                .parse2(group.stream());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;

    /// The pieces as text: `e:` expressions, `s:` statement counts.
    fn pieces(tokens: &str, braced: bool) -> Vec<String> {
        let stream: TokenStream = tokens.parse().unwrap();
        parse_body(&stream, braced)
            .iter()
            .filter_map(|p| match p {
                Piece::Exprs(e) if e.is_empty() => None,
                Piece::Exprs(e) => Some(format!(
                    "e:{}",
                    e.iter()
                        .map(|x| x.to_token_stream().to_string())
                        .collect::<Vec<_>>()
                        .join(" | ")
                )),
                Piece::Stmts(s) => Some(format!("s:{}", s.len())),
            })
            .collect()
    }

    fn calls(tokens: &str) -> bool {
        body_facts(&tokens.parse().unwrap()).may_call
    }

    fn sql_token(tokens: &str) -> Option<String> {
        body_facts(&tokens.parse().unwrap())
            .sql
            .map(|t| t.to_string())
    }

    #[test]
    fn the_sql_argument_token() {
        assert_eq!(sql_token("\"DELETE\", id").as_deref(), Some("\"DELETE\""));
        assert_eq!(sql_token("User, \"UPDATE\"").as_deref(), Some("\"UPDATE\""));
        assert_eq!(sql_token("INSERT_SQL").as_deref(), Some("INSERT_SQL"));
        assert_eq!(sql_token("a, b, \"late\"").as_deref(), Some("a"));
        assert_eq!(sql_token("(x), \"s\"").as_deref(), Some("\"s\""));
    }

    #[test]
    fn bodies_without_calls_are_recognised() {
        assert!(calls("\"{}\", x.len()"));
        assert!(calls("a, [b, { c(1) }]"));
        assert!(calls("v = s.insert(x) => {}"));
        assert!(calls("format!(\"{}\", 1)"));
        assert!(!calls("\"{} {}\", a, b.c"));
        assert!(!calls("pub struct S { a: [u8; 4], b: (u8, u8) }"));
        assert!(!calls("extern { fn f(a: i32) -> i32; }"));
        assert!(!calls(""));
    }

    #[test]
    fn comma_separated_expressions() {
        assert_eq!(pieces("a.b(), c", false), vec!["e:a . b () | c"]);
        assert_eq!(pieces("\"{}\", x.y()", false), vec!["e:\"{}\" | x . y ()"]);
        assert!(pieces("", false).is_empty());
    }

    #[test]
    fn splits_at_top_level_separators_only() {
        // `vec![x; n]`: `;` separates.
        assert_eq!(
            pieces("s.insert(1); 2", false),
            vec!["e:s . insert (1) | 2"]
        );
        // select!-style arms: `=>` separates; `==` and `>=` do not.
        assert_eq!(
            pieces("v = s.insert(a, b) => done(v), c == d, e >= f", false),
            vec!["e:v = s . insert (a , b) | done (v) | c == d | e >= f"]
        );
    }

    #[test]
    fn braced_bodies_are_statements_first() {
        assert_eq!(pieces("let x = 1; x.go()", true), vec!["s:2"]);
        // Not statements: scanned instead.
        assert_eq!(
            pieces("biased; v = s.insert(x) => { done(v) }", true),
            vec!["e:biased | v = s . insert (x) | { done (v) }"]
        );
    }

    #[test]
    fn foreign_syntax_is_skipped_and_groups_are_read() {
        // `conn: { .. }` is not Rust; `conn` and the braced group are.
        assert_eq!(
            pieces("conn: { diesel::insert_into(t).execute(conn) }", true),
            vec!["e:conn | { diesel :: insert_into (t) . execute (conn) }"]
        );
        // Groups inside unparsable tokens are read at any depth.
        assert_eq!(
            pieces("@rule [ $x => ( go(1) ) ]", false),
            vec!["e:x | (go (1))"]
        );
        // A failed expression costs one token: `$a.b($c)` fails from `a`
        // and from `b`; the group `($c)` is then read.
        assert_eq!(pieces("$a.b($c)", false), vec!["e:c"]);
    }
}
