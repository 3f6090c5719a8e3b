//! `PlanJob`: what applying a spec would do, changing nothing (`skiff
//! plan`). The spec is read and checked as `ApplyJob` reads it; the diff
//! is against the stored job; the refusal is the state machine's own
//! admission check; the dry run is the scheduler's `reconcile_job` on a
//! view of this server's state, as the leader would plan it now, or, for
//! a job waiting in its queue, a trial admission round on a copy of it
//! (run holding no lock): whether the job would be admitted, where it
//! would go and what it would reclaim.

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
/// `q` (a trial round run holding no lock): the note `skiff plan` prints,
/// and the admission's plan when it would be admitted.
fn admission_note(
    trial: crate::queue_book::Trial,
    key: &str,
    q: &str,
) -> (String, Option<skiff_scheduler::queues::Admission>) {
    let (_, decisions) = trial.run();
    match decisions.into_iter().find(|d| d.job == key) {
        Some(d) => match d.admission {
            Some(a) if a.reclaimed.is_empty() => {
                let note = format!(
                    "queue {q} would admit it whole now{}",
                    if a.borrowing {
                        ", borrowing from its cohort"
                    } else {
                        ""
                    }
                );
                (note, Some(a))
            }
            Some(a) => {
                let note = format!(
                    "queue {q} would admit it whole now, reclaiming {}",
                    a.reclaimed.join(", ")
                );
                (note, Some(a))
            }
            None => (format!("would wait in queue {q}: {}", d.reason), None),
        },
        None => (
            format!("waits in queue {q} until its whole request is admitted"),
            None,
        ),
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
    let exists = current.is_some();
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
    // The admission the stored job keeps under the planned spec, by the
    // state machine's own rule.
    let admitted = current.map_or(0, |j| state.kept_admission(j, &spec));
    let job = Job {
        create_index: current.map_or(state.index + 1, |j| j.create_index),
        modify_index: state.index + 1,
        version: planned_version,
        admitted_index: admitted,
        spec,
    };
    // A job waiting in its queue is planned as the admission round would
    // (its placements and what it reclaims), on a copy, with the lock let
    // go; any other job as the leader's planner would, here.
    let trial = match &job.spec.queue {
        Some(q) if admitted == 0 && state.access.queues.contains_key(q) => Some((
            q.clone(),
            crate::queue_book::trial_of(&state, &ctx.metrics.waiting_since()).with_planned(&job, q),
        )),
        _ => None,
    };
    let (queue_note, plan) = match trial {
        Some((q, trial)) => {
            drop(state);
            let (note, admission) = admission_note(trial, &key, &q);
            (note, admission.map(|a| a.plan).unwrap_or_default())
        }
        None => {
            let view = crate::sched_copy::state_view(&state);
            let cfg = Config {
                seed: state.index,
                ..Config::default()
            };
            let plan = reconcile_job(&key, Some(&job), state.deployment(&key), &view, &cfg);
            (String::new(), plan)
        }
    };
    let state = ctx.store.state();
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
        exists,
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
