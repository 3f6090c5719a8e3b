//! Team queues as the `Access` service serves them: an admin describes
//! and deletes them; anyone who may read lists them with their standing
//! and describes one, its waiting jobs with the reasons a trial admission
//! round gives. Admission itself is the leader's (`admission.rs`).

use skiff_model::queue::Queue;
use skiff_proto::pb;
use skiff_scheduler::queues::{QueueBook, QueueStatus, Workload};
use skiff_store::{Command, Outcome};
use tonic::{Request, Response, Status};

use crate::api::{invalid, not_done};
use crate::auth::{caller, Action};
use crate::ctx::Ctx;

fn status_to_wire(book: &QueueBook, row: &QueueStatus) -> pb::QueueStatus {
    let map = |a: &skiff_model::queue::Amounts| a.clone().into_iter().collect();
    pb::QueueStatus {
        queue: book.queue(&row.name).map(pb::Queue::from),
        nominal: map(&row.nominal),
        usage: map(&row.usage),
        borrowed: map(&row.borrowed),
        lent: map(&row.lent),
        share: row.share,
        admitted: row.admitted,
        pending: row.pending,
    }
}

fn job_to_wire(w: &Workload, reason: String) -> pb::QueueJob {
    pb::QueueJob {
        job: w.job.clone(),
        priority: u32::from(w.priority),
        request: w.request.clone().into_iter().collect(),
        admitted_index: w.admitted_index,
        reason,
        create_index: w.create_index,
    }
}

pub(crate) async fn apply(
    ctx: &Ctx,
    req: Request<pb::ApplyQueueRequest>,
) -> Result<Response<pb::ApplyQueueResponse>, Status> {
    let name = req
        .get_ref()
        .queue
        .as_ref()
        .map(|q| q.name.clone())
        .unwrap_or_default();
    crate::audit::name_object(format!("queue/{}", skiff_model::error::clipped(&name)));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "describe queues")?;
    let wire = req
        .into_inner()
        .queue
        .ok_or_else(|| invalid("queue", "is required"))?;
    let queue = Queue::try_from(wire).map_err(Status::invalid_argument)?;
    queue.validate().map_err(|e| crate::api::invalid_spec(&e))?;
    let applied = ctx.commit(&Command::PutQueue { queue }).await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(queue = %name, "queue described");
            Ok(Response::new(pb::ApplyQueueResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn list(
    ctx: &Ctx,
    req: Request<pb::ListQueuesRequest>,
) -> Result<Response<pb::ListQueuesResponse>, Status> {
    caller(&req, &ctx.tls)?.require(ctx, Action::Read, "list queues")?;
    ctx.read_barrier(false).await?;
    let state = ctx.store.state();
    let waiting = ctx.metrics.waiting_since();
    let book = crate::queue_book::book_of(&state, &waiting);
    let queues = book
        .status()
        .iter()
        .map(|row| status_to_wire(&book, row))
        .collect();
    Ok(Response::new(pb::ListQueuesResponse { queues }))
}

pub(crate) async fn describe(
    ctx: &Ctx,
    req: Request<pb::DescribeQueueRequest>,
) -> Result<Response<pb::DescribeQueueResponse>, Status> {
    // Jobs of namespaces the caller may not read are shown without their
    // names: their place, priority and request only.
    let scope = caller(&req, &ctx.tls)?.read_scope(ctx, "", "describe queues")?;
    let name = req.into_inner().name;
    skiff_model::check_dns_label(&name)
        .map_err(|rule| invalid("name", format!("{name:?} {rule}")))?;
    ctx.read_barrier(false).await?;
    // Copied under the state's lock; the trial round runs without it.
    let trial = {
        let state = ctx.store.state();
        if !state.access.queues.contains_key(&name) {
            return Err(Status::not_found(format!(
                "queue {name:?} not found: an admin creates it with `skiff queue apply`"
            )));
        }
        crate::queue_book::trial_of(&state, &ctx.metrics.waiting_since())
    };
    let (book, decisions) = trial.run();
    let status = book
        .status()
        .iter()
        .find(|r| r.name == name)
        .map(|row| status_to_wire(&book, row));
    let mut admitted: Vec<&Workload> = book
        .workloads()
        .iter()
        .filter(|w| w.queue == name && w.is_admitted())
        .collect();
    admitted.sort_by_key(|w| (w.admitted_index, w.job.clone()));
    let mut pending: Vec<&Workload> = book
        .workloads()
        .iter()
        .filter(|w| w.queue == name && !w.is_admitted())
        .collect();
    pending.sort_by_key(|w| (std::cmp::Reverse(w.priority), w.create_index, w.job.clone()));
    let reason = |job: &str| {
        decisions
            .iter()
            .find(|d| d.job == job)
            .map(|d| match &d.admission {
                Some(_) => "fits now: the next admission round admits it".to_string(),
                None => d.reason.clone(),
            })
            .unwrap_or_default()
    };
    let seen = |mut j: pb::QueueJob| {
        let (ns, _) = skiff_model::split_job_key(&j.job);
        if !scope.sees(ns) {
            j.job = format!("(a job in namespace {ns})");
        }
        j
    };
    Ok(Response::new(pb::DescribeQueueResponse {
        status,
        admitted: admitted
            .iter()
            .map(|w| seen(job_to_wire(w, String::new())))
            .collect(),
        pending: pending
            .iter()
            .map(|w| seen(job_to_wire(w, reason(&w.job))))
            .collect(),
    }))
}

pub(crate) async fn delete(
    ctx: &Ctx,
    req: Request<pb::DeleteQueueRequest>,
) -> Result<Response<pb::DeleteQueueResponse>, Status> {
    let name = req.get_ref().name.clone();
    crate::audit::name_object(format!("queue/{}", skiff_model::error::clipped(&name)));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "delete queues")?;
    skiff_model::check_dns_label(&name)
        .map_err(|rule| invalid("name", format!("{name:?} {rule}")))?;
    let applied = ctx
        .commit(&Command::DeleteQueue { name: name.clone() })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(queue = %name, "queue deleted");
            Ok(Response::new(pb::DeleteQueueResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}
