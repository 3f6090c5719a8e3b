//! The allocation set the servers last sent for this node, kept in id
//! order (the order the node's watch holds it in): a pass walks it beside
//! the containers, which are kept in id order too, instead of looking each
//! one up, and a look-up by id is a binary search. Most passes (the
//! clock's) see the same set again. The allocations are shared with the
//! watch's view: a new set costs a reference each, not a copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use skiff_model::Allocation;

/// Sets made so far in this process: each set's `generation`.
static MADE: AtomicU64 = AtomicU64::new(0);

/// One allocation set from the servers, in id order, each id once.
#[derive(Debug, Clone)]
pub struct Desired {
    list: Vec<Arc<Allocation>>,
    generation: u64,
}

impl Desired {
    /// The set of `list`: sorted by id when it is not already (the
    /// watch sends it sorted), and of an id listed twice, the later.
    pub fn new<A: Into<Arc<Allocation>>>(list: Vec<A>) -> Desired {
        let mut list: Vec<Arc<Allocation>> = list.into_iter().map(Into::into).collect();
        if !list.is_sorted_by(|a, b| a.id < b.id) {
            list.sort_by(|a, b| a.id.cmp(&b.id)); // stable: the later stays later
            let mut kept: Vec<Arc<Allocation>> = Vec::with_capacity(list.len());
            for a in list {
                match kept.last_mut() {
                    Some(last) if last.id == a.id => *last = a,
                    _ => kept.push(a),
                }
            }
            list = kept;
        }
        Desired {
            list,
            generation: MADE.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// The allocation with this id, if the set lists it.
    pub fn get(&self, id: &str) -> Option<&Allocation> {
        let i = self.list.binary_search_by(|a| a.id.as_str().cmp(id)).ok()?;
        Some(&self.list[i])
    }

    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Whether this set lists an allocation `other` does not: both in id
    /// order, walked side by side.
    pub fn lists_one_not_in(&self, other: &Desired) -> bool {
        let mut theirs = other.list.iter().map(|a| (&a.id, ())).peekable();
        self.list
            .iter()
            .any(|a| walk_to(&mut theirs, &a.id).is_none())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The allocations in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Allocation> + Clone {
        self.list.iter().map(|a| &**a)
    }

    /// Different for every set made in this process (never 0), so a pass
    /// can tell a set it has already learned from a new one.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Walks entries keyed by id, in id order, to the one named `id`, if
/// there is one, past those before it, each compared once: called with ids
/// in rising order (a pass over a set), it meets every entry once.
pub(super) fn walk_to<'m, C>(
    containers: &mut std::iter::Peekable<impl Iterator<Item = (&'m String, C)>>,
    id: &str,
) -> Option<C> {
    loop {
        let (key, _) = containers.peek()?;
        match key.as_str().cmp(id) {
            std::cmp::Ordering::Less => {
                containers.next();
            }
            std::cmp::Ordering::Equal => return containers.next().map(|(_, c)| c),
            std::cmp::Ordering::Greater => return None,
        }
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
        let b = Desired::new(a.iter().cloned().collect::<Vec<_>>());
        assert_ne!(
            a.generation(),
            b.generation(),
            "the same content, a new set"
        );
        assert_ne!(a.generation(), 0);
    }

    #[test]
    fn a_set_is_walked_in_id_order_and_an_id_listed_twice_keeps_the_later() {
        let (x, y, z) = (
            "00000000000000000000000000000001",
            "00000000000000000000000000000002",
            "00000000000000000000000000000003",
        );
        let mut second = alloc(y, "{}");
        second.restart_count = 7;
        let set = Desired::new(vec![alloc(z, "{}"), alloc(y, "{}"), alloc(x, "{}"), second]);
        let ids: Vec<&str> = set.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, [x, y, z]);
        assert_eq!(set.len(), 3);
        assert_eq!(set.get(y).map(|a| a.restart_count), Some(7));
        assert_eq!(set.iter().nth(1).map(|a| a.restart_count), Some(7));
    }

    #[test]
    fn a_set_tells_whether_it_lists_an_allocation_another_does_not() {
        let ids = [
            "00000000000000000000000000000001",
            "00000000000000000000000000000002",
            "00000000000000000000000000000003",
        ];
        let set = |pick: &[usize]| {
            Desired::new(
                pick.iter()
                    .map(|&i| alloc(ids[i], "{}"))
                    .collect::<Vec<_>>(),
            )
        };
        let (all, ends, middle, none) = (set(&[0, 1, 2]), set(&[0, 2]), set(&[1]), set(&[]));
        assert!(all.lists_one_not_in(&ends));
        assert!(all.lists_one_not_in(&middle));
        assert!(!ends.lists_one_not_in(&all));
        assert!(!middle.lists_one_not_in(&all));
        assert!(ends.lists_one_not_in(&middle));
        assert!(middle.lists_one_not_in(&ends));
        assert!(!none.lists_one_not_in(&all));
        assert!(all.lists_one_not_in(&none));
        assert!(!all.lists_one_not_in(&all));
    }
}
