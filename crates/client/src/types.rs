//! What the client's calls return: domain values and the few views the
//! API adds (a job's summary, a rollout's state, a page of a list).

use std::time::Duration;

use skiff_model::{Allocation, Deployment, Job, JobVersion, Node, Resources, RolloutCounts};
use skiff_proto::pb;

/// Counts of a job's allocations by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSummary {
    /// Replicas of a service, parallelism of a batch job.
    pub desired: u32,
    pub pending: u32,
    pub running: u32,
    pub complete: u32,
    pub failed: u32,
    pub lost: u32,
    /// Batch: completion slots that succeeded, out of `completions`.
    pub succeeded: u32,
    pub completions: u32,
    /// Batch: failed runs of the current version, restarts included.
    pub failed_runs: u32,
    /// Batch: `running`, `complete` or `failed`; a service: its rollout's
    /// status (`running`, `paused`, `awaiting promotion`, `successful`,
    /// `failed`, `rolled_back`, `cancelled`; empty without one); `queued`
    /// for a job waiting in its team queue.
    pub state: String,
}

/// The word for a job's state, as `skiff get jobs` prints it.
pub fn job_state_word(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Complete) => "complete",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Paused) => "paused",
        Ok(pb::JobState::AwaitingPromotion) => "awaiting promotion",
        Ok(pb::JobState::Successful) => "successful",
        Ok(pb::JobState::RolledBack) => "rolled_back",
        Ok(pb::JobState::Cancelled) => "cancelled",
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Unspecified) | Err(_) => "",
    }
}

/// The word for a server's role.
pub fn role_word(role: i32) -> &'static str {
    match pb::ServerRole::try_from(role) {
        Ok(pb::ServerRole::Leader) => "leader",
        Ok(pb::ServerRole::Follower) => "follower",
        Ok(pb::ServerRole::Candidate) => "candidate",
        Ok(pb::ServerRole::Learner) => "learner",
        Ok(pb::ServerRole::Unreachable) => "unreachable",
        Ok(pb::ServerRole::Unspecified) | Err(_) => "unknown",
    }
}

impl From<pb::JobSummary> for JobSummary {
    fn from(s: pb::JobSummary) -> Self {
        JobSummary {
            desired: s.desired,
            pending: s.pending,
            running: s.running,
            complete: s.complete,
            failed: s.failed,
            lost: s.lost,
            succeeded: s.succeeded,
            completions: s.completions,
            failed_runs: s.failed_runs,
            state: job_state_word(s.state).to_string(),
        }
    }
}

/// A job's rollouts and versions, as `skiff rollout` shows them.
#[derive(Debug, Clone)]
pub struct RolloutInfo {
    pub job: Job,
    /// Oldest first; the last is the current rollout.
    pub deployments: Vec<Deployment>,
    pub counts: RolloutCounts,
    /// Kept versions, oldest first.
    pub history: Vec<JobVersion>,
    pub summary: JobSummary,
}

impl RolloutInfo {
    /// The job's current rollout.
    pub fn current(&self) -> Option<&Deployment> {
        self.deployments.last()
    }
}

/// The latest evaluation of a job, as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalInfo {
    pub id: String,
    pub status: String,
    pub trigger: String,
    pub message: String,
    /// The Raft index of its last change: a pending evaluation's rises with
    /// every change that asks for the job to be planned again, and a
    /// finished one's is the index it finished at.
    pub modify_index: u64,
}

#[derive(Debug, Clone)]
pub struct JobDetail {
    pub job: Job,
    pub summary: JobSummary,
    pub allocs: Vec<Allocation>,
    pub latest_eval: Option<EvalInfo>,
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub heartbeat_age: Option<Duration>,
    pub used: Resources,
    /// The node's latest GPU samples, as the answering server got them
    /// with heartbeats (empty when it has none).
    pub gpu_metrics: Vec<skiff_model::GpuMetrics>,
    /// How old those samples are.
    pub gpu_metrics_age: Option<Duration>,
}

/// The answer to a GPU reset.
#[derive(Debug, Clone)]
pub struct GpuReset {
    /// The full UUID that was reset.
    pub uuid: String,
    /// It was unhealthy before, and why.
    pub was_unhealthy: bool,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub job: Job,
    /// False when the stored spec was already identical.
    pub changed: bool,
    /// The Raft index of the write.
    pub index: u64,
    /// The digest a registry tag was resolved to, or why it was not
    /// (empty for a layout or a pinned image).
    pub image_note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// What `skiff exec` got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past the agent's limit (4 MiB per stream) was dropped.
    pub truncated: bool,
    /// The command ran past its timeout and was killed.
    pub timed_out: bool,
}

/// How to read a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming until the container exits.
    pub follow: bool,
    /// Only the last N lines (0: all).
    pub tail: u32,
    pub stderr_only: bool,
    /// Prefix each line with the time the node received it.
    pub timestamps: bool,
}

/// One control-plane server, as `skiff server members` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub api_addr: String,
    pub peer_addr: String,
    /// leader, follower, learner, candidate, or unreachable
    pub role: String,
    pub applied_index: Option<u64>,
    pub voter: bool,
}

/// What the answering server says of itself and of Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    pub id: u64,
    /// 0: no leader known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub version: String,
    /// leader, follower, candidate or learner
    pub role: String,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Equal on servers that applied the same entries.
    pub state_digest: u64,
}

/// A change of one object of the cluster, from `watch`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// The Raft index of the write that made the change.
    pub index: u64,
    /// job, node, allocation, evaluation, deployment, job_version, server
    pub kind: String,
    /// The object's name or id.
    pub key: String,
    /// The object after the change, in the proto3 JSON mapping; `None`
    /// when it was deleted.
    pub json: Option<String>,
    /// The last event of its index: a watch resumed from `index` misses
    /// nothing.
    pub last_in_index: bool,
}

/// Which changes a watch sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// After this index (0: from now on).
    pub from_index: u64,
    /// Only these kinds (the words of [`WatchEvent::kind`]); empty: all.
    pub kinds: Vec<String>,
    /// Only objects of this job.
    pub job: Option<String>,
    /// Only this node and the allocations on it.
    pub node: Option<String>,
}

/// The kinds a watch knows, by word and wire value.
pub const OBJECT_KINDS: [(&str, pb::ObjectKind); 7] = [
    ("job", pb::ObjectKind::Job),
    ("node", pb::ObjectKind::Node),
    ("allocation", pb::ObjectKind::Allocation),
    ("evaluation", pb::ObjectKind::Evaluation),
    ("deployment", pb::ObjectKind::Deployment),
    ("job_version", pb::ObjectKind::JobVersion),
    ("server", pb::ObjectKind::Server),
];

/// A page of a list: the items, and the token of the next page (`None`:
/// this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}
