//! The scheduler's plan in the state machine: the plan check (the same fit
//! rule the scheduler used, against the state as it is now) and the
//! placements, stops and evictions it lets through.

use std::collections::{BTreeMap, BTreeSet};

use skiff_model::fit::{fits_assignment, Usage};
use skiff_model::job::PREEMPTION_GAP;
use skiff_model::workload::host_of;
use skiff_model::{
    AllocFacts, AllocStatus, Allocation, DesiredStatus, EvalStatus, EvalTrigger, GangRank, Job,
};

use super::{Outcome, PlanResult, Refusal, State, Table};
use crate::command::{NewAlloc, PlanCommand};

impl State {
    pub(super) fn apply_plan(&mut self, index: u64, plan: &PlanCommand) -> Outcome {
        match self.evals.get(&plan.eval_id) {
            Some(e) if e.status == EvalStatus::Pending => {}
            // A waiting job's admission comes while its evaluation waits.
            Some(e) if e.status == EvalStatus::Blocked && plan.admit => {}
            _ => {
                return Outcome::Refused(Refusal::EvalNotPending {
                    eval: plan.eval_id.clone(),
                })
            }
        }
        let mut result = PlanResult::default();
        let job_modify_index = self.jobs.get(&plan.job).map_or(0, |j| j.modify_index);
        if job_modify_index != plan.job_modify_index {
            // The job changed after the snapshot: the plan is stale (and
            // refused, even one that places nothing).
            result.rejected = plan.placements.len().max(1) as u32;
            self.finish_eval(index, &plan.eval_id, EvalStatus::Pending, String::new());
            result.eval_status = Some(EvalStatus::Pending);
            return Outcome::PlanApplied(result);
        }

        for stop in &plan.stops {
            if let Some(a) = self.allocs.get_mut(&stop.alloc_id) {
                if a.job == plan.job && a.desired == DesiredStatus::Run {
                    a.desired = DesiredStatus::Stop;
                    // A run that already ended keeps the words of its end.
                    if !a.status.is_terminal() {
                        a.message = stop.reason.clone();
                    }
                    a.modify_index = index;
                    result.stopped += 1;
                    self.touch(Table::Alloc, &stop.alloc_id);
                }
            }
        }

        let (accepted, evictions, rejected) = match self.jobs.get(&plan.job) {
            Some(job) => self.check_placements(job, plan),
            // A job deleted: its plan stops what runs and places
            // nothing, and is done; an admission of it is refused.
            None if plan.admit => (Vec::new(), Vec::new(), plan.placements.len().max(1) as u32),
            None => (Vec::new(), Vec::new(), plan.placements.len() as u32),
        };
        result.rejected = rejected;

        if let Some(job) = self.jobs.get(&plan.job).cloned() {
            let reason = format!(
                "preempted by job {} (priority {})",
                plan.job, job.spec.priority
            );
            // The victim's queue borrowed what it ran: from the job's
            // queue (a reclaim), or beyond its fair share (fair sharing).
            let reclaimed = |victim_queue: &str| {
                format!(
                    "reclaimed for job {} (queue {}): queue {victim_queue} was borrowing this capacity",
                    plan.job,
                    job.spec.queue.as_deref().unwrap_or("")
                )
            };
            let mut victim_jobs = BTreeSet::new();
            // A victim of the job's own queue went for its priority, not
            // to give back lent capacity.
            let other_queue: BTreeMap<String, String> = plan
                .reclaims
                .iter()
                .filter_map(|v| {
                    let theirs = self.jobs.get(v)?.spec.queue.clone()?;
                    (Some(&theirs) != job.spec.queue.as_ref()).then(|| (v.clone(), theirs))
                })
                .collect();
            for id in evictions {
                if let Some(a) = self.allocs.get_mut(&id) {
                    a.desired = DesiredStatus::Stop;
                    a.message = match other_queue.get(&a.job) {
                        Some(theirs) => reclaimed(theirs),
                        None => reason.clone(),
                    };
                    a.modify_index = index;
                    victim_jobs.insert(a.job.clone());
                    result.evicted += 1;
                    self.touch(Table::Alloc, &id);
                }
            }
            // (An admission may place nothing: a job whose allocations
            // still run, admitted again after a move to another queue.)
            if plan.admit && result.rejected == 0 {
                if let Some(j) = self.jobs.get_mut(&plan.job) {
                    j.admitted_index = index;
                    self.touch(Table::Job, &plan.job);
                }
            }
            // Reclaimed jobs wait in their queues to be admitted again:
            // those evicted, and those named for the quota alone (nothing
            // of them running: between runs, or their node lost).
            let accepted_admission = plan.admit && result.rejected == 0;
            let requeued: Vec<String> = plan
                .reclaims
                .iter()
                .filter(|v| {
                    victim_jobs.contains(*v)
                        || (accepted_admission && self.reclaimable(&job, plan, v))
                })
                .cloned()
                .collect();
            for victim in &requeued {
                if let Some(j) = self.jobs.get_mut(victim) {
                    j.admitted_index = 0;
                    self.touch(Table::Job, victim);
                }
            }
            // The victims' jobs look for room elsewhere.
            for victim in victim_jobs {
                if self.jobs.contains_key(&victim) {
                    self.create_eval(index, &victim, EvalTrigger::Preemption);
                }
            }
            // A gang's replicas learn where rank 0 runs (placed in this
            // plan, or already running): its node's address on the host's
            // network, its DNS name on a bridge (its container's address
            // is known only once it runs).
            let master_addr = job.spec.gang.then(|| {
                let rank0 = accepted
                    .iter()
                    .find(|n| n.placement.replica == 0)
                    .map(|n| (n.id.clone(), n.placement.node.clone()))
                    .or_else(|| {
                        self.allocs_of(&plan.job)
                            .find(|a| {
                                a.job == plan.job
                                    && a.job_version == job.version
                                    && a.replica == 0
                                    && a.is_live()
                            })
                            .map(|a| (a.id.clone(), a.node.clone()))
                    });
                match (rank0, job.spec.task.network) {
                    (Some((id, _)), skiff_model::NetworkMode::Bridge) => {
                        skiff_model::dns::alloc_name(&id, &plan.job)
                    }
                    (rank0, _) => rank0
                        .and_then(|(_, n)| self.nodes.get(&n))
                        .map(|n| host_of(&n.address))
                        .unwrap_or_default(),
                }
            });
            for new in accepted {
                let mut alloc = Allocation::new(
                    new.id.clone(),
                    plan.job.clone(),
                    job.version,
                    new.placement.replica,
                    new.placement.node.clone(),
                    job.spec.task.clone(),
                );
                alloc.gpus = new.placement.gpus.clone();
                alloc.ports = job.spec.task.held_ports(&new.placement.ports);
                alloc.create_time_ms = plan.at_ms;
                alloc.create_index = index;
                alloc.modify_index = index;
                alloc.gang = master_addr.as_ref().map(|addr| GangRank {
                    rank: new.placement.replica,
                    world_size: job.spec.replicas,
                    master_addr: addr.clone(),
                    master_port: job.spec.master_port(),
                });
                self.insert_alloc(alloc);
                self.touch(Table::Alloc, &new.id);
                result.placed += 1;
            }
        }

        // Something that needs this job evaluated happened after the
        // plan's snapshot (see `create_eval`): plan again from a newer one.
        let changed_since = self
            .evals
            .get(&plan.eval_id)
            .is_some_and(|e| e.modify_index > plan.snapshot_index);
        let status = if result.rejected > 0 || changed_since {
            EvalStatus::Pending
        } else if plan.unplaced > 0 {
            if self.last_unblock_index > plan.snapshot_index {
                // Room may have appeared after the snapshot was taken.
                EvalStatus::Pending
            } else {
                EvalStatus::Blocked
            }
        } else {
            EvalStatus::Complete
        };
        let message = if plan.unplaced > 0 {
            format!(
                "{} replica(s) not placed: {}",
                plan.unplaced, plan.explanation
            )
        } else {
            String::new()
        };
        self.finish_eval(index, &plan.eval_id, status, message);
        result.eval_status = Some(status);
        Outcome::PlanApplied(result)
    }

    /// The plan check. Each node's changes are taken whole or not at all:
    /// its evictions must be of allocations of other jobs at least
    /// [`PREEMPTION_GAP`] priority points lower, and with those counted as
    /// free every placement on it must pass the same fit rule the scheduler
    /// used (`fits_assignment`: cpu, memory, ports, and exactly the GPUs
    /// named, free and acceptable). A gang's placements are all rejected if
    /// any is. Returns the accepted placements, the evictions to apply and
    /// how many placements were rejected.
    fn check_placements<'p>(
        &self,
        job: &Job,
        plan: &'p PlanCommand,
    ) -> (Vec<&'p NewAlloc>, Vec<String>, u32) {
        let mut by_node: BTreeMap<&str, Vec<&'p NewAlloc>> = BTreeMap::new();
        for new in &plan.placements {
            by_node
                .entry(new.placement.node.as_str())
                .or_default()
                .push(new);
        }
        let mut evict_on: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in &plan.evictions {
            if let Some(a) = self.allocs.get(&e.alloc_id) {
                evict_on
                    .entry(a.node.as_str())
                    .or_default()
                    .push(e.alloc_id.as_str());
            }
        }
        // Replica slots of this version already filled: for a service,
        // by anything but a lost allocation; for a batch job, by a run
        // that goes on or succeeded (a failed one is replaced).
        let batch = job.spec.is_batch();
        let mut taken: BTreeSet<u32> = self
            .allocs_of(&plan.job)
            .filter(|a| {
                a.job_version == plan.job_version
                    && a.desired == DesiredStatus::Run
                    && if batch {
                        !a.status.is_terminal() || a.succeeded()
                    } else {
                        a.status != AllocStatus::Lost
                    }
            })
            .map(|a| a.replica)
            .collect();
        let ask = job.spec.task.ask();
        let ask = ask.as_ref();
        let mut accepted = Vec::new();
        let mut evictions = Vec::new();
        let mut rejected = 0u32;
        // An admission's reclaims go whole, wherever the victims run (a
        // gang's other ranks, or a job evicted only to free quota, may be
        // on nodes this plan places nothing on): each of those evictions
        // passes the victim rule, and every live allocation of each
        // reclaimed job is evicted, or the admission is refused whole.
        let reclaims_whole = !plan.admit
            || (evict_on
                .iter()
                .filter(|(n, _)| !by_node.contains_key(*n))
                .all(|(_, ids)| ids.iter().all(|id| self.may_evict(job, plan, id)))
                && plan.reclaims.iter().all(|victim| {
                    self.allocs_of(victim)
                        .filter(|a| a.is_live())
                        .all(|a| plan.evictions.iter().any(|e| e.alloc_id == a.id))
                }));
        if !reclaims_whole {
            return (Vec::new(), Vec::new(), plan.placements.len().max(1) as u32);
        }
        if plan.admit {
            for (node_name, ids) in &evict_on {
                if !by_node.contains_key(node_name) {
                    evictions.extend(ids.iter().map(|id| id.to_string()));
                }
            }
        }
        for (node_name, news) in by_node {
            let evicted: Vec<&str> = evict_on.get(node_name).cloned().unwrap_or_default();
            let node_ok = self.nodes.get(node_name).is_some_and(|node| {
                let victims_ok = evicted.iter().all(|id| self.may_evict(job, plan, id));
                if !victims_ok || plan.job_version != job.version {
                    return false;
                }
                let mut usage = Usage::default();
                for a in self.allocs_on_node(&node.name) {
                    if a.node == node.name
                        && a.holds_resources()
                        && !evicted.contains(&a.id.as_str())
                    {
                        usage.add_alloc(node, a);
                    }
                }
                let mut slots = BTreeSet::new();
                news.iter().all(|new| {
                    let replica = new.placement.replica;
                    if taken.contains(&replica)
                        || !slots.insert(replica)
                        || self.allocs.contains_key(&new.id)
                    {
                        return false;
                    }
                    let picked = &new.placement.ports;
                    // The picked ports: as many as asked, each in the
                    // node's dynamic range, free and named once.
                    let picked_ok = picked.len() == ask.dynamic_ports as usize
                        && picked.iter().enumerate().all(|(i, p)| {
                            node.dynamic_ports.contains(*p)
                                && !usage.holds_port(*p)
                                && !ask.ports.contains(p)
                                && !picked[..i].contains(p)
                        });
                    match fits_assignment(node, &usage, ask, &new.placement.gpus) {
                        Ok(mask) if picked_ok => {
                            let held = job.spec.task.held_ports(picked);
                            usage.add(ask.amount().with_gpus(mask.count_ones()), mask, &held);
                            true
                        }
                        _ => false,
                    }
                })
            });
            if node_ok {
                for new in &news {
                    taken.insert(new.placement.replica);
                }
                accepted.extend(news);
                evictions.extend(evicted.into_iter().map(String::from));
            } else {
                rejected += news.len() as u32;
            }
        }
        // A gang, or a job being admitted from its queue, goes whole.
        if (job.spec.gang || plan.admit) && rejected > 0 {
            rejected += accepted.len() as u32;
            accepted.clear();
            evictions.clear();
        }
        (accepted, evictions, rejected)
    }

    /// Whether `plan` for `job` may evict allocation `id`: another job's,
    /// desired to run, and either in the same queue (or both in none) at
    /// least [`PREEMPTION_GAP`] priority points lower, or reclaimed.
    /// Within a queue a priority victim goes only when an admission names
    /// it (so that it goes whole and waits to be admitted again), never
    /// one allocation of it by a plain plan.
    fn may_evict(&self, job: &Job, plan: &PlanCommand, id: &str) -> bool {
        let Some(a) = self.allocs.get(id) else {
            return false;
        };
        let victim = self.jobs.get(&a.job);
        let priority = victim.map_or(0, |j| j.spec.priority);
        let same_queue =
            victim.map_or(job.spec.queue.is_none(), |v| v.spec.queue == job.spec.queue);
        let named = job.spec.queue.is_none() || (plan.admit && plan.reclaims.contains(&a.job));
        let by_priority = same_queue
            && named
            && u16::from(priority) + u16::from(PREEMPTION_GAP) <= u16::from(job.spec.priority);
        a.job != plan.job
            && a.desired == DesiredStatus::Run
            && (by_priority || self.reclaimable(job, plan, &a.job))
    }

    /// Whether the plan may evict job `victim`'s allocations to reclaim
    /// lent capacity for `job`: the plan names it, it is in another queue
    /// of the same cohort, and it was admitted (or still runs while it
    /// waits to be admitted again). (A victim in the job's own
    /// queue goes only by priority, [`PREEMPTION_GAP`] points lower.)
    fn reclaimable(&self, job: &Job, plan: &PlanCommand, victim: &str) -> bool {
        if !plan.admit || !plan.reclaims.iter().any(|r| r == victim) {
            return false;
        }
        let Some(v) = self.jobs.get(victim) else {
            return false;
        };
        let cohort = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| self.access.queues.get(n))
                .map(|q| q.cohort_key())
        };
        let (mine, theirs) = (cohort(&job.spec.queue), cohort(&v.spec.queue));
        // Admitted, or waiting again with allocations still running (it
        // asked for more, or moved): what runs counts in its queue.
        let holds = v.admitted_index > 0 || self.allocs_of(victim).any(|a| a.is_live());
        holds && mine.is_some() && mine == theirs && v.spec.queue != job.spec.queue
    }

    fn finish_eval(&mut self, index: u64, id: &str, status: EvalStatus, message: String) {
        if let Some(e) = self.evals.get_mut(id) {
            e.status = status;
            e.message = message;
            e.modify_index = index;
            self.touch(Table::Eval, id);
        }
    }
}
