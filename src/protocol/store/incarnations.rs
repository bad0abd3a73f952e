//! The incarnations that wrote the store's records, each named by a small id.
//!
//! A record names its writer's incarnation by id instead of by address and epoch. Ids are
//! handed out in order of first use and never reused or forgotten: there are as many as
//! replica lives whose writes this store has held, a handful in practice.

use std::collections::HashMap;

use crate::protocol::causal::Incarnation;

#[derive(Debug, Default)]
pub struct Incarnations {
    by_id: Vec<Incarnation>,
    ids: HashMap<Incarnation, u32>,
}

impl Incarnations {
    /// The id of `inc`, assigned on first use.
    pub fn intern(&mut self, inc: &Incarnation) -> u32 {
        if let Some(id) = self.ids.get(inc) {
            return *id;
        }
        let id = self.by_id.len() as u32;
        self.by_id.push(inc.clone());
        self.ids.insert(inc.clone(), id);
        id
    }

    /// The incarnation with id `id`; ids come only from [`Incarnations::intern`].
    pub fn get(&self, id: u32) -> &Incarnation {
        &self.by_id[id as usize]
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::causal::clock::tests::inc;

    #[test]
    fn ids_are_stable_and_distinct() {
        let mut table = Incarnations::default();
        let a = table.intern(&inc("a", 1));
        let b = table.intern(&inc("a", 2));
        assert_ne!(a, b);
        assert_eq!(table.intern(&inc("a", 1)), a);
        assert_eq!(table.get(b), &inc("a", 2));
        assert_eq!(table.len(), 2);
    }
}
