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
    /// Free functions: name -> return type (`ty::encode` text).
    pub fns: Vec<(Box<str>, Box<str>)>,
    /// Methods and associated functions of `impl` blocks: (self type, name,
    /// return type), `Self` replaced.
    pub methods: Vec<(Box<str>, Box<str>, Box<str>)>,
    /// Associated types of `impl Trait for X`: (X, name, type).
    pub assoc_types: Vec<(Box<str>, Box<str>, Box<str>)>,
    /// Modules declared in this file (`mod x;`, `mod x { .. }`): a path
    /// starting with one of them names the crate's own module here, not
    /// a dependency of the same name.
    pub mods: Vec<Box<str>>,
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
    /// `(field, type)` in the text form of `ty::encode`, positional fields
    /// named `0`, `1`...; fields of no known type (`dyn`...) are left out.
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

/// What is known, without compiling, about the type of an expression: a
/// starting point (`base`), then the steps that lead from it to the value
/// (`self.stores[0].lock().unwrap()` is `OrderService` + field `stores`,
/// element, method `lock`, unwrap). Pass 2 resolves imports, aliases,
/// fields, return types and containers (see `index::Index::resolve_hint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeHint {
    /// Where the value comes from.
    pub base: HintBase,
    /// What is applied to it, in order.
    pub steps: Vec<Step>,
    /// The local names bound on the way, for `--explain`.
    pub notes: Vec<Note>,
}

/// The start of a [`TypeHint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HintBase {
    /// A type as written in this file, in the text form of `ty::encode`
    /// (`PgOrders`, `Vec<PgOrders>`, `(A,B)`).
    Type(Box<str>),
    /// What a free function returns: its path as written (`connect`,
    /// `db::connect`, `redis::pipe`).
    Call(Box<str>),
    /// What an associated function returns: the type as written and the
    /// function (`PgOrders::open`; `Self` already replaced).
    Assoc(Box<str>, Box<str>),
}

/// One step of a [`TypeHint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A named or positional field (`.db`, `.0`).
    Field(Box<str>),
    /// A method call's result (`.lock()`, `.first()`, `.pick()`).
    Method(Box<str>),
    /// `?`, `.unwrap()`, `.expect(..)`, `Some(x)`/`Ok(x)` patterns: the
    /// value inside an `Option` or `Result` (nothing for other types).
    Unwrap,
    /// An element of a collection (`for x in ..`, `xs[i]`).
    Elem,
    /// A collection of the value (`vec![x, ..]`, `[x, ..]`, `Some(x)`).
    Collect,
    /// A field of an enum variant (`Stores::Legacy(s)`: variant `Legacy`,
    /// field `0`); of a struct when the variant is the struct's own name
    /// (`Wrapper(s)`).
    Variant(Box<str>, Box<str>),
    /// `.zip(other)`: pairs of an element and an element of `other` (whose
    /// type may not be known).
    Zip(Option<Box<TypeHint>>),
}

/// A local name bound to the value on the way (for `--explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The name bound.
    pub name: Box<str>,
    /// How: `let`, `for`, `if let`, `match`, `parameter`...
    pub how: &'static str,
    /// How many steps had been applied when it was bound.
    pub at: u32,
}

impl TypeHint {
    /// A plain type.
    pub fn of(base: impl Into<Box<str>>) -> Self {
        TypeHint {
            base: HintBase::Type(base.into()),
            steps: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A hint starting at `base`.
    pub fn from_base(base: HintBase) -> Self {
        TypeHint {
            base,
            steps: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// This hint with one more step.
    pub fn then(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// This hint, recorded as bound to `name` by `how`.
    pub fn bound(mut self, name: &str, how: &'static str) -> Self {
        self.notes.push(Note {
            name: name.into(),
            how,
            at: self.steps.len() as u32,
        });
        self
    }

    /// The written text of the base: a type or a called path.
    pub fn base_text(&self) -> &str {
        match &self.base {
            HintBase::Type(t) | HintBase::Call(t) | HintBase::Assoc(t, _) => t,
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
