//! The state's allocations: found by id through a hash table, listed in
//! id order through a sorted set of the ids.
//!
//! A plan's check, a rollout's counts, a node's list and every agent's
//! report look allocations up by id, a job's hundred or a node's thirty at
//! a time, on every server for every applied entry. In an ordered tree of
//! 150,000 random ids each look-up compared some thirty ids, each one a
//! miss in the cache; a hash look-up reads one. Whatever lists
//! allocations (the API's pages, the digest, the saved form) still sees
//! them in id order, as from the ordered map this replaces, and the saved
//! and digested form is the same map.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use skiff_model::Allocation;

/// Allocations by id. The methods are named and behave as an ordered
/// map's do (`iter`, `values` and `keys` go in id order).
#[derive(Clone, Default)]
pub struct AllocTable {
    /// Boxed: a hash table keeps spare slots, and an allocation is large.
    by_id: HashMap<String, Box<Allocation>>,
    order: BTreeSet<String>,
}

impl AllocTable {
    pub fn new() -> AllocTable {
        AllocTable::default()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get<Q>(&self, id: &Q) -> Option<&Allocation>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.get(id).map(|a| &**a)
    }

    pub fn get_mut<Q>(&mut self, id: &Q) -> Option<&mut Allocation>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.get_mut(id).map(|a| &mut **a)
    }

    pub fn contains_key<Q>(&self, id: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_id.contains_key(id)
    }

    /// Puts `a` under `id`, returning what was there.
    pub fn insert(&mut self, id: String, a: Allocation) -> Option<Allocation> {
        match self.by_id.get_mut(&id) {
            Some(slot) => Some(std::mem::replace(&mut **slot, a)),
            None => {
                self.order.insert(id.clone());
                self.by_id.insert(id, Box::new(a));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, id: &Q) -> Option<Allocation>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        let a = self.by_id.remove(id)?;
        self.order.remove(id);
        Some(*a)
    }

    /// Keeps the allocations `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut Allocation) -> bool) {
        let before = self.by_id.len();
        self.by_id.retain(|id, a| keep(id, a));
        if self.by_id.len() != before {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
    }

    /// Ids and allocations, in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &Allocation)> + '_ {
        self.order.iter().map(|id| (id, &*self.by_id[id]))
    }

    /// Allocations, in id order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Allocation> + '_ {
        self.iter().map(|(_, a)| a)
    }

    /// Allocations in no particular order: for totals, which do not care,
    /// at a hash table's walk instead of a look-up per allocation.
    pub fn values_any_order(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.by_id.values().map(|a| &**a)
    }

    /// Ids and allocations from `first` on (itself included), in id order.
    pub fn range_from<'s>(
        &'s self,
        first: &str,
    ) -> impl Iterator<Item = (&'s String, &'s Allocation)> + 's {
        self.order
            .range::<str, _>((std::ops::Bound::Included(first), std::ops::Bound::Unbounded))
            .map(|id| (id, &*self.by_id[id]))
    }

    /// Ids, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + '_ {
        self.order.iter()
    }
}

impl<'a> IntoIterator for &'a AllocTable {
    type Item = (&'a String, &'a Allocation);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a String, &'a Allocation)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<(String, Allocation)> for AllocTable {
    fn from_iter<I: IntoIterator<Item = (String, Allocation)>>(items: I) -> AllocTable {
        let mut t = AllocTable::new();
        for (id, a) in items {
            t.insert(id, a);
        }
        t
    }
}

impl<Q> std::ops::Index<&Q> for AllocTable
where
    String: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = Allocation;

    /// Panics when there is no such allocation, as a map's index does.
    fn index(&self, id: &Q) -> &Allocation {
        self.get(id).expect("no allocation with this id")
    }
}

impl PartialEq for AllocTable {
    fn eq(&self, other: &AllocTable) -> bool {
        self.by_id == other.by_id
    }
}

impl fmt::Debug for AllocTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The same form as an ordered map's: a map in id order.
impl Serialize for AllocTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for AllocTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AllocTable, D::Error> {
        let map: std::collections::BTreeMap<String, Allocation> = Deserialize::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str, node: &str) -> Allocation {
        let spec = skiff_model::JobSpec::from_yaml(
            "name: web\nreplicas: 1\ntask:\n  image: busybox\n  resources: {cpu: 100m, memory: 64Mi}\n",
        )
        .expect("a valid spec");
        Allocation::new(id, "web", 1, 0, node, spec.task)
    }

    #[test]
    fn lists_in_id_order_whatever_order_they_came_in_and_keeps_count_through_changes() {
        let mut t = AllocTable::new();
        for id in ["c", "a", "e", "b", "d"] {
            assert!(t.insert(id.into(), alloc(id, "n1")).is_none());
        }
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
        // Replacing keeps one entry and returns the old one.
        let old = t.insert("c".into(), alloc("c", "n2")).expect("was there");
        assert_eq!(old.node, "n1");
        assert_eq!(t.get("c").map(|a| a.node.as_str()), Some("n2"));
        assert_eq!(t.len(), 5);
        assert_eq!(t.remove("a").map(|a| a.id), Some("a".to_string()));
        assert!(t.remove("a").is_none());
        t.get_mut("d").expect("there").node = "n3".into();
        t.retain(|id, _| id != "e");
        let listed: Vec<(&str, &str)> = t
            .iter()
            .map(|(id, a)| (id.as_str(), a.node.as_str()))
            .collect();
        assert_eq!(listed, [("b", "n1"), ("c", "n2"), ("d", "n3")]);
        let from_c: Vec<&String> = t.range_from("bz").map(|(id, _)| id).collect();
        assert_eq!(from_c, ["c", "d"]);
        assert_eq!(t.values_any_order().count(), 3);
        assert!(!t.contains_key("e") && t.contains_key("b"));
    }

    #[test]
    fn saves_as_the_ordered_map_it_replaced_and_loads_back() {
        let t: AllocTable = ["z", "m", "a"]
            .into_iter()
            .map(|id| (id.to_string(), alloc(id, "n")))
            .collect();
        let map: std::collections::BTreeMap<String, Allocation> = ["a", "m", "z"]
            .into_iter()
            .map(|id| (id.to_string(), alloc(id, "n")))
            .collect();
        let saved = serde_json::to_string(&t).unwrap();
        assert_eq!(saved, serde_json::to_string(&map).unwrap());
        let back: AllocTable = serde_json::from_str(&saved).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), ["a", "m", "z"]);
        assert_eq!(back.get("m").map(|a| a.id.as_str()), Some("m"));
    }
}
