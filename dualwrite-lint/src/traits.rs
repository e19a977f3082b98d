//! Finding the `#[dual_write]` traits of a file (at any module depth) and
//! modelling them with the macro's own parser.

use dualwrite_codegen::TraitModel;
use proc_macro2::TokenStream;
use syn::{Item, ItemTrait};

/// One `#[dual_write]` trait found in a source file.
#[derive(Debug)]
pub struct AnnotatedTrait {
    /// The trait's name.
    pub name: String,
    /// The 1-based line of the trait's name.
    pub line: usize,
    /// The attribute's arguments, as the macro receives them.
    pub args: TokenStream,
    /// The trait without the `#[dual_write]` attribute: the macro's input.
    pub item: ItemTrait,
    /// The model the macro would build, or the errors it would report.
    pub model: Result<TraitModel, Vec<syn::Error>>,
}

/// Parses a source file and models every trait annotated with `#[dual_write]`
/// (also written `#[dualwrite_runtime::dual_write]`), in source order.
pub fn annotated_traits(source: &str) -> syn::Result<Vec<AnnotatedTrait>> {
    let file = syn::parse_file(source)?;
    let mut out = Vec::new();
    collect(&file.items, &mut out);
    Ok(out)
}

fn collect(items: &[Item], out: &mut Vec<AnnotatedTrait>) {
    for item in items {
        match item {
            Item::Trait(item) => {
                let Some(annotated) = dualwrite_codegen::annotated(item) else {
                    continue;
                };
                out.push(AnnotatedTrait {
                    name: annotated.item.ident.to_string(),
                    line: annotated.item.ident.span().start().line,
                    model: TraitModel::parse(annotated.args.clone(), &annotated.item),
                    args: annotated.args,
                    item: annotated.item,
                });
            }
            Item::Mod(module) => {
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
        assert_eq!(traits[0].line, 4);
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
