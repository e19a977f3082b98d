//! The audit side of dualwrite: reads Rust sources with the same parser as
//! the `#[dual_write]` macro, so both agree on what a write is.
//!
//! This crate currently lists annotated traits and how each method is
//! classified; the bypass checks build on it.

use dualwrite_codegen::TraitModel;

/// One `#[dual_write]` trait found in a source file.
#[derive(Debug)]
pub struct AnnotatedTrait {
    /// The trait's name.
    pub name: String,
    /// The model the macro would build, or the errors it would report.
    pub model: Result<TraitModel, Vec<syn::Error>>,
}

/// Parses a source file and models every trait annotated with `#[dual_write]`
/// (also written `#[dualwrite_runtime::dual_write]`).
pub fn annotated_traits(source: &str) -> syn::Result<Vec<AnnotatedTrait>> {
    let file = syn::parse_file(source)?;
    let mut out = Vec::new();
    collect(&file.items, &mut out);
    Ok(out)
}

fn collect(items: &[syn::Item], out: &mut Vec<AnnotatedTrait>) {
    for item in items {
        match item {
            syn::Item::Trait(item) => {
                let Some(attr) = item.attrs.iter().find(|a| {
                    a.path()
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "dual_write")
                }) else {
                    continue;
                };
                let args = match &attr.meta {
                    syn::Meta::List(list) => list.tokens.clone(),
                    _ => proc_macro2::TokenStream::new(),
                };
                let mut item = item.clone();
                item.attrs.retain(|a| a != attr);
                out.push(AnnotatedTrait {
                    name: item.ident.to_string(),
                    model: TraitModel::parse(args, &item),
                });
            }
            syn::Item::Mod(module) => {
                if let Some((_, items)) = &module.content {
                    collect(items, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_classifies_annotated_traits() {
        let src = r#"
            mod repo {
                #[dual_write(key = id)]
                pub trait UserStore {
                    fn insert(&self, id: u64) -> Result<(), E>;
                    fn get(&self, id: u64) -> Option<u8>;
                }
            }
            pub trait Plain { fn insert(&self); }
        "#;
        let traits = annotated_traits(src).unwrap();
        assert_eq!(traits.len(), 1);
        let model = traits[0].model.as_ref().unwrap();
        let kinds: Vec<_> = model
            .methods
            .iter()
            .map(|m| {
                (
                    m.ident.to_string(),
                    m.kind.as_str(),
                    m.key.as_ref().map(|k| k.display()),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("insert".to_owned(), "write", Some("id".to_owned())),
                ("get".to_owned(), "read", Some("id".to_owned())),
            ]
        );
    }

    #[test]
    fn reports_the_macro_errors() {
        let traits = annotated_traits("#[dual_write] trait T { fn compute(&self); }").unwrap();
        let errors = traits[0].model.as_ref().unwrap_err();
        assert!(
            errors[0]
                .to_string()
                .contains("cannot tell whether `compute`")
        );
    }
}
