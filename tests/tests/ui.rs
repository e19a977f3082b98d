//! Compile-fail and compile-pass UI tests for `#[dual_write]`: every misuse
//! must be reported on the offending token with a message that says what to do.
//!
//! Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p dualwrite-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
