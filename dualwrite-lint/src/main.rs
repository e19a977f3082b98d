//! `dualwrite-lint`: see [`dualwrite_lint::cli`].

fn main() -> std::process::ExitCode {
    dualwrite_lint::cli::main()
}
