//! Where the latest changes were: by node, the index of the last entry
//! that added, changed or removed one of its allocations; and the last
//! entry that changed access records, nodes or servers, or anything the
//! cluster's network view is made of; by job, the last entry that changed
//! it, its rollouts or its allocations. Watchers read them to skip, in O(1),
//! the entries that do not concern them (a cluster of 5,000 nodes applies
//! entries that each concern a handful). Derived from `State::touch`, so
//! every change that is saved is marked; not part of the state.

use std::collections::HashMap;

use skiff_model::{Allocation, NetworkMode};

use super::table::Table;

#[derive(Debug, Clone, Default)]
pub(crate) struct Marks {
    allocs_on: HashMap<String, u64>,
    /// By job: the last entry that changed the job, its rollouts or one
    /// of its allocations.
    jobs: HashMap<String, u64>,
    access: u64,
    nodes: u64,
    network: u64,
    /// Every change after this index is marked (set when the state was
    /// loaded: what came before is not known).
    since: u64,
}

/// Whether a change of `a` may change the cluster's endpoints or network
/// members: it has an address, or it runs in the host's network (where
/// its node's address is its own).
fn in_network(a: &Allocation) -> bool {
    !a.address.is_empty() || a.task.network == NetworkMode::Host
}

impl Marks {
    /// Marks nothing before `index`: everything is new to a watcher that
    /// has seen less.
    pub(crate) fn starting_at(index: u64) -> Marks {
        Marks {
            since: index,
            ..Default::default()
        }
    }

    /// An allocation on `node` changed at `index` (or was added, or
    /// removed: `a` as it was).
    pub(crate) fn alloc(&mut self, index: u64, a: &Allocation) {
        match self.allocs_on.get_mut(&a.node) {
            Some(at) => *at = index,
            None => {
                self.allocs_on.insert(a.node.clone(), index);
            }
        }
        if in_network(a) {
            self.network = index;
        }
        self.job(index, &a.job);
    }

    /// Job `job` (its record or its rollouts) changed at `index`.
    pub(crate) fn job(&mut self, index: u64, job: &str) {
        match self.jobs.get_mut(job) {
            Some(at) => *at = index,
            None => {
                self.jobs.insert(job.to_string(), index);
            }
        }
    }

    /// Forgets job `job`'s mark (it and its allocations are gone).
    pub(crate) fn forget_job(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// See `State::job_changed_at`.
    pub(crate) fn job_at(&self, job: &str) -> u64 {
        self.jobs.get(job).copied().unwrap_or(0).max(self.since)
    }

    /// See `State::allocs_changed_on`.
    pub(crate) fn allocs_on(&self, node: &str) -> u64 {
        self.allocs_on
            .get(node)
            .copied()
            .unwrap_or(0)
            .max(self.since)
    }

    /// The nodes whose allocations changed after `index`; `None` when the
    /// marks do not reach back that far.
    pub(crate) fn nodes_after(&self, index: u64) -> Option<Vec<&str>> {
        (self.since <= index).then(|| {
            self.allocs_on
                .iter()
                .filter(|(_, at)| **at > index)
                .map(|(node, _)| node.as_str())
                .collect()
        })
    }

    pub(crate) fn access(&self) -> u64 {
        self.access.max(self.since)
    }

    pub(crate) fn nodes(&self) -> u64 {
        self.nodes.max(self.since)
    }

    pub(crate) fn network(&self) -> u64 {
        self.network.max(self.since)
    }

    pub(crate) fn table(&mut self, index: u64, table: Table) {
        match table {
            Table::Access => {
                self.access = index;
                self.network = index;
            }
            Table::Node | Table::Server => {
                self.nodes = index;
                self.network = index;
            }
            _ => {}
        }
    }
}
