//! How a job's kind of work plays out: services roll out new versions
//! under their `update` policy, batch jobs run to a number of successful
//! completions, gangs start and restart all together. The words for these
//! ([`JobType`](crate::JobType), [`UpdateSpec`](crate::UpdateSpec),
//! [`GangFailure`]) are in [`crate::job`].
//!
//! The counting rules here (which allocations count as succeeded, failed,
//! healthy, updated) are shared by the scheduler, the state machine and the
//! API through [`AllocFacts`], so a plan, a deployment's verdict and what
//! `skiff get jobs` shows can never disagree.

use std::collections::BTreeSet;

use crate::alloc::{failures_of, reason, AllocStatus, Allocation, DesiredStatus};
use crate::job::{GangFailure, Job, JobSpec, JobType};
use crate::lifecycle::RestartPolicy;

/// Failed runs a batch job tolerates when the spec names no number
/// (Kubernetes' `backoffLimit` default).
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;
/// Most failed runs a batch job may be allowed.
pub const MAX_BACKOFF_LIMIT: u32 = 10_000;
/// Most completions a batch job may ask for.
pub const MAX_COMPLETIONS: u32 = 100_000;
/// The port PyTorch's rendezvous listens on by default.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// The host part of `host:port`, `[v6]:port`, or the text itself.
pub fn host_of(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host.to_string();
        }
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_string()
        }
        _ => address.to_string(),
    }
}

impl JobSpec {
    pub fn is_batch(&self) -> bool {
        self.job_type == JobType::Batch
    }

    /// Whether new versions roll out gradually under `update` (services
    /// that are not gangs). Batch jobs and gangs are replaced whole.
    pub fn rolls_out(&self) -> bool {
        !self.is_batch() && !self.gang
    }

    /// `update.max_unavailable` as a number of replicas (rounded down),
    /// for the rolling update and for anything else that takes replicas
    /// away on purpose (a node drain).
    pub fn max_unavailable(&self) -> u32 {
        self.rolling_limits().0
    }

    /// `update.max_surge` as a number of allocations (rounded up).
    pub fn max_surge(&self) -> u32 {
        self.rolling_limits().1
    }

    /// `(max_unavailable, max_surge)` as counts for the current replicas.
    /// When a percentage makes both 0 (few replicas), one replica may be
    /// unavailable, so a rollout can always move (as Kubernetes does).
    pub fn rolling_limits(&self) -> (u32, u32) {
        let r = self.replicas;
        let u = self.update.max_unavailable.of(r, false).min(r);
        let s = self.update.max_surge.of(r, true);
        if u == 0 && s == 0 {
            (1.min(r), 0)
        } else {
            (u, s)
        }
    }

    /// Successful runs a batch job needs: `completions` (default 1), or
    /// every rank of a gang.
    pub fn completions(&self) -> u32 {
        if self.gang {
            self.replicas
        } else {
            self.completions.unwrap_or(1)
        }
    }

    /// Most allocations of a batch job running at once: `parallelism`
    /// (default 1, at most the completions), or every rank of a gang.
    pub fn parallelism(&self) -> u32 {
        if self.gang {
            self.replicas
        } else {
            self.parallelism.unwrap_or(1).min(self.completions())
        }
    }

    pub fn backoff_limit(&self) -> u32 {
        self.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)
    }

    /// The task's restart policy when the spec names none: `always` for a
    /// service; `on-failure` for a batch job (the node retries the run in
    /// place), or `never` for a batch gang (the whole gang restarts
    /// instead, see `gang_failure`).
    pub fn default_restart_policy(&self) -> RestartPolicy {
        match (self.is_batch(), self.gang) {
            (false, _) => RestartPolicy::Always,
            (true, false) => RestartPolicy::OnFailure,
            (true, true) => RestartPolicy::Never,
        }
    }

    pub fn master_port(&self) -> u16 {
        self.master_port.unwrap_or(DEFAULT_MASTER_PORT)
    }

    /// How many allocations the job wants running now, as `get jobs`
    /// shows it: replicas for a service, parallelism for a batch job.
    pub fn wanted(&self) -> u32 {
        if self.is_batch() {
            self.parallelism()
        } else {
            self.replicas
        }
    }
}

/// What the shared counting rules need to know about one allocation.
/// Implemented by [`crate::Allocation`] and by the scheduler's own copy.
pub trait AllocFacts {
    fn replica(&self) -> u32;
    fn version(&self) -> u64;
    fn create_index(&self) -> u64;
    fn desired(&self) -> DesiredStatus;
    fn status(&self) -> AllocStatus;
    /// Times it failed: restarts on its node, plus one when it has ended
    /// failed or waits in a back-off after an exit.
    fn failures(&self) -> u32;
    /// Exited 0 on its own (not stopped on request).
    fn succeeded(&self) -> bool;
    /// Running and its readiness passes now.
    fn healthy_now(&self) -> bool;
    /// The deployment controller's verdict for its rollout.
    fn deploy_health(&self) -> Option<bool>;

    fn is_live(&self) -> bool {
        self.desired() == DesiredStatus::Run && !self.status().is_terminal()
    }
}

impl AllocFacts for Allocation {
    fn replica(&self) -> u32 {
        self.replica
    }
    fn version(&self) -> u64 {
        self.job_version
    }
    fn create_index(&self) -> u64 {
        self.create_index
    }
    fn desired(&self) -> DesiredStatus {
        self.desired
    }
    fn status(&self) -> AllocStatus {
        self.status
    }
    fn failures(&self) -> u32 {
        failures_of(self.status, self.restart_count, &self.reason)
    }
    fn succeeded(&self) -> bool {
        self.status == AllocStatus::Complete && self.reason == reason::COMPLETED
    }
    fn healthy_now(&self) -> bool {
        self.status == AllocStatus::Running && self.healthy == Some(true)
    }
    fn deploy_health(&self) -> Option<bool> {
        self.deploy_health
    }
}

/// How far a batch job has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchProgress {
    /// Distinct completion slots (or gang ranks) that succeeded.
    pub succeeded: u32,
    /// Failed runs of the current version (restarts included).
    pub failed: u32,
    /// Allocations wanted to run that have not finished.
    pub running: u32,
    pub state: BatchState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BatchState {
    #[default]
    Running,
    Complete,
    Failed,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Complete => "complete",
            BatchState::Failed => "failed",
        }
    }
}

/// The allocations that belong to the job's current version (not those of
/// an older version, nor of an earlier job of the same name).
pub fn of_current_version<'a, A: AllocFacts + 'a>(
    job: &'a Job,
    allocs: impl IntoIterator<Item = &'a A> + 'a,
) -> impl Iterator<Item = &'a A> + 'a {
    allocs
        .into_iter()
        .filter(move |a| a.version() == job.version && a.create_index() >= job.create_index)
}

/// A batch job's progress from its allocations: complete once
/// `completions` slots succeeded, failed once its failures pass
/// `backoff_limit` (or, for a gang with `gang_failure: fail`, at the first
/// failure).
pub fn batch_progress<'a, A: AllocFacts + 'a>(
    job: &'a Job,
    allocs: impl IntoIterator<Item = &'a A> + 'a,
) -> BatchProgress {
    let spec = &job.spec;
    let completions = spec.completions();
    let mut succeeded = BTreeSet::new();
    let mut p = BatchProgress::default();
    for a in of_current_version(job, allocs) {
        p.failed = p.failed.saturating_add(a.failures());
        if a.desired() == DesiredStatus::Run {
            if a.succeeded() && a.replica() < completions {
                succeeded.insert(a.replica());
            } else if !a.status().is_terminal() {
                p.running += 1;
            }
        }
    }
    p.succeeded = succeeded.len() as u32;
    p.state = if p.failed > spec.backoff_limit()
        || (spec.gang && spec.gang_failure == GangFailure::Fail && p.failed > 0)
    {
        BatchState::Failed
    } else if p.succeeded >= completions {
        BatchState::Complete
    } else {
        BatchState::Running
    };
    p
}

/// Where a service's rollout stands, counted from its allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// `replicas`.
    pub desired: u32,
    /// Allocations of the current version wanted to run (slots below
    /// `replicas`).
    pub updated: u32,
    /// Of those, the ones that proved healthy for the rollout and are
    /// healthy now.
    pub healthy: u32,
    /// Of those, the ones that failed the rollout.
    pub unhealthy: u32,
    /// Live allocations of other versions.
    pub old: u32,
    /// Of those, the ones healthy now.
    pub old_healthy: u32,
}

impl RolloutCounts {
    /// Every replica runs the current version, proved healthy, and nothing
    /// of another version is left.
    pub fn done(&self) -> bool {
        self.healthy >= self.desired && self.old == 0
    }
}

pub fn rollout_counts<'a, A: AllocFacts + 'a>(
    job: &'a Job,
    allocs: impl IntoIterator<Item = &'a A> + 'a,
) -> RolloutCounts {
    let r = job.spec.replicas;
    let mut c = RolloutCounts {
        desired: r,
        ..RolloutCounts::default()
    };
    let mut slots = BTreeSet::new();
    for a in allocs {
        if a.desired() != DesiredStatus::Run {
            continue;
        }
        let current = a.version() == job.version && a.create_index() >= job.create_index;
        if current {
            if a.replica() >= r || a.status() == AllocStatus::Lost || !slots.insert(a.replica()) {
                continue;
            }
            if a.deploy_health() == Some(false) {
                c.unhealthy += 1;
            }
            if !a.status().is_terminal() {
                c.updated += 1;
                if a.deploy_health() == Some(true) && a.healthy_now() {
                    c.healthy += 1;
                }
            }
        } else if !a.status().is_terminal() {
            c.old += 1;
            if a.healthy_now() {
                c.old_healthy += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_part_of_an_address() {
        assert_eq!(host_of("10.0.0.5:7702"), "10.0.0.5");
        assert_eq!(host_of("[fd00::1]:7702"), "fd00::1");
        assert_eq!(host_of("node-a"), "node-a");
        assert_eq!(host_of("fd00::1"), "fd00::1");
    }
}
