//! A typed client over Skiff's gRPC API, used by the CLI, the tests and
//! the benches. It speaks domain types (`skiff_model`) and hides the wire
//! types.

#![forbid(unsafe_code)]

use std::time::Duration;

use skiff_model::{Allocation, Deployment, Job, JobSpec, JobVersion};
use skiff_proto::pb;
use skiff_proto::WireError;
use tonic::transport::{Channel, Endpoint};

pub use skiff_proto::pb::{
    CachedImage, DescribeQueueResponse, NodeImages, PlanJobResponse, QueueJob, QueueStatus,
};
pub use tonic::Code;

mod access;
pub mod config;
mod images;
pub mod join;
mod observe;
pub mod specs;
mod streams;
mod types;

pub use access::{
    AuditRecord, CreatedToken, CreatedUser, JoinRole, RegistryLoginInfo, TokenInfo, UserInfo,
    UserRole,
};
pub use config::{ClientConfig, ClientTls};
pub use observe::{
    AllocTop, ClusterEvent, Events, EventsRequest, NodeTop, TopRequest, TopResponse,
};
pub use streams::{LogReader, Watch};
pub use types::*;

/// Default server address.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7700";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a server address: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the server at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("client configuration {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Join(String),
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
    /// Whether trying again later may work: the server could not be
    /// reached, or answered that it cannot serve now (no leader yet).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Status(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        }
    }

    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The fields an INVALID_ARGUMENT names, with the rule each broke, as
    /// the status details carry them (google.rpc.BadRequest): request
    /// paths such as `spec.task.resources.memory_bytes`.
    pub fn field_violations(&self) -> Vec<(String, String)> {
        use tonic_types::StatusExt;
        match self {
            ClientError::Status(s) => s
                .get_details_bad_request()
                .map(|b| {
                    b.field_violations
                        .into_iter()
                        .map(|v| (v.field, v.description))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

pub(crate) fn missing(field: &str) -> WireError {
    WireError(vec![skiff_model::FieldError::new(field, "is required")])
}

#[derive(Clone)]
pub struct Client {
    cluster: pb::cluster_client::ClusterClient<Authed>,
    access: pb::access_client::AccessClient<Authed>,
    url: String,
    stale: bool,
    namespace: String,
}

/// Items asked for per page when a client reads a whole list.
const LIST_PAGE: u32 = 500;

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    /// Connects to the first of `urls` that answers, with no credentials
    /// (`http://` servers of an `--insecure` cluster).
    pub async fn connect_any(urls: &[String]) -> Result<Client, ClientError> {
        Self::connect_any_with(urls, None).await
    }

    /// Connects to the first server of `config` that answers, with its
    /// credentials.
    pub async fn connect_config(config: &ClientConfig) -> Result<Client, ClientError> {
        Self::connect_any_with(&config.servers, config.tls.as_ref()).await
    }

    /// Connects to the first of `urls` that answers, with `tls` for
    /// `https://` ones.
    pub async fn connect_any_with(
        urls: &[String],
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let mut last = None;
        for url in urls {
            match Client::connect_with(url, tls).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::BadUrl {
            url: String::new(),
            reason: "no server address given".into(),
        }))
    }

    /// Connects to one server without credentials (plaintext `http://`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, None).await
    }

    /// Connects to one server: `https://` with `tls` (mutual TLS when it
    /// holds a certificate), `http://` in plaintext.
    pub async fn connect_with(url: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
        let channel = channel(url, tls).await?;
        let bearer = Bearer::of(tls)?;
        Ok(Client {
            cluster: pb::cluster_client::ClusterClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            access: pb::access_client::AccessClient::with_interceptor(channel, bearer),
            url: url.to_string(),
            stale: false,
            namespace: String::new(),
        })
    }

    /// The namespace of the jobs this client names, and the only one its
    /// lists and watches show; empty (the default): jobs are named in
    /// `default`, and lists show every namespace the caller may read.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Client {
        self.namespace = namespace.into();
        self
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
            index: resp.index,
            image_note: resp.image_note,
        })
    }

    /// What applying `spec` would do, changing nothing: the diff against
    /// the stored job, a refusal if the write would be refused, and a
    /// scheduler dry run.
    pub async fn plan_job(&mut self, spec: &JobSpec) -> Result<pb::PlanJobResponse, ClientError> {
        Ok(self
            .cluster
            .plan_job(pb::PlanJobRequest {
                spec: Some(spec.into()),
            })
            .await?
            .into_inner())
    }

    /// Deletes a job; returns the Raft index of the write.
    pub async fn delete_job(&mut self, name: &str) -> Result<u64, ClientError> {
        Ok(self
            .cluster
            .delete_job(pb::DeleteJobRequest {
                name: name.into(),
                namespace: self.namespace.clone(),
            })
            .await?
            .into_inner()
            .index)
    }

    pub async fn get_job(&mut self, name: &str) -> Result<JobDetail, ClientError> {
        let r = self
            .cluster
            .get_job(pb::GetJobRequest {
                namespace: self.namespace.clone(),
                name: name.into(),
                stale: self.stale,
            })
            .await?
            .into_inner();
        Ok(JobDetail {
            job: r.job.ok_or_else(|| missing("job"))?.try_into()?,
            summary: r.summary.unwrap_or_default().into(),
            allocs: r
                .allocs
                .into_iter()
                .map(Allocation::try_from)
                .collect::<Result<_, _>>()?,
            latest_eval: r
                .latest_eval
                .map(skiff_model::Evaluation::try_from)
                .transpose()?
                .map(|e| EvalInfo {
                    id: e.id,
                    status: e.status.as_str().to_string(),
                    trigger: e.trigger.as_str().to_string(),
                    message: e.message,
                    modify_index: e.modify_index,
                }),
        })
    }

    /// Every job, with its summary (read a page at a time).
    pub async fn list_jobs(&mut self) -> Result<Vec<(Job, JobSummary)>, ClientError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_jobs_page(LIST_PAGE, token.take()).await?;
            all.extend(page.items);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of jobs, in name order; `token` is the last page's `next`.
    pub async fn list_jobs_page(
        &mut self,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<(Job, JobSummary)>, ClientError> {
        let r = self
            .cluster
            .list_jobs(pb::ListJobsRequest {
                namespace: self.namespace.clone(),
                stale: self.stale,
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        let items = r
            .jobs
            .into_iter()
            .map(|item| {
                let job = item.job.ok_or_else(|| missing("job"))?.try_into()?;
                Ok((job, item.summary.unwrap_or_default().into()))
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Page {
            items,
            next: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
        })
    }

    /// Allocations, optionally only those of one job and/or one node (read
    /// a page at a time), by job, then replica, then age.
    pub async fn list_allocs(
        &mut self,
        job: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<Allocation>, ClientError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .list_allocs_page(job, node, LIST_PAGE, token.take())
                .await?;
            all.extend(page.items);
            match page.next {
                Some(next) => token = Some(next),
                None => {
                    all.sort_by(|a: &Allocation, b: &Allocation| {
                        (&a.job, a.replica, a.create_index).cmp(&(
                            &b.job,
                            b.replica,
                            b.create_index,
                        ))
                    });
                    return Ok(all);
                }
            }
        }
    }

    /// One page of allocations, in id order.
    pub async fn list_allocs_page(
        &mut self,
        job: Option<&str>,
        node: Option<&str>,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<Allocation>, ClientError> {
        let r = self
            .cluster
            .list_allocs(pb::ListAllocsRequest {
                namespace: self.namespace.clone(),
                job: job.unwrap_or_default().into(),
                node: node.unwrap_or_default().into(),
                stale: self.stale,
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Page {
            items: r
                .allocs
                .into_iter()
                .map(Allocation::try_from)
                .collect::<Result<_, _>>()?,
            next: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
        })
    }

    /// Every node (read a page at a time).
    pub async fn list_nodes(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_nodes_page(LIST_PAGE, token.take()).await?;
            all.extend(page.items);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of nodes, in name order.
    pub async fn list_nodes_page(
        &mut self,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<NodeInfo>, ClientError> {
        let r = self
            .cluster
            .list_nodes(pb::ListNodesRequest {
                stale: self.stale,
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        let next = (!r.next_page_token.is_empty()).then_some(r.next_page_token);
        let items = r
            .nodes
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
            .collect::<Result<_, ClientError>>()?;
        Ok(Page { items, next })
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

    pub async fn status(&mut self) -> Result<ServerStatus, ClientError> {
        let s = self
            .cluster
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        Ok(ServerStatus {
            id: s.id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            version: s.version,
            role: role_word(s.role).to_string(),
            first_index: s.first_index,
            last_index: s.last_index,
            snapshot_index: s.snapshot_index,
            voters: s.voters,
            learners: s.learners,
            state_digest: s.state_digest,
        })
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
                role: role_word(m.role).to_string(),
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
                namespace: self.namespace.clone(),
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
        let action = match action {
            "pause" => pb::RolloutAction::Pause,
            "resume" => pb::RolloutAction::Resume,
            "promote" => pb::RolloutAction::Promote,
            other => {
                return Err(ClientError::Status(tonic::Status::invalid_argument(
                    format!(
                    "action: {other:?} is not a rollout action; expected pause, resume or promote"
                ),
                )))
            }
        };
        let r = self
            .cluster
            .control_rollout(pb::ControlRolloutRequest {
                namespace: self.namespace.clone(),
                name: name.into(),
                action: action as i32,
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
                namespace: self.namespace.clone(),
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
                namespace: self.namespace.clone(),
                name: name.into(),
                replicas,
            })
            .await?
            .into_inner();
        Ok(r.job.ok_or_else(|| missing("job"))?.try_into()?)
    }

    /// Changes after `from_index` (0: from now on), oldest first.
    pub async fn watch(&mut self, from_index: u64) -> Result<Watch, ClientError> {
        self.watch_with(WatchOptions {
            from_index,
            ..WatchOptions::default()
        })
        .await
    }

    /// Changes the options ask for, oldest first.
    pub async fn watch_with(&mut self, o: WatchOptions) -> Result<Watch, ClientError> {
        let mut kinds = Vec::new();
        for k in &o.kinds {
            match OBJECT_KINDS.iter().find(|(word, _)| word == k) {
                Some((_, kind)) => kinds.push(*kind as i32),
                None => {
                    return Err(ClientError::Status(tonic::Status::invalid_argument(
                        format!(
                            "kinds: {k:?} is not a kind; expected one of {}",
                            OBJECT_KINDS.map(|(w, _)| w).join(", ")
                        ),
                    )))
                }
            }
        }
        let stream = self
            .cluster
            .watch(pb::WatchRequest {
                namespace: self.namespace.clone(),
                from_index: o.from_index,
                kinds,
                job: o.job.unwrap_or_default(),
                node: o.node.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Watch { stream })
    }
}

/// A channel whose calls carry the bearer token, if the client has one.
type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to every call of a client that
/// holds a token (and nothing to one that holds a certificate).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    fn of(tls: Option<&ClientTls>) -> Result<Bearer, ClientError> {
        match tls.and_then(|t| t.token.as_deref()) {
            None => Ok(Bearer(None)),
            Some(token) => format!("Bearer {}", token.trim())
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| ClientError::Config {
                    path: "token".into(),
                    reason: "a token is one word of printable characters".into(),
                }),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected channel to `url`.
pub(crate) async fn channel(url: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let tls = tls.ok_or_else(|| {
            bad("an https:// server needs the cluster's CA and your credentials: give --config FILE \
                 (the admin.conf a founding server writes) or set SKIFF_CONFIG"
                .into())
        })?;
        endpoint = endpoint
            .tls_config(tls.tonic())
            .map_err(|e| bad(source_chain(&e)))?;
    } else if !url.starts_with("http://") {
        return Err(bad(
            "must start with https:// (or http:// for an --insecure cluster)".into(),
        ));
    }
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        url: url.to_string(),
        reason: source_chain(&e),
    })
}

pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
