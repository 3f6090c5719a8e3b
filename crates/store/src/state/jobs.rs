//! Jobs in the state machine: registering a job (a new version and a
//! rollout when its task changes) and deleting it.

use skiff_model::deployment::free_slot;
use skiff_model::{DesiredStatus, EvalTrigger, Job, JobHistory, JobSpec, JobVersion};

use super::{Outcome, Refusal, State, Table};

/// The parts of a job's previous state `upsert_job` needs.
struct OldJob {
    version: u64,
    create_index: u64,
    modify_index: u64,
    /// The new spec keeps the version (same task and placement rules).
    same_version: bool,
    /// Its queue admission, if the new spec keeps it.
    admitted_index: u64,
}

impl State {
    /// The queue admission `old` keeps when its spec becomes `spec`: kept
    /// while the job stays in the same queue asking for no more of
    /// anything (fewer replicas, less of a resource); a job that asks for
    /// more of something (or moves to another queue) waits to be admitted
    /// again, and so does a batch job that had finished (its new runs are
    /// new work for the queue, not the old admission's).
    pub fn kept_admission(&self, old: &Job, spec: &JobSpec) -> u64 {
        if old.admitted_index == 0 {
            return 0;
        }
        let before = skiff_model::queue::request_of(&old.spec);
        let no_more = skiff_model::queue::request_of(spec)
            .iter()
            .all(|(k, v)| before.get(k).is_some_and(|b| v <= b));
        let finished = old.spec.is_batch()
            && skiff_model::workload::batch_progress(old, self.allocs_of(&old.key())).state
                != skiff_model::workload::BatchState::Running;
        if old.spec.queue == spec.queue && no_more && !finished {
            old.admitted_index
        } else {
            0
        }
    }

    /// Registers or updates a job. `reply`: somebody waits for the outcome
    /// (without, the job is not copied into one).
    pub(super) fn upsert_job(&mut self, index: u64, spec: JobSpec, reply: bool) -> Outcome {
        let name = spec.key();
        let replicas = spec.replicas;
        // What is needed of the job as it was, without copying its spec.
        let old = match self.jobs.get(&name) {
            Some(old) if old.spec == spec => {
                if !reply {
                    return Outcome::Unanswered;
                }
                return Outcome::JobUpserted {
                    job: Box::new(old.clone()),
                    changed: false,
                };
            }
            Some(old) => Some(OldJob {
                version: old.version,
                create_index: old.create_index,
                modify_index: old.modify_index,
                same_version: old.spec.same_version(&spec),
                admitted_index: self.kept_admission(old, &spec),
            }),
            None => None,
        };
        if let Err(why) = self.admit(&name, &spec) {
            return Outcome::Refused(why);
        }
        let job = match old {
            Some(old) if old.same_version => {
                // Replicas, priority or the update policy changed: same
                // version, and its kept spec follows.
                let job = Job {
                    spec,
                    version: old.version,
                    create_index: old.create_index,
                    modify_index: index,
                    admitted_index: old.admitted_index,
                };
                self.record_version(index, &job, "applied");
                job
            }
            Some(old) => {
                // A new task or placement rules: a version of the history
                // with the same ones comes back, or a new number is taken.
                // The version being replaced is kept in the history (it
                // is missing only from histories older than versions).
                let missing = self
                    .histories
                    .get(&name)
                    .is_none_or(|h| h.get(old.version).is_none());
                let old_spec = missing
                    .then(|| self.jobs.get(&name).map(|j| j.spec.clone()))
                    .flatten();
                let hist = self.histories.entry(name.clone()).or_default();
                let mut kept_old = None;
                if let Some(old_spec) = old_spec {
                    let slot = free_slot(hist.versions.iter().map(|v| v.slot));
                    hist.versions.push(JobVersion {
                        version: old.version,
                        spec: Box::new(old_spec),
                        create_index: old.modify_index,
                        stable: false,
                        note: String::new(),
                        slot,
                        fingerprint: 0,
                    });
                    kept_old = Some(slot);
                }
                // A batch job never returns to an old number: that
                // version's finished runs would count for the new ones.
                let version = match hist.same_as(&spec).filter(|_| !spec.is_batch()) {
                    Some(v) => v,
                    None => {
                        let v = hist.next_version.max(old.version + 1);
                        hist.next_version = v + 1;
                        v
                    }
                };
                let job = Job {
                    spec,
                    version,
                    create_index: old.create_index,
                    modify_index: index,
                    admitted_index: old.admitted_index,
                };
                if let Some(slot) = kept_old {
                    self.touch_history(&name, [slot]);
                }
                self.record_version(index, &job, "applied");
                self.start_deployment(index, &job, old.version, false, 0);
                job
            }
            None => {
                self.forget_finished_allocs(&name);
                let job = Job {
                    spec,
                    version: 1,
                    create_index: index,
                    modify_index: index,
                    admitted_index: 0,
                };
                self.histories.insert(
                    name.clone(),
                    JobHistory {
                        versions: Vec::new(),
                        next_version: 2,
                    },
                );
                self.record_version(index, &job, "applied");
                self.start_deployment(index, &job, 0, false, 0);
                job
            }
        };
        let outcome = if reply {
            Outcome::JobUpserted {
                job: Box::new(job.clone()),
                changed: true,
            }
        } else {
            Outcome::Unanswered
        };
        self.jobs.insert(name.clone(), job);
        self.touch(Table::Job, &name);
        if self.needs_scheduling(&name, replicas) {
            self.create_eval(index, &name, EvalTrigger::JobRegister);
        }
        outcome
    }

    /// A job created under the name of a deleted one starts with a clean
    /// history: the finished allocations of the old one are dropped.
    fn forget_finished_allocs(&mut self, job: &str) {
        let finished: Vec<String> = self
            .allocs_of(job)
            .filter(|a| a.status.is_terminal())
            .map(|a| a.id.clone())
            .collect();
        for id in finished {
            self.remove_alloc(&id);
            self.touch(Table::Alloc, &id);
        }
    }

    pub(super) fn delete_job(&mut self, index: u64, name: &str) -> Outcome {
        if self.jobs.remove(name).is_none() {
            return Outcome::Refused(Refusal::job_not_found(name));
        }
        self.touch(Table::Job, name);
        if let Some(list) = self.deployments.remove(name) {
            self.touch(Table::Deployment, name);
            for d in list {
                self.touch(Table::Deployment, &super::table::slot_key(name, d.slot));
            }
        }
        if let Some(h) = self.histories.remove(name) {
            let gone: Vec<u32> = h.versions.iter().map(|v| v.slot).collect();
            self.touch_history(name, gone);
        }
        // Finished allocations run nothing the scheduler would stop: they
        // are marked here, so none of a deleted job still says `run`.
        let finished: Vec<String> = self
            .allocs_of(name)
            .filter(|a| a.status.is_terminal() && a.desired == DesiredStatus::Run)
            .map(|a| a.id.clone())
            .collect();
        for id in finished {
            if let Some(a) = self.allocs.get_mut(&id) {
                a.desired = DesiredStatus::Stop;
                a.modify_index = index;
                self.touch(Table::Alloc, &id);
            }
        }
        if self.needs_scheduling(name, 0) {
            self.create_eval(index, name, EvalTrigger::JobDeregister);
        }
        self.forget_job_if_gone(name);
        Outcome::JobDeleted
    }

    /// Whether an evaluation could change anything for a job that wants
    /// `replicas`: not when it wants none, runs nothing, and has no
    /// evaluation whose result would be superseded.
    pub(super) fn needs_scheduling(&self, job: &str, replicas: u32) -> bool {
        replicas > 0
            || self
                .evals_by_job
                .get(job)
                .is_some_and(|ids| !ids.is_empty())
            || self.allocs_of(job).any(|a| !a.status.is_terminal())
    }
}
