//! The `Cluster` service: what the CLI and operators' tools call. Each RPC
//! is a function in the room for its objects; this file only dispatches.
//!
//! - `jobs.rs`: apply, delete, get, list, scale; a job's summary;
//! - `rollouts.rs`: a job's rollouts, pause/resume/promote, undo;
//! - `admin.rs`: nodes, cordon/drain, the server's status, members;
//! - `relay.rs`: logs, exec and GPU resets, relayed to the node's agent;
//! - `watch.rs`: the change stream, filtered and as public objects;
//! - `pages.rs`: page sizes and tokens of the lists;
//! - `errors.rs`: how refusals and broken rules become statuses.

mod admin;
mod errors;
mod events;
mod images;
pub(crate) mod jobs;
mod pages;
pub(crate) mod plan;
mod relay;
mod rollouts;
mod top;
mod watch;

use skiff_proto::pb;
use tonic::{Request, Response, Status};

use skiff_model::error::clipped;

use crate::audit;
use crate::auth::{self, Action, Caller};
use crate::ctx::Ctx;

pub(crate) use errors::{invalid, invalid_spec, not_done};

pub struct ClusterApi {
    ctx: Ctx,
}

impl ClusterApi {
    pub fn new(ctx: Ctx) -> Self {
        ClusterApi { ctx }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        auth::caller(req, &self.ctx.tls)
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn apply_job(&self, req: Request<pb::ApplyJobRequest>) -> Answer<pb::ApplyJobResponse> {
        let ns = match &req.get_ref().spec {
            Some(spec) => {
                let ns = errors::namespace_of(&spec.namespace)?.to_string();
                audit::name_object(format!(
                    "job/{}",
                    clipped(&skiff_model::job_key(&ns, &spec.name))
                ));
                ns
            }
            None => skiff_model::DEFAULT_NAMESPACE.to_string(),
        };
        self.caller(&req)?
            .require_in(&self.ctx, Action::WriteJobs, &ns, "apply jobs")?;
        jobs::apply(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn plan_job(&self, req: Request<pb::PlanJobRequest>) -> Answer<pb::PlanJobResponse> {
        let ns = match &req.get_ref().spec {
            Some(spec) => errors::namespace_of(&spec.namespace)?.to_string(),
            None => skiff_model::DEFAULT_NAMESPACE.to_string(),
        };
        self.caller(&req)?
            .require_in(&self.ctx, Action::Read, &ns, "plan jobs")?;
        plan::plan(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Answer<pb::DeleteJobResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        audit::name_object(format!(
            "job/{}",
            clipped(&skiff_model::job_key(&ns, &r.name))
        ));
        self.caller(&req)?
            .require_in(&self.ctx, Action::WriteJobs, &ns, "delete jobs")?;
        jobs::delete(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Answer<pb::GetJobResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        self.caller(&req)?
            .require_in(&self.ctx, Action::Read, &ns, "read jobs")?;
        jobs::get(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Answer<pb::ListJobsResponse> {
        let ns = errors::namespace_filter(&req.get_ref().namespace)?.to_string();
        let scope = self.caller(&req)?.read_scope(&self.ctx, &ns, "list jobs")?;
        jobs::list(&self.ctx, req.into_inner(), &scope)
            .await
            .map(Response::new)
    }

    async fn list_allocs(
        &self,
        req: Request<pb::ListAllocsRequest>,
    ) -> Answer<pb::ListAllocsResponse> {
        let r = req.get_ref();
        let ns = errors::listed_namespace(&r.job, &r.namespace)?;
        let scope = self
            .caller(&req)?
            .read_scope(&self.ctx, &ns, "list allocations")?;
        jobs::list_allocs(&self.ctx, req.into_inner(), &scope)
            .await
            .map(Response::new)
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Answer<pb::ListNodesResponse> {
        self.caller(&req)?
            .require(&self.ctx, Action::Read, "list nodes")?;
        admin::list_nodes(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_node_eligibility(
        &self,
        req: Request<pb::SetNodeEligibilityRequest>,
    ) -> Answer<pb::SetNodeEligibilityResponse> {
        audit::name_object(format!("node/{}", clipped(&req.get_ref().name)));
        self.caller(&req)?
            .require(&self.ctx, Action::RunNodes, "cordon or drain nodes")?;
        admin::set_eligibility(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn reset_node_gpu(
        &self,
        req: Request<pb::ResetNodeGpuRequest>,
    ) -> Answer<pb::ResetNodeGpuResponse> {
        let r = req.get_ref();
        audit::name_object(format!(
            "node/{} gpu/{}",
            clipped(&r.node),
            clipped(&r.uuid)
        ));
        self.caller(&req)?
            .require(&self.ctx, Action::RunNodes, "reset GPUs")?;
        relay::reset_gpu(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_node_images(
        &self,
        req: Request<pb::ListNodeImagesRequest>,
    ) -> Answer<pb::ListNodeImagesResponse> {
        self.caller(&req)?
            .require(&self.ctx, Action::Read, "list images")?;
        images::list(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_node_image(
        &self,
        req: Request<pb::PullNodeImageRequest>,
    ) -> Answer<pb::PullNodeImageResponse> {
        let r = req.get_ref();
        audit::name_object(format!(
            "node/{} image/{}",
            clipped(&r.node),
            clipped(&r.image)
        ));
        self.caller(&req)?
            .require(&self.ctx, Action::RunNodes, "pull images on nodes")?;
        images::pull(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    type LogsStream = relay::LogStream;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Answer<Self::LogsStream> {
        let caller = self.caller(&req)?;
        caller.require(&self.ctx, Action::Logs, "read logs")?;
        let ns = relay::alloc_namespace(&self.ctx, &req.get_ref().alloc_id);
        caller.require_in(&self.ctx, Action::Logs, &ns, "read logs")?;
        relay::logs(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Answer<pb::ExecResponse> {
        audit::name_object(format!("alloc/{}", clipped(&req.get_ref().alloc_id)));
        let caller = self.caller(&req)?;
        caller.require(&self.ctx, Action::Exec, "exec in containers")?;
        let ns = relay::alloc_namespace(&self.ctx, &req.get_ref().alloc_id);
        caller.require_in(&self.ctx, Action::Exec, &ns, "exec in containers")?;
        relay::exec(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Answer<pb::StatusResponse> {
        self.caller(&req)?
            .require_read_or_server(&self.ctx, "read the server status")?;
        Ok(Response::new(admin::status(&self.ctx)))
    }

    type WatchStream = watch::WatchStream;
    type EventsStream = events::EventStream;

    async fn top(&self, req: Request<pb::TopRequest>) -> Answer<pb::TopResponse> {
        let r = req.get_ref();
        let ns = errors::listed_namespace(&r.job, &r.namespace)?;
        let scope = self
            .caller(&req)?
            .read_scope(&self.ctx, &ns, "read what the cluster uses")?;
        top::top(&self.ctx, req.into_inner(), scope)
            .await
            .map(Response::new)
    }

    async fn events(&self, req: Request<pb::EventsRequest>) -> Answer<Self::EventsStream> {
        let r = req.get_ref();
        let ns = errors::listed_namespace(&r.job, &r.namespace)?;
        let scope = self
            .caller(&req)?
            .read_scope(&self.ctx, &ns, "read the cluster's events")?;
        events::events(self.ctx.events.clone(), req.into_inner(), scope).map(Response::new)
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Answer<Self::WatchStream> {
        let r = req.get_ref();
        let ns = errors::listed_namespace(&r.job, &r.namespace)?;
        let scope = self
            .caller(&req)?
            .read_scope(&self.ctx, &ns, "watch the cluster")?;
        watch::watch(self.ctx.store.clone(), req.into_inner(), scope)
            .await
            .map(Response::new)
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Answer<pb::MembersResponse> {
        self.caller(&req)?
            .require_read_or_server(&self.ctx, "list the servers")?;
        Ok(Response::new(crate::members::list(&self.ctx).await))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Answer<pb::AddMemberResponse> {
        audit::name_object(format!("server/{}", req.get_ref().id));
        // A server joining adds itself (it joined with a token and holds a
        // certificate for its id); an admin may add any.
        match self.caller(&req)? {
            Caller::Server(id) if id == req.get_ref().id => {}
            other => other.require(&self.ctx, Action::Admin, "add servers")?,
        }
        admin::add_member(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Answer<pb::RemoveMemberResponse> {
        audit::name_object(format!("server/{}", req.get_ref().id));
        self.caller(&req)?
            .require(&self.ctx, Action::Admin, "remove servers")?;
        admin::remove_member(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Answer<pb::GetRolloutResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        self.caller(&req)?
            .require_in(&self.ctx, Action::Read, &ns, "read rollouts")?;
        rollouts::get(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn control_rollout(
        &self,
        req: Request<pb::ControlRolloutRequest>,
    ) -> Answer<pb::ControlRolloutResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        audit::name_object(format!(
            "job/{}",
            clipped(&skiff_model::job_key(&ns, &r.name))
        ));
        self.caller(&req)?
            .require_in(&self.ctx, Action::WriteJobs, &ns, "control rollouts")?;
        rollouts::control(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn undo_rollout(
        &self,
        req: Request<pb::UndoRolloutRequest>,
    ) -> Answer<pb::UndoRolloutResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        audit::name_object(format!(
            "job/{}",
            clipped(&skiff_model::job_key(&ns, &r.name))
        ));
        self.caller(&req)?
            .require_in(&self.ctx, Action::WriteJobs, &ns, "undo rollouts")?;
        rollouts::undo(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn scale_job(&self, req: Request<pb::ScaleJobRequest>) -> Answer<pb::ScaleJobResponse> {
        let r = req.get_ref();
        let ns = errors::namespace_of(&r.namespace)?.to_string();
        audit::name_object(format!(
            "job/{}",
            clipped(&skiff_model::job_key(&ns, &r.name))
        ));
        self.caller(&req)?
            .require_in(&self.ctx, Action::WriteJobs, &ns, "scale jobs")?;
        jobs::scale(&self.ctx, req.into_inner())
            .await
            .map(Response::new)
    }
}
