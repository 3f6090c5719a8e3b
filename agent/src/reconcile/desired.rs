//! The allocation set the servers last sent for this node, indexed by id
//! once when it arrives: a pass looks ids up many times, and most passes
//! (the clock's) see the same set again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use skiff_model::Allocation;

/// Sets made so far in this process: each set's `generation`.
static MADE: AtomicU64 = AtomicU64::new(0);

/// One allocation set from the servers, in the order they sent it.
#[derive(Debug, Clone)]
pub struct Desired {
    list: Vec<Allocation>,
    index: HashMap<String, usize>,
    generation: u64,
}

impl Desired {
    pub fn new(list: Vec<Allocation>) -> Desired {
        let index = list
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        Desired {
            list,
            index,
            generation: MADE.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// The allocation with this id, if the set lists it.
    pub fn get(&self, id: &str) -> Option<&Allocation> {
        self.index.get(id).map(|&i| &self.list[i])
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Allocation> {
        self.list.iter()
    }

    /// Different for every set made in this process (never 0), so a pass
    /// can tell a set it has already learned from a new one.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::testing::{alloc, ID};

    #[test]
    fn a_set_finds_its_allocations_by_id_and_each_set_is_told_apart() {
        let a = Desired::new(vec![alloc(ID, "{}")]);
        assert_eq!(a.get(ID).map(|x| x.id.as_str()), Some(ID));
        assert!(a.get("ffffffffffffffffffffffffffffffff").is_none());
        assert_eq!(a.iter().count(), 1);
        let b = Desired::new(a.iter().cloned().collect());
        assert_ne!(
            a.generation(),
            b.generation(),
            "the same content, a new set"
        );
        assert_ne!(a.generation(), 0);
    }
}
