// A misspelled option on a method whose name classifies nothing reports the typo only, not a follow-on "cannot tell" error.
use dualwrite_runtime::dual_write;

#[dual_write]
pub trait UserStore {
    #[dual_write(wrte)]
    fn refresh(&self, id: u64);
}

fn main() {}
