//! `PlanJob`: what applying a spec would do, changing nothing (`skiff
//! plan`). The spec is read and checked as `ApplyJob` reads it; the diff
//! is against the stored job; the refusal is the state machine's own
//! admission check; the dry run is the scheduler's `reconcile_job` on a
//! view of this server's state, as the leader would plan it now.

use skiff_model::{Job, JobSpec};
use skiff_proto::pb;
use skiff_scheduler::{reconcile_job, Config};
use tonic::Status;

use super::errors::invalid;
use super::jobs::{check_image_path, spec_from_wire};
use crate::ctx::Ctx;

/// The spec fields that differ: top-level keys of the stored form, and
/// one level into `task` (`task.image`).
fn changed_fields(old: &JobSpec, new: &JobSpec) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["spec".into()];
    };
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        match (
            k.as_str(),
            x.and_then(|v| v.as_object()),
            y.and_then(|v| v.as_object()),
        ) {
            ("task", Some(tx), Some(ty)) => {
                let mut inner: Vec<&String> = tx.keys().chain(ty.keys()).collect();
                inner.sort();
                inner.dedup();
                for i in inner {
                    if tx.get(i) != ty.get(i) {
                        out.push(format!("task.{i}"));
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

/// How `spec` differs from the stored job of its name: `None` when there
/// is none, else the fields that would change (none: applying it changes
/// nothing). A registry tag resolves to a digest at apply, so the same tag
/// again is the same image: the stored digest is carried into `spec`.
pub(crate) fn diff(state: &skiff_store::State, spec: &mut JobSpec) -> Option<Vec<String>> {
    let current = state.jobs.get(&spec.key())?;
    if let (Some(new), Some(old)) = (
        spec.task.image.registry.as_mut(),
        current.spec.task.image.registry.as_ref(),
    ) {
        let mut bare = old.clone();
        bare.digest = None;
        if new.digest.is_none() && bare == *new {
            new.digest = old.digest.clone();
        }
    }
    Some(if current.spec == *spec {
        Vec::new()
    } else {
        changed_fields(&current.spec, spec)
    })
}

/// What the next admission round would do with `job`, waiting in queue
/// `q`: a trial round on this server's state with the planned spec in
/// place of the stored one.
fn admission_note(ctx: &Ctx, state: &skiff_store::State, job: &Job, q: &str) -> String {
    let waiting = ctx.metrics.waiting_since();
    let mut book = crate::queue_book::book_of(state, &waiting);
    let key = job.key();
    let holds = book
        .workloads()
        .iter()
        .find(|w| w.job == key)
        .map(|w| w.holds.clone())
        .unwrap_or_default();
    book.upsert(skiff_scheduler::queues::Workload {
        job: key.clone(),
        queue: q.to_string(),
        priority: job.spec.priority,
        create_index: job.create_index,
        request: skiff_model::queue::request_of(&job.spec),
        admitted_index: 0,
        holds,
        waited_ms: waiting
            .get(&key)
            .map_or(0, |t| t.elapsed().as_millis() as u64),
        refused: None,
    });
    let mut view = crate::sched_copy::state_view(state);
    view.set_queues(|name| {
        if name == key {
            Some(q.to_string())
        } else {
            state.jobs.get(name).and_then(|j| j.spec.queue.clone())
        }
    });
    let job_of = |name: &str| {
        if name == key {
            Some(job)
        } else {
            state.jobs.get(name)
        }
    };
    let cfg = Config {
        seed: state.index,
        ..Config::default()
    };
    let decisions = book.round(&mut view, &job_of, &cfg, &mut String::new, state.index);
    match decisions.into_iter().find(|d| d.job == key) {
        Some(d) => match d.admission {
            Some(a) if a.reclaimed.is_empty() => format!(
                "queue {q} would admit it whole now{}",
                if a.borrowing {
                    ", borrowing from its cohort"
                } else {
                    ""
                }
            ),
            Some(a) => format!(
                "queue {q} would admit it whole now, reclaiming {}",
                a.reclaimed.join(", ")
            ),
            None => format!("would wait in queue {q}: {}", d.reason),
        },
        None => format!("waits in queue {q} until its whole request is admitted"),
    }
}

pub(crate) async fn plan(ctx: &Ctx, r: pb::PlanJobRequest) -> Result<pb::PlanJobResponse, Status> {
    let wire = r.spec.ok_or_else(|| invalid("spec", "is required"))?;
    let mut spec = spec_from_wire(wire)?;
    ctx.read_barrier(false).await?;
    let state = ctx.store.state();
    check_image_path(&state, &spec)?;
    let key = spec.key();
    let current = state.jobs.get(&key);
    let changed = diff(&state, &mut spec).unwrap_or_default();
    let refusal = state
        .refusal_of(&spec)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let (version, planned_version) = match current {
        None => (0, 1),
        Some(j) if j.spec.same_version(&spec) => (j.version, j.version),
        Some(j) => (j.version, j.version + 1),
    };
    let admitted = current.map_or(0, |j| {
        let same = j.spec.queue == spec.queue
            && skiff_model::queue::request_of(&j.spec) == skiff_model::queue::request_of(&spec);
        if same {
            j.admitted_index
        } else {
            0
        }
    });
    let job = Job {
        create_index: current.map_or(state.index + 1, |j| j.create_index),
        modify_index: state.index + 1,
        version: planned_version,
        admitted_index: admitted,
        spec,
    };
    let queue_note = match &job.spec.queue {
        Some(q) if admitted == 0 && state.access.queues.contains_key(q) => {
            admission_note(ctx, &state, &job, q)
        }
        _ => String::new(),
    };
    let view = crate::sched_copy::state_view(&state);
    let cfg = Config {
        seed: state.index,
        ..Config::default()
    };
    let plan = reconcile_job(&key, Some(&job), state.deployment(&key), &view, &cfg);
    let placements = plan
        .placements
        .iter()
        .map(|p| {
            if p.gpus.is_empty() {
                format!("replica {} on {}", p.replica, p.node)
            } else {
                format!(
                    "replica {} on {} (GPUs {})",
                    p.replica,
                    p.node,
                    p.gpus.join(",")
                )
            }
        })
        .collect();
    let evictions = plan
        .evictions
        .iter()
        .map(|e| {
            let of = state.allocs.get(&e.alloc_id).map_or("", |a| a.job.as_str());
            format!("{} (job {of}): {}", e.alloc_id, e.reason)
        })
        .collect();
    Ok(pb::PlanJobResponse {
        exists: current.is_some(),
        version,
        planned_version,
        changed,
        refusal,
        placements,
        unplaced: plan.unplaced,
        explanation: plan.explanation,
        evictions,
        stops: plan.stops.len() as u32,
        queue_note,
    })
}
