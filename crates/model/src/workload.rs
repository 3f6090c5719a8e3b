//! What kind of work a job is and how it changes: services roll out new
//! versions under an `update` policy, batch jobs run to a number of
//! successful completions, gangs start and restart all together.
//!
//! The counting rules here (which allocations count as succeeded, failed,
//! healthy, updated) are shared by the scheduler, the state machine and the
//! API through [`AllocFacts`], so a plan, a deployment's verdict and what
//! `skiff get jobs` shows can never disagree.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::alloc::{AllocStatus, DesiredStatus};
use crate::job::{Job, JobSpec};

/// A job's versions kept in its history when the spec names no number.
pub const DEFAULT_VERSIONS_KEPT: u32 = 10;
/// Most versions a job may keep.
pub const MAX_VERSIONS_KEPT: u32 = 100;
/// Failed runs a batch job tolerates when the spec names no number
/// (Kubernetes' `backoffLimit` default).
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;
/// Most failed runs a batch job may be allowed.
pub const MAX_BACKOFF_LIMIT: u32 = 10_000;
/// Most completions a batch job may ask for.
pub const MAX_COMPLETIONS: u32 = 100_000;
/// The port PyTorch's rendezvous listens on by default.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// What a job's allocations are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Runs forever: `replicas` copies kept running, updated by rollouts.
    #[default]
    Service,
    /// Runs to completion: `completions` successful runs, at most
    /// `parallelism` at once (or, with `gang: true`, `replicas` ranks
    /// together).
    Batch,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
        }
    }

    pub fn parse(text: &str) -> Option<JobType> {
        match text {
            "service" => Some(JobType::Service),
            "batch" => Some(JobType::Batch),
            _ => None,
        }
    }

    pub fn is_service(&self) -> bool {
        *self == JobType::Service
    }
}

/// A number of replicas, or a percentage of `replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The count this amount stands for out of `total`; a percentage is
    /// rounded up or down as asked.
    pub fn of(self, total: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let x = u64::from(total) * u64::from(p);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                n.min(u64::from(u32::MAX)) as u32
            }
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }

    /// `3`, `25%`; anything else is an error in words.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let t = text.trim();
        let bad = || {
            format!("{text:?} must be a number of replicas (e.g. 1) or a percentage of replicas (e.g. 25%)")
        };
        match t.strip_suffix('%') {
            Some(p) => {
                let n: u32 = p.trim().parse().map_err(|_| bad())?;
                if n > 100 {
                    return Err(format!("{text:?} is more than 100%"));
                }
                Ok(Amount::Percent(n))
            }
            None => t.parse().map(Amount::Count).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            N(u32),
            S(String),
        }
        match Form::deserialize(d)? {
            Form::N(n) => Ok(Amount::Count(n)),
            Form::S(s) => Amount::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// How a service moves to a new version (the `update:` block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// How many replicas may be unavailable during a rollout (default 25%,
    /// rounded down).
    #[serde(default = "default_quarter", skip_serializing_if = "is_quarter")]
    pub max_unavailable: Amount,
    /// How many allocations may run above `replicas` during a rollout
    /// (default 25%, rounded up).
    #[serde(default = "default_quarter", skip_serializing_if = "is_quarter")]
    pub max_surge: Amount,
    /// How long a new allocation must stay healthy to count (default 10s).
    #[serde(
        default = "default_min_healthy",
        skip_serializing_if = "is_default_min_healthy",
        with = "crate::duration::text"
    )]
    pub min_healthy: Duration,
    /// A new allocation not healthy this long after it was placed fails
    /// the rollout (default 5m).
    #[serde(
        default = "default_healthy_deadline",
        skip_serializing_if = "is_default_healthy_deadline",
        with = "crate::duration::text"
    )]
    pub healthy_deadline: Duration,
    /// A rollout with no allocation becoming healthy for this long fails
    /// (default 10m).
    #[serde(
        default = "default_progress_deadline",
        skip_serializing_if = "is_default_progress_deadline",
        with = "crate::duration::text"
    )]
    pub progress_deadline: Duration,
    /// A failed rollout rolls back to the last version that rolled out
    /// successfully (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub auto_rollback: bool,
    /// New allocations started beside the old ones before the rollout
    /// waits for `skiff rollout promote` (default 0: no canaries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary: u32,
}

fn default_quarter() -> Amount {
    Amount::Percent(25)
}
fn is_quarter(a: &Amount) -> bool {
    *a == Amount::Percent(25)
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(10)
}
fn is_default_min_healthy(d: &Duration) -> bool {
    *d == default_min_healthy()
}
fn default_healthy_deadline() -> Duration {
    Duration::from_secs(300)
}
fn is_default_healthy_deadline(d: &Duration) -> bool {
    *d == default_healthy_deadline()
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}
fn is_default_progress_deadline(d: &Duration) -> bool {
    *d == default_progress_deadline()
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_unavailable: default_quarter(),
            max_surge: default_quarter(),
            min_healthy: default_min_healthy(),
            healthy_deadline: default_healthy_deadline(),
            progress_deadline: default_progress_deadline(),
            auto_rollback: true,
            canary: 0,
        }
    }
}

impl UpdateSpec {
    pub fn is_default(&self) -> bool {
        *self == UpdateSpec::default()
    }
}

/// What happens to a gang when one of its replicas fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GangFailure {
    /// Stop every replica and start the whole gang again (counted against
    /// `backoff_limit`).
    #[default]
    RestartGang,
    /// Stop every replica; the job has failed.
    Fail,
}

impl GangFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            GangFailure::RestartGang => "restart_gang",
            GangFailure::Fail => "fail",
        }
    }

    pub fn parse(text: &str) -> Option<GangFailure> {
        match text {
            "restart_gang" => Some(GangFailure::RestartGang),
            "fail" => Some(GangFailure::Fail),
            _ => None,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == GangFailure::RestartGang
    }
}

/// What a replica of a gang learns about its gang, as environment
/// variables (`SKIFF_RANK`, `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangRank {
    /// The replica's rank, 0 to `world_size - 1`.
    pub rank: u32,
    pub world_size: u32,
    /// The host part of the address of rank 0's node.
    pub master_addr: String,
    pub master_port: u16,
}

impl GangRank {
    /// The variables the container gets, PyTorch's included.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SKIFF_RANK", self.rank.to_string()),
            ("SKIFF_WORLD_SIZE", self.world_size.to_string()),
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

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
    fn percentages_round_as_kubernetes_does() {
        assert_eq!(Amount::Percent(25).of(10, false), 2);
        assert_eq!(Amount::Percent(25).of(10, true), 3);
        assert_eq!(Amount::Percent(25).of(4, false), 1);
        assert_eq!(Amount::Percent(25).of(1, false), 0);
        assert_eq!(Amount::Percent(25).of(1, true), 1);
        assert_eq!(Amount::Count(3).of(1, true), 3);
    }

    #[test]
    fn amounts_parse_as_counts_or_percentages() {
        assert_eq!(Amount::parse("2"), Ok(Amount::Count(2)));
        assert_eq!(Amount::parse("30%"), Ok(Amount::Percent(30)));
        assert!(Amount::parse("150%")
            .unwrap_err()
            .contains("more than 100%"));
        assert!(Amount::parse("a lot").unwrap_err().contains("percentage"));
    }

    #[test]
    fn the_host_part_of_an_address() {
        assert_eq!(host_of("10.0.0.5:7702"), "10.0.0.5");
        assert_eq!(host_of("[fd00::1]:7702"), "fd00::1");
        assert_eq!(host_of("node-a"), "node-a");
        assert_eq!(host_of("fd00::1"), "fd00::1");
    }
}
