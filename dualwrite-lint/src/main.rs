//! `dualwrite-lint classify FILE...`: lists the `#[dual_write]` traits of
//! each file and how every method is routed.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, files)) = args.split_first() else {
        eprintln!("usage: dualwrite-lint classify FILE...");
        return ExitCode::from(2);
    };
    if command != "classify" || files.is_empty() {
        eprintln!("usage: dualwrite-lint classify FILE...");
        return ExitCode::from(2);
    }
    let mut status = ExitCode::SUCCESS;
    for path in files {
        let source = match std::fs::read_to_string(path) {
            Ok(source) => source,
            Err(error) => {
                eprintln!("{path}: cannot read: {error}");
                status = ExitCode::from(2);
                continue;
            }
        };
        let traits = match dualwrite_lint::annotated_traits(&source) {
            Ok(traits) => traits,
            Err(error) => {
                let at = error.span().start();
                eprintln!(
                    "{path}:{}:{}: cannot parse: {error}",
                    at.line,
                    at.column + 1
                );
                status = ExitCode::from(2);
                continue;
            }
        };
        for t in traits {
            match t.model {
                Ok(model) => {
                    for m in &model.methods {
                        let line = m.ident.span().start().line;
                        let key = m
                            .key
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |k| k.display());
                        println!(
                            "{path}:{line}: {}::{} {} key={key}",
                            t.name,
                            m.ident,
                            m.kind.as_str()
                        );
                    }
                }
                Err(errors) => {
                    for error in errors {
                        let at = error.span().start();
                        println!("{path}:{}:{}: error: {error}", at.line, at.column + 1);
                    }
                    status = ExitCode::from(1);
                }
            }
        }
    }
    status
}
