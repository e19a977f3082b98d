// A syntax error.
fn b() {
    let x = ;
}
