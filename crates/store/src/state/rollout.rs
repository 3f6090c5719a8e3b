//! Versions, rollouts and scaling in the state machine: the version
//! history, deployment records and the commands that move them. Every
//! time here arrived in a command as data.

use skiff_model::deployment::free_slot;
use skiff_model::job::MAX_REPLICAS;
use skiff_model::workload::rollout_counts;
use skiff_model::{Deployment, DeploymentStatus, DesiredStatus, EvalTrigger, Job, JobVersion};

use super::{Outcome, Refusal, State, Table, DEPLOYMENTS_KEPT};
use crate::command::{DeploymentUpdate, RolloutAction};

impl State {
    /// Keeps `job`'s spec as its version's entry in the history (first
    /// creation index and `stable` kept), newest last, trimmed to
    /// `versions_kept`.
    pub(super) fn record_version(&mut self, index: u64, job: &Job, note: &str) {
        let name = job.spec.key();
        let hist = self.histories.entry(name.clone()).or_default();
        let before: Vec<(u64, u32)> = hist.versions.iter().map(|v| (v.version, v.slot)).collect();
        let added = match hist.versions.iter().position(|v| v.version == job.version) {
            Some(i) => {
                let mut v = hist.versions.remove(i);
                v.spec = Box::new(job.spec.clone());
                v.fingerprint = v.spec.version_fingerprint();
                hist.versions.push(v);
                false
            }
            None => {
                hist.versions.push(JobVersion {
                    version: job.version,
                    spec: Box::new(job.spec.clone()),
                    create_index: index,
                    stable: false,
                    note: note.to_string(),
                    slot: 0,
                    fingerprint: job.spec.version_fingerprint(),
                });
                true
            }
        };
        hist.next_version = hist.next_version.max(job.version + 1);
        hist.trim(job.spec.versions_kept, job.version);
        if added {
            // After the trim: the new version takes over a dropped one's slot.
            let slot = free_slot(
                hist.versions
                    .iter()
                    .filter(|v| v.version != job.version)
                    .map(|v| v.slot),
            );
            if let Some(v) = hist.get_mut(job.version) {
                v.slot = slot;
            }
        }
        let freed: Vec<u32> = before
            .into_iter()
            .filter(|(v, _)| hist.get(*v).is_none())
            .map(|(_, slot)| slot)
            .collect();
        let slot = hist.get(job.version).map_or(0, |v| v.slot);
        self.touch_history(&name, freed.into_iter().chain([slot]));
    }

    /// Starts a rollout of `job`'s version (services that are not gangs;
    /// other jobs are replaced whole and have none). An active rollout of
    /// another version is cancelled.
    pub(super) fn start_deployment(
        &mut self,
        index: u64,
        job: &Job,
        from_version: u64,
        rollback: bool,
        at_ms: u64,
    ) {
        let name = job.spec.key();
        if let Some(d) = self.deployment_mut(&name) {
            if d.status.is_active() {
                d.status = DeploymentStatus::Cancelled;
                d.reason = format!("replaced by a rollout of version {}", job.version);
                d.ended_ms = at_ms;
                d.modify_index = index;
                self.touch_deployment(&name);
            }
        }
        if !job.spec.rolls_out() {
            return;
        }
        // One look at the job's live allocations: whether another version
        // runs (canaries make sense only beside one), whether anything
        // runs, and those of this version that failed an earlier rollout
        // of it (undo, or its spec applied again): they are judged anew.
        // The job's own allocations through its index, not every one.
        let (mut others, mut any_live, mut judged_again) = (false, false, Vec::new());
        for id in self.allocs_by_job.get(&name).into_iter().flatten() {
            let Some(a) = self.allocs.get_mut(id).filter(|a| a.is_live()) else {
                continue;
            };
            any_live = true;
            if a.job_version != job.version {
                others = true;
            } else if a.deploy_health == Some(false) {
                a.deploy_health = None;
                a.modify_index = index;
                judged_again.push(a.id.clone());
            }
        }
        for id in judged_again {
            self.touch(Table::Alloc, &id);
        }
        let canary = if rollback || !others {
            0
        } else {
            job.spec.update.canary.min(job.spec.replicas)
        };
        // Nothing to run and nothing running: the rollout is done as it
        // starts (no controller round trip through Raft for it).
        let nothing = job.spec.replicas == 0 && !any_live;
        if nothing {
            if let Some(v) = self
                .histories
                .get_mut(&name)
                .and_then(|h| h.get_mut(job.version))
            {
                v.stable = true;
                let slot = v.slot;
                self.touch_history(&name, [slot]);
            }
        }
        let list = self.deployments.entry(name.clone()).or_default();
        list.push(Deployment {
            id: format!("{name}-{index}"),
            job: name.clone(),
            version: job.version,
            from_version,
            status: if nothing {
                DeploymentStatus::Successful
            } else {
                DeploymentStatus::Running
            },
            reason: if nothing {
                "0 of 0 replicas: nothing to run".into()
            } else {
                String::new()
            },
            canary,
            promoted: false,
            rollback,
            started_ms: at_ms,
            progress_ms: at_ms,
            ended_ms: if nothing { at_ms } else { 0 },
            create_index: index,
            modify_index: index,
            slot: 0,
        });
        let trimmed = (list.len() > DEPLOYMENTS_KEPT).then(|| list.remove(0).slot);
        // The new rollout takes over the dropped one's slot (its record).
        let slot = free_slot(list[..list.len() - 1].iter().map(|d| d.slot));
        if let Some(d) = list.last_mut() {
            d.slot = slot;
        }
        if let Some(freed) = trimmed.filter(|s| *s != slot) {
            self.touch(Table::Deployment, &super::table::slot_key(&name, freed));
        }
        self.touch_deployment(&name);
    }

    fn rollout_outcome(&self, job: &str) -> Outcome {
        match self.jobs.get(job) {
            Some(j) => Outcome::Rollout {
                job: Box::new(j.clone()),
                deployment: self.deployment(job).cloned().map(Box::new),
            },
            None => Outcome::Refused(Refusal::job_not_found(job)),
        }
    }

    pub(super) fn scale_job(&mut self, index: u64, name: &str, replicas: u32) -> Outcome {
        let Some(job) = self.jobs.get(name) else {
            return Outcome::Refused(Refusal::job_not_found(name));
        };
        if job.spec.is_batch() && !job.spec.gang {
            return Outcome::Refused(Refusal::BatchNotScalable {
                job: name.to_string(),
            });
        }
        if job.spec.gang && job.spec.replicas != replicas {
            return Outcome::Refused(Refusal::GangNotResizable {
                job: name.to_string(),
            });
        }
        if replicas > MAX_REPLICAS {
            return Outcome::Refused(Refusal::ReplicasOutOfRange { replicas });
        }
        if job.spec.replicas != replicas {
            let mut job = job.clone();
            job.spec.replicas = replicas;
            // More replicas in a queue wait to be admitted, whole.
            job.admitted_index = self.kept_admission(&self.jobs[name], &job.spec);
            // Only growing can break a quota (or meet a policy an admin
            // tightened since): scaling down always works.
            if let Err(why) = self.admit(name, &job.spec) {
                if replicas > self.jobs[name].spec.replicas {
                    return Outcome::Refused(why);
                }
            }
            job.modify_index = index;
            self.jobs.insert(name.to_string(), job.clone());
            self.touch(Table::Job, name);
            self.record_version(index, &job, "applied");
            if self.needs_scheduling(name, replicas) {
                self.create_eval(index, name, EvalTrigger::JobRegister);
            }
        }
        self.rollout_outcome(name)
    }

    pub(super) fn control_rollout(
        &mut self,
        index: u64,
        job: &str,
        action: RolloutAction,
        at_ms: u64,
    ) -> Outcome {
        if !self.jobs.contains_key(job) {
            return Outcome::Refused(Refusal::job_not_found(job));
        }
        let Some(d) = self.deployment_mut(job) else {
            return Outcome::Refused(Refusal::NoRollout {
                job: job.to_string(),
            });
        };
        let nothing_to = Refusal::NothingTo {
            action,
            version: d.version,
            status: d.status,
        };
        match action {
            RolloutAction::Pause => match d.status {
                DeploymentStatus::Running => {
                    d.status = DeploymentStatus::Paused;
                    d.reason = "paused by an operator".into();
                }
                DeploymentStatus::Paused => return self.rollout_outcome(job),
                _ => return Outcome::Refused(nothing_to),
            },
            RolloutAction::Resume => match d.status {
                DeploymentStatus::Paused => {
                    d.status = DeploymentStatus::Running;
                    d.reason = String::new();
                    d.progress_ms = at_ms;
                }
                DeploymentStatus::Running => return self.rollout_outcome(job),
                _ => return Outcome::Refused(nothing_to),
            },
            RolloutAction::Promote => {
                if !d.status.is_active() {
                    return Outcome::Refused(nothing_to);
                }
                if !d.awaiting_promotion() {
                    return Outcome::Refused(Refusal::NoCanariesWaiting { version: d.version });
                }
                d.promoted = true;
                d.reason = "canaries promoted".into();
                d.progress_ms = at_ms;
            }
        }
        d.modify_index = index;
        self.touch_deployment(job);
        self.create_eval(index, job, EvalTrigger::Rollout);
        self.rollout_outcome(job)
    }

    pub(super) fn undo_rollout(
        &mut self,
        index: u64,
        name: &str,
        to_version: Option<u64>,
        at_ms: u64,
    ) -> Outcome {
        let Some(job) = self.jobs.get(name) else {
            return Outcome::Refused(Refusal::job_not_found(name));
        };
        if job.spec.is_batch() {
            return Outcome::Refused(Refusal::BatchNotUndoable {
                job: name.to_string(),
            });
        }
        let current = job.version;
        let hist = self.histories.get(name).cloned().unwrap_or_default();
        let target = match to_version {
            Some(v) => v,
            None => match hist.last_stable(current).or_else(|| hist.previous(current)) {
                Some(v) => v,
                None => {
                    return Outcome::Refused(Refusal::NoEarlierVersion {
                        job: name.to_string(),
                    })
                }
            },
        };
        if target == current {
            return Outcome::Refused(Refusal::AlreadyRuns {
                job: name.to_string(),
                version: target,
            });
        }
        let Some(entry) = hist.get(target) else {
            return Outcome::Refused(Refusal::VersionNotKept {
                job: name.to_string(),
                version: target,
                kept: hist.versions.iter().map(|v| v.version).collect(),
            });
        };
        // The old version must pass today's policy and quota.
        let mut spec = (*entry.spec).clone();
        if !spec.gang {
            spec.replicas = job.spec.replicas;
        }
        if let Err(why) = self.admit(name, &spec) {
            return Outcome::Refused(why);
        }
        self.rollback_to(
            index,
            name,
            target,
            at_ms,
            format!("undone by an operator; rolled back to version {target}"),
        );
        self.rollout_outcome(name)
    }

    /// Returns the job to `target` of its history (keeping its current
    /// replicas), marks the current rollout rolled back with `why`, and
    /// starts a rollout of `target`.
    pub(super) fn rollback_to(
        &mut self,
        index: u64,
        name: &str,
        target: u64,
        at_ms: u64,
        why: String,
    ) {
        let (Some(job), Some(entry)) = (
            self.jobs.get(name).cloned(),
            self.histories
                .get(name)
                .and_then(|h| h.get(target))
                .cloned(),
        ) else {
            return;
        };
        let from = job.version;
        let mut spec = *entry.spec;
        // A service keeps its current size; a gang's size is part of its
        // version.
        if !spec.gang {
            spec.replicas = job.spec.replicas;
        }
        let job = Job {
            admitted_index: self.kept_admission(&job, &spec),
            spec,
            version: target,
            create_index: job.create_index,
            modify_index: index,
        };
        if let Some(d) = self.deployment_mut(name) {
            if d.status.is_active() || d.status == DeploymentStatus::Failed {
                d.status = DeploymentStatus::RolledBack;
                d.reason = why;
                d.ended_ms = at_ms;
                d.modify_index = index;
                self.touch_deployment(name);
            }
        }
        self.jobs.insert(name.to_string(), job.clone());
        self.touch(Table::Job, name);
        self.record_version(index, &job, "applied");
        self.start_deployment(index, &job, from, true, at_ms);
        self.create_eval(index, name, EvalTrigger::Rollout);
    }

    /// Whether a rollout's step (a verdict, or its end) may give the
    /// scheduler something to do: always, unless the rollout did not fail
    /// and the job's live allocations are exactly one of the version per
    /// replica (nothing of another version, no extra, none missing). An
    /// evaluation of a job in that state plans nothing; a cluster filling
    /// with new jobs made one per verdict, each planned on a view of the
    /// whole cluster.
    fn rollout_may_place(&self, job: &Job, d: &Deployment) -> bool {
        if !matches!(
            d.status,
            DeploymentStatus::Running | DeploymentStatus::Successful
        ) {
            return true;
        }
        let mut slots = std::collections::BTreeSet::new();
        for a in self.allocs_of(&job.key()) {
            if a.desired != DesiredStatus::Run || a.status.is_terminal() {
                continue;
            }
            let current = a.job_version == job.version && a.create_index >= job.create_index;
            if !current || a.replica >= job.spec.replicas || !slots.insert(a.replica) {
                return true;
            }
        }
        slots.len() < job.spec.replicas as usize
    }

    pub(super) fn update_deployment(&mut self, index: u64, u: &DeploymentUpdate) -> Outcome {
        let Some(job) = self.jobs.get(&u.job).cloned() else {
            return Outcome::Refused(Refusal::job_not_found(&u.job));
        };
        let Some(d) = self.deployment(&u.job).cloned() else {
            return Outcome::Refused(Refusal::NoRolloutToUpdate { job: u.job.clone() });
        };
        if d.id != u.deployment_id || !d.status.is_active() || d.version != job.version {
            return Outcome::Refused(Refusal::DeploymentNotActive {
                deployment: u.deployment_id.clone(),
            });
        }
        let mut d = d;
        let status_before = d.status;
        let mut changed = false;
        let mut health_moved = false;
        if d.started_ms == 0 {
            d.started_ms = u.at_ms;
            d.progress_ms = u.at_ms;
            changed = true;
        }
        for (ids, verdict) in [(&u.healthy, true), (&u.unhealthy, false)] {
            for id in ids {
                if let Some(a) = self.allocs.get_mut(id) {
                    if a.job == u.job && a.job_version == d.version && a.deploy_health.is_none() {
                        a.deploy_health = Some(verdict);
                        a.modify_index = index;
                        health_moved = true;
                        self.touch(Table::Alloc, id);
                    }
                }
            }
        }
        if u.progress {
            d.progress_ms = u.at_ms;
            changed = true;
        }
        if let Some(r) = &u.reason {
            if d.reason != *r {
                d.reason = r.clone();
                changed = true;
            }
        }
        if let Some(why) = &u.fail {
            let target = (!d.rollback && job.spec.update.auto_rollback)
                .then(|| {
                    self.histories
                        .get(&u.job)
                        .and_then(|h| h.last_stable(d.version))
                })
                .flatten();
            match target {
                Some(target) => {
                    *self.deployment_mut(&u.job).expect("checked above") = d;
                    self.rollback_to(
                        index,
                        &u.job,
                        target,
                        u.at_ms,
                        format!("{why}; rolled back to version {target}"),
                    );
                    let d = self.deployment(&u.job).cloned().expect("just started");
                    return Outcome::DeploymentUpdated {
                        deployment: Box::new(d),
                    };
                }
                None => {
                    d.status = DeploymentStatus::Failed;
                    d.reason = if d.rollback {
                        format!("{why}; this rollout was itself a rollback, so none follows")
                    } else if job.spec.update.auto_rollback {
                        format!("{why}; no earlier version rolled out successfully, so there is none to roll back to")
                    } else {
                        format!("{why}; auto_rollback is off")
                    };
                    d.ended_ms = u.at_ms;
                    changed = true;
                }
            }
        }
        // The rollout succeeded when every replica runs the version and
        // proved healthy, and nothing of another version is left.
        if d.status == DeploymentStatus::Running && !d.awaiting_promotion() {
            let counts = rollout_counts(&job, self.allocs_of(&u.job));
            if counts.done() {
                d.status = DeploymentStatus::Successful;
                d.reason = format!("{} of {} replicas healthy", counts.healthy, counts.desired);
                d.ended_ms = u.at_ms;
                changed = true;
                if let Some(v) = self
                    .histories
                    .get_mut(&u.job)
                    .and_then(|h| h.get_mut(d.version))
                {
                    v.stable = true;
                    let slot = v.slot;
                    self.touch_history(&u.job, [slot]);
                }
            }
        }
        if changed || health_moved {
            d.modify_index = index;
            self.touch_deployment(&u.job);
        }
        *self.deployment_mut(&u.job).expect("checked above") = d.clone();
        if (health_moved || d.status != status_before) && self.rollout_may_place(&job, &d) {
            self.create_eval(index, &u.job, EvalTrigger::Rollout);
        }
        Outcome::DeploymentUpdated {
            deployment: Box::new(d),
        }
    }
}
