//! The leader's evaluation loop: every pending evaluation is handed to the
//! scheduler with a snapshot of the state, and the resulting plan goes
//! through Raft, where the state machine checks it once more.

use std::time::Duration;

use skiff_model::{EvalStatus, Evaluation};
use skiff_scheduler::{reconcile, Snapshot};
use skiff_store::command::{NewAlloc, PlanCommand};
use skiff_store::{Command, Outcome, Store};

/// Runs forever; does work only while this server leads.
pub async fn run(store: Store) {
    let mut applied = store.subscribe();
    loop {
        if store.is_leader() {
            let pending = pending_evals(&store);
            for eval in pending {
                if !store.is_leader() {
                    break;
                }
                if let Err(e) = process(&store, &eval).await {
                    tracing::warn!(eval = %eval.id, job = %eval.job, error = %e, "evaluation failed; will retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // Wake on the next applied entry, or re-check leadership now and then.
        let _ = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await;
    }
}

fn pending_evals(store: &Store) -> Vec<Evaluation> {
    let state = store.state();
    let mut v: Vec<Evaluation> = state
        .evals
        .values()
        .filter(|e| e.status == EvalStatus::Pending)
        .cloned()
        .collect();
    v.sort_by_key(|e| e.create_index);
    v
}

/// Plans one evaluation and commits the plan.
async fn process(store: &Store, eval: &Evaluation) -> Result<(), skiff_store::StoreError> {
    let plan = {
        let state = store.state();
        let job = state.jobs.get(&eval.job);
        let snap = Snapshot {
            nodes: state.nodes.values().collect(),
            allocs: state.allocs.values().collect(),
        };
        let plan = reconcile(&eval.job, job, &snap);
        PlanCommand {
            eval_id: eval.id.clone(),
            job: eval.job.clone(),
            job_version: job.map_or(0, |j| j.version),
            job_modify_index: job.map_or(0, |j| j.modify_index),
            snapshot_index: state.index,
            placements: plan
                .placements
                .into_iter()
                .map(|placement| NewAlloc {
                    id: new_alloc_id(),
                    placement,
                })
                .collect(),
            stops: plan.stops,
            unplaced: plan.unplaced,
            explanation: plan.explanation,
        }
    };
    let (placements, stops) = (plan.placements.len(), plan.stops.len());
    let outcome = store.propose(&Command::ApplyPlan { plan }).await?;
    match outcome {
        Outcome::PlanApplied(r) => {
            tracing::info!(
                eval = %eval.id, job = %eval.job, planned = placements, stops,
                placed = r.placed, rejected = r.rejected, status = ?r.eval_status,
                "plan applied"
            );
            if r.rejected > 0 {
                // The plan raced another change; give the state a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        other => tracing::debug!(eval = %eval.id, ?other, "plan not applied"),
    }
    Ok(())
}

/// 128 random bits as 32 hex digits.
fn new_alloc_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
