//! The leader's evaluation loop: pending evaluations are handed to the
//! scheduler in batches, each batch planned on one view of the state (built
//! once, each plan committed into it so the next one sees its placements),
//! and the resulting plans go through Raft together, where the state
//! machine checks each once more (a plan that raced a change is rejected
//! and its evaluation stays pending). Building the view walks every node
//! and allocation under the state's read lock, which the Raft thread needs
//! to apply; one build per batch instead of one per evaluation keeps both
//! the work and the stalls of applies in proportion to the batches.

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
            for batch in pending.chunks(BATCH) {
                if !store.is_leader() {
                    break;
                }
                let started = std::time::Instant::now();
                let plans = {
                    let state = store.state();
                    let locked = std::time::Instant::now();
                    let plans = plan_batch(&state, batch, settings);
                    metrics
                        .planning_lock_seconds
                        .observe(locked.elapsed().as_secs_f64());
                    plans
                };
                let mut commits = tokio::task::JoinSet::new();
                for plan in plans {
                    let (store, metrics) = (store.clone(), metrics.clone());
                    commits.spawn(async move { commit(&store, plan, &metrics).await });
                }
                let mut failed = false;
                while let Some(done) = commits.join_next().await {
                    metrics
                        .scheduling_seconds
                        .observe(started.elapsed().as_secs_f64());
                    match done {
                        Ok(Ok(raced)) => failed |= raced,
                        Ok(Err((eval, job, e))) => {
                            tracing::warn!(%eval, %job, error = %e, "evaluation failed; will retry");
                            failed = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "an evaluation's commit task failed");
                            failed = true;
                        }
                    }
                }
                if failed {
                    // A plan raced another change or could not commit:
                    // give the state a moment before planning again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Most evaluations planned on one view (and committed together).
const BATCH: usize = 64;

/// Plans one evaluation against `state`: the scheduler's plan, with fresh
/// ids for the new allocations and the snapshot's indexes so the state
/// machine can tell a stale plan. The tie-break seed is the evaluation's
/// creation index: data, not a clock. The wall clock is read here, on the
/// leader, and travels in the command as data (`at_ms`).
pub fn plan_eval(state: &State, eval: &Evaluation, settings: SchedulerSettings) -> PlanCommand {
    plan_batch(state, std::slice::from_ref(eval), settings)
        .pop()
        .expect("one plan per evaluation")
}

/// Plans `evals` in order against one view of `state`, each plan committed
/// into the view before the next is made, so they never count the same
/// free room twice.
pub fn plan_batch(
    state: &State,
    evals: &[Evaluation],
    settings: SchedulerSettings,
) -> Vec<PlanCommand> {
    let mut view = ClusterView::new(state.nodes.values(), state.allocs.values(), |name| {
        state.jobs.get(name).map(|j| j.spec.priority)
    });
    let last = evals.len().saturating_sub(1);
    evals
        .iter()
        .enumerate()
        .map(|(i, eval)| plan_on(state, &mut view, eval, settings, i < last))
        .collect()
}

fn plan_on(
    state: &State,
    view: &mut ClusterView<'_>,
    eval: &Evaluation,
    settings: SchedulerSettings,
    more: bool,
) -> PlanCommand {
    let job = state.jobs.get(&eval.job);
    let cfg = Config {
        algorithm: settings.algorithm,
        seed: eval.create_index,
        ..Config::default()
    };
    let plan = reconcile_job(&eval.job, job, state.deployment(&eval.job), view, &cfg);
    let ids: Vec<String> = plan.placements.iter().map(|_| new_alloc_id()).collect();
    if let (Some(job), true) = (job, more) {
        // The next plan of the batch sees these placements and stops.
        view.commit(job, &plan, &ids, state.index);
    }
    PlanCommand {
        eval_id: eval.id.clone(),
        job: eval.job.clone(),
        job_version: job.map_or(0, |j| j.version),
        job_modify_index: job.map_or(0, |j| j.modify_index),
        snapshot_index: state.index,
        placements: plan
            .placements
            .into_iter()
            .zip(ids)
            .map(|(placement, id)| NewAlloc { id, placement })
            .collect(),
        stops: plan.stops,
        evictions: plan.evictions,
        unplaced: plan.unplaced,
        explanation: plan.explanation,
        at_ms: crate::ctx::now_ms(),
    }
}

/// Commits one evaluation's plan. `Ok(true)`: the plan raced another
/// change (some of it was rejected); the error names the evaluation.
async fn commit(
    store: &Store,
    plan: PlanCommand,
    metrics: &crate::metrics::ServerMetrics,
) -> Result<bool, (String, String, skiff_store::StoreError)> {
    let (eval, job) = (plan.eval_id.clone(), plan.job.clone());
    let (placements, stops, evictions) = (
        plan.placements.len(),
        plan.stops.len(),
        plan.evictions.len(),
    );
    let started = std::time::Instant::now();
    let outcome = store.propose(&Command::ApplyPlan { plan }).await;
    metrics.proposed(outcome.is_ok(), started.elapsed());
    match outcome.map_err(|e| (eval.clone(), job.clone(), e))? {
        Outcome::PlanApplied(r) => {
            metrics.placements.inc_by(u64::from(r.placed));
            metrics.plan_rejections.inc_by(u64::from(r.rejected));
            metrics.preemptions.inc_by(u64::from(r.evicted));
            tracing::info!(
                %eval, %job, planned = placements, stops, evictions,
                placed = r.placed, evicted = r.evicted, rejected = r.rejected, status = ?r.eval_status,
                "plan applied"
            );
            Ok(r.rejected > 0)
        }
        other => {
            tracing::debug!(%eval, ?other, "plan not applied");
            Ok(false)
        }
    }
}

/// 128 random bits as 32 hex digits.
fn new_alloc_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
