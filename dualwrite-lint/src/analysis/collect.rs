//! Pass 1: one walk over a file's syntax tree that records, as plain data,
//! what the rules need (see [`FileSummary`]). Receiver types are inferred on
//! the way with a scope-aware environment of local bindings.

use proc_macro2::TokenTree;
use syn::visit::{self, Visit};
use syn::{
    Attribute, Expr, ExprCall, ExprClosure, ExprMethodCall, FnArg, ImplItem, ItemConst, ItemImpl,
    ItemMod, ItemStatic, ItemStruct, ItemTrait, ItemType, ItemUse, Local, Macro, Pat, PatIdent,
    Signature, Stmt, TraitItem, UseTree,
};

use dualwrite_codegen::{MethodKind, TraitModel};

use super::env::Env;
use super::hints::{
    expr_hint, first_literal_keyword, included_keyword, literal_keyword, path_text, receiver_text,
    span_between, span_of, sql_evidence, type_path,
};
use super::interest::Interest;
use super::macros::{self, Piece};
use super::summary::{
    CallKind, CallSite, CodegenError, FileSummary, ImplHeader, Import, ItemContext, SqlEvidence,
    Step, StructSummary, TraitSummary, TypeHint,
};
use super::ty::encode;

/// Nested macro invocations deeper than this are not read (each level
/// re-parses its body).
const MAX_MACRO_DEPTH: u32 = 8;

/// Expressions, types and patterns nested deeper than this are not walked
/// and the file is reported as too complex. The nesting pre-check
/// (`crate::nesting`) lets nothing this deep through; this bound keeps the
/// walk's own recursion safe should it ever miss a form.
pub const MAX_WALK_DEPTH: u32 = 24_000;

/// Patterns nested deeper than this bind their names without types.
const MAX_PATTERN_DEPTH: u32 = 32;

/// Walks one file.
pub struct Collector<'i> {
    summary: FileSummary,
    env: Env,
    /// The self type of the enclosing `impl` (for `self`, `Self`).
    self_ty: Option<Box<str>>,
    /// Segments of the enclosing item path.
    item_path: Vec<String>,
    /// The trait of the enclosing `impl Trait for X` (or annotated trait).
    impl_trait: Option<Box<str>>,
    /// The index in `summary.items` of the current context, once a call
    /// needed it.
    current_item: Option<u32>,
    in_test: bool,
    macro_depth: u32,
    /// Calls to record; `None`: all.
    interest: Option<&'i Interest>,
    /// The file's text (macro bodies are scanned in it).
    text: &'i str,
    /// The file's directory on disk (`include_str!` SQL is read from it).
    dir: Option<&'i std::path::Path>,
    /// Byte offsets of the text's line starts, made on first use.
    line_starts: Vec<usize>,
    /// How deep the walk is in expressions, types and patterns.
    depth: u32,
    /// Where the walk first went deeper than [`MAX_WALK_DEPTH`].
    too_deep: Option<proc_macro2::LineColumn>,
}

/// What entering an item changes, restored on leaving it.
struct Saved {
    self_ty: Option<Box<str>>,
    impl_trait: Option<Box<str>>,
    in_test: bool,
    pushed: bool,
}

impl<'i> Collector<'i> {
    /// A collector for the file at `path`, recording the calls `interest`
    /// names (all if `None`).
    pub fn new(
        path: &str,
        text: &'i str,
        is_test_file: bool,
        interest: Option<&'i Interest>,
        dir: Option<&'i std::path::Path>,
    ) -> Self {
        Collector {
            summary: FileSummary {
                path: path.to_owned(),
                is_test_file,
                ..FileSummary::default()
            },
            env: Env::default(),
            self_ty: None,
            item_path: Vec::new(),
            impl_trait: None,
            current_item: None,
            in_test: is_test_file,
            macro_depth: 0,
            interest,
            text,
            dir,
            line_starts: Vec::new(),
            depth: 0,
            too_deep: None,
        }
    }

    /// Where the walk stopped going deeper, if it had to: the file was
    /// not fully walked.
    pub fn too_deep(&self) -> Option<proc_macro2::LineColumn> {
        self.too_deep
    }

    /// Enters one more level of expression, type or pattern; false (and
    /// the file marked) when that is too deep.
    fn descend(&mut self, at: impl FnOnce() -> Option<proc_macro2::Span>) -> bool {
        if self.depth >= MAX_WALK_DEPTH {
            if self.too_deep.is_none() {
                let start = at().map_or(proc_macro2::LineColumn { line: 1, column: 0 }, |s| {
                    s.start()
                });
                self.too_deep = Some(start);
            }
            return false;
        }
        self.depth += 1;
        true
    }

    /// Whether a call named `name` is to be recorded.
    fn wanted(&self, name: &syn::Ident) -> bool {
        self.interest
            .is_none_or(|interest| interest.contains_ident(name))
    }

    /// The summary of everything walked.
    pub fn finish(self) -> FileSummary {
        self.summary
    }

    fn enter(&mut self, segment: Option<String>, attrs: &[Attribute]) -> Saved {
        let saved = Saved {
            self_ty: self.self_ty.clone(),
            impl_trait: self.impl_trait.clone(),
            in_test: self.in_test,
            pushed: segment.is_some(),
        };
        if let Some(segment) = segment {
            self.item_path.push(segment);
        }
        self.in_test |= is_test_code(attrs);
        self.current_item = None;
        saved
    }

    fn leave(&mut self, saved: Saved) {
        if saved.pushed {
            self.item_path.pop();
        }
        self.self_ty = saved.self_ty;
        self.impl_trait = saved.impl_trait;
        self.in_test = saved.in_test;
        self.current_item = None;
    }

    fn item_index(&mut self) -> u32 {
        if let Some(index) = self.current_item {
            return index;
        }
        let context = ItemContext {
            path: self.item_path.join("::").into_boxed_str(),
            impl_trait: self.impl_trait.clone(),
        };
        // Contexts repeat only when a nested item is left; comparing with
        // the last one keeps this O(1) in files with thousands of items.
        if self.summary.items.last() != Some(&context) {
            self.summary.items.push(context);
        }
        let index = (self.summary.items.len() - 1) as u32;
        self.current_item = Some(index);
        index
    }

    fn hint(&self, expr: &Expr) -> Option<TypeHint> {
        expr_hint(expr, &self.env, self.self_ty.as_deref())
    }

    fn push_call(&mut self, mut call: CallSite) {
        call.item = self.item_index();
        call.in_test = self.in_test;
        self.summary.calls.push(call);
    }

    /// Binds the parameters of a function (and `self` inside an `impl`).
    fn bind_params(&mut self, sig: &Signature, self_known: bool) {
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => {
                    let hint = if !self_known {
                        None
                    } else if let syn::ReceiverKind::Typed(_, ty) = &receiver.kind {
                        encode(ty, self.self_ty.as_deref()).map(TypeHint::of)
                    } else {
                        self.self_ty.as_deref().map(TypeHint::of)
                    };
                    let hint = hint.map(|h| h.bound("self", "the method's receiver"));
                    self.env.bind("self".into(), hint, None);
                }
                FnArg::Typed(typed) => self.bind_typed(&typed.pat, &typed.ty, None, None),
            }
        }
    }

    /// Binds `pat: ty` (a parameter, or a `let` with its initializer's
    /// hint `init`, used when the written type says less: `Box<dyn T>`,
    /// `Vec<_>`).
    fn bind_typed(
        &mut self,
        pat: &Pat,
        ty: &syn::Type,
        sql: Option<SqlEvidence>,
        init: Option<TypeHint>,
    ) {
        let written = encode(ty, self.self_ty.as_deref());
        let (hint, how) = match (written, init) {
            (Some(text), Some(init)) if text.contains('_') => (Some(init), "`let`"),
            (Some(text), _) => (Some(TypeHint::of(text)), "as annotated"),
            (None, init) => (init, "`let`"),
        };
        self.bind_pat_sql(pat, hint, how, sql);
    }

    /// Binds the names of `pat` matched against a value of type `hint`:
    /// tuple, struct, slice, `Some`/`Ok` and reference patterns follow the
    /// value's fields, elements and contents.
    fn bind_pat(&mut self, pat: &Pat, hint: Option<TypeHint>, how: &'static str, depth: u32) {
        if depth > MAX_PATTERN_DEPTH {
            self.visit_pat(pat);
            return;
        }
        let with = |step: Step| hint.clone().map(|h| h.then(step));
        match pat {
            Pat::Ident(ident) => {
                let name = ident.ident.to_string();
                let bound = hint.clone().map(|h| h.bound(&name, how));
                self.env.bind(name.into_boxed_str(), bound, None);
                if let Some((_, sub)) = &ident.subpat {
                    self.bind_pat(sub, hint, how, depth + 1);
                }
            }
            Pat::Reference(r) => self.bind_pat(&r.pat, hint, how, depth + 1),
            Pat::Paren(p) => self.bind_pat(&p.pat, hint, how, depth + 1),
            Pat::Type(typed) => {
                let written = encode(&typed.ty, self.self_ty.as_deref()).map(TypeHint::of);
                self.bind_pat(&typed.pat, written.or(hint), how, depth + 1);
            }
            Pat::Tuple(tuple) => {
                let mut after_rest = false;
                for (i, elem) in tuple.elems.iter().enumerate() {
                    after_rest |= matches!(elem, Pat::Rest(_));
                    let elem_hint = if after_rest {
                        None
                    } else {
                        with(Step::Field(i.to_string().into_boxed_str()))
                    };
                    self.bind_pat(elem, elem_hint, how, depth + 1);
                }
            }
            Pat::TupleStruct(tuple) => {
                let last = tuple.path.segments.last().map(|s| s.ident.to_string());
                let unwrap = matches!(last.as_deref(), Some("Some" | "Ok"))
                    && tuple.path.segments.len() == 1;
                let owner = self.variant_owner(&tuple.path, hint.clone());
                let mut after_rest = false;
                for (i, elem) in tuple.elems.iter().enumerate() {
                    after_rest |= matches!(elem, Pat::Rest(_));
                    let elem_hint = if unwrap && i == 0 {
                        with(Step::Unwrap)
                    } else if after_rest || unwrap {
                        None
                    } else {
                        variant_field(&owner, last.as_deref(), &i.to_string())
                    };
                    self.bind_pat(elem, elem_hint, how, depth + 1);
                }
            }
            Pat::Struct(s) => {
                let last = s.path.segments.last().map(|s| s.ident.to_string());
                let owner = self.variant_owner(&s.path, hint.clone());
                for field in &s.fields {
                    let member = match &field.member {
                        syn::Member::Named(ident) => ident.to_string(),
                        syn::Member::Unnamed(index) => index.index.to_string(),
                    };
                    let field_hint = variant_field(&owner, last.as_deref(), &member);
                    self.bind_pat(&field.pat, field_hint, how, depth + 1);
                }
            }
            Pat::Slice(slice) => {
                for elem in &slice.elems {
                    let elem_hint = if matches!(elem, Pat::Rest(_)) {
                        None
                    } else {
                        with(Step::Elem)
                    };
                    self.bind_pat(elem, elem_hint, how, depth + 1);
                }
            }
            Pat::Guard(guarded) => {
                self.bind_pat(&guarded.pat, hint, how, depth + 1);
                self.visit_expr(&guarded.guard);
            }
            Pat::Or(or) => {
                for case in &or.cases {
                    self.bind_pat(case, hint.clone(), how, depth + 1);
                }
            }
            other => self.visit_pat(other),
        }
    }

    /// The value a tuple-struct or struct pattern with `path` takes apart:
    /// the enum its path names (`Backend::Pg`, `Self::Legacy`), else the
    /// value matched (`hint`: a struct, or an enum whose variant was
    /// imported).
    fn variant_owner(&self, path: &syn::Path, hint: Option<TypeHint>) -> Option<TypeHint> {
        let segments = &path.segments;
        if segments.len() >= 2 {
            let owner = &segments[segments.len() - 2].ident;
            if owner == "Self" && segments.len() == 2 {
                if let Some(self_ty) = &self.self_ty {
                    return Some(TypeHint::of(self_ty.clone()));
                }
            } else if owner
                .to_string()
                .starts_with(|c: char| c.is_ascii_uppercase())
            {
                let text: Vec<String> = segments
                    .iter()
                    .take(segments.len() - 1)
                    .map(|s| s.ident.to_string())
                    .collect();
                return Some(TypeHint::of(text.join("::")));
            }
        }
        hint
    }

    /// [`Self::bind_pat`], keeping SQL evidence on a plain name.
    fn bind_pat_sql(
        &mut self,
        pat: &Pat,
        hint: Option<TypeHint>,
        how: &'static str,
        sql: Option<SqlEvidence>,
    ) {
        match pat {
            Pat::Ident(ident) if ident.subpat.is_none() => {
                let name = ident.ident.to_string();
                let bound = hint.map(|h| h.bound(&name, how));
                self.env.bind(name.into_boxed_str(), bound, sql);
            }
            other => self.bind_pat(other, hint, how, 0),
        }
    }

    fn visit_fn_body(&mut self, sig: &Signature, block: &syn::Block, self_known: bool) {
        let braces = block.brace_token.span;
        let builders: Vec<(&syn::Ident, &syn::Path)> = builder_params(sig)
            .filter(|(_, path)| path.segments.last().is_some_and(|s| self.wanted(&s.ident)))
            .collect();
        if builders.is_empty() && !self.text_mentions_interest(braces.open(), braces.close()) {
            // Parsed (a syntax error in it is still reported), but nothing
            // in it can match a rule.
            return;
        }
        let floor = self.env.enter_fn();
        self.bind_params(sig, self_known);
        // A query builder passed in: the statement it builds gets the text
        // pushed here, reported at the parameter's type.
        for (name, path) in builders {
            let (Some(first), Some(last)) = (path.segments.first(), path.segments.last()) else {
                continue;
            };
            self.push_call(CallSite {
                kind: CallKind::Path,
                callee: path_text(path).into_boxed_str(),
                receiver: None,
                qself: None,
                receiver_text: None,
                sql: None,
                span: span_between(first.ident.span(), last.ident.span()),
                item: 0,
                in_test: false,
            });
            let index = self.summary.calls.len() - 1;
            self.env.set_builder(&name.to_string(), index);
        }
        self.visit_block(block);
        self.env.leave_fn(floor);
    }

    fn record_trait(&mut self, item: &ItemTrait) -> bool {
        let Some(annotated) = dualwrite_codegen::annotated(item) else {
            return false;
        };
        // The macro's own model, partial when it rejects the trait: its
        // writes are guarded (DW001) while DW003 reports the errors.
        let analysis = TraitModel::analyze(annotated.args, &annotated.item);
        let writes = analysis
            .model
            .methods
            .iter()
            .filter(|m| m.kind == MethodKind::Write)
            .map(|m| m.ident.to_string().into_boxed_str())
            .collect();
        let errors = analysis
            .errors
            .into_iter()
            .flat_map(|e| e.into_iter())
            .map(|e| CodegenError {
                message: e.to_string(),
                span: span_of(e.span()),
            })
            .collect();
        self.summary.traits.push(TraitSummary {
            name: item.ident.to_string().into_boxed_str(),
            adapter: analysis.model.adapter.to_string().into_boxed_str(),
            writes,
            errors,
            span: span_of(item.ident.span()),
            in_test: self.in_test,
        });
        true
    }

    fn record_macro(&mut self, mac: &Macro) {
        let Some(last) = mac.path.segments.last() else {
            return;
        };
        if !self.wanted(&last.ident) {
            // Not a call of interest itself: read its body only if the body
            // names one.
            if self.body_mentions_interest(mac) && macros::body_facts(&mac.tokens).may_call {
                self.read_macro_body(mac, &last.ident);
            }
            return;
        }
        let first = mac
            .path
            .segments
            .first()
            .map_or(last.ident.span(), |s| s.ident.span());
        let index = self.summary.calls.len();
        self.push_call(CallSite {
            kind: CallKind::Macro,
            callee: path_text(&mac.path).into_boxed_str(),
            receiver: None,
            qself: None,
            receiver_text: None,
            sql: None,
            span: span_between(first, mac.bang_token.span),
            item: 0,
            in_test: false,
        });
        let facts = macros::body_facts(&mac.tokens);
        self.summary.calls[index].sql = facts
            .sql
            .and_then(|token| token_sql_evidence(token, &self.env, self.dir));
        if facts.may_call && (self.interest.is_none() || self.body_mentions_interest(mac)) {
            self.read_macro_body(mac, &last.ident);
        }
    }

    /// Whether a macro's body names a call of interest: its source text is
    /// scanned, or its tokens when the span does not lead back to the text.
    fn body_mentions_interest(&mut self, mac: &Macro) -> bool {
        let Some(interest) = self.interest else {
            return true;
        };
        let span = mac.delimiter.span().join();
        match self.source_between(span, span) {
            Some(body) if !body.is_empty() => interest.mentioned_in_text(body),
            _ => interest.mentioned_in(&mac.tokens),
        }
    }

    /// Whether the source from the start of `first` to the end of `last`
    /// names something of interest; true when every call is recorded or
    /// the text cannot be found.
    fn text_mentions_interest(
        &mut self,
        first: proc_macro2::Span,
        last: proc_macro2::Span,
    ) -> bool {
        let Some(interest) = self.interest else {
            return true;
        };
        self.source_between(first, last)
            .is_none_or(|text| interest.mentioned_in_text(text))
    }

    /// The source text from the start of `first` to the end of `last`.
    fn source_between(
        &mut self,
        first: proc_macro2::Span,
        last: proc_macro2::Span,
    ) -> Option<&'i str> {
        let start = self.byte_offset(first.start())?;
        let end = self.byte_offset(last.end())?;
        self.text.get(start..end)
    }

    /// The byte offset in the text of a line and (character) column.
    /// (`Span::byte_range` gives the same, but costs a walk over the
    /// characters before the span.)
    fn byte_offset(&mut self, at: proc_macro2::LineColumn) -> Option<usize> {
        if self.line_starts.is_empty() {
            self.line_starts.push(0);
            self.line_starts
                .extend(memchr::memchr_iter(b'\n', self.text.as_bytes()).map(|i| i + 1));
        }
        let line_start = *self.line_starts.get(at.line.checked_sub(1)?)?;
        let line = self.text.get(line_start..)?;
        // Columns count characters: up to an ASCII column they are bytes.
        if line
            .as_bytes()
            .get(..at.column)
            .is_some_and(<[u8]>::is_ascii)
        {
            return Some(line_start + at.column);
        }
        line.char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(line.len()))
            .nth(at.column)
            .map(|i| line_start + i)
    }

    /// Walks the code in a macro's body (unless the macro quotes code or
    /// nesting is too deep).
    fn read_macro_body(&mut self, mac: &Macro, name: &syn::Ident) {
        if macros::is_quoting_macro(&name.to_string()) || self.macro_depth >= MAX_MACRO_DEPTH {
            return;
        }
        self.macro_depth += 1;
        let braced = matches!(mac.delimiter, syn::MacroDelimiter::Brace(_));
        let pieces = macros::parse_body(&mac.tokens, braced);
        for piece in &pieces {
            match piece {
                Piece::Exprs(exprs) => {
                    for expr in exprs {
                        self.visit_expr(expr);
                    }
                }
                Piece::Stmts(stmts) => {
                    self.env.push_scope();
                    for stmt in stmts {
                        self.visit_stmt(stmt);
                    }
                    self.env.pop_scope();
                }
            }
        }
        self.macro_depth -= 1;
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, item: &'ast ItemMod) {
        self.summary
            .mods
            .push(item.ident.to_string().into_boxed_str());
        let saved = self.enter(Some(format!("mod {}", item.ident)), &item.attrs);
        if let Some((_, items)) = &item.content {
            for item in items {
                self.visit_item(item);
            }
        }
        self.leave(saved);
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if let syn::ReturnType::Type(_, ret) = &item.sig.output
            && let Some(ret) = encode(ret, None)
        {
            self.summary
                .fns
                .push((item.sig.ident.to_string().into_boxed_str(), ret));
        }
        let saved = self.enter(Some(format!("fn {}", item.sig.ident)), &item.attrs);
        // A free function inside an impl method does not see `self`.
        self.self_ty = None;
        self.visit_fn_body(&item.sig, &item.block, false);
        self.leave(saved);
    }

    fn visit_item_impl(&mut self, item: &'ast ItemImpl) {
        let self_ty = type_path(&item.self_ty, self.self_ty.as_deref());
        let trait_path = item.trait_.as_ref().map(|(path, _)| path_text(path));
        if let (Some(trait_path), Some(self_ty)) = (&trait_path, &self_ty) {
            self.summary.impls.push(ImplHeader {
                trait_path: trait_path.clone().into_boxed_str(),
                self_type: self_ty.clone(),
            });
        }
        let shown = self_ty.as_deref().unwrap_or("_");
        let segment = match &trait_path {
            Some(t) => format!("impl {t} for {shown}"),
            None => format!("impl {shown}"),
        };
        let saved = self.enter(Some(segment), &item.attrs);
        self.self_ty = self_ty;
        if let Some(trait_path) = trait_path {
            self.impl_trait = Some(trait_path.into_boxed_str());
        }
        for impl_item in &item.items {
            match impl_item {
                ImplItem::Fn(method) => {
                    if let (Some(owner), syn::ReturnType::Type(_, ret)) =
                        (&self.self_ty, &method.sig.output)
                        && let Some(ret) = encode(ret, Some(owner))
                    {
                        self.summary.methods.push((
                            owner.clone(),
                            method.sig.ident.to_string().into_boxed_str(),
                            ret,
                        ));
                    }
                    let saved = self.enter(Some(method.sig.ident.to_string()), &method.attrs);
                    self.visit_fn_body(&method.sig, &method.block, true);
                    self.leave(saved);
                }
                ImplItem::Const(constant) => {
                    self.record_const(&constant.ident, &constant.expr);
                    if self.text_mentions_interest(constant.eq_token.span, constant.semi_token.span)
                    {
                        self.visit_expr(&constant.expr);
                    }
                }
                ImplItem::Macro(mac) => self.visit_macro(&mac.mac),
                ImplItem::Type(assoc) => {
                    if let Some(owner) = &self.self_ty
                        && self.impl_trait.is_some()
                        && let Some(ty) = encode(&assoc.ty, Some(owner))
                    {
                        self.summary.assoc_types.push((
                            owner.clone(),
                            assoc.ident.to_string().into_boxed_str(),
                            ty,
                        ));
                    }
                }
                _ => {}
            }
        }
        self.leave(saved);
    }

    fn visit_item_trait(&mut self, item: &'ast ItemTrait) {
        let annotated = self.record_trait(item);
        let saved = self.enter(Some(format!("trait {}", item.ident)), &item.attrs);
        self.self_ty = None;
        if annotated {
            // Default bodies of an annotated trait run through the adapter's methods.
            self.impl_trait = Some(item.ident.to_string().into_boxed_str());
        }
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(method) => {
                    if let Some(block) = &method.default {
                        let saved = self.enter(Some(method.sig.ident.to_string()), &method.attrs);
                        self.visit_fn_body(&method.sig, block, false);
                        self.leave(saved);
                    }
                }
                TraitItem::Const(constant) => {
                    if let Some((_, expr)) = &constant.default {
                        self.record_const(&constant.ident, expr);
                    }
                }
                TraitItem::Macro(mac) => self.visit_macro(&mac.mac),
                _ => {}
            }
        }
        self.leave(saved);
    }

    fn visit_item_struct(&mut self, item: &'ast ItemStruct) {
        let fields = item
            .fields
            .iter()
            .enumerate()
            .filter_map(|(i, field)| {
                let name = field
                    .ident
                    .as_ref()
                    .map_or_else(|| i.to_string(), |ident| ident.to_string());
                let ty = encode(&field.ty, Some(&item.ident.to_string()))?;
                Some((name.into_boxed_str(), ty))
            })
            .collect();
        self.summary.structs.push(StructSummary {
            name: item.ident.to_string().into_boxed_str(),
            fields,
        });
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        // Variant fields are kept as fields `Variant::0`, `Variant::name`.
        let name = item.ident.to_string();
        let mut fields = Vec::new();
        for variant in &item.variants {
            for (i, field) in variant.fields.iter().enumerate() {
                let member = field
                    .ident
                    .as_ref()
                    .map_or_else(|| i.to_string(), |ident| ident.to_string());
                if let Some(ty) = encode(&field.ty, Some(&name)) {
                    fields.push((format!("{}::{member}", variant.ident).into_boxed_str(), ty));
                }
            }
        }
        self.summary.structs.push(StructSummary {
            name: name.into_boxed_str(),
            fields,
        });
    }

    fn visit_item_type(&mut self, item: &'ast ItemType) {
        if let Some(target) = encode(&item.ty, None) {
            self.summary
                .type_aliases
                .push((item.ident.to_string().into_boxed_str(), target));
        }
    }

    fn visit_item_use(&mut self, item: &'ast ItemUse) {
        let mut prefix = Vec::new();
        collect_use(&item.tree, &mut prefix, &mut self.summary.imports);
    }

    fn visit_item_const(&mut self, item: &'ast ItemConst) {
        self.record_const(&item.ident, &item.expr);
        if !self.text_mentions_interest(item.eq_token.span, item.semi_token.span) {
            return;
        }
        let saved = self.enter(Some(format!("const {}", item.ident)), &item.attrs);
        self.visit_expr(&item.expr);
        self.leave(saved);
    }

    fn visit_item_static(&mut self, item: &'ast ItemStatic) {
        self.record_const(&item.ident, &item.expr);
        if !self.text_mentions_interest(item.eq_token.span, item.semi_token.span) {
            return;
        }
        let saved = self.enter(Some(format!("static {}", item.ident)), &item.attrs);
        self.visit_expr(&item.expr);
        self.leave(saved);
    }

    fn visit_block(&mut self, block: &'ast syn::Block) {
        self.env.push_scope();
        for stmt in &block.stmts {
            self.visit_stmt(stmt);
        }
        self.env.pop_scope();
    }

    fn visit_stmt(&mut self, stmt: &'ast Stmt) {
        if let Stmt::Item(item) = stmt {
            // Items in a body start a fresh environment.
            let floor = self.env.enter_fn();
            self.visit_item(item);
            self.env.leave_fn(floor);
        } else {
            visit::visit_stmt(self, stmt);
        }
    }

    fn visit_local(&mut self, local: &'ast Local) {
        let mut hint = None;
        let mut sql = None;
        let mut builder = None;
        if let Some(init) = &local.init {
            self.visit_expr(&init.expr);
            if let Some((_, diverge)) = &init.diverge {
                self.visit_expr(diverge);
            }
            hint = self.hint(&init.expr);
            sql = sql_evidence(&init.expr, &self.env, self.dir);
            builder = self.builder_of(&init.expr, 0);
        }
        match &local.pat {
            Pat::Type(typed) => self.bind_typed(&typed.pat, &typed.ty, sql, hint),
            other => self.bind_pat_sql(other, hint, "`let`", sql),
        }
        if let Some(call) = builder {
            let mut pat = &local.pat;
            while let Pat::Type(typed) = pat {
                pat = &typed.pat;
            }
            if let Pat::Ident(ident) = pat {
                self.env.set_builder(&ident.ident.to_string(), call);
            }
        }
    }

    fn visit_expr_for_loop(&mut self, expr: &'ast syn::ExprForLoop) {
        self.visit_expr(&expr.expr);
        let hint = self.hint(&expr.expr).map(|h| h.then(Step::Elem));
        self.env.push_scope();
        self.bind_pat(&expr.pat, hint, "`for`", 0);
        self.visit_block(&expr.body);
        self.env.pop_scope();
    }

    fn visit_expr_let(&mut self, expr: &'ast syn::ExprLet) {
        self.visit_expr(&expr.expr);
        let hint = self.hint(&expr.expr);
        self.bind_pat(&expr.pat, hint, "`if let`", 0);
    }

    fn visit_expr_match(&mut self, expr: &'ast syn::ExprMatch) {
        self.visit_expr(&expr.expr);
        let hint = self.hint(&expr.expr);
        for arm in &expr.arms {
            self.env.push_scope();
            self.bind_pat(&arm.pat, hint.clone(), "`match`", 0);
            self.visit_expr(&arm.body);
            self.env.pop_scope();
        }
    }

    fn visit_pat_ident(&mut self, pat: &'ast PatIdent) {
        // A name bound by a pattern (match arm, `for`, `if let`) hides an
        // outer binding; its type is not evident.
        self.env.bind(pat.ident.to_string().into(), None, None);
        visit::visit_pat_ident(self, pat);
    }

    fn visit_expr_closure(&mut self, closure: &'ast ExprClosure) {
        self.visit_closure_with(closure, Vec::new());
    }

    fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
        if !self.wanted(&call.method) {
            self.visit_method_call_parts(call);
            self.record_pushed_sql(call);
            return;
        }
        let receiver = self.hint(&call.receiver);
        let sql = call
            .args
            .first()
            .and_then(|a| sql_evidence(a, &self.env, self.dir));
        self.push_call(CallSite {
            kind: CallKind::Method,
            callee: call.method.to_string().into_boxed_str(),
            receiver,
            qself: None,
            receiver_text: receiver_text(&call.receiver),
            sql,
            span: span_of(call.method.span()),
            item: 0,
            in_test: false,
        });
        self.visit_method_call_parts(call);
        self.record_pushed_sql(call);
    }

    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Expr::Path(func) = &*call.func
            && let Some(last) = func.path.segments.last()
            && (self.wanted(&last.ident)
                || (last.ident == "new"
                    && func.path.segments.len() >= 2
                    && self.wanted(&func.path.segments[func.path.segments.len() - 2].ident)))
        {
            let first = match &func.qself {
                Some(qself) => qself.lt_token.span,
                None => func
                    .path
                    .segments
                    .first()
                    .map_or(last.ident.span(), |s| s.ident.span()),
            };
            let qself = func
                .qself
                .as_ref()
                .and_then(|q| type_path(&q.ty, self.self_ty.as_deref()));
            let receiver = call.args.first().and_then(|a| self.hint(a));
            let sql = call
                .args
                .first()
                .and_then(|a| sql_evidence(a, &self.env, self.dir));
            let mut callee = path_text(&func.path);
            if func.path.segments.len() == 2
                && func.path.segments[0].ident == "Self"
                && let Some(self_ty) = &self.self_ty
            {
                callee = format!("{self_ty}::{}", last.ident);
            }
            self.push_call(CallSite {
                kind: CallKind::Path,
                callee: callee.into_boxed_str(),
                receiver,
                qself,
                receiver_text: None,
                sql,
                span: span_between(first, last.ident.span()),
                item: 0,
                in_test: false,
            });
        }
        visit::visit_expr_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast Macro) {
        self.record_macro(mac);
    }

    fn visit_expr(&mut self, expr: &'ast Expr) {
        if self.descend(|| expr_marker(expr)) {
            visit::visit_expr(self, expr);
            self.depth -= 1;
        }
    }

    fn visit_type(&mut self, ty: &'ast syn::Type) {
        if self.descend(|| None) {
            visit::visit_type(self, ty);
            self.depth -= 1;
        }
    }

    fn visit_pat(&mut self, pat: &'ast Pat) {
        if self.descend(|| None) {
            visit::visit_pat(self, pat);
            self.depth -= 1;
        }
    }
}

/// A token of an expression that locates it without walking it (its span
/// would take a walk of the whole, as deep as it is).
fn expr_marker(expr: &Expr) -> Option<proc_macro2::Span> {
    Some(match expr {
        Expr::MethodCall(e) => e.method.span(),
        Expr::Field(e) => e.dot_token.span,
        Expr::Call(e) => e.paren_token.span.open(),
        Expr::Index(e) => e.bracket_token.span.open(),
        Expr::Try(e) => e.question_token.span,
        Expr::Cast(e) => e.as_token.span,
        Expr::Paren(e) => e.paren_token.span.open(),
        Expr::If(e) => e.if_token.span,
        Expr::Path(e) => e.path.segments.last()?.ident.span(),
        _ => return None,
    })
}

/// The hint of field `member` of the variant (or struct) `variant` of the
/// value `owner`.
fn variant_field(
    owner: &Option<TypeHint>,
    variant: Option<&str>,
    member: &str,
) -> Option<TypeHint> {
    let variant = variant?;
    owner
        .clone()
        .map(|h| h.then(Step::Variant(variant.into(), member.into())))
}

/// The parameters of `sig` that are a query builder (`qb: &mut
/// QueryBuilder<'_, Postgres>`, `mut qb: sqlx::QueryBuilder<..>`), with the
/// builder type's path.
fn builder_params(sig: &Signature) -> impl Iterator<Item = (&syn::Ident, &syn::Path)> {
    sig.inputs.iter().filter_map(|input| {
        let FnArg::Typed(typed) = input else {
            return None;
        };
        let Pat::Ident(name) = &*typed.pat else {
            return None;
        };
        let mut ty = &*typed.ty;
        while let syn::Type::Reference(reference) = ty {
            ty = &reference.elem;
        }
        let syn::Type::Path(path) = ty else {
            return None;
        };
        let last = path.path.segments.last()?;
        (path.qself.is_none() && last.ident == "QueryBuilder").then_some((&name.ident, &path.path))
    })
}

/// Query builder methods whose argument is SQL text.
const PUSHES_TEXT: &[&str] = &["push", "push_unseparated"];

/// Query builder methods that return (a borrow of) the builder.
const BUILDER_CHAINS: &[&str] = &[
    "push",
    "push_unseparated",
    "push_bind",
    "push_bind_unseparated",
    "push_values",
    "push_tuples",
    "separated",
];

/// What a parameter of an adaptor's closure is given.
#[derive(Clone, Copy)]
enum Param {
    /// An element of the receiver (or the value inside an `Option`).
    Elem,
    /// The value of the call's argument `n` (`fold`'s initial value).
    Arg(usize),
    /// Not known.
    Unknown,
}

/// Methods of iterators, collections, `Option` and `Result` that call a
/// closure: the closure's argument position and what each of its
/// parameters is given.
fn adaptor_shape(method: &syn::Ident) -> Option<(usize, &'static [Param])> {
    use Param::{Arg, Elem, Unknown};
    const SHAPES: &[(&[&str], usize, &[Param])] = &[
        (
            &["fold", "try_fold", "rfold", "try_rfold"],
            1,
            &[Arg(0), Elem],
        ),
        (&["scan"], 1, &[Unknown, Elem]),
        (&["map_or", "map_or_else"], 1, &[Elem]),
        (
            &[
                "reduce",
                "try_reduce",
                "max_by",
                "min_by",
                "sort_by",
                "sort_unstable_by",
                "dedup_by",
                "is_sorted_by",
            ],
            0,
            &[Elem, Elem],
        ),
        (ADAPTORS, 0, &[Elem]),
    ];
    SHAPES
        .iter()
        .find(|(names, _, _)| names.iter().any(|n| method == n))
        .map(|&(_, at, params)| (at, params))
}

/// Methods of iterators, collections, `Option` and `Result` whose first
/// argument is a closure called with the elements (or the value inside).
const ADAPTORS: &[&str] = &[
    "retain",
    "retain_mut",
    "partition",
    "max_by_key",
    "min_by_key",
    "sort_by_key",
    "sort_unstable_by_key",
    "sort_by_cached_key",
    "map_while",
    "rposition",
    "for_each",
    "try_for_each",
    "map",
    "filter",
    "filter_map",
    "flat_map",
    "any",
    "all",
    "find",
    "find_map",
    "inspect",
    "position",
    "take_while",
    "skip_while",
    "and_then",
    "is_some_and",
    "is_ok_and",
];

impl<'ast> Collector<'_> {
    /// Walks a method call's receiver and arguments; the closure given to
    /// an iterator adaptor (`stores.iter().for_each(|s| ..)`,
    /// `fold(init, |acc, s| ..)`, `reduce(|a, b| ..)`) gets types for its
    /// parameters from the adaptor's shape.
    fn visit_method_call_parts(&mut self, call: &'ast ExprMethodCall) {
        self.visit_expr(&call.receiver);
        let shape = if call.args.iter().any(|a| matches!(a, Expr::Closure(_))) {
            adaptor_shape(&call.method)
        } else {
            None
        };
        for (i, arg) in call.args.iter().enumerate() {
            if let Some((at, params)) = shape
                && i == at
                && let Expr::Closure(closure) = arg
                && self.descend(|| None)
            {
                let hints = params
                    .iter()
                    .map(|param| match param {
                        Param::Elem => self.hint(&call.receiver).map(|h| h.then(Step::Elem)),
                        Param::Arg(n) => call.args.iter().nth(*n).and_then(|a| self.hint(a)),
                        Param::Unknown => None,
                    })
                    .collect();
                self.visit_closure_with(closure, hints);
                self.depth -= 1;
            } else {
                self.visit_expr(arg);
            }
        }
    }

    /// Walks a closure, its parameters bound to `params` (in order) when
    /// they have no type of their own.
    fn visit_closure_with(&mut self, closure: &'ast ExprClosure, params: Vec<Option<TypeHint>>) {
        self.env.push_scope();
        let mut params = params.into_iter();
        for input in &closure.inputs {
            let given = params.next().flatten();
            match input {
                Pat::Type(typed) => self.bind_typed(&typed.pat, &typed.ty, None, None),
                other => match given {
                    Some(hint) => self.bind_pat(other, Some(hint), "a closure parameter", 0),
                    None => self.visit_pat(other),
                },
            }
        }
        self.visit_expr(&closure.body);
        self.env.pop_scope();
    }

    /// `qb.push("UPDATE ..")` on a query builder made by a recorded call
    /// (`QueryBuilder::new(..)`): the text pushed is part of the statement
    /// that call builds, which writes when any of its texts writes.
    fn record_pushed_sql(&mut self, call: &ExprMethodCall) {
        if !PUSHES_TEXT.iter().any(|m| call.method == m) || call.args.len() != 1 {
            return;
        }
        let Some(index) = self.builder_of(&call.receiver, 0) else {
            return;
        };
        let Some(arg) = call.args.first() else {
            return;
        };
        let pushed =
            match arg {
                // A fragment may close what an earlier one opened: `") ; DELETE .."`.
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) => crate::analysis::sql::leading_keyword(text.value().trim_start_matches(
                    |c: char| c.is_whitespace() || matches!(c, ')' | ',' | ';'),
                ))
                .map(SqlEvidence::Keyword),
                other => sql_evidence(other, &self.env, self.dir),
            };
        let Some(pushed) = pushed else {
            return;
        };
        let Some(site) = self.summary.calls.get_mut(index) else {
            return;
        };
        let writes = |e: &Option<SqlEvidence>| matches!(e, Some(SqlEvidence::Keyword(k)) if crate::analysis::sql::is_write_verb(k));
        match pushed {
            // A write pushed makes the statement a write.
            SqlEvidence::Keyword(k) if crate::analysis::sql::is_write_verb(&k) => {
                if !writes(&site.sql) {
                    site.sql = Some(SqlEvidence::Keyword(k));
                }
            }
            // A constant is read in pass 2; it replaces only what is no write.
            SqlEvidence::Const(name) => {
                if !writes(&site.sql) && !matches!(site.sql, Some(SqlEvidence::Const(_))) {
                    site.sql = Some(SqlEvidence::Const(name));
                }
            }
            SqlEvidence::Keyword(_) => {}
        }
    }

    /// The index of the recorded call that made the query builder `expr`
    /// is (or borrows from): a local bound to one, `QueryBuilder::new(..)`
    /// itself, or either through `push*`/`separated` calls.
    fn builder_of(&self, expr: &Expr, depth: u32) -> Option<usize> {
        if depth > MAX_PATTERN_DEPTH {
            return None;
        }
        match expr {
            Expr::Reference(r) => self.builder_of(&r.expr, depth + 1),
            Expr::Paren(p) => self.builder_of(&p.expr, depth + 1),
            Expr::MethodCall(m) if BUILDER_CHAINS.iter().any(|c| m.method == c) => {
                self.builder_of(&m.receiver, depth + 1)
            }
            Expr::Path(p) if p.qself.is_none() => self.env.builder(p.path.get_ident()?),
            Expr::Call(c) => {
                let Expr::Path(func) = &*c.func else {
                    return None;
                };
                if func.qself.is_some() {
                    return None;
                }
                let segments = &func.path.segments;
                let last = segments.last()?;
                if !(last.ident == "new" || last.ident == "with_arguments")
                    || segments.len() < 2
                    || segments[segments.len() - 2].ident != "QueryBuilder"
                {
                    return None;
                }
                let first = segments.first()?.ident.span();
                let span = span_between(first, last.ident.span());
                self.summary
                    .calls
                    .iter()
                    .rposition(|site| site.kind == CallKind::Path && site.span == span)
            }
            _ => None,
        }
    }

    fn record_const(&mut self, ident: &syn::Ident, expr: &Expr) {
        let keyword =
            match expr {
                Expr::Macro(m)
                    if m.mac.path.segments.last().is_some_and(|s| {
                        s.ident == "include_str" || s.ident == "include_bytes"
                    }) =>
                {
                    included_keyword(&m.mac.tokens, self.dir)
                }
                Expr::Macro(m) => first_literal_keyword(&m.mac.tokens),
                other => sql_evidence(other, &Env::default(), self.dir),
            };
        if let Some(SqlEvidence::Keyword(keyword)) = keyword {
            self.summary
                .consts
                .push((ident.to_string().into_boxed_str(), keyword));
        }
    }
}

/// The SQL evidence of the token [`macros::body_facts`] picked.
fn token_sql_evidence(
    token: TokenTree,
    env: &Env,
    dir: Option<&std::path::Path>,
) -> Option<SqlEvidence> {
    match token {
        TokenTree::Literal(literal) => {
            literal_keyword(&syn::Lit::new(literal)).map(SqlEvidence::Keyword)
        }
        TokenTree::Ident(ident) => sql_evidence(
            &Expr::Path(syn::ExprPath {
                attrs: Vec::new(),
                qself: None,
                path: ident.into(),
            }),
            env,
            dir,
        ),
        _ => None,
    }
}

/// `#[test]`, `#[tokio::test]`, `#[cfg(test)]`, `#[cfg(all(test, ..))]`.
fn is_test_code(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let path = attr.path();
        if path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        if !path.is_ident("cfg") {
            return false;
        }
        let syn::Meta::List(list) = &attr.meta else {
            return false;
        };
        let mut has_test = false;
        for tree in list.tokens.clone() {
            if let proc_macro2::TokenTree::Ident(ident) = &tree {
                if ident == "not" {
                    return false;
                }
                has_test |= ident == "test";
            } else if let proc_macro2::TokenTree::Group(group) = &tree {
                for inner in group.stream() {
                    if let proc_macro2::TokenTree::Ident(ident) = &inner {
                        if ident == "not" {
                            return false;
                        }
                        has_test |= ident == "test";
                    }
                }
            }
        }
        has_test
    })
}

/// Flattens a `use` tree into local name -> full path.
fn collect_use(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Import>) {
    match tree {
        UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            collect_use(&path.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(name) => {
            let ident = name.ident.to_string();
            if ident == "self" {
                if let Some(last) = prefix.last() {
                    out.push(Import {
                        local: last.clone().into_boxed_str(),
                        path: prefix.join("::").into_boxed_str(),
                    });
                }
            } else {
                out.push(Import {
                    local: ident.clone().into_boxed_str(),
                    path: join(prefix, &ident),
                });
            }
        }
        UseTree::Rename(rename) => {
            let ident = rename.ident.to_string();
            let full = if ident == "self" {
                prefix.join("::").into_boxed_str()
            } else {
                join(prefix, &ident)
            };
            out.push(Import {
                local: rename.rename.to_string().into_boxed_str(),
                path: full,
            });
        }
        UseTree::Glob(_) => out.push(Import {
            local: "*".into(),
            path: prefix.join("::").into_boxed_str(),
        }),
        UseTree::Group(group) => {
            for tree in &group.items {
                collect_use(tree, prefix, out);
            }
        }
    }
}

fn join(prefix: &[String], last: &str) -> Box<str> {
    let mut text = prefix.join("::");
    if !text.is_empty() {
        text.push_str("::");
    }
    text.push_str(last);
    text.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A macro body's text is found from its span's lines and columns,
    /// past multi-byte characters.
    #[test]
    fn macro_bodies_are_found_in_the_text() {
        let text = "// é\nfn f() { let s = \"ü\"; println!(\"{}\", x.execute(1)); }\n";
        let file = syn::parse_file(text).unwrap();
        let syn::Item::Fn(function) = &file.items[0] else {
            panic!("a function")
        };
        let syn::Stmt::Macro(statement) = &function.block.stmts[1] else {
            panic!("a macro statement")
        };
        let mut collector = Collector::new("f.rs", text, false, None, None);
        let span = statement.mac.delimiter.span().join();
        let start = collector.byte_offset(span.start()).unwrap();
        let end = collector.byte_offset(span.end()).unwrap();
        assert_eq!(&text[start..end], "(\"{}\", x.execute(1))");
        assert_eq!(span.byte_range(), start..end);
        proc_macro2::extra::invalidate_current_thread_spans();
    }
}
