//! A typed client over Skiff's gRPC API, used by the CLI, the tests and
//! the benches. It speaks domain types (`skiff_model`) and hides the wire
//! types.

#![forbid(unsafe_code)]

use std::time::Duration;

use skiff_model::{
    Allocation, Deployment, Job, JobSpec, JobVersion, Node, Resources, RolloutCounts,
};
use skiff_proto::pb;
use skiff_proto::WireError;
use tonic::transport::{Channel, Endpoint};

pub use tonic::Code;

/// Default server address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a server address: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the server at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server answered with an error; the message says why. (Not a
    /// `source`: the status would only repeat the message.)
    #[error("{}", .0.message())]
    Status(tonic::Status),
    #[error("the server sent a malformed message: {0}")]
    Wire(#[from] WireError),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl ClientError {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

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
    /// status (empty without one).
    pub state: String,
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
            state: s.state,
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

fn missing(field: &str) -> WireError {
    WireError(vec![skiff_model::FieldError::new(field, "is required")])
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
    /// `None` when the job was deleted but allocations remain.
    pub job: Option<Job>,
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

#[derive(Clone)]
pub struct Client {
    cluster: pb::cluster_client::ClusterClient<Channel>,
    url: String,
    stale: bool,
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

/// A change of the cluster's state, from `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub index: u64,
    /// job, node, alloc, eval, server
    pub kind: String,
    pub key: String,
    /// The object as JSON after the change; `None` when it was deleted.
    pub value: Option<String>,
}

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    /// Connects to the first of `urls` that answers.
    pub async fn connect_any(urls: &[String]) -> Result<Client, ClientError> {
        let mut last = None;
        for url in urls {
            match Client::connect(url).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::BadUrl {
            url: String::new(),
            reason: "no server address given".into(),
        }))
    }

    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| ClientError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            url: url.to_string(),
            reason: source_chain(&e),
        })?;
        Ok(Client {
            cluster: pb::cluster_client::ClusterClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            url: url.to_string(),
            stale: false,
        })
    }

    /// Reads are linearizable by default; `stale(true)` lets the server
    /// answer from its own state without confirming it is current.
    pub fn stale(mut self, stale: bool) -> Client {
        self.stale = stale;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn apply_job(&mut self, spec: &JobSpec) -> Result<Applied, ClientError> {
        let resp = self
            .cluster
            .apply_job(pb::ApplyJobRequest {
                spec: Some(spec.into()),
            })
            .await?
            .into_inner();
        let job = resp
            .job
            .ok_or_else(|| WireError(vec![skiff_model::FieldError::new("job", "is required")]))?
            .try_into()?;
        Ok(Applied {
            job,
            changed: resp.changed,
        })
    }

    pub async fn delete_job(&mut self, name: &str) -> Result<(), ClientError> {
        self.cluster
            .delete_job(pb::DeleteJobRequest { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn get_job(&mut self, name: &str) -> Result<JobDetail, ClientError> {
        let r = self
            .cluster
            .get_job(pb::GetJobRequest {
                name: name.into(),
                stale: self.stale,
            })
            .await?
            .into_inner();
        Ok(JobDetail {
            job: r.job.map(Job::try_from).transpose()?,
            summary: r.summary.unwrap_or_default().into(),
            allocs: r
                .allocs
                .into_iter()
                .map(Allocation::try_from)
                .collect::<Result<_, _>>()?,
            latest_eval: r.latest_eval.map(|e| EvalInfo {
                id: e.id,
                status: match pb::EvalStatus::try_from(e.status) {
                    Ok(pb::EvalStatus::Pending) => "pending",
                    Ok(pb::EvalStatus::Complete) => "complete",
                    Ok(pb::EvalStatus::Blocked) => "blocked",
                    _ => "unknown",
                }
                .to_string(),
                trigger: e.trigger,
                message: e.message,
                modify_index: e.modify_index,
            }),
        })
    }

    pub async fn list_jobs(&mut self) -> Result<Vec<(Job, JobSummary)>, ClientError> {
        let r = self
            .cluster
            .list_jobs(pb::ListJobsRequest { stale: self.stale })
            .await?
            .into_inner();
        r.jobs
            .into_iter()
            .map(|item| {
                let job = item
                    .job
                    .ok_or_else(|| {
                        WireError(vec![skiff_model::FieldError::new("job", "is required")])
                    })?
                    .try_into()?;
                Ok((job, item.summary.unwrap_or_default().into()))
            })
            .collect()
    }

    /// Allocations, optionally only those of one job and/or one node.
    pub async fn list_allocs(
        &mut self,
        job: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<Allocation>, ClientError> {
        let r = self
            .cluster
            .list_allocs(pb::ListAllocsRequest {
                job: job.unwrap_or_default().into(),
                node: node.unwrap_or_default().into(),
                stale: self.stale,
            })
            .await?
            .into_inner();
        Ok(r.allocs
            .into_iter()
            .map(Allocation::try_from)
            .collect::<Result<_, _>>()?)
    }

    pub async fn list_nodes(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        let r = self
            .cluster
            .list_nodes(pb::ListNodesRequest { stale: self.stale })
            .await?
            .into_inner();
        r.nodes
            .into_iter()
            .map(|item| {
                Ok(NodeInfo {
                    node: item
                        .node
                        .ok_or_else(|| {
                            WireError(vec![skiff_model::FieldError::new("node", "is required")])
                        })?
                        .try_into()?,
                    heartbeat_age: item.heartbeat_age_ms.map(Duration::from_millis),
                    used: item.used.map(Into::into).unwrap_or_default(),
                    gpu_metrics: item.gpu_metrics.into_iter().map(Into::into).collect(),
                    gpu_metrics_age: item.gpu_metrics_age_ms.map(Duration::from_millis),
                })
            })
            .collect()
    }

    /// Cordons (`cordoned`), drains (`draining`, which implies cordoned)
    /// or uncordons (neither) a node. Returns how many allocations were
    /// asked to stop.
    /// Cordons, drains (`drain_deadline`: when to stop whatever is left;
    /// one hour when `None`) or uncordons a node.
    pub async fn set_node_eligibility(
        &mut self,
        name: &str,
        cordoned: bool,
        draining: bool,
        drain_deadline: Option<Duration>,
    ) -> Result<u32, ClientError> {
        let r = self
            .cluster
            .set_node_eligibility(pb::SetNodeEligibilityRequest {
                name: name.into(),
                cordoned,
                draining,
                drain_deadline_seconds: drain_deadline.map_or(0, |d| d.as_secs().max(1)),
            })
            .await?
            .into_inner();
        Ok(r.stopped)
    }

    /// Marks a GPU of `node` healthy again now, through the node's agent
    /// (`uuid` may be a unique prefix).
    pub async fn reset_gpu(&mut self, node: &str, uuid: &str) -> Result<GpuReset, ClientError> {
        let r = self
            .cluster
            .reset_node_gpu(pb::ResetNodeGpuRequest {
                node: node.into(),
                uuid: uuid.into(),
            })
            .await?
            .into_inner();
        Ok(GpuReset {
            uuid: r.uuid,
            was_unhealthy: r.was_unhealthy,
            reason: r.reason,
        })
    }

    /// Streams an allocation's log; `id` may be a unique prefix.
    pub async fn logs(
        &mut self,
        id: &str,
        follow: bool,
        tail: u32,
        stderr_only: bool,
    ) -> Result<LogReader, ClientError> {
        self.logs_with(
            id,
            LogOptions {
                follow,
                tail,
                stderr_only,
                timestamps: false,
            },
        )
        .await
    }

    /// Streams an allocation's log with every option.
    pub async fn logs_with(&mut self, id: &str, o: LogOptions) -> Result<LogReader, ClientError> {
        let stream = self
            .cluster
            .logs(pb::LogsRequest {
                alloc_id: id.into(),
                follow: o.follow,
                tail: o.tail,
                stderr_only: o.stderr_only,
                timestamps: o.timestamps,
            })
            .await?
            .into_inner();
        Ok(LogReader { stream })
    }

    /// Runs `command` in an allocation's container and returns its output
    /// and exit code; `id` may be a unique prefix. `timeout` of `None`
    /// lets the command run as long as it likes.
    pub async fn exec(
        &mut self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ClientError> {
        let r = self
            .cluster
            .exec(pb::ExecRequest {
                alloc_id: id.into(),
                command: command.to_vec(),
                timeout_ms: timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            })
            .await?
            .into_inner();
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            truncated: r.truncated,
            timed_out: r.timed_out,
        })
    }

    pub async fn status(&mut self) -> Result<pb::StatusResponse, ClientError> {
        Ok(self
            .cluster
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }

    /// The control-plane servers and the current leader's id (0: none).
    pub async fn members(&mut self) -> Result<(Vec<Member>, u64), ClientError> {
        let r = self
            .cluster
            .members(pb::MembersRequest {})
            .await?
            .into_inner();
        let members = r
            .members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                api_addr: m.api_addr,
                peer_addr: m.peer_addr,
                role: m.role,
                applied_index: m.applied_index,
                voter: m.voter,
            })
            .collect();
        Ok((members, r.leader_id))
    }

    pub async fn remove_member(&mut self, id: u64) -> Result<(), ClientError> {
        self.cluster
            .remove_member(pb::RemoveMemberRequest { id })
            .await?;
        Ok(())
    }

    /// A job's rollouts, where the current one stands, and its versions.
    pub async fn get_rollout(&mut self, name: &str) -> Result<RolloutInfo, ClientError> {
        let r = self
            .cluster
            .get_rollout(pb::GetRolloutRequest {
                name: name.into(),
                stale: self.stale,
            })
            .await?
            .into_inner();
        Ok(RolloutInfo {
            job: r.job.ok_or_else(|| missing("job"))?.try_into()?,
            deployments: r
                .deployments
                .into_iter()
                .map(Deployment::try_from)
                .collect::<Result<_, _>>()?,
            counts: r.counts.unwrap_or_default().into(),
            history: r
                .history
                .into_iter()
                .map(JobVersion::try_from)
                .collect::<Result<_, _>>()?,
            summary: r.summary.unwrap_or_default().into(),
        })
    }

    /// Pauses (`pause`), resumes (`resume`) or promotes (`promote`) a
    /// job's rollout; returns the rollout as it is now.
    pub async fn control_rollout(
        &mut self,
        name: &str,
        action: &str,
    ) -> Result<Option<Deployment>, ClientError> {
        let r = self
            .cluster
            .control_rollout(pb::ControlRolloutRequest {
                name: name.into(),
                action: action.into(),
            })
            .await?
            .into_inner();
        Ok(r.deployment.map(Deployment::try_from).transpose()?)
    }

    /// Returns a job to an earlier version: the last that rolled out
    /// successfully (or the one before), or `to_version`.
    pub async fn undo_rollout(
        &mut self,
        name: &str,
        to_version: Option<u64>,
    ) -> Result<(Job, Option<Deployment>), ClientError> {
        let r = self
            .cluster
            .undo_rollout(pb::UndoRolloutRequest {
                name: name.into(),
                to_version,
            })
            .await?
            .into_inner();
        Ok((
            r.job.ok_or_else(|| missing("job"))?.try_into()?,
            r.deployment.map(Deployment::try_from).transpose()?,
        ))
    }

    /// Sets a job's replicas; its version stays.
    pub async fn scale_job(&mut self, name: &str, replicas: u32) -> Result<Job, ClientError> {
        let r = self
            .cluster
            .scale_job(pb::ScaleJobRequest {
                name: name.into(),
                replicas,
            })
            .await?
            .into_inner();
        Ok(r.job.ok_or_else(|| missing("job"))?.try_into()?)
    }

    /// Changes after `from_index` (0: from now on), oldest first.
    pub async fn watch(&mut self, from_index: u64) -> Result<Watch, ClientError> {
        let stream = self
            .cluster
            .watch(pb::WatchRequest { from_index })
            .await?
            .into_inner();
        Ok(Watch { stream })
    }
}

/// A stream of [`WatchEvent`]s.
pub struct Watch {
    stream: tonic::Streaming<pb::WatchEvent>,
}

impl Watch {
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        Ok(self.stream.message().await?.map(|e| WatchEvent {
            index: e.index,
            kind: e.kind,
            key: e.key,
            value: (!e.deleted).then_some(e.value_json),
        }))
    }
}

/// Pieces of a log as they arrive.
pub struct LogReader {
    stream: tonic::Streaming<pb::LogChunk>,
}

impl LogReader {
    pub async fn next(&mut self) -> Result<Option<(LogStream, Vec<u8>)>, ClientError> {
        Ok(self.stream.message().await?.map(|c| {
            let which = if c.stream == pb::log_chunk::Stream::Stderr as i32 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            (which, c.data)
        }))
    }

    /// Reads everything (for a log that is not followed).
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some((which, data)) = self.next().await? {
            match which {
                LogStream::Stdout => out.extend(data),
                LogStream::Stderr => err.extend(data),
            }
        }
        Ok((out, err))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
