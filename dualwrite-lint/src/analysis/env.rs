//! The scope-aware environment of local bindings used to infer receiver
//! types: one flat stack of bindings with scope marks, and a floor per
//! function so a nested `fn` does not see its parent's locals (closures do).

use proc_macro2::Ident;

use super::summary::{SqlEvidence, TypeHint};

/// What a local name is known to hold.
#[derive(Debug, Clone)]
struct Binding {
    name: Box<str>,
    hint: Option<TypeHint>,
    sql: Option<SqlEvidence>,
    /// For a query builder: the index of the call that made it.
    builder: Option<usize>,
}

/// Local bindings in scope.
#[derive(Debug, Default)]
pub struct Env {
    bindings: Vec<Binding>,
    scopes: Vec<usize>,
    floor: usize,
}

impl Env {
    /// Opens a block scope.
    pub fn push_scope(&mut self) {
        self.scopes.push(self.bindings.len());
    }

    /// Closes the innermost block scope, dropping its bindings.
    pub fn pop_scope(&mut self) {
        if let Some(mark) = self.scopes.pop() {
            self.bindings.truncate(mark);
        }
    }

    /// Enters a function body: outer locals become invisible. Returns the
    /// floor to give back to [`Env::leave_fn`].
    pub fn enter_fn(&mut self) -> usize {
        self.push_scope();
        std::mem::replace(&mut self.floor, self.bindings.len())
    }

    /// Leaves a function body entered with [`Env::enter_fn`].
    pub fn leave_fn(&mut self, floor: usize) {
        self.pop_scope();
        self.floor = floor;
    }

    /// Binds `name` in the innermost scope, shadowing earlier bindings (a
    /// binding without a hint hides an outer hint, as Rust's shadowing does).
    pub fn bind(&mut self, name: Box<str>, hint: Option<TypeHint>, sql: Option<SqlEvidence>) {
        self.bindings.push(Binding {
            name,
            hint,
            sql,
            builder: None,
        });
    }

    /// Marks the latest binding of `name` as the query builder made by
    /// the recorded call `call` (text pushed to it is that call's SQL).
    pub fn set_builder(&mut self, name: &str, call: usize) {
        if let Some(binding) = self.bindings[self.floor..]
            .iter_mut()
            .rev()
            .find(|b| *b.name == *name)
        {
            binding.builder = Some(call);
        }
    }

    /// The call that made the query builder `name` holds, if it does.
    pub fn builder(&self, name: &Ident) -> Option<usize> {
        self.lookup(name)?.builder
    }

    /// The visible binding of `name` (compared without allocating).
    fn lookup(&self, name: &Ident) -> Option<&Binding> {
        self.bindings[self.floor..]
            .iter()
            .rev()
            .find(|b| *name == *b.name)
    }

    /// The type hint of the visible binding of `name`.
    pub fn hint(&self, name: &Ident) -> Option<&TypeHint> {
        self.lookup(name)?.hint.as_ref()
    }

    /// The SQL evidence of the visible binding of `name`.
    pub fn sql(&self, name: &Ident) -> Option<&SqlEvidence> {
        self.lookup(name)?.sql.as_ref()
    }

    /// Whether `name` is bound locally (then it is not a `const`).
    pub fn is_bound(&self, name: &Ident) -> bool {
        self.lookup(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadowing_scopes_and_function_floors() {
        let s = Ident::new("s", proc_macro2::Span::call_site());
        let mut env = Env::default();
        env.bind("s".into(), Some(TypeHint::of("Pg")), None);
        env.push_scope();
        env.bind("s".into(), None, None);
        assert_eq!(env.hint(&s), None);
        env.pop_scope();
        assert_eq!(env.hint(&s), Some(&TypeHint::of("Pg")));
        let floor = env.enter_fn();
        assert!(!env.is_bound(&s));
        env.leave_fn(floor);
        assert!(env.is_bound(&s));
    }
}
