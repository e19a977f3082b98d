//! The plain data one file contributes to the analysis. Built by
//! `collect` during the single AST walk; holds no syntax tree and no span,
//! only names and 1-based positions, so summaries of a whole workspace stay
//! small and can outlive `invalidate_current_thread_spans`.

/// A 1-based line/column range (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    /// First line.
    pub line: u32,
    /// First column.
    pub column: u32,
    /// Last line.
    pub end_line: u32,
    /// Column just past the end.
    pub end_column: u32,
}

/// Everything the rules need from one file.
#[derive(Debug, Clone, Default)]
pub struct FileSummary {
    /// Path relative to the checked root.
    pub path: String,
    /// The whole file is test code (under `tests/`).
    pub is_test_file: bool,
    /// `#[dual_write]` traits defined here.
    pub traits: Vec<TraitSummary>,
    /// `impl Trait for Type` headers.
    pub impls: Vec<ImplHeader>,
    /// Structs with named or positional fields.
    pub structs: Vec<StructSummary>,
    /// `type Alias = Target;` (target: a type path, wrappers stripped).
    pub type_aliases: Vec<(Box<str>, Box<str>)>,
    /// `use` declarations: local name -> full path.
    pub imports: Vec<Import>,
    /// String `const`s and `static`s: name -> the text's leading keyword.
    pub consts: Vec<(Box<str>, Box<str>)>,
    /// Enclosing items of the call sites, indexed by [`CallSite::item`].
    pub items: Vec<ItemContext>,
    /// Every call, in walk order.
    pub calls: Vec<CallSite>,
}

/// A `#[dual_write]` trait as the macro reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraitSummary {
    /// The trait's name.
    pub name: Box<str>,
    /// The generated adapter's name (`UserStoreDualWrite`).
    pub adapter: Box<str>,
    /// Methods the adapter routes as writes.
    pub writes: Vec<Box<str>>,
    /// What the macro would reject, with positions (DW003).
    pub errors: Vec<CodegenError>,
    /// The trait's name token.
    pub span: Span,
    /// Defined in test code.
    pub in_test: bool,
}

/// One error the `#[dual_write]` macro would report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodegenError {
    /// The macro's message.
    pub message: String,
    /// Where the macro points.
    pub span: Span,
}

/// `impl Trait for Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplHeader {
    /// The trait path as written, generics dropped (`repo::UserStore`).
    pub trait_path: Box<str>,
    /// The self type path, `&`, wrappers and generics dropped (`PgUserStore`).
    pub self_type: Box<str>,
}

/// A struct's fields and their types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructSummary {
    /// The struct's name.
    pub name: Box<str>,
    /// `(field, type path)`, positional fields named `0`, `1`...; fields
    /// whose type is not a path (tuples, `dyn`...) are left out.
    pub fields: Vec<(Box<str>, Box<str>)>,
}

/// One name brought into scope by `use`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The name in this file (`Pg` for `use db::PgUserStore as Pg;`), or `*`
    /// for a glob.
    pub local: Box<str>,
    /// The full path (`db::PgUserStore`; for a glob, the module).
    pub path: Box<str>,
}

/// Where calls sit: used for fingerprints and for the "inside the
/// implementation of an annotated trait" exemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemContext {
    /// `fn handler`, `impl OrderService::place`, `mod a::fn b`; empty at file level.
    pub path: Box<str>,
    /// The trait of the innermost enclosing `impl Trait for X` (as written),
    /// or of the enclosing annotated trait's default method.
    pub impl_trait: Option<Box<str>>,
}

/// How a call is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `receiver.method(..)`.
    Method,
    /// `path::to::function(..)`, including UFCS.
    Path,
    /// `path::to::macro!(..)`.
    Macro,
}

/// What is known, without compiling, about the type of an expression: the
/// type `base` (a path as written in this file), then the named fields
/// followed from it (`self.db` in `impl OrderService` is `OrderService` +
/// `[db]`). Pass 2 resolves imports, aliases and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeHint {
    /// A type path as written (generics dropped).
    pub base: Box<str>,
    /// Fields to follow from `base`, outermost first.
    pub fields: Vec<Box<str>>,
}

impl TypeHint {
    /// A plain type.
    pub fn of(base: impl Into<Box<str>>) -> Self {
        TypeHint {
            base: base.into(),
            fields: Vec::new(),
        }
    }
}

/// What the first argument says about the SQL (or command) text sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlEvidence {
    /// A literal, a `format!` literal, or a local bound to one: its leading
    /// keyword.
    Keyword(Box<str>),
    /// A `const`/`static` by name (`INSERT_USER`, `&INSERT_USER`,
    /// `INSERT_USER.as_str()`, `queries::INSERT_USER`).
    Const(Box<str>),
}

/// One call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSite {
    /// Method, path call or macro.
    pub kind: CallKind,
    /// The method name; or the path as written without generics
    /// (`sqlx::query`, `UserStore::save`; for `<X as T>::m`, `T::m`); or the
    /// macro path (without `!`).
    pub callee: Box<str>,
    /// Methods: the receiver's type. Path calls: the first argument's type
    /// (the UFCS receiver).
    pub receiver: Option<TypeHint>,
    /// Path calls: the `X` of `<X as T>::m(..)`.
    pub qself: Option<Box<str>>,
    /// Methods: the receiver's text when it is a plain path or field chain
    /// (`self.redis`, `conn`).
    pub receiver_text: Option<Box<str>>,
    /// The first argument's SQL evidence.
    pub sql: Option<SqlEvidence>,
    /// The method name, the called path or the macro path.
    pub span: Span,
    /// Index into [`FileSummary::items`].
    pub item: u32,
    /// Inside `#[cfg(test)]`/`#[test]` code or a test file.
    pub in_test: bool,
}
