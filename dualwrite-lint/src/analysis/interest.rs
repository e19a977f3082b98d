//! Which call names can matter to a rule.
//!
//! DW001 looks only at calls whose name (a method, or the last segment of a
//! called path) is a write of an annotated trait; DW002 only at calls whose
//! name is the last segment of a raw-write API. Every annotated trait is
//! written `#[dual_write ..]` or `#[path::dual_write ..]`, so the files that
//! declare one contain the text `dual_write`. The driver summarizes those
//! files first, builds an [`Interest`] from their traits and the API table,
//! and then summarizes every other file recording only the calls the
//! interest names: the rest could match no rule. That skips most of the
//! per-call work and most macro bodies (format arguments, logs, asserts).

use std::cell::RefCell;
use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use foldhash::fast::FixedState;
use std::fmt::Write as _;

use proc_macro2::{Ident, TokenStream, TokenTree};

use super::apis::ApiTable;
use super::macros::MAX_GROUP_DEPTH;
use super::summary::FileSummary;

/// Whether a file's text can declare an annotated trait (and so must be
/// summarized before the interest is known).
pub fn declares_annotated_traits(text: &str) -> bool {
    memchr::memmem::find(text.as_bytes(), b"dual_write").is_some()
}

/// The call names that can match a rule, and the names of the annotated
/// traits.
#[derive(Debug, Clone)]
pub struct Interest {
    /// Hashed with a fixed seed: the names come from the project.
    names: HashSet<Box<str>, FixedState>,
    /// Bytes some name starts with: most words are rejected without
    /// hashing.
    first_bytes: [bool; 256],
    /// Bit `n` is set if some name is `n` bytes long (`n` < 64).
    lengths: u64,
    /// Some name is 64 bytes or longer.
    long_names: bool,
    /// Finds the names in source text.
    finder: Option<AhoCorasick>,
}

thread_local! {
    /// Scratch text of one identifier (proc-macro2 lends no `&str`).
    static IDENT_TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Interest {
    /// The write methods of the traits in `summaries` and the last segment
    /// of every API in `apis`.
    pub fn new<'a>(apis: &ApiTable, summaries: impl IntoIterator<Item = &'a FileSummary>) -> Self {
        let mut names: HashSet<Box<str>, FixedState> = apis
            .specs
            .iter()
            .filter_map(|spec| spec.interest_name())
            .map(Box::from)
            .collect();
        for summary in summaries {
            for summary_trait in &summary.traits {
                names.extend(summary_trait.writes.iter().cloned());
                // Code that names the trait (an `impl` of it in a function
                // body) is walked even if it calls none of its writes.
                names.insert(summary_trait.name.clone());
            }
        }
        let mut first_bytes = [false; 256];
        let mut lengths = 0_u64;
        let mut long_names = false;
        for name in &names {
            if let Some(&first) = name.as_bytes().first() {
                first_bytes[usize::from(first)] = true;
            }
            match u32::try_from(name.len()) {
                Ok(len) if len < 64 => lengths |= 1 << len,
                _ => long_names = true,
            }
        }
        // Building fails only past the automaton's size limits, far above
        // any real set of names; without it every text counts as naming one.
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(names.iter().map(|name| name.as_bytes()))
            .ok();
        Interest {
            names,
            first_bytes,
            lengths,
            long_names,
            finder,
        }
    }

    /// Whether a call named `name` can match a rule.
    pub fn contains(&self, name: &str) -> bool {
        let Some(&first) = name.as_bytes().first() else {
            return false;
        };
        let length_possible = match u32::try_from(name.len()) {
            Ok(len) if len < 64 => self.lengths & (1 << len) != 0,
            _ => self.long_names,
        };
        length_possible && self.first_bytes[usize::from(first)] && self.names.contains(name)
    }

    /// Whether a name of interest occurs in `text` as a whole word (source
    /// text, comments and literals included, so the answer errs towards
    /// yes).
    pub fn mentioned_in_text(&self, text: &str) -> bool {
        let Some(finder) = &self.finder else {
            return true;
        };
        let bytes = text.as_bytes();
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        // A whole word. Leftmost-longest matches hide no whole word: one
        // that overlaps a match would start inside it (or end inside it),
        // next to a word character.
        finder.find_iter(bytes).any(|found| {
            let before = found.start().checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(found.end()).copied();
            !before.is_some_and(is_word) && !after.is_some_and(is_word)
        })
    }

    /// [`Interest::contains`] for an identifier, without allocating.
    pub fn contains_ident(&self, ident: &Ident) -> bool {
        IDENT_TEXT.with(|text| {
            let mut text = text.borrow_mut();
            text.clear();
            // Writing to a String cannot fail.
            let _ = write!(text, "{ident}");
            self.contains(text.as_str())
        })
    }

    /// Whether any identifier in `tokens` (groups included, down to
    /// [`MAX_GROUP_DEPTH`]) is a name of interest. Slower than
    /// [`Interest::mentioned_in_text`]: for tokens without source text.
    pub fn mentioned_in(&self, tokens: &TokenStream) -> bool {
        self.mentioned_at(tokens, 0)
    }

    fn mentioned_at(&self, tokens: &TokenStream, depth: u32) -> bool {
        if depth > MAX_GROUP_DEPTH {
            return false;
        }
        tokens.clone().into_iter().any(|tree| match &tree {
            TokenTree::Ident(ident) => self.contains_ident(ident),
            TokenTree::Group(group) => self.mentioned_at(&group.stream(), depth + 1),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::summary::TraitSummary;

    fn interest() -> Interest {
        let summary = FileSummary {
            traits: vec![TraitSummary {
                name: "UserStore".into(),
                adapter: "UserStoreDualWrite".into(),
                writes: vec!["rename_account".into()],
                errors: Vec::new(),
                span: Default::default(),
                in_test: false,
            }],
            ..FileSummary::default()
        };
        Interest::new(&ApiTable::default_table(), [&summary])
    }

    #[test]
    fn names_come_from_traits_and_the_api_table() {
        let interest = interest();
        assert!(interest.contains("rename_account"));
        // `sqlx::query` and `query!` by their last segment.
        assert!(interest.contains("query"));
        assert!(interest.contains("insert_into"));
        assert!(!interest.contains("len"));
        assert!(interest.contains_ident(&Ident::new("execute", proc_macro2::Span::call_site())));
    }

    #[test]
    fn mentions_are_found_at_any_depth() {
        let interest = interest();
        let mentioned = |text: &str| interest.mentioned_in(&text.parse().unwrap());
        assert!(mentioned("\"{}\", x.rename_account(1)"));
        assert!(mentioned("a, [b, { c.execute(q) }]"));
        assert!(!mentioned("\"{} {}\", a.len(), b.to_string()"));
        assert!(!mentioned(""));
        let in_text = |text: &str| interest.mentioned_in_text(text);
        assert!(in_text("(\"{}\", x.rename_account(1))"));
        assert!(in_text("[b, { c.execute(q) }]"));
        assert!(in_text("(é, execute)"));
        // `set` inside `hset` does not hide `hset`; inside `offset` it is no word.
        assert!(in_text("c.hset(k, v)"));
        assert!(!in_text("c.offset(k)"));
        assert!(!in_text(
            "(\"{} {}\", a.len(), b.to_string(), executed, re_execute)"
        ));
        assert!(!in_text(""));
    }

    #[test]
    fn only_files_naming_the_attribute_declare_traits() {
        assert!(declares_annotated_traits(
            "#[dualwrite_runtime::dual_write]\ntrait T {}"
        ));
        assert!(!declares_annotated_traits("trait T { fn insert(&self); }"));
    }
}
