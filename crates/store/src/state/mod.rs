//! The state machine: cluster state as plain values and the deterministic
//! `apply` that changes it. No Raft, no disk, no clock here; the store
//! persists whatever `apply` records as changed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use skiff_model::deployment::free_slot;
use skiff_model::fit::{fits_assignment, Usage};
use skiff_model::job::PREEMPTION_GAP;
use skiff_model::workload::host_of;
use skiff_model::{
    AllocFacts, AllocStatus, Allocation, Deployment, DesiredStatus, EvalStatus, EvalTrigger,
    Evaluation, GangRank, Job, JobHistory, JobSpec, JobVersion, Node, NodeStatus,
};

use crate::command::{AllocUpdate, Command, NewAlloc, NodeRegistration, PlanCommand};

mod rollout;

/// Rollouts kept per job (the current one and those before it).
pub const DEPLOYMENTS_KEPT: usize = 10;

/// The parts of a job's previous state `upsert_job` needs.
struct OldJob {
    version: u64,
    create_index: u64,
    modify_index: u64,
    /// The new spec keeps the version (same task and placement rules).
    same_version: bool,
}

/// How many of the latest changes `touch` looks at for a repeat.
const TOUCH_LOOKBACK: usize = 8;

/// Which collection a changed key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Job,
    Node,
    Alloc,
    Eval,
    Server,
    Deployment,
    History,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Job,
        Table::Node,
        Table::Alloc,
        Table::Eval,
        Table::Server,
        Table::Deployment,
        Table::History,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Table::Job => "job/",
            Table::Node => "node/",
            Table::Alloc => "alloc/",
            Table::Eval => "eval/",
            Table::Server => "server/",
            Table::Deployment => "deployment/",
            Table::History => "history/",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Job => "job",
            Table::Node => "node",
            Table::Alloc => "alloc",
            Table::Eval => "eval",
            Table::Server => "server",
            Table::Deployment => "deployment",
            Table::History => "history",
        }
    }
}

/// Where a control-plane server can be reached. Membership itself (voter
/// or learner) lives in Raft's configuration; this is the address book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: u64,
    /// Client and node API address (`host:port`).
    pub api_addr: String,
    /// Raft peer address (`host:port`).
    pub peer_addr: String,
}

/// Everything the cluster knows, as of `index`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub nodes: BTreeMap<String, Node>,
    pub allocs: BTreeMap<String, Allocation>,
    pub evals: BTreeMap<String, Evaluation>,
    /// Control-plane servers' addresses, by Raft id.
    #[serde(default)]
    pub servers: BTreeMap<u64, ServerInfo>,
    /// The rollouts of each service, by job name, oldest first (the last
    /// [`DEPLOYMENTS_KEPT`]); the last one is the job's current rollout.
    #[serde(default)]
    pub deployments: BTreeMap<String, Vec<Deployment>>,
    /// The kept versions of each job, by job name.
    #[serde(default)]
    pub histories: BTreeMap<String, JobHistory>,
    /// Raft index of the last applied entry.
    pub index: u64,
    /// Index of the last change that may let blocked work fit (a node
    /// joined, an allocation released its resources).
    pub last_unblock_index: u64,
    /// Keys changed since the store last took them (after each entry: it
    /// turns them into watch events and remembers them for the next save),
    /// in order, each once per entry. Not part of the state.
    #[serde(skip)]
    pub changes: Vec<(Table, String)>,
    /// Evaluation ids by job, derived from `evals` (see
    /// [`State::rebuild_indexes`]). Not part of the state.
    #[serde(skip)]
    pub(crate) evals_by_job: BTreeMap<String, BTreeSet<String>>,
}

/// Two states are equal when their records and indexes are; the change
/// bookkeeping is not part of the state.
impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.jobs == other.jobs
            && self.nodes == other.nodes
            && self.allocs == other.allocs
            && self.evals == other.evals
            && self.servers == other.servers
            && self.deployments == other.deployments
            && self.histories == other.histories
            && self.index == other.index
            && self.last_unblock_index == other.last_unblock_index
    }
}

impl Eq for State {}

/// The result of applying one command. Deterministic: every server computes
/// the same outcome for the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    JobUpserted {
        job: Box<Job>,
        changed: bool,
    },
    JobDeleted,
    NodeRegistered,
    /// The drainer asked `moved` allocations to stop and move.
    AllocsMigrated {
        moved: u32,
    },
    /// A node's status changed; `lost` allocations were on it.
    NodeStatusSet {
        lost: u32,
    },
    /// A node was cordoned, drained or uncordoned; `stopped` allocations
    /// were asked to stop (draining).
    NodeEligibilitySet {
        stopped: u32,
    },
    ServerRegistered,
    PlanApplied(PlanResult),
    AllocsUpdated {
        applied: u32,
    },
    /// A job was scaled, its rollout paused, resumed or promoted, or it
    /// returned to an earlier version; the job and its rollout as they are
    /// now.
    Rollout {
        job: Box<Job>,
        deployment: Option<Box<Deployment>>,
    },
    /// The deployment controller's update was recorded.
    DeploymentUpdated {
        deployment: Box<Deployment>,
    },
    /// The command was well-formed but refused (e.g. deleting a job that
    /// does not exist); nothing changed.
    Refused(String),
    /// An entry this build does not understand; nothing changed.
    Skipped,
    /// Applied where nobody waits for the answer (see
    /// [`State::apply_owned`]): the outcome was not built.
    Unanswered,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResult {
    pub placed: u32,
    pub stopped: u32,
    /// Allocations of lower-priority jobs stopped for this plan.
    pub evicted: u32,
    /// Placements refused by the re-check (no longer fit, or a stale plan).
    pub rejected: u32,
    pub eval_status: Option<EvalStatus>,
}

impl State {
    /// [`State::apply`] for a command the caller no longer needs: a job's
    /// spec moves into the state instead of being copied, and without
    /// `reply` (nobody waits for the outcome on this server) a registered
    /// job's outcome is [`Outcome::Unanswered`] instead of a copy of it.
    /// The state changes exactly as with `apply`.
    pub fn apply_owned(&mut self, index: u64, command: Command, reply: bool) -> Outcome {
        match command {
            Command::UpsertJob { spec } => {
                debug_assert!(index > self.index, "entries apply in order");
                self.index = index;
                self.upsert_job(index, spec, reply)
            }
            other => self.apply(index, &other),
        }
    }

    /// Applies one command at raft `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        debug_assert!(index > self.index, "entries apply in order");
        self.index = index;
        match command {
            Command::UpsertJob { spec } => self.upsert_job(index, spec.clone(), true),
            Command::DeleteJob { name } => self.delete_job(index, name),
            Command::RegisterNode { registration } => self.register_node(index, registration),
            Command::ApplyPlan { plan } => self.apply_plan(index, plan),
            Command::UpdateAllocStatus {
                node,
                updates,
                at_ms,
            } => self.update_alloc_status(index, node, updates, *at_ms),
            Command::SetNodeEligibility {
                name,
                cordoned,
                draining,
                drain_deadline_ms,
            } => self.set_node_eligibility(index, name, *cordoned, *draining, *drain_deadline_ms),
            Command::MigrateAllocs {
                node,
                alloc_ids,
                reason,
            } => self.migrate_allocs(index, node, alloc_ids, reason),
            Command::FinishDrain { node } => self.finish_drain(index, node),
            Command::SetNodeStatus {
                name,
                status,
                reason,
            } => self.set_node_status(index, name, *status, reason),
            Command::RegisterServer { info } => {
                if self.servers.get(&info.id) != Some(info) {
                    self.servers.insert(info.id, info.clone());
                    self.touch(Table::Server, &info.id.to_string());
                }
                Outcome::ServerRegistered
            }
            Command::ScaleJob { name, replicas } => self.scale_job(index, name, *replicas),
            Command::ControlRollout { job, action, at_ms } => {
                self.control_rollout(index, job, *action, *at_ms)
            }
            Command::UndoRollout {
                job,
                to_version,
                at_ms,
            } => self.undo_rollout(index, job, *to_version, *at_ms),
            Command::UpdateDeployment { update } => self.update_deployment(index, update),
        }
    }

    /// Applies a membership change Raft committed at `index`: a server
    /// joining brings its addresses, a removed one loses them.
    pub fn apply_membership(&mut self, index: u64, added: Option<&ServerInfo>, removed: &[u64]) {
        self.index = index;
        if let Some(info) = added {
            if self.servers.get(&info.id) != Some(info) {
                self.servers.insert(info.id, info.clone());
                self.touch(Table::Server, &info.id.to_string());
            }
        }
        for id in removed {
            if self.servers.remove(id).is_some() {
                self.touch(Table::Server, &id.to_string());
            }
        }
    }

    /// Advances the index for an entry that changes nothing (a leader's
    /// empty entry, a conf change, or an unknown command).
    pub fn skip(&mut self, index: u64) {
        self.index = index;
    }

    /// Records that a key changed. An entry often touches a record twice
    /// in a row (a job's history index, the version just added); those
    /// repeats are dropped here so each is encoded once.
    fn touch(&mut self, table: Table, key: &str) {
        let recent = self.changes.iter().rev().take(TOUCH_LOOKBACK);
        if recent.into_iter().any(|(t, k)| *t == table && k == key) {
            return;
        }
        self.changes.push((table, key.to_string()));
    }

    /// Registers or updates a job. `reply`: somebody waits for the outcome
    /// (without, the job is not copied into one).
    fn upsert_job(&mut self, index: u64, spec: JobSpec, reply: bool) -> Outcome {
        let name = spec.name.clone();
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
            }),
            None => None,
        };
        let job = match old {
            Some(old) if old.same_version => {
                // Replicas, priority or the update policy changed: same
                // version, and its kept spec follows.
                let job = Job {
                    spec,
                    version: old.version,
                    create_index: old.create_index,
                    modify_index: index,
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
            .allocs
            .values()
            .filter(|a| a.job == job && a.status.is_terminal())
            .map(|a| a.id.clone())
            .collect();
        for id in finished {
            self.allocs.remove(&id);
            self.touch(Table::Alloc, &id);
        }
    }

    fn delete_job(&mut self, index: u64, name: &str) -> Outcome {
        if self.jobs.remove(name).is_none() {
            return Outcome::Refused(format!("job {name:?} not found"));
        }
        self.touch(Table::Job, name);
        if let Some(list) = self.deployments.remove(name) {
            self.touch(Table::Deployment, name);
            for d in list {
                self.touch(Table::Deployment, &format!("{name}/{}", d.slot));
            }
        }
        if let Some(h) = self.histories.remove(name) {
            let gone: Vec<u32> = h.versions.iter().map(|v| v.slot).collect();
            self.touch_history(name, gone);
        }
        if self.needs_scheduling(name, 0) {
            self.create_eval(index, name, EvalTrigger::JobDeregister);
        }
        Outcome::JobDeleted
    }

    /// Whether an evaluation could change anything for a job that wants
    /// `replicas`: not when it wants none, runs nothing, and has no
    /// evaluation whose result would be superseded.
    fn needs_scheduling(&self, job: &str, replicas: u32) -> bool {
        replicas > 0
            || self
                .evals_by_job
                .get(job)
                .is_some_and(|ids| !ids.is_empty())
            || self
                .allocs
                .values()
                .any(|a| a.job == job && !a.status.is_terminal())
    }

    /// Queues an evaluation of `job`, unless one is already pending (it
    /// will see this change too). Older finished evaluations of the job are
    /// dropped so they do not pile up.
    /// Marks a job's latest rollout changed: the small index record
    /// (`JOB`: the order of rollouts) and that rollout (`JOB/SLOT`).
    pub(crate) fn touch_deployment(&mut self, job: &str) {
        self.touch(Table::Deployment, job);
        if let Some(slot) = self
            .deployments
            .get(job)
            .and_then(|l| l.last())
            .map(|d| d.slot)
        {
            self.touch(Table::Deployment, &format!("{job}/{slot}"));
        }
    }

    /// Marks a job's history changed: its small index record (`JOB`: the
    /// order of versions and the next number) and the version records in
    /// the slots given (`JOB/SLOT`), so a write stores one version, not all.
    pub(crate) fn touch_history(&mut self, job: &str, slots: impl IntoIterator<Item = u32>) {
        self.touch(Table::History, job);
        for slot in slots {
            self.touch(Table::History, &format!("{job}/{slot}"));
        }
    }

    fn create_eval(&mut self, index: u64, job: &str, trigger: EvalTrigger) {
        let mine: Vec<String> = self
            .evals_by_job
            .get(job)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        // One pending evaluation per job is enough, but it must see this
        // change: a plan made from a snapshot older than `index` leaves it
        // pending (see `apply_plan`), so it runs again.
        if let Some(pending) = mine.iter().find(|id| {
            self.evals
                .get(*id)
                .is_some_and(|e| e.status == EvalStatus::Pending)
        }) {
            let pending = pending.clone();
            if let Some(e) = self.evals.get_mut(&pending) {
                e.modify_index = index;
            }
            self.touch(Table::Eval, &pending);
            return;
        }
        for id in mine {
            self.evals.remove(&id);
            self.touch(Table::Eval, &id);
        }
        // One entry may queue several jobs (a node going down): the index
        // names the first, a suffix the others.
        let mut id = format!("{index:016x}");
        let mut n = 1;
        while self.evals.contains_key(&id) {
            id = format!("{index:016x}.{n}");
            n += 1;
        }
        self.evals_by_job
            .insert(job.to_string(), BTreeSet::from([id.clone()]));
        self.evals.insert(
            id.clone(),
            Evaluation {
                id: id.clone(),
                job: job.to_string(),
                trigger,
                status: EvalStatus::Pending,
                message: String::new(),
                create_index: index,
                modify_index: index,
            },
        );
        self.touch(Table::Eval, &id);
    }

    /// Something may fit now that did not: blocked evaluations run again.
    fn unblock(&mut self, index: u64) {
        self.last_unblock_index = index;
        let blocked: Vec<String> = self
            .evals
            .values()
            .filter(|e| e.status == EvalStatus::Blocked)
            .map(|e| e.id.clone())
            .collect();
        for id in blocked {
            if let Some(e) = self.evals.get_mut(&id) {
                e.status = EvalStatus::Pending;
                e.modify_index = index;
            }
            self.touch(Table::Eval, &id);
        }
    }

    fn register_node(&mut self, index: u64, reg: &NodeRegistration) -> Outcome {
        // GPUs count as schedulable units: whole GPUs and MIG instances,
        // not the GPUs in MIG mode that hold the instances.
        let units = Node::gpu_units(&reg.gpus);
        let healthy = reg
            .gpus
            .iter()
            .filter(|g| g.healthy && g.schedulable())
            .count() as u32;
        let capacity = reg.capacity.with_gpus(units);
        let allocatable = reg.capacity.saturating_sub(reg.reserved).with_gpus(healthy);
        let old = self.nodes.get(&reg.name);
        let create_index = old.map(|n| n.create_index).unwrap_or(index);
        // Cordon and drain are the operator's, not the agent's: they
        // survive a re-registration.
        let (cordoned, draining, drain_deadline_ms, drained) = old
            .map_or((false, false, None, false), |n| {
                (n.cordoned, n.draining, n.drain_deadline_ms, n.drained)
            });
        let node = Node {
            name: reg.name.clone(),
            labels: reg.labels.clone(),
            capacity,
            allocatable,
            gpus: reg.gpus.clone(),
            gpu_links: reg.gpu_links.clone(),
            gpu_driver: reg.gpu_driver.clone(),
            cordoned,
            draining,
            drain_deadline_ms,
            drained,
            address: reg.address.clone(),
            status: NodeStatus::Ready,
            agent_version: reg.agent_version.clone(),
            create_index,
            modify_index: index,
        };
        let changed = self.nodes.get(&reg.name).is_none_or(|old| {
            let mut same = old.clone();
            same.modify_index = index;
            same != node
        });
        if changed {
            self.nodes.insert(reg.name.clone(), node);
            self.touch(Table::Node, &reg.name);
            self.flag_unhealthy_gpus(index, &reg.name);
            self.unblock(index);
        }
        Outcome::NodeRegistered
    }

    /// Marks the allocations on `node` that hold a GPU the node reports
    /// unhealthy (or no longer reports at all), and clears the mark of
    /// those whose GPUs are healthy again.
    fn flag_unhealthy_gpus(&mut self, index: u64, node: &str) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let mut changed = Vec::new();
        for a in self.allocs.values_mut() {
            if a.node != node || a.gpus.is_empty() || !a.holds_resources() {
                continue;
            }
            let flags: Vec<String> = a
                .gpus
                .iter()
                .filter_map(|uuid| match n.gpus.iter().find(|g| g.uuid == *uuid) {
                    None => Some(format!("{uuid}: no longer reported by the node")),
                    Some(g) if !g.healthy => Some(if g.health_reason.is_empty() {
                        format!("{uuid}: unhealthy")
                    } else {
                        format!("{uuid}: {}", g.health_reason)
                    }),
                    Some(_) => None,
                })
                .collect();
            if flags != a.unhealthy_gpus {
                a.unhealthy_gpus = flags;
                a.modify_index = index;
                changed.push(a.id.clone());
            }
        }
        for id in changed {
            self.touch(Table::Alloc, &id);
        }
    }

    fn apply_plan(&mut self, index: u64, plan: &PlanCommand) -> Outcome {
        match self.evals.get(&plan.eval_id) {
            Some(e) if e.status == EvalStatus::Pending => {}
            _ => {
                return Outcome::Refused(format!(
                    "evaluation {} is not pending; plan dropped",
                    plan.eval_id
                ))
            }
        }
        let mut result = PlanResult::default();
        let job_modify_index = self.jobs.get(&plan.job).map_or(0, |j| j.modify_index);
        if job_modify_index != plan.job_modify_index {
            // The job changed after the snapshot: the plan is stale.
            result.rejected = plan.placements.len() as u32;
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
            None => (Vec::new(), Vec::new(), plan.placements.len() as u32),
        };
        result.rejected = rejected;

        if let Some(job) = self.jobs.get(&plan.job).cloned() {
            let reason = format!(
                "preempted by job {} (priority {})",
                job.spec.name, job.spec.priority
            );
            let mut victim_jobs = BTreeSet::new();
            for id in evictions {
                if let Some(a) = self.allocs.get_mut(&id) {
                    a.desired = DesiredStatus::Stop;
                    a.message = reason.clone();
                    a.modify_index = index;
                    victim_jobs.insert(a.job.clone());
                    result.evicted += 1;
                    self.touch(Table::Alloc, &id);
                }
            }
            // The victims' jobs look for room elsewhere.
            for victim in victim_jobs {
                if self.jobs.contains_key(&victim) {
                    self.create_eval(index, &victim, EvalTrigger::Preemption);
                }
            }
            // A gang's replicas learn where rank 0 runs: placed in this
            // plan, or already running.
            let master_addr = job.spec.gang.then(|| {
                let rank0 = accepted
                    .iter()
                    .find(|n| n.placement.replica == 0)
                    .map(|n| n.placement.node.clone())
                    .or_else(|| {
                        self.allocs
                            .values()
                            .find(|a| {
                                a.job == plan.job
                                    && a.job_version == job.version
                                    && a.replica == 0
                                    && a.is_live()
                            })
                            .map(|a| a.node.clone())
                    });
                rank0
                    .and_then(|n| self.nodes.get(&n))
                    .map(|n| host_of(&n.address))
                    .unwrap_or_default()
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
                alloc.create_time_ms = plan.at_ms;
                alloc.create_index = index;
                alloc.modify_index = index;
                alloc.gang = master_addr.as_ref().map(|addr| GangRank {
                    rank: new.placement.replica,
                    world_size: job.spec.replicas,
                    master_addr: addr.clone(),
                    master_port: job.spec.master_port(),
                });
                self.allocs.insert(new.id.clone(), alloc);
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
            .allocs
            .values()
            .filter(|a| {
                a.job == plan.job
                    && a.job_version == plan.job_version
                    && a.desired == DesiredStatus::Run
                    && if batch {
                        !a.status.is_terminal() || a.succeeded()
                    } else {
                        a.status != AllocStatus::Lost
                    }
            })
            .map(|a| a.replica)
            .collect();
        let ask = &job.spec.task.resources;
        let mut accepted = Vec::new();
        let mut evictions = Vec::new();
        let mut rejected = 0u32;
        for (node_name, news) in by_node {
            let evicted: Vec<&str> = evict_on.get(node_name).cloned().unwrap_or_default();
            let node_ok = self.nodes.get(node_name).is_some_and(|node| {
                let victims_ok = evicted.iter().all(|id| {
                    let a = &self.allocs[*id];
                    let priority = self.jobs.get(&a.job).map_or(0, |j| j.spec.priority);
                    a.job != plan.job
                        && a.desired == DesiredStatus::Run
                        && u16::from(priority) + u16::from(PREEMPTION_GAP)
                            <= u16::from(job.spec.priority)
                });
                if !victims_ok || plan.job_version != job.version {
                    return false;
                }
                let mut usage = Usage::default();
                for a in self.allocs.values() {
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
                    match fits_assignment(node, &usage, ask, &new.placement.gpus) {
                        Ok(mask) => {
                            usage.add(ask.amount().with_gpus(mask.count_ones()), mask, &ask.ports);
                            true
                        }
                        Err(_) => false,
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
        if job.spec.gang && rejected > 0 {
            rejected += accepted.len() as u32;
            accepted.clear();
            evictions.clear();
        }
        (accepted, evictions, rejected)
    }

    /// A node went down (its allocations are lost: stopped wherever they
    /// may still run, and replaced by their jobs' evaluations) or came back.
    fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
        reason: &str,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(format!("node {name:?} not found"));
        };
        if node.status == status {
            return Outcome::NodeStatusSet { lost: 0 };
        }
        node.status = status;
        node.modify_index = index;
        self.touch(Table::Node, name);
        let mut lost = 0;
        match status {
            NodeStatus::Down => {
                let message = if reason.is_empty() {
                    format!("node {name} is down")
                } else {
                    format!("node {name} is down: {reason}")
                };
                let mut jobs = BTreeSet::new();
                let mut ids = Vec::new();
                for a in self.allocs.values_mut() {
                    if a.node == name && !a.status.is_terminal() {
                        // Lost is final; desired stop tells the agent, should
                        // it come back, to stop what it still runs.
                        a.status = AllocStatus::Lost;
                        a.desired = DesiredStatus::Stop;
                        a.message = message.clone();
                        a.modify_index = index;
                        jobs.insert(a.job.clone());
                        ids.push(a.id.clone());
                    }
                }
                lost = ids.len() as u32;
                for id in ids {
                    self.touch(Table::Alloc, &id);
                }
                for job in jobs {
                    if self.jobs.contains_key(&job) {
                        self.create_eval(index, &job, EvalTrigger::NodeUpdate);
                    }
                }
                // Resources held there are free again for the plan check.
                self.unblock(index);
            }
            NodeStatus::Ready => self.unblock(index),
        }
        Outcome::NodeStatusSet { lost }
    }

    fn set_node_eligibility(
        &mut self,
        index: u64,
        name: &str,
        cordoned: bool,
        draining: bool,
        drain_deadline_ms: Option<u64>,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(format!("node {name:?} not found"));
        };
        let was_schedulable = node.schedulable();
        // Draining implies cordoned. The drain itself (moving allocations a
        // few at a time) is the leader's drainer's work.
        let cordoned = cordoned || draining;
        let deadline = if draining { drain_deadline_ms } else { None };
        let drained = node.drained && cordoned && !draining;
        if node.cordoned == cordoned
            && node.draining == draining
            && node.drain_deadline_ms == deadline
            && node.drained == drained
        {
            return Outcome::NodeEligibilitySet { stopped: 0 };
        }
        node.cordoned = cordoned;
        node.draining = draining;
        node.drain_deadline_ms = deadline;
        node.drained = drained;
        node.modify_index = index;
        let now_schedulable = node.schedulable();
        self.touch(Table::Node, name);
        if now_schedulable && !was_schedulable {
            self.unblock(index);
        }
        Outcome::NodeEligibilitySet { stopped: 0 }
    }

    /// The drainer moves allocations off a draining node: each is asked to
    /// stop, and its job is evaluated to place it elsewhere.
    fn migrate_allocs(&mut self, index: u64, node: &str, ids: &[String], reason: &str) -> Outcome {
        if !self.nodes.get(node).is_some_and(|n| n.draining) {
            return Outcome::Refused(format!("node {node:?} is not draining"));
        }
        let mut jobs = BTreeSet::new();
        let mut moved = Vec::new();
        for id in ids {
            if let Some(a) = self.allocs.get_mut(id) {
                if a.node == node && a.is_live() {
                    a.desired = DesiredStatus::Stop;
                    a.message = reason.to_string();
                    a.modify_index = index;
                    jobs.insert(a.job.clone());
                    moved.push(id.clone());
                }
            }
        }
        for id in &moved {
            self.touch(Table::Alloc, id);
        }
        for job in jobs {
            if self.jobs.contains_key(&job) {
                self.create_eval(index, &job, EvalTrigger::NodeUpdate);
            }
        }
        Outcome::AllocsMigrated {
            moved: moved.len() as u32,
        }
    }

    /// A drain is over: nothing runs on the node any more.
    fn finish_drain(&mut self, index: u64, name: &str) -> Outcome {
        let busy = self
            .allocs
            .values()
            .any(|a| a.node == name && a.holds_resources());
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(format!("node {name:?} not found"));
        };
        if !node.draining || busy {
            return Outcome::Refused(format!("node {name:?} is not an empty, draining node"));
        }
        node.draining = false;
        node.drain_deadline_ms = None;
        node.drained = true;
        node.cordoned = true;
        node.modify_index = index;
        self.touch(Table::Node, name);
        Outcome::NodeEligibilitySet { stopped: 0 }
    }

    fn finish_eval(&mut self, index: u64, id: &str, status: EvalStatus, message: String) {
        if let Some(e) = self.evals.get_mut(id) {
            e.status = status;
            e.message = message;
            e.modify_index = index;
            self.touch(Table::Eval, id);
        }
    }

    fn update_alloc_status(
        &mut self,
        index: u64,
        node: &str,
        updates: &[AllocUpdate],
        at_ms: u64,
    ) -> Outcome {
        let mut applied = 0;
        let mut released = false;
        let mut moved_jobs = BTreeSet::new();
        for u in updates {
            let Some(a) = self.allocs.get_mut(&u.alloc_id) else {
                continue;
            };
            // An agent speaks only for its own node, and a terminal status
            // never changes again.
            if a.node != node || a.status.is_terminal() {
                continue;
            }
            if a.status == u.status
                && a.exit_code == u.exit_code
                && a.message == u.message
                && a.restart_count == u.restart_count
                && a.healthy == u.healthy
                && a.reason == u.reason
            {
                continue;
            }
            if a.status != u.status
                || a.healthy != u.healthy
                || a.restart_count != u.restart_count
                || a.reason != u.reason
            {
                moved_jobs.insert(a.job.clone());
            }
            if u.healthy != Some(true) {
                a.healthy_since_ms = 0;
            } else if a.healthy != Some(true) || a.restart_count != u.restart_count {
                a.healthy_since_ms = at_ms;
            }
            a.status = u.status;
            a.exit_code = u.exit_code;
            a.restart_count = u.restart_count;
            a.healthy = u.healthy;
            a.reason = u.reason.clone();
            if a.desired == DesiredStatus::Stop && !a.message.is_empty() {
                // The message says why it was stopped ("replaced by
                // version 3"); the agent's last words follow it.
                if u.status.is_terminal() && !u.message.is_empty() {
                    a.message = format!("{}; {}", a.message, u.message);
                }
            } else if !u.message.is_empty() || u.status.is_terminal() {
                a.message = u.message.clone();
            }
            a.modify_index = index;
            released |= u.status.is_terminal();
            applied += 1;
            let id = u.alloc_id.clone();
            self.touch(Table::Alloc, &id);
        }
        if released {
            self.unblock(index);
        }
        // Batch jobs and gangs react to runs ending or failing; a rollout
        // to the health of what runs.
        for job in moved_jobs {
            let watch = self.jobs.get(&job).is_some_and(|j| {
                j.spec.is_batch()
                    || j.spec.gang
                    || self.deployment(&job).is_some_and(|d| d.status.is_active())
            });
            if watch {
                self.create_eval(index, &job, EvalTrigger::AllocUpdate);
            }
        }
        Outcome::AllocsUpdated { applied }
    }

    /// The job's current (latest) rollout.
    pub fn deployment(&self, job: &str) -> Option<&Deployment> {
        self.deployments.get(job).and_then(|v| v.last())
    }

    fn deployment_mut(&mut self, job: &str) -> Option<&mut Deployment> {
        self.deployments.get_mut(job).and_then(|v| v.last_mut())
    }

    /// The allocations of one job, in replica order.
    pub fn allocs_of_job(&self, job: &str) -> Vec<&Allocation> {
        let mut v: Vec<&Allocation> = self.allocs.values().filter(|a| a.job == job).collect();
        v.sort_by_key(|a| (a.replica, a.create_index));
        v
    }

    /// The allocations placed on one node.
    pub fn allocs_on_node(&self, node: &str) -> Vec<&Allocation> {
        self.allocs.values().filter(|a| a.node == node).collect()
    }

    /// The most recent evaluation of a job.
    pub fn latest_eval(&self, job: &str) -> Option<&Evaluation> {
        self.evals_by_job
            .get(job)?
            .iter()
            .filter_map(|id| self.evals.get(id))
            .max_by_key(|e| e.create_index)
    }

    /// Rebuilds the derived lookup tables after the records were loaded
    /// from disk or a snapshot.
    pub fn rebuild_indexes(&mut self) {
        for h in self.histories.values_mut() {
            h.fill_fingerprints();
        }
        self.evals_by_job.clear();
        for e in self.evals.values() {
            self.evals_by_job
                .entry(e.job.clone())
                .or_default()
                .insert(e.id.clone());
        }
    }

    /// A stable digest of the state (not of `changes`), for comparing servers.
    pub fn digest(&self) -> u64 {
        // FNV-1a over the canonical JSON form: stable across runs and builds.
        let bytes = serde_json::to_vec(self).expect("state serializes");
        bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        })
    }
}

#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;
