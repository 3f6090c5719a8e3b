//! The leader's evaluation loop: pending evaluations are handed to the
//! scheduler in batches, each batch planned on one view (built once, each
//! plan committed into it so the next one sees its placements), and the
//! resulting plans go through Raft together, where the state machine
//! checks each once more (a plan that raced a change is rejected and its
//! evaluation stays pending). The view is built from the scheduler's own
//! copy of the nodes and allocation summaries (`sched_copy.rs`), brought up
//! to date under the state's read lock by touching only the nodes whose
//! allocations changed; building the view and planning hold no lock the
//! Raft thread needs to apply.

use std::time::Duration;

use std::collections::BTreeMap;

use skiff_model::{Deployment, EvalStatus, Evaluation, Job};
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
    let mut copy = crate::sched_copy::SchedCopy::default();
    let mut admitter = crate::admission::Admitter::default();
    loop {
        if store.is_leader() {
            let pending = pending_evals(&store);
            for batch in pending.chunks(BATCH) {
                if !store.is_leader() {
                    break;
                }
                let started = std::time::Instant::now();
                // Under the state's lock: bring the copy up to date (the
                // nodes whose allocations changed) and copy the batch's
                // jobs. Planning then holds no lock.
                let inputs = {
                    let state = store.state();
                    let locked = std::time::Instant::now();
                    copy.sync(&state);
                    let inputs = Batch::of(&state, batch);
                    metrics
                        .planning_lock_seconds
                        .observe(locked.elapsed().as_secs_f64());
                    inputs
                };
                let plans = plan_copied(&mut copy, &inputs, batch, settings);
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
            if store.is_leader() {
                admitter
                    .round(&store, &mut copy, settings.algorithm, &metrics)
                    .await;
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
fn plan_batch(
    state: &State,
    evals: &[Evaluation],
    settings: SchedulerSettings,
) -> Vec<PlanCommand> {
    let mut view = crate::sched_copy::state_view(state);
    plan_all(&Batch::of(state, evals), &mut view, evals, settings)
}

/// What a batch's plans read of the state besides the view: the index it
/// was taken at, and its evaluations' jobs and current rollouts (copied,
/// so planning holds no lock).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    index: u64,
    jobs: BTreeMap<String, Job>,
    deployments: BTreeMap<String, Deployment>,
}

impl Batch {
    pub(crate) fn of(state: &State, evals: &[Evaluation]) -> Batch {
        Batch {
            index: state.index,
            jobs: evals
                .iter()
                .filter_map(|e| Some((e.job.clone(), state.jobs.get(&e.job)?.clone())))
                .collect(),
            deployments: evals
                .iter()
                .filter_map(|e| Some((e.job.clone(), state.deployment(&e.job)?.clone())))
                .collect(),
        }
    }
}

fn plan_all(
    batch: &Batch,
    view: &mut ClusterView<'_>,
    evals: &[Evaluation],
    settings: SchedulerSettings,
) -> Vec<PlanCommand> {
    let last = evals.len().saturating_sub(1);
    evals
        .iter()
        .enumerate()
        .map(|(i, eval)| plan_on(batch, view, eval, settings, i < last))
        .collect()
}

/// Plans `evals` from the scheduler's copy (`copy`, brought up to the
/// state under its lock beforehand), holding no lock.
pub(crate) fn plan_copied(
    copy: &mut crate::sched_copy::SchedCopy,
    batch: &Batch,
    evals: &[Evaluation],
    settings: SchedulerSettings,
) -> Vec<PlanCommand> {
    plan_all(batch, copy.view(), evals, settings)
}

fn plan_on(
    batch: &Batch,
    view: &mut ClusterView<'_>,
    eval: &Evaluation,
    settings: SchedulerSettings,
    more: bool,
) -> PlanCommand {
    let job = batch.jobs.get(&eval.job);
    let cfg = Config {
        algorithm: settings.algorithm,
        seed: eval.create_index,
        ..Config::default()
    };
    let plan = match job {
        // A job in a queue is placed once its queue admits it whole
        // (`admission.rs`); until then its evaluation waits.
        Some(j) if j.spec.queue.is_some() && j.admitted_index == 0 => {
            crate::queue_book::waiting_plan(j)
        }
        _ => reconcile_job(&eval.job, job, batch.deployments.get(&eval.job), view, &cfg),
    };
    let ids: Vec<String> = plan
        .placements
        .iter()
        .map(|_| crate::ctx::new_alloc_id())
        .collect();
    if let (Some(job), true) = (job, more) {
        // The next plan of the batch sees these placements and stops.
        view.commit(job, &plan, &ids, batch.index);
    }
    PlanCommand {
        eval_id: eval.id.clone(),
        job: eval.job.clone(),
        job_version: job.map_or(0, |j| j.version),
        job_modify_index: job.map_or(0, |j| j.modify_index),
        snapshot_index: batch.index,
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
        admit: false,
        reclaims: Vec::new(),
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
