// Driver fixture: a file that does not parse, suppressed with a reason.
fn ok() {}

// dualwrite-lint: allow(DW000) produced by a template, fixed upstream
fn broken() { let x = ; }
