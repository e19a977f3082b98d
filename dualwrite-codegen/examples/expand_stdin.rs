//! Prints the expansion of the `#[dual_write]` trait read from standard input.
//!
//! `cargo run -p dualwrite-codegen --example expand_stdin < trait.rs`

use std::io::Read as _;

fn main() {
    let mut src = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut src) {
        eprintln!("cannot read standard input: {e}");
        std::process::exit(2);
    }
    let file = match syn::parse_file(&src) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("cannot parse the input: {e}");
            std::process::exit(2);
        }
    };
    for item in file.items {
        let syn::Item::Trait(item) = item else {
            continue;
        };
        let args = item
            .attrs
            .iter()
            .find(|a| a.path().is_ident("dual_write"))
            .map(|a| match &a.meta {
                syn::Meta::List(list) => list.tokens.clone(),
                _ => proc_macro2::TokenStream::new(),
            })
            .unwrap_or_default();
        let mut item = item.clone();
        item.attrs.retain(|a| !a.path().is_ident("dual_write"));
        match dualwrite_codegen::expand_trait(args, &item) {
            Ok(tokens) => match syn::parse2::<syn::File>(tokens.clone()) {
                Ok(file) => println!("{}", prettyplease::unparse(&file)),
                Err(e) => println!("/* unparsable expansion: {e} */\n{tokens}"),
            },
            Err(errors) => {
                for e in errors {
                    println!("error: {e}");
                }
            }
        }
    }
}
