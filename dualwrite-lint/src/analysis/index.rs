//! Pass 2's global index: what all files say together (annotated traits,
//! their raw stores, struct fields, type aliases, string constants), and the
//! resolution of a file's type names through its imports and the aliases.

use foldhash::{HashMap, HashSet, HashSetExt};

use rayon::prelude::*;

use super::hints::is_constructor;
use super::summary::{FileSummary, HintBase, Step, TypeHint};
use super::ty::Ty;

/// Alias chains longer than this are treated as unresolvable (and cycles
/// end here).
const MAX_ALIAS_STEPS: usize = 8;

/// One annotated trait, merged over the files that define a trait of that name.
#[derive(Debug, Default)]
pub struct TraitInfo<'a> {
    /// The adapter's name.
    pub adapter: &'a str,
    /// Its write methods.
    pub writes: HashSet<&'a str>,
}

/// A file's `use` imports.
#[derive(Debug, Default)]
pub struct FileScope<'a> {
    imports: HashMap<&'a str, &'a str>,
    globs: Vec<&'a str>,
    /// Modules declared in the file.
    mods: Vec<&'a str>,
}

impl<'a> FileScope<'a> {
    /// The imports of `file`.
    pub fn new(file: &'a FileSummary) -> Self {
        let mut scope = FileScope {
            mods: file.mods.iter().map(|name| &**name).collect(),
            ..FileScope::default()
        };
        for import in &file.imports {
            if &*import.local == "*" {
                scope.globs.push(&import.path);
            } else {
                scope.imports.insert(&import.local, &import.path);
            }
        }
        scope
    }

    /// `path` with its first segment replaced by what it was imported as
    /// (`query` -> `sqlx::query` under `use sqlx::query;`).
    pub fn expand(&self, path: &str) -> String {
        let (first, rest) = match split_first_segment(path) {
            Some((first, rest)) => (first, Some(rest)),
            None => (path, None),
        };
        match (self.imports.get(first), rest) {
            (Some(full), Some(rest)) => format!("{full}::{rest}"),
            (Some(full), None) => (*full).to_owned(),
            (None, _) => path.to_owned(),
        }
    }

    /// Whether the file declares a module named `name` (`mod name;`).
    pub fn declares_module(&self, name: &str) -> bool {
        self.mods.contains(&name)
    }

    /// The ways `path` may be spelled in full: expanded through the
    /// imports, and, for a bare name not imported by name, under each glob
    /// import (`use diesel::*;`).
    pub fn candidates(&self, path: &str) -> Vec<String> {
        let expanded = self.expand(path);
        let mut out = Vec::with_capacity(1 + self.globs.len());
        if split_first_segment(path).is_none() && !self.imports.contains_key(path) {
            for glob in &self.globs {
                out.push(format!("{glob}::{path}"));
            }
        }
        out.insert(0, expanded);
        out
    }

    /// The type name `path` refers to: its last segment after the imports.
    pub fn type_name(&self, path: &str) -> String {
        let expanded = self.expand(path);
        last_segment(&expanded).to_owned()
    }
}

/// The last `::` segment.
pub fn last_segment(path: &str) -> &str {
    split_last_segment(path).map_or(path, |(_, last)| last)
}

/// `a::b::c` as `a` and `b::c`; `None` without `::`. (A byte scan: a
/// `str` pattern of two bytes costs a searcher's set-up per call.)
fn split_first_segment(path: &str) -> Option<(&str, &str)> {
    let bytes = path.as_bytes();
    let at = memchr::memchr_iter(b':', bytes).find(|&i| bytes.get(i + 1) == Some(&b':'))?;
    Some((&path[..at], &path[at + 2..]))
}

/// `a::b::c` as `a::b` and `c`; `None` without `::`.
fn split_last_segment(path: &str) -> Option<(&str, &str)> {
    let bytes = path.as_bytes();
    let at = memchr::memrchr_iter(b':', bytes).find(|&i| i > 0 && bytes[i - 1] == b':')?;
    Some((&path[..at - 1], &path[at + 1..]))
}

/// Everything the rules look up across files.
#[derive(Debug, Default)]
pub struct Index<'a> {
    /// Annotated traits by name.
    pub traits: HashMap<&'a str, TraitInfo<'a>>,
    /// Every write method name of every annotated trait (a fast filter).
    pub write_names: HashSet<&'a str>,
    /// Raw stores: type name -> the annotated traits it implements.
    pub raw_stores: HashMap<String, Vec<&'a str>>,
    /// Struct name -> field -> field type (paths after the struct file's
    /// imports); `None` when structs of that name disagree.
    structs: HashMap<&'a str, HashMap<&'a str, Option<Ty>>>,
    /// Alias name -> target type (paths after the alias file's imports);
    /// `None` when aliases of that name disagree.
    aliases: HashMap<&'a str, Option<Ty>>,
    /// Free function name -> return type; `None` when functions of that
    /// name disagree.
    fns: HashMap<&'a str, Option<Ty>>,
    /// (self type, name) of `impl` methods and associated functions ->
    /// return type.
    methods: HashMap<(String, &'a str), Option<Ty>>,
    /// (type, name) of associated types in `impl Trait for Type` -> type.
    assoc_types: HashMap<(String, &'a str), Option<Ty>>,
    /// Constant name -> leading keyword; `None` when constants of that name disagree.
    consts: HashMap<&'a str, Option<&'a str>>,
    /// The adapters the annotated traits generate.
    adapters: HashSet<&'a str>,
    /// Names imported under another name (`use user::Entity as User;`) ->
    /// the original last segment; `None` when imports of that name disagree.
    renamed: HashMap<&'a str, Option<&'a str>>,
}

/// The functions, methods and fields the receivers' hints of every call
/// name (the only ones whose types are looked up).
fn called_names(files: &[FileSummary]) -> HashSet<&str> {
    fn add<'a>(hint: &'a TypeHint, out: &mut HashSet<&'a str>) {
        match &hint.base {
            HintBase::Call(path) => {
                out.insert(last_segment(path));
            }
            HintBase::Assoc(_, name) => {
                out.insert(name);
            }
            HintBase::Type(_) => {}
        }
        for step in &hint.steps {
            match step {
                Step::Method(name) | Step::Field(name) | Step::Variant(_, name) => {
                    out.insert(name);
                }
                Step::Zip(Some(other)) => add(other, out),
                _ => {}
            }
        }
    }
    let mut out = HashSet::new();
    for call in files.iter().flat_map(|f| &f.calls) {
        if let Some(hint) = &call.receiver {
            add(hint, &mut out);
        }
    }
    out
}

/// What one file contributes to the index on its own, its type paths
/// localized through its imports.
struct FileLocals<'a> {
    aliases: Vec<(&'a str, Ty)>,
    structs: Vec<(&'a str, Vec<(&'a str, Ty)>)>,
    fns: Vec<(&'a str, Ty)>,
    consts: Vec<(&'a str, &'a str)>,
    renamed: Vec<(&'a str, &'a str)>,
}

impl<'a> FileLocals<'a> {
    fn new(file: &'a FileSummary, called: &HashSet<&str>) -> Self {
        let scope = FileScope::new(file);
        FileLocals {
            aliases: (file.type_aliases.iter())
                .map(|(name, target)| (&**name, localize(&scope, target)))
                .collect(),
            structs: (file.structs.iter())
                .map(|s| {
                    // A variant's field is keyed `Variant::field`.
                    let fields = (s.fields.iter())
                        .filter(|(field, _)| called.contains(last_segment(field)))
                        .map(|(field, ty)| (&**field, localize(&scope, ty)))
                        .collect();
                    (&*s.name, fields)
                })
                .collect(),
            fns: (file.fns.iter())
                .filter(|(name, _)| called.contains(&**name))
                .map(|(name, ret)| (&**name, localize(&scope, ret)))
                .collect(),
            consts: (file.consts.iter())
                .map(|(name, keyword)| (&**name, &**keyword))
                .collect(),
            renamed: (file.imports.iter())
                .filter_map(|import| {
                    let original = last_segment(&import.path);
                    (&*import.local != "*" && original != &*import.local && original != "self")
                        .then_some((&*import.local, original))
                })
                .collect(),
        }
    }
}

/// What one file contributes that needs the index of every file's types:
/// methods and associated types by resolved owner, and the raw stores.
struct FileResolved<'a> {
    methods: Vec<((String, &'a str), Ty)>,
    assoc_types: Vec<((String, &'a str), Ty)>,
    raw_stores: Vec<(String, &'a str)>,
}

impl<'a> FileResolved<'a> {
    fn new(index: &Index<'a>, file: &'a FileSummary, called: &HashSet<&str>) -> Self {
        let scope = FileScope::new(file);
        let owned = |list: &'a [(Box<str>, Box<str>, Box<str>)], every: bool| {
            list.iter()
                .filter(|(_, name, _)| every || called.contains(&**name))
                .filter_map(|(owner, name, ty)| {
                    let owner = index.resolve_type(&scope, owner)?;
                    Some(((owner, &**name), localize(&scope, ty)))
                })
                .collect::<Vec<_>>()
        };
        let methods = owned(&file.methods, false);
        let assoc_types = owned(&file.assoc_types, true);
        let raw_stores = (file.impls.iter())
            .filter_map(|header| {
                let trait_name = scope.type_name(&header.trait_path);
                let (&trait_name, _) = index.traits.get_key_value(trait_name.as_str())?;
                let store = index.resolve_type(&scope, &header.self_type)?;
                (!index.adapters.contains(store.as_str())).then_some((store, trait_name))
            })
            .collect();
        FileResolved {
            methods,
            assoc_types,
            raw_stores,
        }
    }
}

impl<'a> Index<'a> {
    /// Builds the index of a set of files.
    pub fn build(files: &'a [FileSummary]) -> Self {
        let mut index = Index::default();
        for file in files {
            for t in &file.traits {
                let info = index.traits.entry(&t.name).or_default();
                info.adapter = &t.adapter;
                info.writes.extend(t.writes.iter().map(|w| &**w));
                index.write_names.extend(t.writes.iter().map(|w| &**w));
            }
        }
        // What each file says, localized through its imports: computed per
        // file in parallel, merged in file order (a merge is order-blind
        // but for the order of a store's traits, kept as the files give it).
        // Return and field types are kept only for the names some
        // receiver's hint uses: the rest are never looked up.
        let called = called_names(files);
        let locals: Vec<FileLocals<'a>> = files
            .par_iter()
            .map(|file| FileLocals::new(file, &called))
            .collect();
        for local in locals {
            for (name, target) in local.aliases {
                merge(&mut index.aliases, name, target);
            }
            for (name, fields) in local.structs {
                let merged = index.structs.entry(name).or_default();
                for (field, ty) in fields {
                    merge(merged, field, ty);
                }
            }
            for (name, ret) in local.fns {
                merge(&mut index.fns, name, ret);
            }
            for (name, keyword) in local.consts {
                merge(&mut index.consts, name, keyword);
            }
            for (local, original) in local.renamed {
                merge(&mut index.renamed, local, original);
            }
        }
        index.adapters = index.traits.values().map(|t| t.adapter).collect();
        let resolved: Vec<FileResolved<'a>> = files
            .par_iter()
            .map(|file| FileResolved::new(&index, file, &called))
            .collect();
        for file in resolved {
            for (key, ret) in file.methods {
                merge_owned(&mut index.methods, key, ret);
            }
            for (key, ty) in file.assoc_types {
                merge_owned(&mut index.assoc_types, key, ty);
            }
            for (store, trait_name) in file.raw_stores {
                let traits = index.raw_stores.entry(store).or_default();
                if !traits.contains(&trait_name) {
                    traits.push(trait_name);
                }
            }
        }
        index
    }

    /// Follows type aliases from `name`; `None` when an alias is ambiguous.
    fn chase(&self, name: String) -> Option<String> {
        match self.normalize(Ty::Named(name, Vec::new()), 0) {
            Ty::Named(name, _) => Some(name),
            Ty::Unknown => None,
            other => Some(other.to_string()),
        }
    }

    /// `ty` with its outer path resolved: associated types (`X::Store`),
    /// then the last segment through the type aliases.
    fn normalize(&self, ty: Ty, steps: usize) -> Ty {
        let Ty::Named(path, args) = ty else {
            return ty;
        };
        if steps >= MAX_ALIAS_STEPS {
            return Ty::Named(last_segment(&path).to_owned(), args);
        }
        if let Some((owner, name)) = split_last_segment(&path)
            && let Ty::Named(owner, _) =
                self.normalize(Ty::Named(owner.to_owned(), Vec::new()), steps + 1)
            && let Some(found) = self.assoc_types.get(&(owner, name))
        {
            return match found {
                Some(target) => self.normalize(target.clone(), steps + 1),
                None => Ty::Unknown,
            };
        }
        let name = last_segment(&path);
        match self.aliases.get(name) {
            Some(Some(target)) if !matches!(target, Ty::Named(t, _) if t == name || last_segment(t) == name) => {
                self.normalize(target.clone(), steps + 1)
            }
            Some(None) => Ty::Unknown,
            _ => Ty::Named(name.to_owned(), args),
        }
    }

    /// The type a path written in `scope` names, through imports and aliases.
    pub fn resolve_type(&self, scope: &FileScope<'_>, path: &str) -> Option<String> {
        self.chase(scope.type_name(path))
    }

    /// The path of the type a hint's value has, as written where it was
    /// declared (through that file's imports), when it can be followed: the
    /// base's type, a function's or an associated function's return type
    /// (or the owner of a constructor), then methods' return types, fields
    /// and `?`/`unwrap` (`immediate(&conn)?` -> `rusqlite::Transaction`,
    /// `journal::Transaction::default()` -> `journal::Transaction`). A path
    /// without `::` is a name declared or imported without a path where it
    /// was written. `None` when some step cannot be followed.
    pub fn hint_written_path(&self, scope: &FileScope<'_>, hint: &TypeHint) -> Option<String> {
        let mut ty = match &hint.base {
            HintBase::Type(written) => localize(scope, written),
            HintBase::Call(path) => self.fns.get(last_segment(path))?.clone()?,
            HintBase::Assoc(owner, name) => {
                let owner_ty = self.resolve_type(scope, owner)?;
                match self.methods.get(&(owner_ty, &**name)) {
                    Some(Some(ret)) => ret.clone(),
                    Some(None) => return None,
                    None if is_constructor(name) => Ty::Named(scope.expand(owner), Vec::new()),
                    None => return None,
                }
            }
        };
        for step in &hint.steps {
            ty = match (step, ty) {
                (Step::Unwrap, Ty::Named(name, args)) if is_option_like(last_segment(&name)) => {
                    args.into_iter().next()?
                }
                (Step::Unwrap, other) => other,
                (Step::Method(method), Ty::Named(name, _)) => self
                    .methods
                    .get(&(last_segment(&name).to_owned(), &**method))?
                    .clone()?,
                (Step::Field(field), Ty::Named(name, _)) => self
                    .structs
                    .get(last_segment(&name))?
                    .get(&**field)?
                    .clone()?,
                _ => return None,
            };
        }
        match ty {
            Ty::Named(path, _) => Some(path),
            _ => None,
        }
    }

    /// The type a hint names (its last path segment), following its steps.
    pub fn resolve_hint(&self, scope: &FileScope<'_>, hint: &TypeHint) -> Option<String> {
        match self.resolve_hint_ty(scope, hint, None)? {
            Ty::Named(name, _) => Some(name),
            Ty::Unknown => None,
            other => Some(other.to_string()),
        }
    }

    /// The type a hint names, following its steps; with `explain`, one
    /// line per step saying how the type was found.
    pub fn resolve_hint_ty(
        &self,
        scope: &FileScope<'_>,
        hint: &TypeHint,
        explain: Option<&mut Vec<String>>,
    ) -> Option<Ty> {
        let explaining = explain.is_some();
        let (mut ty, how) = match &hint.base {
            HintBase::Type(written) => {
                let ty = self.normalize(localize(scope, written), 0);
                (ty, String::new())
            }
            HintBase::Call(path) => {
                let name = last_segment(path);
                let ret = self.fns.get(name)?.clone()?;
                let how = if explaining {
                    format!("`{path}` returns `{ret}`")
                } else {
                    String::new()
                };
                (self.normalize(ret, 0), how)
            }
            HintBase::Assoc(owner, name) => {
                let owner_ty = self.resolve_type(scope, owner)?;
                match self.methods.get(&(owner_ty.clone(), &**name)) {
                    Some(Some(ret)) => {
                        let how = if explaining {
                            format!("`{owner}::{name}` returns `{ret}`")
                        } else {
                            String::new()
                        };
                        (self.normalize(ret.clone(), 0), how)
                    }
                    Some(None) => return None,
                    None if is_constructor(name) => {
                        let how = if explaining {
                            format!("`{name}` is a constructor of `{owner}` by convention")
                        } else {
                            String::new()
                        };
                        (Ty::Named(owner_ty, Vec::new()), how)
                    }
                    None => return None,
                }
            }
        };
        let Some(lines) = explain else {
            // The fast path: no text.
            for step in &hint.steps {
                ty = self.step(scope, &ty, step)?.0;
            }
            return Some(ty);
        };
        let mut text = match &hint.base {
            HintBase::Type(written) => written.to_string(),
            HintBase::Call(path) => format!("{path}(..)"),
            HintBase::Assoc(owner, name) => format!("{owner}::{name}(..)"),
        };
        let mut notes = hint.notes.iter().peekable();
        let typed_name = match &hint.base {
            HintBase::Type(_) => notes.next_if(|n| n.at == 0),
            _ => None,
        };
        lines.push(match typed_name {
            Some(note) if note.how.starts_with('`') => {
                format!("`{}` = `{text}` (bound by {}): `{ty}`", note.name, note.how)
            }
            Some(note) => format!("`{}` is `{ty}` ({})", note.name, note.how),
            None if how.is_empty() => format!("`{text}` is `{ty}`"),
            None => format!("`{text}` is `{ty}` ({how})"),
        });
        if let Some(note) = typed_name {
            text = note.name.to_string();
        }
        let mut take_notes = |at: usize, text: &mut String, ty: &Ty, lines: &mut Vec<String>| {
            while let Some(note) = notes.next_if(|n| n.at as usize == at) {
                lines.push(format!(
                    "`{}` = `{text}` (bound by {}): `{ty}`",
                    note.name, note.how
                ));
                *text = note.name.to_string();
            }
        };
        take_notes(0, &mut text, &ty, lines);
        for (i, step) in hint.steps.iter().enumerate() {
            let (next, how) = self.step(scope, &ty, step)?;
            text = match step {
                Step::Field(f) => format!("{text}.{f}"),
                Step::Method(m) => format!("{text}.{m}()"),
                Step::Unwrap => format!("{text}?"),
                Step::Elem => format!("{text}[_]"),
                Step::Collect => format!("[{text}]"),
                Step::Variant(variant, field) => format!("({text} as {variant}).{field}"),
                Step::Zip(_) => format!("{text}.zip(..)"),
            };
            lines.push(format!("`{text}` is `{next}` ({how})"));
            ty = next;
            take_notes(i + 1, &mut text, &ty, lines);
        }
        Some(ty)
    }

    /// One step from a value of type `ty`, and why.
    fn step(&self, scope: &FileScope<'_>, ty: &Ty, step: &Step) -> Option<(Ty, String)> {
        let found = match step {
            Step::Variant(variant, field) => {
                let Ty::Named(name, _) = ty else {
                    return None;
                };
                let fields = self.structs.get(name.as_str())?;
                let key = format!("{variant}::{field}");
                match fields.get(key.as_str()) {
                    Some(target) => (
                        self.normalize(target.clone()?, 0),
                        format!("field `{field}` of variant `{name}::{variant}`"),
                    ),
                    None if name == &**variant => (
                        self.normalize(fields.get(&**field)?.clone()?, 0),
                        format!("field `{field}` of `{name}`"),
                    ),
                    None => return None,
                }
            }
            Step::Zip(other) => {
                let first = element(ty)?;
                let second = other
                    .as_deref()
                    .and_then(|other| self.resolve_hint_ty(scope, other, None))
                    .and_then(|other| element(&other))
                    .unwrap_or(Ty::Unknown);
                (
                    Ty::Named("Vec".to_owned(), vec![Ty::Tuple(vec![first, second])]),
                    format!("`zip()` of `{ty}`: pairs of its elements"),
                )
            }
            Step::Field(field) => match ty {
                Ty::Named(name, _) => {
                    let target = self.structs.get(name.as_str())?.get(&**field)?.clone()?;
                    (
                        self.normalize(target, 0),
                        format!("field `{field}` of `{name}`"),
                    )
                }
                Ty::Tuple(elems) => (
                    elems.get(field.parse::<usize>().ok()?)?.clone(),
                    format!("element {field} of the tuple"),
                ),
                _ => return None,
            },
            Step::Unwrap => match ty {
                Ty::Named(name, args) if is_option_like(name) => (
                    self.normalize(args.first()?.clone(), 0),
                    format!("the value inside `{name}`"),
                ),
                _ => (
                    ty.clone(),
                    "no `Option` or `Result` around it: the same value".to_owned(),
                ),
            },
            Step::Elem => (
                self.normalize(element(ty)?, 0),
                format!("an element of `{ty}`"),
            ),
            Step::Collect => (
                Ty::Named("Vec".to_owned(), vec![ty.clone()]),
                "a collection of it".to_owned(),
            ),
            Step::Method(method) => self.method(ty, method)?,
        };
        let ty = self.normalize(found.0, 0);
        if ty == Ty::Unknown {
            return None;
        }
        Some((ty, found.1))
    }

    /// What calling `method` on a value of type `ty` gives, and why.
    fn method(&self, ty: &Ty, method: &str) -> Option<(Ty, String)> {
        let same = || Some((ty.clone(), format!("`{method}()` gives the value it holds")));
        let option_of = |inner: Ty| {
            Some((
                Ty::Named("Option".to_owned(), vec![inner]),
                format!("`{method}()` of `{ty}`"),
            ))
        };
        match ty {
            Ty::Named(name, args) if self.adapters.contains(name.as_str()) => {
                let found = match method {
                    "old_store" | "old_store_mut" | "old_shared" => args.first()?.clone(),
                    "new_store" | "new_store_mut" | "new_shared" => args.get(1)?.clone(),
                    "into_stores" => Ty::Tuple(args.clone()),
                    _ => return None,
                };
                Some((
                    self.normalize(found, 0),
                    format!("the adapter's raw accessor `{method}()`"),
                ))
            }
            Ty::Named(name, args) if is_sequence(name) || is_map(name) => {
                let elem = element(ty)?;
                match method {
                    "iter" | "iter_mut" | "into_iter" | "drain" | "as_slice" | "as_mut_slice"
                    | "rev" | "skip" | "take" | "filter" | "cloned" | "copied" | "peekable"
                    | "step_by" | "chain" | "skip_while" | "take_while" | "by_ref" | "inspect" => {
                        same()
                    }
                    "values" | "values_mut" | "into_values" if is_map(name) => Some((
                        Ty::Named("Vec".to_owned(), vec![args.get(1)?.clone()]),
                        format!("`{method}()` of `{ty}`"),
                    )),
                    "get" | "get_mut" | "remove" if is_map(name) => option_of(args.get(1)?.clone()),
                    "first" | "last" | "get" | "get_mut" | "first_mut" | "last_mut" | "pop"
                    | "pop_front" | "pop_back" | "front" | "back" | "front_mut" | "back_mut"
                    | "next" | "next_back" | "nth" | "find" | "min_by_key" | "max_by_key" => {
                        option_of(elem)
                    }
                    "enumerate" => Some((
                        Ty::Named(
                            "Vec".to_owned(),
                            vec![Ty::Tuple(vec![
                                Ty::Named("usize".to_owned(), Vec::new()),
                                elem,
                            ])],
                        ),
                        format!("`enumerate()` of `{ty}`"),
                    )),
                    _ => None,
                }
            }
            Ty::Slice(elem) => match method {
                "iter" | "iter_mut" | "into_iter" | "rev" | "skip" | "take" | "filter"
                | "cloned" | "copied" => same(),
                "enumerate" => Some((
                    Ty::Named(
                        "Vec".to_owned(),
                        vec![Ty::Tuple(vec![
                            Ty::Named("usize".to_owned(), Vec::new()),
                            (**elem).clone(),
                        ])],
                    ),
                    format!("`enumerate()` of `{ty}`"),
                )),
                "first" | "last" | "get" | "get_mut" | "first_mut" | "last_mut" => {
                    option_of((**elem).clone())
                }
                _ => None,
            },
            Ty::Named(name, args) if is_option_like(name) => match method {
                "as_ref" | "as_mut" | "as_deref" | "as_deref_mut" | "take" | "cloned"
                | "copied" | "iter" | "ok" => same(),
                _ => {
                    let _ = args;
                    None
                }
            },
            Ty::Named(name, args) if matches!(name.as_str(), "OnceCell" | "OnceLock") => {
                match method {
                    "get" | "get_mut" => option_of(args.first()?.clone()),
                    "get_or_init" | "get_or_try_init" => {
                        Some((args.first()?.clone(), format!("`{method}()` of `{ty}`")))
                    }
                    _ => None,
                }
            }
            Ty::Named(name, _) => match self.methods.get(&(name.clone(), method)) {
                Some(Some(ret)) => Some((
                    self.normalize(ret.clone(), 0),
                    format!("`{name}::{method}` returns `{ret}`"),
                )),
                Some(None) => None,
                None if is_guard(method) => Some((
                    ty.clone(),
                    format!("`{method}()` guards or lends the value it holds"),
                )),
                None => None,
            },
            _ => None,
        }
    }

    /// The annotated trait for which `store` is a raw store and `method` a write.
    pub fn bypassed_trait(&self, store: &str, method: &str) -> Option<&'a str> {
        self.raw_stores.get(store)?.iter().copied().find(|t| {
            self.traits
                .get(t)
                .is_some_and(|info| info.writes.contains(method))
        })
    }

    /// Whether the trait path written in `scope` names an annotated trait.
    pub fn is_annotated(&self, scope: &FileScope<'_>, trait_path: &str) -> bool {
        self.traits
            .contains_key(scope.type_name(trait_path).as_str())
    }

    /// Whether `name` is a type this project defines (a struct, an adapter or
    /// a raw store): a method called on it is the project's own API, not a
    /// database client's, and any raw write is found inside its body.
    pub fn is_project_type(&self, name: &str) -> bool {
        self.structs.contains_key(name)
            || self.adapters.contains(name)
            || self.raw_stores.contains_key(name)
    }

    /// The original name of a name imported under another one
    /// (`User` for `use user::Entity as User;`), when unambiguous.
    pub fn renamed_from(&self, local: &str) -> Option<&'a str> {
        self.renamed.get(local).copied().flatten()
    }

    /// The leading keyword of a string constant, when unambiguous.
    pub fn const_keyword(&self, name: &str) -> Option<&'a str> {
        self.consts.get(name).copied().flatten()
    }
}

/// A type's text read in the file's scope: paths expanded through its imports.
fn localize(scope: &FileScope<'_>, text: &str) -> Ty {
    Ty::parse(text).map_paths(&mut |path| scope.expand(path))
}

/// Types that hold one value or none (`?` and `unwrap` give it).
fn is_option_like(name: &str) -> bool {
    matches!(
        name,
        "Option" | "Result" | "Poll" | "LockResult" | "TryLockResult"
    )
}

/// Collections of elements.
fn is_sequence(name: &str) -> bool {
    matches!(
        name,
        "Vec"
            | "VecDeque"
            | "LinkedList"
            | "HashSet"
            | "BTreeSet"
            | "IndexSet"
            | "BinaryHeap"
            | "SmallVec"
            | "ArrayVec"
            | "IntoIter"
            | "Iter"
            | "IterMut"
    )
}

/// Collections of key-value pairs.
fn is_map(name: &str) -> bool {
    matches!(name, "HashMap" | "BTreeMap" | "IndexMap" | "DashMap")
}

/// Methods of locks, cells and smart pointers that give (a guard of) the
/// value they hold, when the type defines no method of that name.
fn is_guard(method: &str) -> bool {
    matches!(
        method,
        "lock"
            | "read"
            | "write"
            | "try_lock"
            | "try_read"
            | "try_write"
            | "lock_owned"
            | "read_owned"
            | "write_owned"
            | "blocking_lock"
            | "blocking_read"
            | "blocking_write"
            | "borrow"
            | "borrow_mut"
            | "try_borrow"
            | "try_borrow_mut"
            | "get_mut"
            | "load"
            | "load_full"
            | "as_ref"
            | "as_mut"
            | "clone"
    )
}

/// The element type of a collection (a map's elements are `(key, value)`).
fn element(ty: &Ty) -> Option<Ty> {
    match ty {
        Ty::Slice(elem) => Some((**elem).clone()),
        Ty::Named(name, args) if is_sequence(name) || is_option_like(name) => args.first().cloned(),
        Ty::Named(name, args) if is_map(name) => {
            Some(Ty::Tuple(vec![args.first()?.clone(), args.get(1)?.clone()]))
        }
        _ => None,
    }
}

/// [`merge`] for owned keys.
fn merge_owned<'a, V: PartialEq>(
    map: &mut HashMap<(String, &'a str), Option<V>>,
    key: (String, &'a str),
    value: V,
) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, Some(value));
        }
        Some(existing) => {
            if existing.as_ref() != Some(&value) {
                *existing = None;
            }
        }
    }
}

/// Inserts `value` for `key`, or marks the key ambiguous (`None`) when a
/// different value is already there.
fn merge<'a, V: PartialEq>(map: &mut HashMap<&'a str, Option<V>>, key: &'a str, value: V) {
    match map.get_mut(key) {
        None => {
            map.insert(key, Some(value));
        }
        Some(existing) => {
            if existing.as_ref() != Some(&value) {
                *existing = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte scans split paths as `split_once`/`rsplit_once("::")` do.
    #[test]
    fn path_splits_match_the_str_searches() {
        for path in [
            "", "a", "::", "a::b", "a::b::c", "::a", "a::", "a:::b", "a:b::c", "a::b:c", ":",
            "é::ü",
        ] {
            assert_eq!(split_first_segment(path), path.split_once("::"), "{path}");
            assert_eq!(split_last_segment(path), path.rsplit_once("::"), "{path}");
            assert_eq!(
                last_segment(path),
                path.rsplit("::").next().unwrap(),
                "{path}"
            );
        }
    }
}
