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
mod config;
mod ctx;
mod explain;
mod gpus;
mod place;
mod preempt;
pub mod queues;
mod view;
mod view_live;
pub mod work;
mod workload;

use skiff_model::{Deployment, DesiredStatus, Job, Plan};

pub use crate::config::{Algorithm, Config, Stripe};
use crate::ctx::{stop, Ctx};
use crate::view::AllocRec;
pub use crate::view::{AllocSummary, ClusterView, ViewInput};
pub use crate::view_live::ViewShape;

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
/// With `cfg.stripe`, the job is placed within that planner's share of the
/// nodes when it fits there without evicting anything, and on every node
/// otherwise.
pub fn reconcile_job(
    job_name: &str,
    job: Option<&Job>,
    deployment: Option<&Deployment>,
    view: &ClusterView<'_>,
    cfg: &Config,
) -> Plan {
    if let Some(stripe) = cfg.stripe.filter(|s| s.of > 1 && s.index < s.of) {
        let mut others = crate::bitset::Bitset::new(view.nodes.len());
        for n in 0..view.nodes.len() {
            if n % stripe.of as usize != stripe.index as usize {
                others.insert(n);
            }
        }
        let plan = reconcile_inner(job_name, job, deployment, view, cfg, None, Some(&others));
        // Evicting within the share while room waits elsewhere is not
        // what a stripe is for: such a plan is made on every node.
        if plan.unplaced == 0 && plan.evictions.is_empty() {
            return plan;
        }
    }
    reconcile_inner(job_name, job, deployment, view, cfg, None, None)
}

/// [`reconcile_job`], or with `reclaim` (view indexes: an admission's
/// chosen victims) only the allocations of those jobs may be evicted,
/// whatever their priority or queue.
pub(crate) fn reconcile_inner(
    job_name: &str,
    job: Option<&Job>,
    deployment: Option<&Deployment>,
    view: &ClusterView<'_>,
    cfg: &Config,
    reclaim: Option<&std::collections::BTreeSet<u32>>,
    hidden: Option<&crate::bitset::Bitset>,
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
        reclaim,
        hidden,
    };
    if job.spec.is_batch() {
        workload::batch(&ctx, &all, &own, &mut plan);
    } else {
        workload::service(&ctx, &own, deployment, &mut plan);
    }
    plan
}

#[cfg(test)]
mod tests;
