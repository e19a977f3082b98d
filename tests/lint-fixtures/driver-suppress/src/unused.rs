// Driver fixture: a suppression that matches nothing (DW004 warning).
// dualwrite-lint: allow(DW001) left over from an old backfill
fn fine() {}

// Not suppressions: documentation and strings.
/// // dualwrite-lint: allow(DW001) in a doc comment
const TEXT: &str = "
// dualwrite-lint: allow(DW001) in a multi-line string
";
