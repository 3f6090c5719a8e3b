//! Jobs: apply, delete, get, list, scale; and a job's summary.

use skiff_model::{AllocStatus, Allocation, DeploymentStatus, FieldError, JobSpec, SpecError};
use skiff_proto::pb;
use skiff_store::{Command, Outcome};
use tonic::Status;

use super::errors::{invalid, invalid_spec, job_key, not_done};
use super::pages::PageRequest;
use crate::auth::Scope;
use crate::ctx::Ctx;

/// A job as the client sent it, read as the YAML form is: defaults filled
/// in, every rule checked, all broken ones reported at once.
pub(crate) fn spec_from_wire(wire: pb::JobSpec) -> Result<JobSpec, Status> {
    // The CLI resolves a relative layout path against its directory; the
    // server has no directory to resolve against.
    let relative = skiff_model::ImageRef::parse(wire.task.as_ref().map_or("", |t| &t.image))
        .ok()
        .filter(|i| i.is_relative())
        .map(|image| {
            FieldError::new(
                "task.image",
                format!(
                    "{image} must name an absolute layout path (the CLI resolves relative paths; other clients must send absolute ones)"
                ),
            )
        });
    // The reader checks every rule `JobSpec::validate` does (a property
    // test of the model holds it to that), so nothing is checked twice.
    let mut errors = match JobSpec::try_from(wire) {
        Ok(spec) if relative.is_none() => return Ok(spec),
        Ok(_) => Vec::new(),
        Err(e) => match e {
            SpecError::Invalid(errors) => errors,
            other => return Err(invalid_spec(&other)),
        },
    };
    errors.extend(relative);
    Err(invalid_spec(&SpecError::Invalid(errors)))
}

/// An `oci:` layout must lie under an image root some node reported, or
/// under a path the namespace's policy allows (the agent checks again
/// before it reads the layout, with links resolved). Until a node with
/// image roots has registered there is nothing to check against, and the
/// agents' own check is the only one.
pub(crate) fn check_image_path(state: &skiff_store::State, spec: &JobSpec) -> Result<(), Status> {
    // Read in place: an apply copies no node's roots unless it is refused.
    let roots = || state.nodes.values().flat_map(|n| &n.image_roots);
    if !spec.task.image.is_layout() || roots().next().is_none() {
        return Ok(());
    }
    let none = skiff_model::namespace::Namespace::default();
    let ns = state
        .access
        .namespaces
        .get(&spec.namespace)
        .unwrap_or(&none);
    let path = &spec.task.image.path;
    if ns.image_path_allowed(path, roots()) {
        return Ok(());
    }
    let mut places: Vec<&String> = roots().chain(&ns.policy.image_paths).collect();
    places.sort();
    places.dedup();
    let places: Vec<&str> = places.iter().map(|s| s.as_str()).collect();
    Err(Status::permission_denied(format!(
        "task.image: {path} is outside the nodes' image roots and the paths namespace {:?} may use ({}); an agent's --image-roots or the namespace's policy.image_paths must include it",
        spec.namespace,
        places.join(", ")
    )))
}

pub(crate) async fn apply(
    ctx: &Ctx,
    r: pb::ApplyJobRequest,
) -> Result<pb::ApplyJobResponse, Status> {
    let wire = r.spec.ok_or_else(|| invalid("spec", "is required"))?;
    let mut spec = spec_from_wire(wire)?;
    check_image_path(&ctx.store.state(), &spec)?;
    let current = ctx
        .store
        .state()
        .jobs
        .get(&spec.key())
        .and_then(|j| j.spec.task.image.registry.clone());
    // The namespace's registry logins, so its private tags resolve
    // (opened only when there is a tag to resolve).
    let unpinned = spec
        .task
        .image
        .registry
        .as_ref()
        .is_some_and(|r| r.digest.is_none());
    let logins = if unpinned {
        crate::registry_logins::opened(&ctx.secrets.current(), &ctx.store.state(), &spec.namespace)
    } else {
        Vec::new()
    };
    let image_note =
        crate::resolve::resolve(&ctx.registries, &logins, &mut spec, current.as_ref()).await;
    let name = spec.key();
    let applied = ctx.commit(&Command::UpsertJob { spec }).await?;
    match applied.outcome {
        Outcome::JobUpserted { job, changed } => {
            tracing::debug!(job = %name, version = job.version, changed, "job applied");
            Ok(pb::ApplyJobResponse {
                job: Some(job.as_ref().into()),
                changed,
                index: applied.index,
                image_note,
            })
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn delete(
    ctx: &Ctx,
    r: pb::DeleteJobRequest,
) -> Result<pb::DeleteJobResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    let applied = ctx
        .commit(&Command::DeleteJob { name: key.clone() })
        .await?;
    match applied.outcome {
        Outcome::JobDeleted => {
            tracing::info!(job = %key, "job deleted");
            Ok(pb::DeleteJobResponse {
                index: applied.index,
            })
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn get(ctx: &Ctx, r: pb::GetJobRequest) -> Result<pb::GetJobResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    ctx.read_barrier(r.stale).await?;
    let state = ctx.store.state();
    let Some(job) = state.jobs.get(&key) else {
        return Err(Status::not_found(format!("job {:?} not found", key)));
    };
    let allocs = state.allocs_of_job(&key);
    Ok(pb::GetJobResponse {
        job: Some(job.into()),
        summary: Some(summary(Some(job), &allocs, state.deployment(&key))),
        allocs: allocs.iter().map(|a| (*a).into()).collect(),
        latest_eval: state.latest_eval(&key).map(Into::into),
    })
}

pub(crate) async fn list(
    ctx: &Ctx,
    r: pb::ListJobsRequest,
    scope: &Scope,
) -> Result<pb::ListJobsResponse, Status> {
    let page = PageRequest::parse(r.page_size, &r.page_token)?;
    ctx.read_barrier(r.stale).await?;
    let state = ctx.store.state();
    let visible = state
        .jobs
        .iter()
        .filter(|(key, _)| scope.sees(skiff_model::split_job_key(key).0));
    let (jobs, next_page_token) = page.take(
        visible.map(|(name, j)| (name.as_str(), (name, j))),
        |(name, j)| pb::JobListItem {
            job: Some(j.into()),
            summary: Some(summary(
                Some(j),
                &state.allocs_of_job(name),
                state.deployment(name),
            )),
        },
    );
    Ok(pb::ListJobsResponse {
        jobs,
        next_page_token,
        index: state.index,
    })
}

pub(crate) async fn scale(
    ctx: &Ctx,
    r: pb::ScaleJobRequest,
) -> Result<pb::ScaleJobResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    if r.replicas > skiff_model::job::MAX_REPLICAS {
        return Err(invalid(
            "replicas",
            format!(
                "{} must be a whole number from 0 to {}",
                r.replicas,
                skiff_model::job::MAX_REPLICAS
            ),
        ));
    }
    let applied = ctx
        .commit(&Command::ScaleJob {
            name: key.clone(),
            replicas: r.replicas,
        })
        .await?;
    match applied.outcome {
        Outcome::Rollout { job, .. } => {
            tracing::info!(job = %key, replicas = r.replicas, "job scaled");
            Ok(pb::ScaleJobResponse {
                job: Some(job.as_ref().into()),
                index: applied.index,
            })
        }
        other => Err(not_done(other)),
    }
}

/// Counts of a job's allocations and where it stands.
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
    let state = match job {
        Some(j) if j.spec.is_batch() => {
            let p = skiff_model::workload::batch_progress(j, allocs.iter().copied());
            s.succeeded = p.succeeded;
            s.failed_runs = p.failed;
            s.completions = j.spec.completions();
            match p.state {
                skiff_model::BatchState::Running => pb::JobState::Running,
                skiff_model::BatchState::Complete => pb::JobState::Complete,
                skiff_model::BatchState::Failed => pb::JobState::Failed,
            }
        }
        Some(_) => match deployment {
            Some(d) if d.status == DeploymentStatus::Running && d.awaiting_promotion() => {
                pb::JobState::AwaitingPromotion
            }
            Some(d) => match d.status {
                DeploymentStatus::Running => pb::JobState::Running,
                DeploymentStatus::Paused => pb::JobState::Paused,
                DeploymentStatus::Successful => pb::JobState::Successful,
                DeploymentStatus::Failed => pb::JobState::Failed,
                DeploymentStatus::RolledBack => pb::JobState::RolledBack,
                DeploymentStatus::Cancelled => pb::JobState::Cancelled,
            },
            None => pb::JobState::Unspecified,
        },
        None => pb::JobState::Unspecified,
    };
    // Waiting in its team queue, unless it has already ended.
    let queued = job.is_some_and(|j| j.spec.queue.is_some() && j.admitted_index == 0);
    let ended = matches!(state, pb::JobState::Complete | pb::JobState::Failed);
    let state = if queued && !ended {
        pb::JobState::Queued
    } else {
        state
    };
    s.state = state as i32;
    s
}

pub(crate) async fn list_allocs(
    ctx: &Ctx,
    r: pb::ListAllocsRequest,
    scope: &Scope,
) -> Result<pb::ListAllocsResponse, Status> {
    let page = PageRequest::parse(r.page_size, &r.page_token)?;
    let job = if r.job.is_empty() {
        String::new()
    } else {
        job_key(&r.namespace, &r.job)?
    };
    ctx.read_barrier(r.stale).await?;
    let state = ctx.store.state();
    // In id order, from the narrowest index that answers: one job's or one
    // node's allocations, not every allocation in the cluster.
    let candidates: Box<dyn Iterator<Item = &skiff_model::Allocation>> = if !job.is_empty() {
        Box::new(state.allocs_of(&job))
    } else if !r.node.is_empty() {
        Box::new(state.allocs_on_node(&r.node).into_iter())
    } else {
        // Seek to the page's start instead of walking past every earlier
        // id: listing the whole cluster a page at a time stays linear.
        Box::new(
            state
                .allocs
                .range_from(page.after.as_deref().unwrap_or(""))
                .map(|(_, a)| a),
        )
    };
    let (allocs, next_page_token) = page.take(
        candidates
            .filter(|a| job.is_empty() || a.job == job)
            .filter(|a| scope.sees(skiff_model::split_job_key(&a.job).0))
            .filter(|a| r.node.is_empty() || a.node == r.node)
            .map(|a| (a.id.as_str(), a)),
        pb::Allocation::from,
    );
    Ok(pb::ListAllocsResponse {
        allocs,
        next_page_token,
        index: state.index,
    })
}
