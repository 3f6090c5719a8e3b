//! The team queues' book as a server's state stands: each queued job's
//! request and what it holds, the queues' standing for `/metrics`, and a
//! trial admission round for `skiff queue describe`. A leaf: it imports
//! no service or controller.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use skiff_model::queue::{request_of, scale, Amounts};
use skiff_model::workload::{batch_progress, BatchState};
use skiff_model::{Job, Plan};
use skiff_scheduler::queues::{Decision, QueueBook, Workload};
use skiff_scheduler::Config;
use skiff_store::State;

/// The plan of a queued job's evaluation while it waits: nothing moves.
pub fn waiting_plan(job: &Job) -> Plan {
    Plan {
        unplaced: job.spec.wanted(),
        explanation: format!(
            "waiting in queue {} to be admitted whole (skiff queue describe {})",
            job.spec.queue.as_deref().unwrap_or(""),
            job.spec.queue.as_deref().unwrap_or("")
        ),
        ..Plan::default()
    }
}

/// Since when each waiting job has waited, as this server saw it (the
/// leader's clock; a new leader starts counting again).
pub type WaitingSince = HashMap<String, Instant>;

/// What job `job` holds against its queue: its whole request while
/// admitted and not done, else what of it still runs.
fn holds(state: &State, job: &Job, request: &Amounts) -> Amounts {
    let key = job.key();
    if job.admitted_index > 0 {
        let done = job.spec.is_batch()
            && batch_progress(job, state.allocs_of(&key)).state != BatchState::Running;
        if !done {
            return request.clone();
        }
    }
    let live = state
        .allocs_of(&key)
        .filter(|a| a.is_live() && a.desired == skiff_model::DesiredStatus::Run)
        .count() as u64;
    scale(request, live, u64::from(job.spec.wanted()))
}

/// The book as `state` stands: every queue, every job naming one.
pub fn book_of(state: &State, waiting: &WaitingSince) -> QueueBook {
    let now = Instant::now();
    let workloads = state
        .jobs
        .values()
        .filter_map(|j| {
            let queue = j.spec.queue.clone()?;
            let request = request_of(&j.spec);
            let key = j.key();
            let holds = holds(state, j, &request);
            // Admitted once and done, holding nothing: no longer the
            // queue's (not admitted work, not waiting).
            if j.admitted_index > 0 && holds.is_empty() {
                return None;
            }
            // A namespace taken off the queue's list since the job was
            // submitted: it stays, and waits, until an admin allows it again
            // or the job moves.
            let refused = state
                .access
                .queues
                .get(&queue)
                .filter(|q| !q.admits_namespace(&j.spec.namespace))
                .map(|_| {
                    format!(
                        "namespace {:?} may no longer submit to queue {queue}: an admin adds it to the queue's namespaces, or the job moves to another queue",
                        j.spec.namespace
                    )
                });
            Some(Workload {
                refused,
                holds,
                waited_ms: waiting
                    .get(&key)
                    .map_or(0, |t| now.duration_since(*t).as_millis() as u64),
                job: key,
                queue,
                priority: j.spec.priority,
                create_index: j.create_index,
                request,
                admitted_index: j.admitted_index,
            })
        })
        .collect();
    QueueBook::new(state.access.queues.values().cloned(), workloads)
}

/// What a trial round needs, copied out of the state while its lock is
/// held: the book, the scheduler's copy of the nodes and allocations, the
/// waiting jobs. The round itself then runs holding no lock (the Raft
/// thread applies meanwhile), as the leader's admission round does.
pub struct Trial {
    book: QueueBook,
    copy: crate::sched_copy::SchedCopy,
    jobs: BTreeMap<String, Job>,
    index: u64,
}

/// Copies what a trial round on `state` needs.
pub fn trial_of(state: &State, waiting: &WaitingSince) -> Trial {
    let mut copy = crate::sched_copy::SchedCopy::default();
    copy.sync(state);
    Trial {
        book: book_of(state, waiting),
        copy,
        jobs: state
            .jobs
            .values()
            .filter(|j| j.spec.queue.is_some() && j.admitted_index == 0)
            .map(|j| (j.key(), j.clone()))
            .collect(),
        index: state.index,
    }
}

impl Trial {
    /// The trial with `job` (a planned spec, `skiff plan`) waiting in
    /// queue `q` in place of the stored job of its name: what it already
    /// holds counts, as when the leader admits it again.
    pub fn with_planned(mut self, job: &Job, q: &str) -> Trial {
        let key = job.key();
        let stored = self.book.workloads().iter().find(|w| w.job == key);
        let holds = stored.map(|w| w.holds.clone()).unwrap_or_default();
        let waited_ms = stored.map_or(0, |w| w.waited_ms);
        self.book.upsert(Workload {
            job: key.clone(),
            queue: q.to_string(),
            priority: job.spec.priority,
            create_index: job.create_index,
            request: skiff_model::queue::request_of(&job.spec),
            admitted_index: 0,
            holds,
            waited_ms,
            refused: None,
        });
        self.jobs.insert(key, job.clone());
        self
    }

    /// Runs the round without committing it: where each queue's jobs
    /// stand, each waiting one with its reason.
    pub fn run(mut self) -> (QueueBook, Vec<Decision>) {
        let mut trial = self.book.clone();
        let jobs = &self.jobs;
        let decisions = trial.round(
            self.copy.view(),
            &|name| jobs.get(name),
            &Config {
                seed: self.index,
                ..Config::default()
            },
            &mut String::new,
            self.index,
        );
        (self.book, decisions)
    }
}

/// The queues' standing as gauges (after Kueue's names): nominal quota,
/// usage, borrowed and lent amounts by queue and resource (`cpu` in
/// cores, `memory` in bytes, `allocations`, `gpu:MODEL` in GPUs), the
/// weighted fair share, admitted and waiting jobs by queue.
pub fn register_gauges(reg: &mut prometheus_client::registry::Registry, state: &State) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type FGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
    let rows = book_of(state, &WaitingSince::new()).status();
    let amounts = |pick: &dyn Fn(&skiff_scheduler::queues::QueueStatus) -> &Amounts| {
        let family = Family::<skiff_metrics::Labels, FGauge>::default();
        for row in &rows {
            // Every governed resource, 0 when none is used.
            let mut all = row.nominal.clone();
            all.values_mut().for_each(|v| *v = 0);
            all.extend(pick(row).iter().map(|(k, v)| (k.clone(), *v)));
            for (key, v) in &all {
                let value = match key.as_str() {
                    skiff_model::queue::CPU => *v as f64 / 1000.0,
                    k if k.starts_with(skiff_model::queue::GPU_PREFIX) => {
                        skiff_model::queue::gpus_of(*v)
                    }
                    _ => *v as f64,
                };
                family
                    .get_or_create(&vec![
                        ("queue".to_string(), row.name.clone()),
                        ("resource".to_string(), key.clone()),
                    ])
                    .set(value);
            }
        }
        family
    };
    reg.register(
        "queue_nominal_quota",
        "Each team queue's nominal quota, by resource (cpu in cores, memory in bytes, gpu:MODEL in GPUs)",
        amounts(&|r| &r.nominal),
    );
    reg.register(
        "queue_resource_usage",
        "What each team queue's admitted jobs hold, by resource",
        amounts(&|r| &r.usage),
    );
    reg.register(
        "queue_borrowed_resources",
        "What each team queue uses beyond its nominal quota, by resource",
        amounts(&|r| &r.borrowed),
    );
    reg.register(
        "queue_lent_resources",
        "Of each team queue's unused nominal quota, what its cohort's other queues use",
        amounts(&|r| &r.lent),
    );
    let per_queue = |pick: &dyn Fn(&skiff_scheduler::queues::QueueStatus) -> f64| {
        let family = Family::<skiff_metrics::Labels, FGauge>::default();
        for row in &rows {
            family
                .get_or_create(&vec![("queue".to_string(), row.name.clone())])
                .set(pick(row));
        }
        family
    };
    reg.register(
        "queue_weighted_share",
        "Each team queue's weighted dominant share of borrowed resources (0 while it borrows nothing; 1 is all its cohort can lend at weight 1; +Inf borrowing at weight 0)",
        per_queue(&|r| {
            if r.share == u64::MAX {
                f64::INFINITY
            } else {
                r.share as f64 / 1e6
            }
        }),
    );
    reg.register(
        "queue_admitted_workloads",
        "Jobs admitted in each team queue",
        per_queue(&|r| f64::from(r.admitted)),
    );
    reg.register(
        "queue_pending_workloads",
        "Jobs waiting in each team queue",
        per_queue(&|r| f64::from(r.pending)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched_copy::tests::{apply, pending_eval, register, report};
    use skiff_model::queue::Queue;
    use skiff_model::{AllocStatus, JobSpec};
    use skiff_store::Command;

    #[test]
    fn a_job_whose_namespace_the_queue_no_longer_allows_waits_and_says_why() {
        let mut state = State::default();
        register(&mut state, "n1", 4_000);
        let queue = |ns: &str| Command::PutQueue {
            queue: Queue::from_yaml(&format!(
                "name: q\nnamespaces: [{ns}]\nnominal: {{cpu: 4}}\n"
            ))
            .unwrap(),
        };
        apply(&mut state, queue("default"));
        let spec = JobSpec::from_yaml(
            "name: late\nqueue: q\ntype: batch\ntask: {image: 'oci:/i', network: none, resources: {cpu: 1, memory: 64Mi}}",
        )
        .unwrap();
        apply(&mut state, Command::UpsertJob { spec });
        let (_, d) = trial_of(&state, &WaitingSince::new()).run();
        assert!(
            d.iter().any(|d| d.job == "late" && d.admission.is_some()),
            "{d:?}"
        );
        // The admin takes `default` off the queue's list before it is admitted.
        apply(&mut state, queue("other"));
        let (_, d) = trial_of(&state, &WaitingSince::new()).run();
        let late = d.iter().find(|d| d.job == "late").unwrap();
        assert!(late.admission.is_none(), "{d:?}");
        assert!(
            late.reason
                .contains("namespace \"default\" may no longer submit to queue q"),
            "{}",
            late.reason
        );
    }

    #[test]
    fn a_finished_batch_job_is_no_longer_counted_among_the_admitted() {
        let mut state = State::default();
        register(&mut state, "n1", 4_000);
        let queue = Queue::from_yaml("name: q\nnamespaces: ['*']\nnominal: {cpu: 4}\n").unwrap();
        apply(&mut state, Command::PutQueue { queue });
        let spec = JobSpec::from_yaml(
            "name: once\nqueue: q\ntype: batch\ntask: {image: 'oci:/i', network: none, resources: {cpu: 1, memory: 64Mi}}",
        )
        .unwrap();
        apply(&mut state, Command::UpsertJob { spec });
        let eval = pending_eval(&state);
        let job = &state.jobs[&eval.job];
        let plan = skiff_store::command::PlanCommand {
            eval_id: eval.id.clone(),
            job: eval.job.clone(),
            job_version: job.version,
            job_modify_index: job.modify_index,
            snapshot_index: state.index,
            placements: vec![skiff_store::command::NewAlloc {
                id: "once-0".into(),
                placement: skiff_model::Placement {
                    replica: 0,
                    node: "n1".into(),
                    gpus: vec![],
                    ports: vec![],
                },
            }],
            stops: vec![],
            evictions: vec![],
            unplaced: 0,
            explanation: String::new(),
            admit: true,
            reclaims: vec![],
            at_ms: 0,
        };
        apply(&mut state, Command::ApplyPlan { plan });
        let row = |state: &State| {
            let rows = book_of(state, &WaitingSince::new()).status();
            let r = rows.into_iter().find(|r| r.name == "q").unwrap();
            (
                r.admitted,
                r.pending,
                r.usage.get("cpu").copied().unwrap_or(0),
            )
        };
        assert_eq!(row(&state), (1, 0, 1_000));
        report(&mut state, "once-0", AllocStatus::Running, 1);
        assert_eq!(row(&state), (1, 0, 1_000), "running");
        // It exits 0 on its own: the job is complete.
        apply(
            &mut state,
            Command::UpdateAllocStatus {
                node: "n1".into(),
                updates: vec![skiff_store::command::AllocUpdate {
                    alloc_id: "once-0".into(),
                    status: AllocStatus::Complete,
                    exit_code: Some(0),
                    reason: skiff_model::alloc::reason::COMPLETED.into(),
                    ..Default::default()
                }],
                at_ms: 2,
            },
        );
        assert_eq!(row(&state), (0, 0, 0), "done: neither admitted nor waiting");
    }
}
