//! Pass 2's global index: what all files say together (annotated traits,
//! their raw stores, struct fields, type aliases, string constants), and the
//! resolution of a file's type names through its imports and the aliases.

use std::collections::{HashMap, HashSet};

use super::summary::{FileSummary, TypeHint};

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
}

impl<'a> FileScope<'a> {
    /// The imports of `file`.
    pub fn new(file: &'a FileSummary) -> Self {
        let mut scope = FileScope::default();
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
        let (first, rest) = match path.split_once("::") {
            Some((first, rest)) => (first, Some(rest)),
            None => (path, None),
        };
        match (self.imports.get(first), rest) {
            (Some(full), Some(rest)) => format!("{full}::{rest}"),
            (Some(full), None) => (*full).to_owned(),
            (None, _) => path.to_owned(),
        }
    }

    /// The ways `path` may be spelled in full: expanded through the
    /// imports, and, for a bare name not imported by name, under each glob
    /// import (`use diesel::*;`).
    pub fn candidates(&self, path: &str) -> Vec<String> {
        let expanded = self.expand(path);
        let mut out = Vec::with_capacity(1 + self.globs.len());
        if !path.contains("::") && !self.imports.contains_key(path) {
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
    path.rsplit("::").next().unwrap_or(path)
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
    /// Struct name -> field -> field type name (after the struct file's
    /// imports); `None` when structs of that name disagree.
    structs: HashMap<&'a str, HashMap<&'a str, Option<String>>>,
    /// Alias name -> target type name (after the alias file's imports);
    /// `None` when aliases of that name disagree.
    aliases: HashMap<&'a str, Option<String>>,
    /// Constant name -> leading keyword; `None` when constants of that name disagree.
    consts: HashMap<&'a str, Option<&'a str>>,
    /// The adapters the annotated traits generate.
    adapters: HashSet<&'a str>,
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
        for file in files {
            let scope = FileScope::new(file);
            for (name, target) in &file.type_aliases {
                merge(&mut index.aliases, name, scope.type_name(target));
            }
            for s in &file.structs {
                let fields = index.structs.entry(&s.name).or_default();
                for (field, ty) in &s.fields {
                    merge(fields, field, scope.type_name(ty));
                }
            }
            for (name, keyword) in &file.consts {
                merge(&mut index.consts, name, &**keyword);
            }
        }
        index.adapters = index.traits.values().map(|t| t.adapter).collect();
        for file in files {
            let scope = FileScope::new(file);
            for header in &file.impls {
                let trait_name = scope.type_name(&header.trait_path);
                let Some((&trait_name, _)) = index.traits.get_key_value(trait_name.as_str()) else {
                    continue;
                };
                let Some(store) = index.resolve_type(&scope, &header.self_type) else {
                    continue;
                };
                if index.adapters.contains(store.as_str()) {
                    continue;
                }
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
        let mut name = name;
        for _ in 0..MAX_ALIAS_STEPS {
            match self.aliases.get(name.as_str()) {
                Some(Some(target)) if *target != name => name = target.clone(),
                Some(Some(_)) | None => return Some(name),
                Some(None) => return None,
            }
        }
        Some(name)
    }

    /// The type a path written in `scope` names, through imports and aliases.
    pub fn resolve_type(&self, scope: &FileScope<'_>, path: &str) -> Option<String> {
        self.chase(scope.type_name(path))
    }

    /// The type a hint names, following its fields through the struct table.
    pub fn resolve_hint(&self, scope: &FileScope<'_>, hint: &TypeHint) -> Option<String> {
        let mut ty = self.resolve_type(scope, &hint.base)?;
        for field in &hint.fields {
            let field_ty = self.structs.get(ty.as_str())?.get(&**field)?.clone()?;
            ty = self.chase(field_ty)?;
        }
        Some(ty)
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

    /// The leading keyword of a string constant, when unambiguous.
    pub fn const_keyword(&self, name: &str) -> Option<&'a str> {
        self.consts.get(name).copied().flatten()
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
