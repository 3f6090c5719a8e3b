//! A job's rollouts: where they stand, pause/resume/promote, undo.

use skiff_proto::pb;
use skiff_store::command::RolloutAction;
use skiff_store::{Command, Outcome};
use tonic::Status;

use super::errors::{invalid, job_key, not_done};
use super::jobs::summary;
use crate::ctx::{now_ms, Ctx};

pub(crate) async fn get(
    ctx: &Ctx,
    r: pb::GetRolloutRequest,
) -> Result<pb::GetRolloutResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    ctx.read_barrier(r.stale).await?;
    let state = ctx.store.state();
    let Some(job) = state.jobs.get(&key) else {
        return Err(Status::not_found(format!("job {:?} not found", key)));
    };
    let allocs = state.allocs_of_job(&key);
    let counts = skiff_model::workload::rollout_counts(job, allocs.iter().copied());
    Ok(pb::GetRolloutResponse {
        job: Some(job.into()),
        deployments: state
            .deployments
            .get(&key)
            .map(|v| v.iter().map(Into::into).collect())
            .unwrap_or_default(),
        counts: Some(counts.into()),
        history: state
            .histories
            .get(&key)
            .map(|h| h.versions.iter().map(Into::into).collect())
            .unwrap_or_default(),
        summary: Some(summary(Some(job), &allocs, state.deployment(&key))),
    })
}

/// The store's action for the wire's; every member of the set, so a test
/// can check the round trip.
pub(crate) const ACTIONS: [(pb::RolloutAction, RolloutAction); 3] = [
    (pb::RolloutAction::Pause, RolloutAction::Pause),
    (pb::RolloutAction::Resume, RolloutAction::Resume),
    (pb::RolloutAction::Promote, RolloutAction::Promote),
];

pub(crate) async fn control(
    ctx: &Ctx,
    r: pb::ControlRolloutRequest,
) -> Result<pb::ControlRolloutResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    let action = ACTIONS
        .iter()
        .find(|(wire, _)| *wire as i32 == r.action)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            invalid(
                "action",
                format!(
                    "{} is not a rollout action; expected ROLLOUT_ACTION_PAUSE, _RESUME or _PROMOTE",
                    r.action
                ),
            )
        })?;
    let applied = ctx
        .commit(&Command::ControlRollout {
            job: key.clone(),
            action,
            at_ms: now_ms(),
        })
        .await?;
    match applied.outcome {
        Outcome::Rollout { deployment, .. } => {
            tracing::info!(job = %key, action = action.as_str(), "rollout controlled");
            Ok(pb::ControlRolloutResponse {
                deployment: deployment.as_deref().map(Into::into),
                index: applied.index,
            })
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn undo(
    ctx: &Ctx,
    r: pb::UndoRolloutRequest,
) -> Result<pb::UndoRolloutResponse, Status> {
    let key = job_key(&r.namespace, &r.name)?;
    if r.to_version == Some(0) {
        return Err(invalid("to_version", "versions start at 1"));
    }
    let applied = ctx
        .commit(&Command::UndoRollout {
            job: key.clone(),
            to_version: r.to_version,
            at_ms: now_ms(),
        })
        .await?;
    match applied.outcome {
        Outcome::Rollout { job, deployment } => {
            tracing::info!(job = %key, version = job.version, "rollout undone");
            Ok(pb::UndoRolloutResponse {
                job: Some(job.as_ref().into()),
                deployment: deployment.as_deref().map(Into::into),
                index: applied.index,
            })
        }
        other => Err(not_done(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rollout_action_crosses_the_wire_both_ways() {
        for action in [
            RolloutAction::Pause,
            RolloutAction::Resume,
            RolloutAction::Promote,
        ] {
            let (wire, _) = ACTIONS.iter().find(|(_, a)| *a == action).unwrap();
            let back = ACTIONS.iter().find(|(w, _)| w == wire).map(|(_, a)| *a);
            assert_eq!(back, Some(action));
        }
        let wires: std::collections::BTreeSet<i32> =
            ACTIONS.iter().map(|(w, _)| *w as i32).collect();
        assert_eq!(wires.len(), ACTIONS.len(), "one wire value each");
        assert!(!wires.contains(&(pb::RolloutAction::Unspecified as i32)));
    }
}
