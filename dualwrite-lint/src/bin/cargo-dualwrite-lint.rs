//! `cargo dualwrite-lint …`: the same program as `dualwrite-lint`, installed
//! under the name cargo looks for; cargo passes `dualwrite-lint` as the
//! first argument, which [`dualwrite_lint::cli::main`] skips.

fn main() -> std::process::ExitCode {
    dualwrite_lint::cli::main()
}
