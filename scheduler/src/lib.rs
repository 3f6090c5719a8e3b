//! Skiff's scheduler: a pure function from a cluster view, a job and a
//! configuration to a [`Plan`].
//!
//! No I/O, no clock, no async, no hash-map iteration order: the same input
//! always gives the same plan, and ties are broken by [`Config::seed`]. The
//! fit rule comes from `skiff_model::fit`, which the state machine also uses
//! to re-check a plan at commit time. See README.md for the pipeline and a
//! glossary.
//!
//! ```text
//! let view = ClusterView::new(&nodes, &allocs, |job| priority_of(job));
//! let plan = reconcile("web", Some(&job), &view, &Config::default());
//! ```

#![forbid(unsafe_code)]

mod bitset;
mod explain;
mod gpus;
mod place;
mod preempt;
mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use skiff_model::{AllocStatus, DesiredStatus, Job, Placement, Plan, Stop};

use crate::place::Placer;
pub use crate::view::ClusterView;
use crate::view::{AllocRec, NO_NODE};

/// How the scheduler scores the nodes a replica fits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Best fit: the node that would be fullest afterwards, so whole nodes
    /// stay free for big work.
    #[default]
    Binpack,
    /// Worst fit: the node that would be emptiest afterwards, so load is
    /// spread out.
    Spread,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Binpack => "binpack",
            Algorithm::Spread => "spread",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "binpack" => Ok(Algorithm::Binpack),
            "spread" => Ok(Algorithm::Spread),
            other => Err(format!(
                "{other:?} is not a scheduler algorithm; expected binpack or spread"
            )),
        }
    }
}

/// The scheduler's settings: plain data, passed in with every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub algorithm: Algorithm,
    /// Breaks ties between equally good nodes. The same seed and input give
    /// the same plan.
    pub seed: u64,
    /// Whether a job may evict allocations of jobs at least 10 priority
    /// points lower when its replicas fit nowhere.
    pub preemption: bool,
    /// In index mode, how many fitting nodes per node class are scored for
    /// each replica (at least 1; 1 is pure best fit).
    pub candidates: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            algorithm: Algorithm::Binpack,
            seed: 0,
            preemption: true,
            candidates: 4,
        }
    }
}

/// Computes the plan that moves `job_name` from what runs now towards what
/// the job asks for. `job` is `None` when the job was deleted: everything it
/// still runs is stopped.
pub fn reconcile(job_name: &str, job: Option<&Job>, view: &ClusterView<'_>, cfg: &Config) -> Plan {
    let mut plan = Plan::default();
    let job_idx = view.job_index(job_name);
    let mut own: Vec<&AllocRec<'_>> = job_idx
        .map(|j| {
            view.jobs[j as usize]
                .allocs
                .iter()
                .map(|&a| &view.allocs[a as usize])
                .filter(|a| a.desired == DesiredStatus::Run)
                .collect()
        })
        .unwrap_or_default();
    own.sort_by(|a, b| (a.replica, &a.id).cmp(&(b.replica, &b.id)));

    let Some(job) = job else {
        for a in own.iter().filter(|a| !a.status.is_terminal()) {
            plan.stops.push(stop(a, "job deleted"));
        }
        return plan;
    };

    // Allocations of an older version of the job are replaced (rolling
    // updates come later); those of the current version fill replica slots.
    let mut filled: BTreeMap<u32, &AllocRec<'_>> = BTreeMap::new();
    for a in &own {
        // An allocation made before the job (re)appeared belongs to an
        // earlier job of the same name.
        if a.version != job.version || a.create_index < job.create_index {
            if !a.status.is_terminal() {
                plan.stops.push(stop(a, "job updated"));
            }
        } else if a.status != AllocStatus::Lost {
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

    // Where the replicas that stay run (for distinct_hosts and spread).
    let kept = filled
        .iter()
        .filter(|(&r, a)| r < wanted && !a.status.is_terminal() && a.node != NO_NODE)
        .map(|(_, a)| a.node);
    let mut placer = Placer::new(view, cfg, &job.spec, job_idx, kept);
    let reason = format!(
        "preempted by job {} (priority {})",
        job.spec.name, job.spec.priority
    );
    let mut explanation = None;
    for &replica in &missing {
        if explanation.is_some() {
            // Nothing fit, even by preemption: nor will the next replica.
            plan.unplaced += 1;
            continue;
        }
        let choice = match placer.place_one() {
            Some(c) => Some(c),
            None => placer.preempt_one().map(|(c, victims)| {
                for v in victims {
                    plan.evictions.push(Stop {
                        alloc_id: view.allocs[v as usize].id.to_string(),
                        reason: reason.clone(),
                    });
                }
                c
            }),
        };
        match choice {
            Some(c) => {
                let node = view.nodes[c.node as usize].node;
                plan.placements.push(Placement {
                    replica,
                    node: node.name.clone(),
                    gpus: node.gpu_uuids(c.gpus),
                });
            }
            None => {
                plan.unplaced += 1;
                explanation = Some(placer.explain());
            }
        }
    }
    if let Some(why) = explanation {
        if job.spec.gang {
            // All or nothing: the replicas that fit are not placed either,
            // and nothing is evicted for them.
            let fit = plan.placements.len();
            plan.placements.clear();
            plan.evictions.clear();
            plan.unplaced = missing.len() as u32;
            plan.explanation = format!(
                "gang needs all {} replicas placed together; only {fit} fit: {why}",
                missing.len()
            );
        } else {
            plan.explanation = why;
        }
    }
    plan
}

fn stop(a: &AllocRec<'_>, reason: &str) -> Stop {
    Stop {
        alloc_id: a.id.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
