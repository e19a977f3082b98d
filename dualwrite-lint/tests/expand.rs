//! `expand` prints exactly what the macro generates (compared with the
//! macro's own codegen call), and `report` lists every annotated trait.

mod support;

use support::*;

/// What `#[dual_write(args)]` generates for `trait_src`, the way the macro
/// itself is invoked: the same codegen entry point, pretty-printed.
fn macro_output(args: &str, trait_src: &str) -> String {
    let args: proc_macro2::TokenStream = args.parse().unwrap();
    let input: proc_macro2::TokenStream = trait_src.parse().unwrap();
    let tokens = dualwrite_codegen::expand(args, input);
    prettyplease::unparse(&syn::parse2::<syn::File>(tokens).unwrap())
}

const USER_STORE: &str = "pub trait UserStore {
    #[dual_write(key = user.id)]
    fn insert(&self, user: &User) -> Result<(), StoreError>;
    fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
    #[dual_write(compare = same_user)]
    fn find(&self, id: u64) -> Result<Option<User>, StoreError>;
    #[dual_write(passthrough)]
    fn ping(&self) -> bool;
}";

const ORDER_STORE: &str = "pub trait OrderStore {
        fn delete(&self, order_id: u64) -> bool;
        #[dual_write(read, no_compare)]
        fn count(&self) -> u64;
    }";

#[test]
fn expand_prints_what_the_macro_generates() {
    let dir = fixture("driver-report");
    let output = run(&dir, &["expand", "src/repo.rs", "--trait", "UserStore"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let expected = format!(
        "{}{}\n",
        dualwrite_lint::expand::header("src/repo.rs", "UserStore"),
        macro_output("key = id", USER_STORE)
    );
    assert_eq!(stdout(&output), expected);
    assert!(expected.contains("pub struct UserStoreDualWrite"));
}

#[test]
fn expand_all_reports_rejected_traits() {
    let dir = fixture("driver-report");
    let output = run(&dir, &["expand", "src/repo.rs"]);
    // `Broken` does not expand: exit 1, its error on stderr, the others printed.
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("src/repo.rs:27:8: error[DW003]: trait `Broken`"),
        "{}",
        stderr(&output)
    );
    let text = stdout(&output);
    assert!(text.contains(&macro_output("key = id", USER_STORE)));
    assert!(text.contains(&macro_output("adapter = Orders", ORDER_STORE)));
}

#[test]
fn expand_writes_one_file_per_trait() {
    let tree = TempTree::new("expand-out");
    let dir = fixture("driver-report");
    let out = tree.path.join("expanded");
    let output = run(
        &dir,
        &["expand", "src/repo.rs", "--out", out.to_str().unwrap()],
    );
    assert_eq!(code(&output), 1);
    let user = std::fs::read_to_string(out.join("user_store.rs")).unwrap();
    assert!(user.ends_with(&macro_output("key = id", USER_STORE)));
    let orders = std::fs::read_to_string(out.join("order_store.rs")).unwrap();
    assert!(orders.contains("pub struct Orders"));
    assert!(!out.join("broken.rs").exists());
}

#[test]
fn expand_errors_exit_2() {
    let dir = fixture("driver-report");
    let unknown = run(&dir, &["expand", "src/repo.rs", "--trait", "Nope"]);
    assert_eq!(code(&unknown), 2);
    assert!(
        stderr(&unknown).contains("found: UserStore, OrderStore, Broken"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(code(&run(&dir, &["expand", "src/missing.rs"])), 2);
    let clean = fixture("driver-suppress");
    assert_eq!(code(&run(&clean, &["expand", "src/generated.rs"])), 2);
}

#[test]
fn report_markdown() {
    let output = run(&fixture("driver-report"), &["report"]);
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    assert!(text.contains("3 annotated traits in 1 file."), "{text}");
    assert!(text.contains("## `UserStore` (src/repo.rs:6)"), "{text}");
    assert!(
        text.contains("Adapter `UserStoreDualWrite`, command enum `UserStoreWrite`."),
        "{text}"
    );
    for row in [
        "| `insert` | write | `user.id` | - | src/repo.rs:8 |",
        "| `get` | read | `id` | `PartialEq` | src/repo.rs:9 |",
        "| `find` | read | `id` | `same_user` | src/repo.rs:11 |",
        "| `ping` | passthrough | - | - | src/repo.rs:13 |",
        "| `delete` | write | - | - | src/repo.rs:19 |",
        "| `count` | read | - | `none` | src/repo.rs:21 |",
    ] {
        assert!(text.contains(row), "missing {row}\n{text}");
    }
    assert!(
        text.contains("- src/repo.rs:27:8: cannot tell whether `compute`"),
        "{text}"
    );
}

#[test]
fn report_json() {
    let output = run(&fixture("driver-report"), &["report", "--format", "json"]);
    assert_eq!(code(&output), 0);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(doc["version"], 1);
    let traits = doc["traits"].as_array().unwrap();
    assert_eq!(traits.len(), 3);
    assert_eq!(traits[1]["name"], "OrderStore");
    assert_eq!(traits[1]["adapter"], "Orders");
    assert_eq!(traits[1]["methods"][0]["kind"], "write");
    assert_eq!(traits[2]["adapter"], serde_json::Value::Null);
    assert_eq!(traits[2]["errors"][0]["line"], 27);
}
