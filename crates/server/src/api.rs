//! The `Cluster` service: what the CLI and operators' tools call.

use std::pin::Pin;

use skiff_model::{AllocStatus, Allocation, JobSpec, SpecError};
use skiff_proto::pb;
use skiff_store::command::RolloutAction;
use skiff_store::{Command, Outcome, Refusal};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::ctx::{now_ms, Ctx};

pub struct ClusterApi {
    ctx: Ctx,
}

impl ClusterApi {
    pub fn new(ctx: Ctx) -> Self {
        ClusterApi { ctx }
    }
}

/// Events sent per wake-up of a watch stream.
const WATCH_BATCH: usize = 1000;

/// A refused spec: INVALID_ARGUMENT with every broken rule, one per line.
pub(crate) fn invalid_spec(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn summary(
    job: Option<&skiff_model::Job>,
    allocs: &[&Allocation],
    deployment: Option<&skiff_model::Deployment>,
) -> pb::JobSummary {
    let mut s = pb::JobSummary {
        desired: job.map_or(0, |j| j.spec.wanted()),
        ..Default::default()
    };
    for a in allocs {
        // Count what the job is now: not allocations being stopped, and
        // not those of an earlier job of the same name.
        if a.desired == skiff_model::DesiredStatus::Stop && !a.status.is_terminal() {
            continue;
        }
        if job.is_some_and(|j| a.create_index < j.create_index) {
            continue;
        }
        match a.status {
            AllocStatus::Pending => s.pending += 1,
            AllocStatus::Running => s.running += 1,
            AllocStatus::Complete => s.complete += 1,
            AllocStatus::Failed => s.failed += 1,
            AllocStatus::Lost => s.lost += 1,
        }
    }
    match job {
        Some(j) if j.spec.is_batch() => {
            let p = skiff_model::workload::batch_progress(j, allocs.iter().copied());
            s.succeeded = p.succeeded;
            s.failed_runs = p.failed;
            s.state = p.state.as_str().to_string();
            s.completions = j.spec.completions();
        }
        Some(_) => {
            if let Some(d) = deployment {
                s.state = if d.status == skiff_model::DeploymentStatus::Running
                    && d.awaiting_promotion()
                {
                    "awaiting promotion".to_string()
                } else {
                    d.status.as_str().to_string()
                };
            }
        }
        None => {}
    }
    s
}

/// The status for a command the state machine refused, with its reason:
/// NOT_FOUND when it names a job or node that does not exist, otherwise
/// FAILED_PRECONDITION (the job or rollout is not in a state the command
/// applies to).
fn refusal_status(refusal: &Refusal) -> Status {
    if refusal.is_not_found() {
        Status::not_found(refusal.to_string())
    } else {
        Status::failed_precondition(refusal.to_string())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    if name.len() > 253 {
        return Err(Status::invalid_argument(format!(
            "{field}: must be at most 253 characters"
        )));
    }
    Ok(())
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn apply_job(
        &self,
        req: Request<pb::ApplyJobRequest>,
    ) -> Result<Response<pb::ApplyJobResponse>, Status> {
        let wire = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let spec = JobSpec::try_from(wire).map_err(|e| invalid_spec(e.into()))?;
        spec.validate().map_err(invalid_spec)?;
        if spec.task.image.is_relative() {
            return Err(invalid_spec(SpecError::Invalid(vec![skiff_model::FieldError::new(
                "task.image",
                format!(
                    "{} must name an absolute layout path (the CLI resolves relative paths; other clients must send absolute ones)",
                    spec.task.image
                ),
            )])));
        }
        let name = spec.name.clone();
        let outcome = self.ctx.propose(&Command::UpsertJob { spec }).await?;
        match outcome {
            Outcome::JobUpserted { job, changed } => {
                tracing::debug!(job = %name, version = job.version, changed, "job applied");
                Ok(Response::new(pb::ApplyJobResponse {
                    job: Some(job.as_ref().into()),
                    changed,
                    index: job.modify_index,
                }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let name = req.into_inner().name;
        check_name("name", &name)?;
        let outcome = self
            .ctx
            .propose(&Command::DeleteJob { name: name.clone() })
            .await?;
        match outcome {
            Outcome::JobDeleted => {
                tracing::info!(job = %name, "job deleted");
                Ok(Response::new(pb::DeleteJobResponse {
                    index: self.ctx.store.state().index,
                }))
            }
            Outcome::Refused(why) => Err(refusal_status(&why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let r = req.into_inner();
        let name = r.name;
        check_name("name", &name)?;
        self.ctx.read_barrier(r.stale).await?;
        let state = self.ctx.store.state();
        let job = state.jobs.get(&name);
        let allocs = state.allocs_of_job(&name);
        if job.is_none() && allocs.is_empty() {
            return Err(Status::not_found(format!("job {name:?} not found")));
        }
        Ok(Response::new(pb::GetJobResponse {
            job: job.map(Into::into),
            summary: Some(summary(job, &allocs, state.deployment(&name))),
            allocs: allocs.iter().map(|a| (*a).into()).collect(),
            latest_eval: state.latest_eval(&name).map(Into::into),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.ctx.read_barrier(req.get_ref().stale).await?;
        let state = self.ctx.store.state();
        let jobs = state
            .jobs
            .values()
            .map(|j| pb::JobListItem {
                job: Some(j.into()),
                summary: Some(summary(
                    Some(j),
                    &state.allocs_of_job(j.name()),
                    state.deployment(j.name()),
                )),
            })
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn list_allocs(
        &self,
        req: Request<pb::ListAllocsRequest>,
    ) -> Result<Response<pb::ListAllocsResponse>, Status> {
        let f = req.into_inner();
        self.ctx.read_barrier(f.stale).await?;
        let state = self.ctx.store.state();
        let mut allocs: Vec<&Allocation> = state
            .allocs
            .values()
            .filter(|a| f.job.is_empty() || a.job == f.job)
            .filter(|a| f.node.is_empty() || a.node == f.node)
            .collect();
        allocs.sort_by(|a, b| {
            (&a.job, a.replica, a.create_index).cmp(&(&b.job, b.replica, b.create_index))
        });
        Ok(Response::new(pb::ListAllocsResponse {
            allocs: allocs.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.ctx.read_barrier(req.get_ref().stale).await?;
        let view = heartbeat_view(&self.ctx).await;
        let state = self.ctx.store.state();
        let nodes = state
            .nodes
            .values()
            .map(|n| {
                let (gpu_metrics, gpu_age) = match view.gpu.get(&n.name) {
                    Some(s) => (s.metrics.clone(), Some(s.age_ms)),
                    None => (Vec::new(), None),
                };
                pb::NodeListItem {
                    node: Some(n.into()),
                    heartbeat_age_ms: view.age_ms.get(&n.name).copied(),
                    used: Some(skiff_model::fit::used_on(&n.name, state.allocs.values()).into()),
                    gpu_metrics,
                    gpu_metrics_age_ms: gpu_age,
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn reset_node_gpu(
        &self,
        req: Request<pb::ResetNodeGpuRequest>,
    ) -> Result<Response<pb::ResetGpuResponse>, Status> {
        let r = req.into_inner();
        check_name("node", &r.node)?;
        check_name("uuid", &r.uuid)?;
        let (uuid, address) = {
            let state = self.ctx.store.state();
            let node = state
                .nodes
                .get(&r.node)
                .ok_or_else(|| Status::not_found(format!("node {:?} not found", r.node)))?;
            let mut matches = node.gpus.iter().filter(|g| g.uuid.starts_with(&r.uuid));
            let gpu = match (matches.next(), matches.next()) {
                (Some(g), None) => g,
                (Some(_), Some(_)) => {
                    return Err(Status::invalid_argument(format!(
                        "uuid: {:?} matches several GPUs of node {}; give more characters",
                        r.uuid, r.node
                    )))
                }
                (None, _) => {
                    return Err(Status::not_found(format!(
                        "node {} has no GPU {:?}",
                        r.node, r.uuid
                    )))
                }
            };
            (gpu.uuid.clone(), node.address.clone())
        };
        let mut agent = agent_client(&address).await?;
        let resp = agent
            .reset_gpu(pb::ResetGpuRequest { uuid: uuid.clone() })
            .await?
            .into_inner();
        tracing::info!(node = %r.node, gpu = %uuid, was_unhealthy = resp.was_unhealthy, "GPU reset");
        Ok(Response::new(resp))
    }

    async fn set_node_eligibility(
        &self,
        req: Request<pb::SetNodeEligibilityRequest>,
    ) -> Result<Response<pb::SetNodeEligibilityResponse>, Status> {
        let r = req.into_inner();
        check_name("name", &r.name)?;
        let outcome = self
            .ctx
            .propose(&Command::SetNodeEligibility {
                name: r.name.clone(),
                cordoned: r.cordoned,
                draining: r.draining,
                drain_deadline_ms: r.draining.then(|| {
                    let secs = match r.drain_deadline_seconds {
                        0 => 3600,
                        s => s.min(365 * 24 * 3600),
                    };
                    now_ms() + secs * 1000
                }),
            })
            .await?;
        match outcome {
            Outcome::NodeEligibilitySet { stopped } => {
                tracing::info!(node = %r.name, cordoned = r.cordoned, draining = r.draining, stopped, "node eligibility set");
                Ok(Response::new(pb::SetNodeEligibilityResponse {
                    stopped,
                    index: self.ctx.store.state().index,
                }))
            }
            Outcome::Refused(why) => Err(refusal_status(&why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        check_name("alloc_id", &r.alloc_id)?;
        let (alloc_id, mut agent) = self.agent_for(&r.alloc_id).await?;
        let upstream = agent
            .logs(pb::LogsRequest { alloc_id, ..r })
            .await?
            .into_inner();
        let stream: LogStream = Box::pin(upstream.map(|item| item));
        Ok(Response::new(stream))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        let r = req.into_inner();
        check_name("alloc_id", &r.alloc_id)?;
        if r.command.is_empty() || r.command[0].is_empty() {
            return Err(Status::invalid_argument(
                "command: must name a program to run in the container",
            ));
        }
        let (alloc_id, mut agent) = self.agent_for(&r.alloc_id).await?;
        tracing::info!(alloc = %alloc_id, program = %r.command[0], "exec relayed to the agent");
        agent.exec(pb::ExecRequest { alloc_id, ..r }).await
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (digest, applied) = {
            let state = self.ctx.store.state();
            (state.digest(), state.index)
        };
        let s = self.ctx.store.status();
        Ok(Response::new(pb::StatusResponse {
            id: s.id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit,
            applied_index: applied,
            version: env!("CARGO_PKG_VERSION").to_string(),
            role: crate::members::role_name(&s, s.id),
            first_index: s.first_index,
            last_index: s.last_index,
            snapshot_index: s.snapshot_index,
            voters: s.voters.clone(),
            learners: s.learners.clone(),
            state_digest: digest,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let store = self.ctx.store.clone();
        let mut cursor = match req.into_inner().from_index {
            0 => store.state().index,
            from => from,
        };
        // A client resuming here after a failover may have seen entries this
        // server has not applied yet: wait for them rather than go back.
        let mut applied = store.subscribe();
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            applied.wait_for(|a| *a >= cursor),
        )
        .await
        {
            Ok(Ok(_)) => {}
            _ => {
                return Err(Status::unavailable(format!(
                    "this server has not reached index {cursor} yet; retry"
                )))
            }
        }
        if let Err(c) = store.events_after(cursor, 0) {
            return Err(Status::out_of_range(format!(
                "this server's watch history starts after index {}; list again and watch from the index of the listing",
                c.first
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match store.events_after(cursor, WATCH_BATCH) {
                    Ok(events) if !events.is_empty() => {
                        for e in events {
                            cursor = e.index;
                            let event = pb::WatchEvent {
                                index: e.index,
                                kind: e.table.as_str().to_string(),
                                key: e.key.clone(),
                                deleted: e.value.is_none(),
                                value_json: e.value.as_deref().unwrap_or_default().to_string(),
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(c) => {
                        let _ = tx
                            .send(Err(Status::out_of_range(format!(
                                "the watch fell behind this server's history (now starting after index {}); list again and watch from there",
                                c.first
                            ))))
                            .await;
                        return;
                    }
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn members(
        &self,
        _req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(crate::members::list(&self.ctx).await))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let r = req.into_inner();
        let servers = crate::members::change(
            &self.ctx,
            pb::MembershipRequest {
                change: Some(pb::membership_request::Change::Add(pb::ServerAddress {
                    id: r.id,
                    api_addr: r.api_addr,
                    peer_addr: r.peer_addr,
                })),
            },
        )
        .await?;
        Ok(Response::new(pb::AddMemberResponse {
            servers: servers
                .into_iter()
                .map(|s| pb::add_member_response::Server {
                    id: s.id,
                    api_addr: s.api_addr,
                    peer_addr: s.peer_addr,
                })
                .collect(),
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        let r = req.into_inner();
        check_name("name", &r.name)?;
        self.ctx.read_barrier(r.stale).await?;
        let state = self.ctx.store.state();
        let Some(job) = state.jobs.get(&r.name) else {
            return Err(Status::not_found(format!("job {:?} not found", r.name)));
        };
        let allocs = state.allocs_of_job(&r.name);
        let counts = skiff_model::workload::rollout_counts(job, allocs.iter().copied());
        Ok(Response::new(pb::GetRolloutResponse {
            job: Some(job.into()),
            deployments: state
                .deployments
                .get(&r.name)
                .map(|v| v.iter().map(Into::into).collect())
                .unwrap_or_default(),
            counts: Some(counts.into()),
            history: state
                .histories
                .get(&r.name)
                .map(|h| h.versions.iter().map(Into::into).collect())
                .unwrap_or_default(),
            summary: Some(summary(Some(job), &allocs, state.deployment(&r.name))),
        }))
    }

    async fn control_rollout(
        &self,
        req: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::ControlRolloutResponse>, Status> {
        let r = req.into_inner();
        check_name("name", &r.name)?;
        let action = match r.action.as_str() {
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            "promote" => RolloutAction::Promote,
            other => {
                return Err(Status::invalid_argument(format!(
                    "action: {other:?} is not a rollout action; expected pause, resume or promote"
                )))
            }
        };
        let outcome = self
            .ctx
            .propose(&Command::ControlRollout {
                job: r.name.clone(),
                action,
                at_ms: now_ms(),
            })
            .await?;
        match outcome {
            Outcome::Rollout { deployment, .. } => {
                tracing::info!(job = %r.name, action = action.as_str(), "rollout controlled");
                Ok(Response::new(pb::ControlRolloutResponse {
                    deployment: deployment.as_deref().map(Into::into),
                }))
            }
            Outcome::Refused(why) => Err(refusal_status(&why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn undo_rollout(
        &self,
        req: Request<pb::UndoRolloutRequest>,
    ) -> Result<Response<pb::UndoRolloutResponse>, Status> {
        let r = req.into_inner();
        check_name("name", &r.name)?;
        if r.to_version == Some(0) {
            return Err(Status::invalid_argument("to_version: versions start at 1"));
        }
        let outcome = self
            .ctx
            .propose(&Command::UndoRollout {
                job: r.name.clone(),
                to_version: r.to_version,
                at_ms: now_ms(),
            })
            .await?;
        match outcome {
            Outcome::Rollout { job, deployment } => {
                tracing::info!(job = %r.name, version = job.version, "rollout undone");
                Ok(Response::new(pb::UndoRolloutResponse {
                    job: Some(job.as_ref().into()),
                    deployment: deployment.as_deref().map(Into::into),
                }))
            }
            Outcome::Refused(why) => Err(refusal_status(&why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn scale_job(
        &self,
        req: Request<pb::ScaleJobRequest>,
    ) -> Result<Response<pb::ScaleJobResponse>, Status> {
        let r = req.into_inner();
        check_name("name", &r.name)?;
        if r.replicas > skiff_model::job::MAX_REPLICAS {
            return Err(Status::invalid_argument(format!(
                "replicas: {} must be a whole number from 0 to {}",
                r.replicas,
                skiff_model::job::MAX_REPLICAS
            )));
        }
        let outcome = self
            .ctx
            .propose(&Command::ScaleJob {
                name: r.name.clone(),
                replicas: r.replicas,
            })
            .await?;
        match outcome {
            Outcome::Rollout { job, .. } => {
                tracing::info!(job = %r.name, replicas = r.replicas, "job scaled");
                Ok(Response::new(pb::ScaleJobResponse {
                    job: Some(job.as_ref().into()),
                }))
            }
            Outcome::Refused(why) => Err(refusal_status(&why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let id = req.into_inner().id;
        if id == 0 {
            return Err(Status::invalid_argument("id: must be more than 0"));
        }
        crate::members::change(
            &self.ctx,
            pb::MembershipRequest {
                change: Some(pb::membership_request::Change::Remove(id)),
            },
        )
        .await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}

impl ClusterApi {
    /// The full id of an allocation (given by id or prefix) and a client
    /// for the agent of the node it runs on.
    async fn agent_for(
        &self,
        id: &str,
    ) -> Result<
        (
            String,
            pb::agent_api_client::AgentApiClient<tonic::transport::Channel>,
        ),
        Status,
    > {
        let (alloc_id, address) = {
            let state = self.ctx.store.state();
            let alloc = resolve_alloc(&state, id)?;
            let node = state.nodes.get(&alloc.node).ok_or_else(|| {
                Status::not_found(format!("node {:?} of the allocation is gone", alloc.node))
            })?;
            (alloc.id.clone(), node.address.clone())
        };
        Ok((alloc_id, agent_client(&address).await?))
    }
}

/// Heartbeat ages and GPU samples, as the leader (which tracks them) sees
/// them; this server's own view when the leader cannot be asked.
async fn heartbeat_view(ctx: &Ctx) -> pb::HeartbeatAgesResponse {
    let local = || pb::HeartbeatAgesResponse {
        age_ms: ctx
            .heartbeats
            .ages()
            .into_iter()
            .map(|(n, d)| (n, d.as_millis() as u64))
            .collect(),
        gpu: ctx
            .heartbeats
            .all_gpu_metrics()
            .into_iter()
            .map(|(n, (m, age))| {
                let samples = pb::NodeGpuSamples {
                    metrics: m.iter().map(Into::into).collect(),
                    age_ms: age.as_millis() as u64,
                };
                (n, samples)
            })
            .collect(),
    };
    let status = ctx.store.status();
    if status.role == skiff_store::Role::Leader || status.leader_id == 0 {
        return local();
    }
    let Some(channel) = ctx.peers.channel(status.leader_id) else {
        return local();
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        pb::peer_client::PeerClient::new(channel).heartbeat_ages(pb::HeartbeatAgesRequest {}),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        _ => local(),
    }
}

/// A client for the agent API at `address` (`host:port`).
async fn agent_client(
    address: &str,
) -> Result<pb::agent_api_client::AgentApiClient<tonic::transport::Channel>, Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Status::internal(format!("bad agent address {address:?}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the agent at {address}: {e}")))?;
    Ok(pb::agent_api_client::AgentApiClient::new(channel)
        .max_decoding_message_size(skiff_proto::MAX_EXEC_MESSAGE_BYTES))
}

/// Finds an allocation by its id or by a unique prefix of it (as tables
/// show the first 8 characters).
pub(crate) fn resolve_alloc<'s>(
    state: &'s skiff_store::State,
    id: &str,
) -> Result<&'s Allocation, Status> {
    if let Some(a) = state.allocs.get(id) {
        return Ok(a);
    }
    let mut matches = state
        .allocs
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, a)), None) => Ok(a),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "alloc_id: prefix {id:?} matches several allocations; give more characters"
        ))),
        (None, _) => Err(Status::not_found(format!("allocation {id:?} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_naming_something_missing_is_not_found_and_any_other_a_failed_precondition() {
        for (refusal, code) in [
            (Refusal::job_not_found("web"), tonic::Code::NotFound),
            (Refusal::node_not_found("n1"), tonic::Code::NotFound),
            (
                Refusal::NoRollout { job: "web".into() },
                tonic::Code::FailedPrecondition,
            ),
            (
                Refusal::AlreadyRuns {
                    job: "web".into(),
                    version: 2,
                },
                tonic::Code::FailedPrecondition,
            ),
        ] {
            let status = refusal_status(&refusal);
            assert_eq!(status.code(), code, "{refusal}");
            assert_eq!(status.message(), refusal.to_string());
        }
    }
}
