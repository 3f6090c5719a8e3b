//! The leader's evaluation loop: pending evaluations are handed to the
//! scheduler in batches, each batch planned on one view (built once, each
//! plan committed into it so the next one sees its placements), and the
//! resulting plans go through Raft together, where the state machine
//! checks each once more (a plan that raced a change is rejected and its
//! evaluation stays pending). The view is built from the scheduler's own
//! copy of the nodes and allocation summaries (`sched_copy.rs`), brought up
//! to date under the state's read lock by touching only the nodes whose
//! allocations changed; building the view and planning hold no lock the
//! Raft thread needs to apply. With `--planners N`, N batches are planned
//! at once, each by its own planner and copy (`planners.rs`), and their
//! plans committed together.

use std::time::Duration;

use std::collections::BTreeMap;

use skiff_model::{Deployment, EvalStatus, Evaluation, Job};
pub use skiff_scheduler::Algorithm;
use skiff_scheduler::{reconcile_job, ClusterView, Config, Stripe};
use skiff_store::command::{NewAlloc, PlanCommand};
use skiff_store::{Command, Outcome, State, Store};

use crate::sched_copy::SchedCopy;

/// How the leader's scheduler places work (the server's `--scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSettings {
    pub algorithm: Algorithm,
    /// How many batches of evaluations are planned at once, each by its
    /// own planner (the server's `--planners`; at least 1).
    pub planners: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            algorithm: Algorithm::default(),
            planners: 1,
        }
    }
}

/// Runs forever; does work only while this server leads.
pub async fn run(
    store: Store,
    settings: SchedulerSettings,
    metrics: std::sync::Arc<crate::metrics::ServerMetrics>,
) {
    let mut applied = store.subscribe();
    let mut copy = SchedCopy::default();
    let mut admitter = crate::admission::Admitter::default();
    let planners = settings.planners.max(1);
    let helpers = {
        let (store, metrics) = (store.clone(), metrics.clone());
        crate::planners::Helpers::start(
            planners,
            move |copy: &mut SchedCopy, evals: &[Evaluation], i| {
                plan_synced(&store, copy, evals, settings, (i, planners), &metrics)
            },
        )
    };
    let planners = helpers.planners();
    loop {
        if store.is_leader() {
            let pending = pending_evals(&store);
            for round in crate::planners::rounds(pending, planners, BATCH) {
                if !store.is_leader() {
                    break;
                }
                let started = std::time::Instant::now();
                // The other planners' batches first, so they plan while
                // this loop plans its own (one they cannot take is
                // planned here).
                let mut round = round.into_iter();
                let mut batch = round.next().unwrap_or_default();
                let mut elsewhere = Vec::new();
                for (i, evals) in round.enumerate() {
                    if evals.is_empty() {
                        continue;
                    }
                    match helpers.plan(i, evals) {
                        Ok(rx) => elsewhere.push(rx),
                        Err(evals) => batch.extend(evals),
                    }
                }
                let mut plans =
                    plan_synced(&store, &mut copy, &batch, settings, (0, planners), &metrics);
                for rx in elsewhere {
                    match rx.await {
                        Ok(more) => plans.extend(more),
                        // Its evaluations stay pending: planned next pass.
                        Err(_) => {
                            tracing::warn!("a planner thread ended; its batch is planned again")
                        }
                    }
                }
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
                        // Planners working at once race each other by
                        // design: their refused evaluations are planned
                        // again at once (the commits are in by then).
                        Ok(Ok(raced)) => failed |= raced && planners == 1,
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

/// Planner `planner` of `of` plans a batch: under the state's lock, it
/// brings its copy up to date (the nodes whose allocations changed) and
/// copies the batch's jobs; then it plans holding no lock.
fn plan_synced(
    store: &Store,
    copy: &mut SchedCopy,
    evals: &[Evaluation],
    settings: SchedulerSettings,
    (planner, of): (usize, usize),
    metrics: &crate::metrics::ServerMetrics,
) -> Vec<PlanCommand> {
    let inputs = {
        let state = store.state();
        let locked = std::time::Instant::now();
        copy.sync(&state);
        let inputs = Batch::of(&state, evals);
        metrics
            .planning_lock_seconds
            .observe(locked.elapsed().as_secs_f64());
        inputs
    };
    let stripe = crate::planners::stripe(planner, of);
    let plans = plan_copied(copy, &inputs, evals, settings, stripe);
    metrics.planned(planner, plans.len());
    plans
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
    plan_all(&Batch::of(state, evals), &mut view, evals, settings, None)
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
    stripe: Option<Stripe>,
) -> Vec<PlanCommand> {
    let last = evals.len().saturating_sub(1);
    evals
        .iter()
        .enumerate()
        .map(|(i, eval)| plan_on(batch, view, eval, settings, stripe, i < last))
        .collect()
}

/// Plans `evals` from the scheduler's copy (`copy`, brought up to the
/// state under its lock beforehand), holding no lock; with `stripe`,
/// each job is tried on that planner's share of the nodes first.
pub(crate) fn plan_copied(
    copy: &mut crate::sched_copy::SchedCopy,
    batch: &Batch,
    evals: &[Evaluation],
    settings: SchedulerSettings,
    stripe: Option<Stripe>,
) -> Vec<PlanCommand> {
    plan_all(batch, copy.view(), evals, settings, stripe)
}

fn plan_on(
    batch: &Batch,
    view: &mut ClusterView<'_>,
    eval: &Evaluation,
    settings: SchedulerSettings,
    stripe: Option<Stripe>,
    more: bool,
) -> PlanCommand {
    let job = batch.jobs.get(&eval.job);
    let cfg = Config {
        algorithm: settings.algorithm,
        seed: eval.create_index,
        stripe,
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
