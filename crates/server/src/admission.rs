//! Team queue admission on the leader. After each pass over the pending
//! evaluations, when the state moved and some job waits in a queue, the
//! leader runs one admission round (`skiff_scheduler::queues`) on a view
//! built from its scheduler copy: each job admitted goes through Raft as
//! a plan marked `admit` (its placements, and the evictions of what is
//! reclaimed for it), on the job's waiting evaluation. The state machine
//! checks it like any plan, records the admission on the job and clears
//! the reclaimed jobs' admissions; a job waits again from there.
//!
//! Until then a queued job's evaluation places nothing
//! (`queue_book::waiting_plan`).
//! `skiff queue describe` runs the same round without committing it, so
//! its reasons are the leader's.

use std::collections::BTreeMap;
use std::time::Instant;

use skiff_model::{EvalStatus, Job};
use skiff_scheduler::Config;
use skiff_store::command::{NewAlloc, PlanCommand};
use skiff_store::{Command, Outcome, Store};

use crate::metrics::Preempted;
use crate::queue_book::book_of;

/// The leader's admission rounds.
#[derive(Debug, Default)]
pub struct Admitter {
    /// The state index of the last round.
    last_index: u64,
    /// When the last round ran: on a busy cluster (an applied entry every
    /// few milliseconds) rounds are at least [`ROUND_GAP`] apart.
    last_round: Option<Instant>,
}

/// The least time between two admission rounds; the evaluation loop wakes
/// at least every second, so a waiting job is looked at within about a
/// second of the change that lets it in.
const ROUND_GAP: std::time::Duration = std::time::Duration::from_millis(200);

/// While a job waits, a round runs this often even when the state stays
/// still: how long a head has waited (its backfill window: nodes held
/// for it, an owner's node-by-node reclaim) changes with time alone, and
/// a quiet cluster of long runs may apply nothing for hours.
const IDLE_ROUND: std::time::Duration = std::time::Duration::from_secs(5);

impl Admitter {
    /// One round, if the state moved since the last and a job waits.
    pub async fn round(
        &mut self,
        store: &Store,
        copy: &mut crate::sched_copy::SchedCopy,
        algorithm: skiff_scheduler::Algorithm,
        metrics: &crate::metrics::ServerMetrics,
    ) {
        // Under the state's lock: the copy, the book, the waiting jobs
        // and their evaluations.
        let (mut book, jobs, evals, index) = {
            let state = store.state();
            let still = state.index == self.last_index
                && self.last_round.is_some_and(|t| t.elapsed() < IDLE_ROUND);
            if still
                || state.access.queues.is_empty()
                || self.last_round.is_some_and(|t| t.elapsed() < ROUND_GAP)
            {
                return;
            }
            self.last_index = state.index;
            self.last_round = Some(Instant::now());
            let waiting: Vec<&Job> = state
                .jobs
                .values()
                .filter(|j| j.spec.queue.is_some() && j.admitted_index == 0)
                .collect();
            let mut since = metrics.queue_waiting.lock().expect("waiting map");
            if waiting.is_empty() {
                since.clear();
                return;
            }
            let now = Instant::now();
            let keys: std::collections::HashSet<String> = waiting.iter().map(|j| j.key()).collect();
            since.retain(|k, _| keys.contains(k));
            for j in &waiting {
                since.entry(j.key()).or_insert(now);
            }
            copy.sync(&state);
            let book = book_of(&state, &since);
            let evals: BTreeMap<String, String> = state
                .evals
                .values()
                .filter(|e| matches!(e.status, EvalStatus::Pending | EvalStatus::Blocked))
                .map(|e| (e.job.clone(), e.id.clone()))
                .collect();
            let jobs: BTreeMap<String, Job> =
                waiting.iter().map(|j| (j.key(), (*j).clone())).collect();
            (book, jobs, evals, state.index)
        };
        let view = copy.view();
        let cfg = Config {
            algorithm,
            seed: index,
            ..Config::default()
        };
        let decisions = book.round(
            view,
            &|name| jobs.get(name),
            &cfg,
            &mut crate::ctx::new_alloc_id,
            index,
        );
        for d in decisions {
            let (Some(a), Some(job)) = (d.admission, jobs.get(&d.job)) else {
                continue;
            };
            let Some(eval_id) = evals.get(&d.job) else {
                tracing::debug!(job = %d.job, "admitted job has no waiting evaluation; next round");
                if a.reclaimed.is_empty() {
                    // What it would have held only made the decisions
                    // after it more careful.
                    continue;
                }
                // The decisions after it may use quota its victims would
                // have freed: they stop here; the next round looks again.
                self.last_index = 0;
                break;
            };
            let plan = PlanCommand {
                eval_id: eval_id.clone(),
                job: d.job.clone(),
                job_version: job.version,
                job_modify_index: job.modify_index,
                snapshot_index: index,
                placements: a
                    .plan
                    .placements
                    .into_iter()
                    .zip(a.ids)
                    .map(|(placement, id)| NewAlloc { id, placement })
                    .collect(),
                stops: a.plan.stops,
                evictions: a.plan.evictions,
                unplaced: 0,
                explanation: String::new(),
                admit: true,
                reclaims: a.reclaimed.clone(),
                at_ms: crate::ctx::now_ms(),
            };
            let started = Instant::now();
            let outcome = store.propose(&Command::ApplyPlan { plan }).await;
            metrics.proposed(outcome.is_ok(), started.elapsed());
            match outcome {
                Ok(Outcome::PlanApplied(r)) if r.rejected == 0 => {
                    let queue = job.spec.queue.clone().unwrap_or_default();
                    let waited = metrics
                        .queue_waiting
                        .lock()
                        .expect("waiting map")
                        .remove(&d.job)
                        .map_or(0.0, |t| t.elapsed().as_secs_f64());
                    let why: Vec<Preempted> = a
                        .reclaimed
                        .iter()
                        .map(|v| {
                            let theirs = book.workloads().iter().find(|w| &w.job == v);
                            match theirs {
                                Some(w) if w.queue == queue => Preempted::Priority,
                                _ if a.borrowing => Preempted::FairSharing,
                                _ => Preempted::Reclaim,
                            }
                        })
                        .collect();
                    metrics.queue_admitted(&queue, waited, &why);
                    tracing::info!(job = %d.job, %queue, borrowing = a.borrowing, reclaimed = ?a.reclaimed, placed = r.placed, "admitted from its queue");
                }
                Ok(other) => {
                    tracing::debug!(job = %d.job, ?other, "admission not applied; next round");
                    // The state moved under the plan: look again.
                    self.last_index = 0;
                    break;
                }
                Err(e) => {
                    tracing::warn!(job = %d.job, error = %e, "admission failed to commit; next round");
                    self.last_index = 0;
                    break;
                }
            }
        }
    }
}
