//! Expansion snapshots: what `#[dual_write]` generates for representative
//! traits, pretty-printed, so reviewers see diffs of the generated code.

use quote::quote;

fn expand(args: proc_macro2::TokenStream, input: proc_macro2::TokenStream) -> String {
    let tokens = dualwrite_codegen::expand(args, input);
    let file: syn::File = syn::parse2(tokens).expect("the expansion parses as a file");
    prettyplease::unparse(&file)
}

#[test]
fn sync_user_store() {
    insta::assert_snapshot!(expand(
        quote!(),
        quote! {
            pub trait UserStore {
                #[dual_write(key = user.id)]
                fn insert(&self, user: &User) -> Result<(), StoreError>;
                #[dual_write(key = id)]
                fn get(&self, id: u64) -> Result<Option<User>, StoreError>;
                #[dual_write(passthrough)]
                fn ping(&self) -> bool;
            }
        }
    ));
}

#[test]
fn async_store_with_options() {
    insta::assert_snapshot!(expand(
        quote!(adapter = Orders, command = OrderOp, key = order_id),
        quote! {
            pub(crate) trait OrderStore {
                async fn upsert(&self, order_id: u64, lines: Vec<Line>) -> anyhow::Result<()>;
                #[dual_write(compare = same_total)]
                async fn fetch(&self, order_id: u64) -> anyhow::Result<Order>;
            }
        }
    ));
}

#[test]
fn generic_trait_with_associated_type() {
    insta::assert_snapshot!(expand(
        quote!(),
        quote! {
            pub trait Repo<T: Clone> {
                type Id;
                fn save(&mut self, id: Self::Id, item: T);
                #[dual_write(no_compare)]
                fn load(&self, id: &Self::Id) -> Option<T>;
            }
        }
    ));
}

#[test]
fn errors_keep_the_trait() {
    insta::assert_snapshot!(
        dualwrite_codegen::expand(
            quote!(),
            quote! {
                pub trait Bad {
                    fn compute(&self) -> u8;
                }
            }
        )
        .to_string()
    );
}
