//! Nodes held for overdue heads. A queue's head that has waited past its
//! backfill window gets as many nodes as it wants replicas (each one it
//! could run on if the node were empty, the ones with the most free room
//! first); for the rest of the round nothing else is placed there, so
//! they drain as their work ends and the head goes once they have room.
//! Smaller jobs keep backfilling everywhere else.

use std::collections::BTreeMap;

use skiff_model::fit::fits_free;
use skiff_model::{Job, Resources};

use super::QueueBook;
use crate::bitset::Bitset;
use crate::view::{ClusterView, NodeIdx};

/// The nodes held this round, by the workload they are held for.
pub(crate) struct Reserved {
    all: Bitset,
    of: BTreeMap<usize, Vec<NodeIdx>>,
}

impl Reserved {
    /// The nodes workload `wi` may not use (held for others), if any.
    pub fn hidden_for(&self, wi: usize) -> Option<Bitset> {
        if self.of.is_empty() || (self.of.len() == 1 && self.of.contains_key(&wi)) {
            return None;
        }
        let mut h = self.all.clone();
        for &n in self.of.get(&wi).into_iter().flatten() {
            h.remove(n as usize);
        }
        Some(h)
    }

    /// The names of the nodes held for workload `wi`, for its reason.
    pub fn nodes_of(&self, wi: usize, view: &ClusterView<'_>) -> Option<String> {
        let nodes = self.of.get(&wi).filter(|v| !v.is_empty())?;
        let names: Vec<&str> = nodes
            .iter()
            .map(|&n| view.nodes[n as usize].node.name.as_str())
            .collect();
        Some(format!(
            "node{} {}",
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ))
    }
}

/// Holds nodes for each of `heads` in turn (their order).
pub(crate) fn reserve<'j>(
    book: &QueueBook,
    view: &ClusterView<'_>,
    job_of: &dyn Fn(&str) -> Option<&'j Job>,
    heads: &[usize],
) -> Reserved {
    let mut r = Reserved {
        all: Bitset::new(view.nodes.len()),
        of: BTreeMap::new(),
    };
    for &wi in heads {
        let Some(job) = job_of(&book.workloads[wi].job) else {
            continue;
        };
        let spec = &job.spec;
        let ask = spec.task.ask();
        let mut fits: Vec<(u32, u64, &str, NodeIdx)> = Vec::new();
        for (i, slot) in view.nodes.iter().enumerate() {
            if slot.ready.is_err()
                || r.all.contains(i)
                || !spec
                    .constraints
                    .iter()
                    .all(|c| c.matches(&slot.node.labels))
            {
                continue;
            }
            let acceptable = if ask.gpus > 0 {
                slot.node.eligible_gpus(&ask.gpu)
            } else {
                slot.healthy
            };
            let range = slot.node.dynamic_ports;
            if fits_free(slot.cap, Resources::ZERO, acceptable, &[], range, &ask).is_err() {
                continue;
            }
            let free_gpus = (acceptable & !slot.used.gpus).count_ones();
            let free_cpu = slot
                .cap
                .cpu_millis
                .saturating_sub(slot.used.amount.cpu_millis);
            fits.push((free_gpus, free_cpu, slot.node.name.as_str(), i as NodeIdx));
        }
        fits.sort_by(|a, b| (b.0, b.1, a.2).cmp(&(a.0, a.1, b.2)));
        let want = spec.wanted().max(1) as usize;
        let nodes: Vec<NodeIdx> = fits.iter().take(want).map(|f| f.3).collect();
        for &n in &nodes {
            r.all.insert(n as usize);
        }
        r.of.insert(wi, nodes);
    }
    r
}
