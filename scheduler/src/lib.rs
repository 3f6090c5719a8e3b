//! Skiff's scheduler: a pure function from a cluster snapshot and a job to a
//! [`Plan`].
//!
//! No I/O, no clock, no async, no hash-map iteration order: the same input
//! always gives the same plan. The fit rule and the best-fit score come from
//! `skiff_model::fit`, which the state machine also uses to re-check a plan at
//! commit time. See README.md for the pipeline.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use skiff_model::fit::{binpack_score, fits};
use skiff_model::{Allocation, DesiredStatus, Job, Node, Placement, Plan, Resources, Stop};

/// An immutable view of the cluster the scheduler plans against.
#[derive(Debug, Clone, Default)]
pub struct Snapshot<'a> {
    /// Every registered node, in any order.
    pub nodes: Vec<&'a Node>,
    /// Every allocation that may hold resources, in any order.
    pub allocs: Vec<&'a Allocation>,
}

/// Computes the plan that moves `job_name` from what runs now towards what
/// the job asks for. `job` is `None` when the job was deleted: everything it
/// still runs is stopped.
pub fn reconcile(job_name: &str, job: Option<&Job>, snap: &Snapshot<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut own: Vec<&Allocation> = snap
        .allocs
        .iter()
        .copied()
        .filter(|a| a.job == job_name && a.desired == DesiredStatus::Run)
        .collect();
    own.sort_by(|a, b| (a.replica, &a.id).cmp(&(b.replica, &b.id)));

    let Some(job) = job else {
        for a in own.iter().filter(|a| !a.status.is_terminal()) {
            plan.stops.push(stop(a, "job deleted"));
        }
        return plan;
    };

    // Allocations of an older version of the task are replaced (rolling
    // updates come later); those of the current version fill replica slots.
    let mut filled: BTreeMap<u32, &Allocation> = BTreeMap::new();
    for a in &own {
        // An allocation made before the job (re)appeared belongs to an
        // earlier job of the same name.
        if a.job_version != job.version || a.create_index < job.create_index {
            if !a.status.is_terminal() {
                plan.stops.push(stop(a, "job updated"));
            }
        } else if a.status != skiff_model::AllocStatus::Lost {
            match filled.entry(a.replica) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(a);
                }
                // Never two allocations for one slot: keep the first.
                std::collections::btree_map::Entry::Occupied(_) => {
                    if !a.status.is_terminal() {
                        plan.stops.push(stop(a, "duplicate replica"));
                    }
                }
            }
        }
    }
    // Scale down: stop the highest replica slots.
    let wanted = job.spec.replicas;
    for (&replica, a) in filled.iter().rev() {
        if replica >= wanted && !a.status.is_terminal() {
            plan.stops.push(stop(a, "job scaled down"));
        }
    }
    let missing: Vec<u32> = (0..wanted).filter(|r| !filled.contains_key(r)).collect();
    if missing.is_empty() {
        return plan;
    }

    let mut nodes: Vec<&Node> = snap.nodes.clone();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for a in snap.allocs.iter().filter(|a| a.holds_resources()) {
        let u = used.entry(a.node.as_str()).or_insert(Resources::ZERO);
        *u = u.saturating_add(a.resources());
    }
    let ask = job.spec.task.resources;
    for replica in missing {
        match best_fit(&nodes, &used, ask) {
            Ok(node) => {
                let u = used.entry(node).or_insert(Resources::ZERO);
                *u = u.saturating_add(ask);
                plan.placements.push(Placement {
                    replica,
                    node: node.to_string(),
                });
            }
            Err(why) => {
                plan.unplaced += 1;
                if plan.explanation.is_empty() {
                    plan.explanation = why;
                }
            }
        }
    }
    plan
}

fn stop(a: &Allocation, reason: &str) -> Stop {
    Stop {
        alloc_id: a.id.clone(),
        reason: reason.to_string(),
    }
}

/// Picks the feasible node that would be fullest after placing `ask`;
/// ties go to the node whose name sorts first. On failure, explains why no
/// node fits, counted by reason.
fn best_fit<'n>(
    nodes: &[&'n Node],
    used: &BTreeMap<&str, Resources>,
    ask: Resources,
) -> Result<&'n str, String> {
    let mut best: Option<(&'n str, f64)> = None;
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    for node in nodes {
        let u = used.get(node.name.as_str()).copied().unwrap_or_default();
        match fits(node, u, ask) {
            Ok(()) => {
                let score = binpack_score(node, u, ask);
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((node.name.as_str(), score));
                }
            }
            Err(m) => *reasons.entry(m.reason()).or_default() += 1,
        }
    }
    match best {
        Some((name, _)) => Ok(name),
        None => Err(explain(nodes.len(), &reasons)),
    }
}

/// `0/3 nodes: 2 insufficient memory, 1 node not ready`
fn explain(total: usize, reasons: &BTreeMap<&'static str, usize>) -> String {
    if total == 0 {
        return "0/0 nodes: no nodes are registered".to_string();
    }
    let mut parts: Vec<(usize, &str)> = reasons.iter().map(|(r, n)| (*n, *r)).collect();
    // Most common reason first; ties by name so the text is stable.
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let listed: Vec<String> = parts.iter().map(|(n, r)| format!("{n} {r}")).collect();
    format!("0/{total} nodes: {}", listed.join(", "))
}

#[cfg(test)]
mod tests;
