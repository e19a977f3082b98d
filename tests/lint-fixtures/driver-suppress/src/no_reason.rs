// Driver fixture: a suppression without a reason (DW004 error); the
// parse failure it covers stays suppressed.
fn broken() { let x = ; } // dualwrite-lint: allow(DW000)
