//! The leader's evaluation loop: every pending evaluation is handed to the
//! scheduler with a view of the state, and the resulting plan goes through
//! Raft, where the state machine checks it once more.

use std::time::Duration;

use skiff_model::{EvalStatus, Evaluation};
pub use skiff_scheduler::Algorithm;
use skiff_scheduler::{reconcile_job, ClusterView, Config};
use skiff_store::command::{NewAlloc, PlanCommand};
use skiff_store::{Command, Outcome, State, Store};

/// How the leader's scheduler places work (the server's `--scheduler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerSettings {
    pub algorithm: Algorithm,
}

/// Runs forever; does work only while this server leads.
pub async fn run(
    store: Store,
    settings: SchedulerSettings,
    metrics: std::sync::Arc<crate::metrics::ServerMetrics>,
) {
    let mut applied = store.subscribe();
    loop {
        if store.is_leader() {
            let pending = pending_evals(&store);
            for eval in pending {
                if !store.is_leader() {
                    break;
                }
                let started = std::time::Instant::now();
                let done = process(&store, &eval, settings, &metrics).await;
                metrics
                    .scheduling_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Err(e) = done {
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

/// Plans one evaluation against `state`: the scheduler's plan, with fresh
/// ids for the new allocations and the snapshot's indexes so the state
/// machine can tell a stale plan. The tie-break seed is the evaluation's
/// creation index: data, not a clock. The wall clock is read here, on the
/// leader, and travels in the command as data (`at_ms`).
pub fn plan_eval(state: &State, eval: &Evaluation, settings: SchedulerSettings) -> PlanCommand {
    let job = state.jobs.get(&eval.job);
    let view = ClusterView::new(state.nodes.values(), state.allocs.values(), |name| {
        state.jobs.get(name).map(|j| j.spec.priority)
    });
    let cfg = Config {
        algorithm: settings.algorithm,
        seed: eval.create_index,
        ..Config::default()
    };
    let plan = reconcile_job(&eval.job, job, state.deployment(&eval.job), &view, &cfg);
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
        evictions: plan.evictions,
        unplaced: plan.unplaced,
        explanation: plan.explanation,
        at_ms: crate::ctx::now_ms(),
    }
}

/// Plans one evaluation and commits the plan.
async fn process(
    store: &Store,
    eval: &Evaluation,
    settings: SchedulerSettings,
    metrics: &crate::metrics::ServerMetrics,
) -> Result<(), skiff_store::StoreError> {
    let plan = plan_eval(&store.state(), eval, settings);
    let (placements, stops, evictions) = (
        plan.placements.len(),
        plan.stops.len(),
        plan.evictions.len(),
    );
    let started = std::time::Instant::now();
    let outcome = store.propose(&Command::ApplyPlan { plan }).await;
    metrics.proposed(outcome.is_ok(), started.elapsed());
    match outcome? {
        Outcome::PlanApplied(r) => {
            metrics.placements.inc_by(u64::from(r.placed));
            metrics.plan_rejections.inc_by(u64::from(r.rejected));
            metrics.preemptions.inc_by(u64::from(r.evicted));
            tracing::info!(
                eval = %eval.id, job = %eval.job, planned = placements, stops, evictions,
                placed = r.placed, evicted = r.evicted, rejected = r.rejected, status = ?r.eval_status,
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
