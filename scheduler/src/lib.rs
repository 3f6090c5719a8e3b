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
mod workload;

use std::fmt;
use std::str::FromStr;

use skiff_model::{Deployment, DesiredStatus, Job, Placement, Plan, Stop};

use crate::place::Placer;
pub use crate::view::ClusterView;
use crate::view::{AllocRec, NodeIdx};

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
/// still runs is stopped. A service with allocations of another version
/// rolls out as if its rollout were running and promoted; see
/// [`reconcile_job`] to pass the job's deployment.
pub fn reconcile(job_name: &str, job: Option<&Job>, view: &ClusterView<'_>, cfg: &Config) -> Plan {
    reconcile_job(job_name, job, None, view, cfg)
}

/// [`reconcile`], knowing the job's current rollout: whether it is paused
/// or failed (nothing moves), waiting for its canaries to be promoted, and
/// whether new allocations must prove healthy before old ones stop.
pub fn reconcile_job(
    job_name: &str,
    job: Option<&Job>,
    deployment: Option<&Deployment>,
    view: &ClusterView<'_>,
    cfg: &Config,
) -> Plan {
    let mut plan = Plan::default();
    let job_idx = view.job_index(job_name);
    let all: Vec<&AllocRec<'_>> = job_idx
        .map(|j| {
            view.jobs[j as usize]
                .allocs
                .iter()
                .map(|&a| &view.allocs[a as usize])
                .collect()
        })
        .unwrap_or_default();
    let mut own: Vec<&AllocRec<'_>> = all
        .iter()
        .copied()
        .filter(|a| a.desired == DesiredStatus::Run)
        .collect();
    own.sort_by(|a, b| (a.replica, &a.id).cmp(&(b.replica, &b.id)));

    let Some(job) = job else {
        for a in own.iter().filter(|a| !a.status.is_terminal()) {
            plan.stops.push(stop(a, "job deleted"));
        }
        return plan;
    };
    let ctx = Ctx {
        view,
        cfg,
        job,
        job_idx,
    };
    if job.spec.is_batch() {
        workload::batch(&ctx, &all, &own, &mut plan);
    } else {
        workload::service(&ctx, &own, deployment, &mut plan);
    }
    plan
}

/// What every part of one evaluation reads.
pub(crate) struct Ctx<'v, 'a> {
    pub view: &'v ClusterView<'a>,
    pub cfg: &'v Config,
    pub job: &'v Job,
    pub job_idx: Option<u32>,
}

impl Ctx<'_, '_> {
    /// Places one replica in each of `slots`, in order, evicting
    /// lower-priority work where nothing fits. `kept` are the nodes where
    /// the job's replicas that stay run (for distinct_hosts and spread). A
    /// gang is placed whole or not at all.
    pub(crate) fn place(&self, plan: &mut Plan, slots: &[u32], kept: &[NodeIdx]) {
        if slots.is_empty() {
            return;
        }
        let (view, job) = (self.view, self.job);
        let mut placer = Placer::new(
            view,
            self.cfg,
            &job.spec,
            self.job_idx,
            kept.iter().copied(),
        );
        let reason = format!(
            "preempted by job {} (priority {})",
            job.spec.name, job.spec.priority
        );
        let placed_before = plan.placements.len();
        let evicted_before = plan.evictions.len();
        let mut unplaced = 0;
        let mut explanation = None;
        for &replica in slots {
            if explanation.is_some() {
                // Nothing fit, even by preemption: nor will the next replica.
                unplaced += 1;
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
                    unplaced += 1;
                    explanation = Some(placer.explain());
                }
            }
        }
        if let Some(why) = explanation {
            if job.spec.gang {
                // All or nothing: the replicas that fit are not placed either,
                // and nothing is evicted for them.
                let fit = plan.placements.len() - placed_before;
                plan.placements.truncate(placed_before);
                plan.evictions.truncate(evicted_before);
                unplaced = slots.len() as u32;
                plan.explanation = format!(
                    "gang needs all {} replicas placed together; only {fit} fit: {why}",
                    slots.len()
                );
            } else {
                plan.explanation = why;
            }
        }
        plan.unplaced += unplaced;
    }
}

pub(crate) fn stop(a: &AllocRec<'_>, reason: &str) -> Stop {
    Stop {
        alloc_id: a.id.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
