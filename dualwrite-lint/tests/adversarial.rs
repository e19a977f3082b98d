//! No input aborts the run: more than 10,000 adversarial files, generated
//! from a fixed seed (deep nesting of every bracket, closure, operator,
//! generic, chain and macro form; million-link method chains; long lines;
//! huge literals; nightly-only syntax; random bytes; token soup; truncated
//! and mutated files; invalid UTF-8), are checked through the binary in
//! batches. Every run must exit with 0, 1 or 2 and print its JSON report;
//! every file is either checked or reported not checked with a DW000
//! finding at its path; and files that cannot be checked (not UTF-8,
//! nested past any limit) must be among the rejected ones.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use support::*;

/// How many inputs are generated.
const INPUTS: usize = 10_240;
/// Files per run of the binary.
const BATCH: usize = 1_024;
/// The first inputs are giants (million-link chains, 100,000-digit
/// literals...): they run in a batch of their own.
const GIANTS: usize = 12;

/// SplitMix64: a fixed seed gives the same inputs on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A depth: mostly near the default limit (256), sometimes far past it
    /// (rarely, to keep the run short: the pre-check stops at the limit).
    fn depth(&mut self) -> usize {
        match self.below(32) {
            0..=7 => 1 + self.below(64),
            8..=23 => 200 + self.below(120),
            24..=30 => 1_000 + self.below(2_000),
            _ => 20_001 + self.below(5_000),
        }
    }
}

/// What a generated file must come to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Checked or rejected, either is fine; it must not abort.
    Any,
    /// It must be rejected with a DW000 finding.
    Rejected,
}

/// A nesting form: what opens one level and what closes it.
struct Form {
    open: &'static str,
    close: &'static str,
    /// What sits in the middle.
    core: &'static str,
}

const fn form(open: &'static str, core: &'static str, close: &'static str) -> Form {
    Form { open, close, core }
}

/// Forms nested inside an expression position.
const EXPR_FORMS: &[Form] = &[
    form("(", "1", ")"),
    form("[", "1", "]"),
    form("{ ", "1", " }"),
    form("(1, ", "2", ")"),
    form("|| ", "1", ""),
    form("|x| ", "x", ""),
    form("|a, b| ", "a", ""),
    form("move || ", "1", ""),
    form("async move { ", "1", " }"),
    form("unsafe { ", "1", " }"),
    form("loop { ", "break", " }"),
    form("!", "x", ""),
    form("-", "x", ""),
    form("*", "x", ""),
    form("&", "x", ""),
    form("&&", "x", ""),
    form("&mut ", "x", ""),
    form("return ", "1", ""),
    form("break ", "1", ""),
    form("a = ", "1", ""),
    form("a += ", "1", ""),
    form("..", "1", ""),
    form("if a { ", "1", " } else { 2 }"),
    form("if ", "a", " { 1 }"),
    form("match ", "x", " { _ => 1 }"),
    form("while ", "a", " {}"),
    form("f(", "1", ")"),
    form("m!(", "1", ")"),
    form("vec![", "1", "]"),
    form("format!(\"{}\", ", "1", ")"),
    form("S { a: ", "1", " }"),
    form("Some(", "1", ")"),
    form("x.f(", "1", ")"),
    form("<T as Tr<", "u8", ">>::f()"),
    form("f::<Vec<", "u8", ">>()"),
    form("[0; ", "1", "]"),
];

/// Forms nested inside a type position.
const TYPE_FORMS: &[Form] = &[
    form("Vec<", "u8", ">"),
    form("Option<Result<", "u8", ", E>>"),
    form("&", "u8", ""),
    form("&'a mut ", "u8", ""),
    form("*const ", "u8", ""),
    form("[", "u8", "; 4]"),
    form("(", "u8", ",)"),
    form("fn() -> ", "u8", ""),
    form("Box<dyn Fn() -> ", "u8", ">"),
    form("impl Iterator<Item = ", "u8", ">"),
    form("<T as Tr<", "u8", ">>::X"),
];

/// Forms nested inside a pattern position.
const PAT_FORMS: &[Form] = &[
    form("(", "a", ",)"),
    form("[", "a", "]"),
    form("Some(", "a", ")"),
    form("S { f: ", "a", " }"),
    form("a @ ", "b", ""),
    form("&", "a", ""),
    form("(", "a", ") | b"),
];

/// Forms nested at item level.
const ITEM_FORMS: &[Form] = &[
    form("mod m { ", "fn f() {}", " }"),
    form("#[a(", "b", ")] "),
    form("fn f() { ", "1", " }"),
    form("impl S { fn f() { ", "1", " } }"),
    form("macro_rules! m { () => { ", "1", " } }"),
];

/// Chains: one link repeated after a start.
const CHAINS: &[(&str, &str)] = &[
    ("x", ".a()"),
    ("x", ".a"),
    ("x", ".0"),
    ("x", "?"),
    ("f", "()"),
    ("x", "[0]"),
    ("x", " + x"),
    ("x", " * 2 - 1"),
    ("x", " as u8"),
    ("x", " || y"),
    ("x", " == y && z"),
    ("a()", ".await"),
    ("if a {}", " else if a {}"),
];

/// Nightly-only syntax that syn does not parse.
const NIGHTLY: &[&str] = &[
    "fn f() { let g = || { yield 1; }; }\n",
    "fn f() -> Result<u8, E> { let x: Result<u8, E> = try { g()? }; x }\n",
    "fn f(b: Box<u8>) { match b { box x => {} } }\n",
    "fn f() -> Result<(), E> { do yeet E; }\n",
    "fn f() { let g = gen { yield 1; }; }\n",
    "fn f() { let b = box 1; }\n",
    "fn f() { let x = k#raw; }\n",
];

/// Valid files, mutated and truncated below.
const SEEDS: &[&str] = &[
    r#"use dualwrite_runtime::dual_write;

#[dual_write(key = id)]
pub trait UserStore {
    fn insert(&self, id: u64, name: &str) -> Result<(), Error>;
    fn get(&self, id: u64) -> Result<Option<String>, Error>;
}

pub fn register(pg: &PgUserStore, id: u64) -> Result<(), Error> {
    pg.insert(id, "ann")?;
    Ok(())
}
"#,
    r#"pub async fn rename(c: &sqlx::PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
        .bind("x")
        .bind(id)
        .execute(c)
        .await?;
    let v: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 3]).collect();
    if v.len() > 2 && v[0] < v[1] { println!("{v:?}"); }
    Ok(())
}
"#,
    r###"impl<'a, T: Clone + 'a> Iterator for Walk<'a, T> where T: Send {
    type Item = &'a T;
    fn next(&mut self) -> Option<&'a T> {
        match self.stack.pop() {
            Some(Node { left, right, .. }) if left.is_some() => { self.stack.push(right?); None }
            Some(n) => Some(&n.value),
            None => None,
        }
    }
}
macro_rules! twice { ($e:expr) => { $e; $e }; }
const X: [u8; 4] = [1, 2, 3, 4];
static S: &str = r##"raw "# string"##;
"###,
];

/// Tokens for token soup.
const SOUP: &[&str] = &[
    "fn", "let", "x", "=", ";", "(", ")", "{", "}", "[", "]", "<", ">", "|", "||", "&", "&&", "!",
    "-", "*", "+", "..", "=>", "->", "::", ".", ",", "?", "'a", "'x'", "\"s\"", "r#\"r\"#",
    "b\"b\"", "1", "1.5e3", "0x_ff", "if", "else", "match", "loop", "move", "async", "await",
    "impl", "trait", "struct", "#", "#!", "$", "@", "mod", "pub", "dyn", "as", "return", "yield",
    "box", "try", "//", "/*", "*/", "\n", "\\", "é", "€", "\u{0}", "\"", "'", "r#",
];

fn nested(forms: &[Form], rng: &mut Rng, depth: usize) -> (String, &'static str) {
    let form = rng.pick(forms);
    let mut text = String::with_capacity(depth * (form.open.len() + form.close.len()) + 8);
    for _ in 0..depth {
        text.push_str(form.open);
    }
    text.push_str(form.core);
    for _ in 0..depth {
        text.push_str(form.close);
    }
    (text, form.open)
}

/// One input: (bytes, expectation).
fn generate(index: usize, rng: &mut Rng) -> (Vec<u8>, Expect) {
    let reject_past = |depth: usize| {
        // Far past every limit (max_nesting 256, chains 16,384) it must
        // be rejected; near them either outcome is fine.
        if depth > 20_000 {
            Expect::Rejected
        } else {
            Expect::Any
        }
    };
    // A few fixed giants first, then random ones.
    match index {
        0 => {
            let mut s = String::from(
                "fn f(c: &rusqlite::Connection) {\n    c.execute(\"DELETE FROM t\", []).unwrap()",
            );
            s.push_str(&".a()".repeat(1_000_000));
            s.push_str(";\n}\n");
            return (s.into_bytes(), Expect::Rejected);
        }
        1 => {
            let s = format!("fn f() {{ let x = a{}; }}\n", ".b".repeat(1_000_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        2 => {
            let s = format!("const N: u128 = {};\n", "9".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        3 => {
            let s = format!("fn f() {{ let x = {}u8; }}\n", "1".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        4 => {
            let s = format!("fn f() {{ let x = 1.{}e7; }}\n", "5".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        5 => {
            let s = format!("fn f() {{ let x = 0x{}; }}\n", "f".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        6 => {
            let s = format!("fn f() {{ m!({}); }}\n", "7".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        7 => {
            let s = format!("const S: &str = \"{}\";\n", "a".repeat(1_000_000));
            return (s.into_bytes(), Expect::Any);
        }
        8 => {
            let s = "let a = 1; ".repeat(20_000);
            return (format!("fn f() {{ {s} }}\n").into_bytes(), Expect::Any);
        }
        9 => {
            let s = format!("fn f() {{ let c = {}1; }}\n", "|| ".repeat(20_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        10 => {
            let hashes = "#".repeat(300);
            let s = format!("const S: &str = r{hashes}\"x\"{hashes};\n");
            return (s.into_bytes(), Expect::Any);
        }
        11 => {
            let s = format!("const X: f64 = 1e{};\n", "9".repeat(100_000));
            return (s.into_bytes(), Expect::Rejected);
        }
        _ => {}
    }
    match rng.below(20) {
        0..=4 => {
            let (forms, wrap): (&[Form], fn(&str) -> String) = match rng.below(5) {
                0 | 1 => (EXPR_FORMS, |e| format!("fn f() {{\n    let v = {e};\n}}\n")),
                2 => (TYPE_FORMS, |t| format!("type T = {t};\n")),
                3 => (PAT_FORMS, |p| format!("fn f() {{ let {p} = v; }}\n")),
                _ => (ITEM_FORMS, |i| format!("{i}\n")),
            };
            let depth = rng.depth();
            let (inner, _) = nested(forms, rng, depth);
            (wrap(&inner).into_bytes(), reject_past(depth))
        }
        5 | 6 => {
            let (start, link) = *rng.pick(CHAINS);
            let depth = rng.depth();
            let s = format!("fn f() {{ let v = {start}{}; }}\n", link.repeat(depth));
            (s.into_bytes(), Expect::Any)
        }
        7 => {
            // A form nested inside a macro body or an attribute.
            let depth = rng.depth();
            let (inner, _) = nested(EXPR_FORMS, rng, depth);
            let s = match rng.below(3) {
                0 => format!("fn f() {{ println!(\"{{}}\", {inner}); }}\n"),
                1 => format!("#[cfg_attr(x, doc = {inner})]\nfn f() {{}}\n"),
                _ => format!("m! {{ {inner} }}\n"),
            };
            (s.into_bytes(), reject_past(depth))
        }
        8 => (rng.pick(NIGHTLY).as_bytes().to_vec(), Expect::Any),
        9 | 10 => {
            // Random bytes.
            let len = 1 + rng.below(600);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            (bytes, Expect::Any)
        }
        11..=13 => {
            // Token soup.
            let len = 1 + rng.below(300);
            let mut s = String::new();
            for _ in 0..len {
                let token: &&str = rng.pick(SOUP);
                s.push_str(token);
                if rng.below(3) == 0 {
                    s.push(' ');
                }
            }
            (s.into_bytes(), Expect::Any)
        }
        14 | 15 => {
            // A valid file truncated at a random byte (possibly inside a
            // multi-byte character: invalid UTF-8 then).
            let seed = rng.pick(SEEDS).as_bytes();
            let cut = rng.below(seed.len());
            (seed[..cut].to_vec(), Expect::Any)
        }
        16 | 17 => {
            // A valid file with a few bytes replaced, inserted or removed.
            let mut bytes = rng.pick(SEEDS).as_bytes().to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = *rng.pick(b"(){}[]<>|&!;,.\"'#/*\\\xff\xc3"),
                    1 => bytes.insert(at, *rng.pick(b"(){}[]<>|&!;,.\"'#/*\\")),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            (bytes, Expect::Any)
        }
        18 => {
            // Invalid UTF-8 in otherwise valid code.
            let mut bytes = rng.pick(SEEDS).as_bytes().to_vec();
            let at = rng.below(bytes.len());
            bytes.insert(at, *rng.pick(&[0xff_u8, 0xfe, 0xc0, 0x80]));
            (bytes, Expect::Rejected)
        }
        _ => {
            // A long line: many statements or a long string on one line.
            let n = 200 + rng.below(2_000);
            let s = match rng.below(3) {
                0 => format!("fn f() {{ {} }}\n", "x = y + 1; ".repeat(n)),
                1 => format!("const S: &str = \"{}\";\n", "ab\\n".repeat(n)),
                _ => format!("const A: [u8; {n}] = [{}];\n", "1,".repeat(n)),
            };
            (s.into_bytes(), Expect::Any)
        }
    }
}

/// Runs `check --format json` over `dir`; panics with the output unless the
/// run exits with 0, 1 or 2 and prints a JSON report.
fn check_dir(dir: &Path) -> Result<serde_json::Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_dualwrite-lint"))
        .args(["check", "--format", "json", "--root"])
        .arg(dir)
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    match output.status.code() {
        Some(0..=2) => {}
        code => {
            return Err(format!(
                "exit {code:?} (signal: an abort)\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
                    .chars()
                    .take(2_000)
                    .collect::<String>()
            ));
        }
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "no JSON report ({e})\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The files among `names` (under `dir`) that fail on their own, found by
/// halving: a few runs of the binary rather than one per file.
fn bisect<'a>(dir: &Path, names: &[&'a String]) -> Vec<&'a String> {
    let tree = TempTree::new("adversarial-bisect");
    for name in names {
        tree.write(name, std::fs::read(dir.join(name)).unwrap());
    }
    if check_dir(&tree.path).is_ok() {
        return Vec::new();
    }
    if names.len() == 1 {
        return names.to_vec();
    }
    let (left, right) = names.split_at(names.len() / 2);
    let mut out = bisect(dir, left);
    out.extend(bisect(dir, right));
    out
}

#[test]
fn no_input_aborts_the_run() {
    let mut rng = Rng(0x5EED_D0A1_3A7E_0011);
    let mut failures = Vec::new();
    let mut rejected_total = 0;
    let mut inputs = 0;
    let mut batch_start = 0;
    while batch_start < INPUTS {
        let tree = TempTree::new("adversarial");
        let mut expected = BTreeMap::new();
        let end = if batch_start < GIANTS {
            GIANTS
        } else {
            (batch_start + BATCH).min(INPUTS)
        };
        for index in batch_start..end {
            let (bytes, expect) = generate(index, &mut rng);
            let name = format!("src/f{index:05}.rs");
            tree.write(&name, bytes);
            expected.insert(name, expect);
        }
        inputs += expected.len();
        let started = std::time::Instant::now();
        let checked = check_dir(&tree.path);
        eprintln!(
            "batch {batch_start}..{end}: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let doc = match checked {
            Ok(doc) => doc,
            Err(error) => {
                // Name the files that fail on their own, by bisection.
                let names: Vec<&String> = expected.keys().collect();
                let culprits = bisect(&tree.path, &names);
                failures.push(format!(
                    "batch {batch_start}..{end}: {error}\nfiles that fail alone: {culprits:?}"
                ));
                batch_start = end;
                continue;
            }
        };
        let rejected: BTreeSet<String> = doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["rule"] == "DW000")
            .map(|f| f["location"]["file"].as_str().unwrap().to_owned())
            .collect();
        let checked = doc["summary"]["files"].as_u64().unwrap() as usize;
        let not_checked = doc["summary"]["not_checked"].as_u64().unwrap() as usize;
        if checked + not_checked != expected.len() {
            failures.push(format!(
                "batch {batch_start}..{end}: {checked} checked + {not_checked} not checked != {} files",
                expected.len()
            ));
        }
        // Every file not checked has its DW000 (empty files are checked and
        // warned about, so `rejected` may hold more).
        if rejected.len() < not_checked {
            failures.push(format!(
                "batch {batch_start}..{end}: {not_checked} not checked but {} files with DW000",
                rejected.len()
            ));
        }
        for (name, expect) in &expected {
            if *expect == Expect::Rejected && !rejected.contains(name) {
                failures.push(format!("{name}: must be rejected (DW000) but was not"));
            }
        }
        rejected_total += rejected.len();
        batch_start = end;
    }
    assert!(inputs >= 10_000);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The generator is not trivially accepted or rejected.
    assert!(
        rejected_total > inputs / 10 && rejected_total < inputs * 9 / 10,
        "{rejected_total} of {inputs} rejected"
    );
}
