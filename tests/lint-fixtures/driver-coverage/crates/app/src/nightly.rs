// Nightly-only syntax the parser does not read.
fn f() -> Result<(), E> {
    do yeet E;
}
