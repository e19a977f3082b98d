// Deeper than max_nesting (8).
fn f() -> u8 {
    ((((((((((1))))))))))
}
