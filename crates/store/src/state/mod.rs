//! The state machine: cluster state as plain values and the deterministic
//! `apply` that changes it. No Raft, no disk, no clock here; the store
//! persists whatever `apply` records as changed.
//!
//! This module holds the state itself, the outcome of a command, the
//! dispatch from a command to its rule, the change bookkeeping and the
//! evaluation queue every rule uses, and the read-only lookups. The rules
//! live beside it, one room per subject:
//! - `jobs`: registering and deleting jobs;
//! - `nodes`: registration, status, cordon and drain;
//! - `plan`: committing the scheduler's plan after the plan check;
//! - `allocs`: what agents report about their allocations;
//! - `rollout`: versions, rollouts and scaling;
//! - `refusal`: why a well-formed command changed nothing;
//! - `table`: the collections of records, as the store saves and watches them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use skiff_model::{
    Allocation, Deployment, EvalStatus, EvalTrigger, Evaluation, Job, JobHistory, Node,
};

use crate::command::{Command, ServerInfo};

mod access;
mod access_record;
mod alloc_table;
mod allocs;
mod jobs;
mod marks;
mod namespaces;
mod nodes;
mod plan;
mod refusal;
mod registry_logins;
mod rollout;
mod table;
mod users;

pub use access_record::Access;
pub use alloc_table::AllocTable;

/// The key of the one access record.
pub fn access_key() -> &'static str {
    access_record::ACCESS_KEY
}
pub use refusal::Refusal;
pub use table::{slot_key, split_slot_key, Table};
pub use users::ADMIN_USER;

/// Rollouts kept per job (the current one and those before it).
pub const DEPLOYMENTS_KEPT: usize = 10;

/// How many of the latest changes `touch` looks at for a repeat.
const TOUCH_LOOKBACK: usize = 8;

/// Everything the cluster knows, as of `index`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub nodes: BTreeMap<String, Node>,
    pub allocs: AllocTable,
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
    /// The CA, join tokens and joined names.
    #[serde(default)]
    pub access: Access,
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
    /// Allocation ids by node, derived from `allocs` (see
    /// [`State::rebuild_indexes`]): what each node's watch reads on every
    /// applied entry. Not part of the state.
    #[serde(skip)]
    pub(crate) allocs_by_node: BTreeMap<String, BTreeSet<String>>,
    /// Allocation ids by job key, derived from `allocs` likewise: what
    /// a plan's check, a rollout's progress and a job's writes read,
    /// instead of every allocation. Not part of the state.
    #[serde(skip)]
    pub(crate) allocs_by_job: BTreeMap<String, BTreeSet<String>>,
    /// Where the latest changes were, for watchers (see `marks.rs`). Not
    /// part of the state.
    #[serde(skip)]
    pub(crate) marks: marks::Marks,
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
            && self.access == other.access
            && self.index == other.index
            && self.last_unblock_index == other.last_unblock_index
    }
}

impl Eq for State {}

/// A committed command's outcome, and the Raft index of its entry (the
/// index a client can watch from, or read at, to see its effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub outcome: Outcome,
}

/// The result of applying one command. Deterministic: every server computes
/// the same outcome for the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The CA, a token or a join was recorded.
    AccessChanged,
    /// A node was removed for good.
    NodeRemoved,
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
    /// Finished allocations were dropped.
    AllocsCollected {
        removed: u32,
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
    Refused(Refusal),
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
        if let Err(why) = crate::check::check(&command) {
            return self.refuse_invalid(index, why);
        }
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
        if let Err(why) = crate::check::check(command) {
            return self.refuse_invalid(index, why);
        }
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
            Command::CollectAllocs { alloc_ids } => self.collect_allocs(alloc_ids),
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
            Command::SetCa { ca } => self.set_ca(ca),
            Command::RenewCa { ca } => self.renew_ca(ca),
            Command::CreateToken { token } => self.create_token(index, token),
            Command::RevokeToken { id } => self.revoke_token(id),
            Command::RemoveNode { name } => self.remove_node(index, name),
            Command::CreateUser { user } => self.create_user(index, user),
            Command::RevokeUser { name } => self.revoke_user(name),
            Command::PutNamespace { namespace } => self.put_namespace(namespace),
            Command::CreateUserToken { token } => self.create_user_token(index, token),
            Command::RevokeUserToken { id } => self.revoke_user_token(id),
            Command::DeleteNamespace { name } => self.delete_namespace(name),
            Command::PutQueue { queue } => self.put_queue(queue),
            Command::DeleteQueue { name } => self.delete_queue(name),
            Command::PutSync { source } => self.put_sync(source),
            Command::DeleteSync { name } => self.delete_sync(name),
            Command::ReportSync { name, status } => self.report_sync(name, status),
            Command::SetSecretsKey { key_id } => self.set_secrets_key(key_id),
            Command::PutRegistryLogin { namespace, login } => {
                self.put_registry_login(namespace, login)
            }
            Command::DeleteRegistryLogin {
                namespace,
                registry,
            } => self.delete_registry_login(namespace, registry),
            Command::Join {
                token_id,
                secret_hash,
                joiner,
                at_ms,
            } => {
                self.prune_tokens(*at_ms);
                self.join(index, token_id, secret_hash, joiner, *at_ms)
            }
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
            self.remember_removed_server(*id);
        }
    }

    /// A command that breaks a rule of its shape changes nothing but the
    /// index, on every server alike.
    fn refuse_invalid(&mut self, index: u64, why: String) -> Outcome {
        debug_assert!(index > self.index, "entries apply in order");
        self.index = index;
        tracing::warn!(index, %why, "an entry that breaks a rule was refused");
        Outcome::Refused(Refusal::Invalid { why })
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
        match table {
            Table::Alloc => {
                if let Some(a) = self.allocs.get(key) {
                    self.marks.alloc(self.index, a);
                }
            }
            Table::Job | Table::Deployment => {
                let job = table::split_slot_key(key).map_or(key, |(job, _)| job);
                self.marks.job(self.index, job);
            }
            other => self.marks.table(self.index, other),
        }
        let recent = self.changes.iter().rev().take(TOUCH_LOOKBACK);
        if recent.into_iter().any(|(t, k)| *t == table && k == key) {
            return;
        }
        self.changes.push((table, key.to_string()));
    }

    /// Marks a job's latest rollout changed: the small index record
    /// (`JOB`: the order of rollouts) and that rollout (`JOB#SLOT`).
    pub(crate) fn touch_deployment(&mut self, job: &str) {
        self.touch(Table::Deployment, job);
        if let Some(slot) = self
            .deployments
            .get(job)
            .and_then(|l| l.last())
            .map(|d| d.slot)
        {
            self.touch(Table::Deployment, &table::slot_key(job, slot));
        }
    }

    /// Marks a job's history changed: its small index record (`JOB`: the
    /// order of versions and the next number) and the version records in
    /// the slots given (`JOB#SLOT`), so a write stores one version, not all.
    pub(crate) fn touch_history(&mut self, job: &str, slots: impl IntoIterator<Item = u32>) {
        self.touch(Table::History, job);
        for slot in slots {
            self.touch(Table::History, &table::slot_key(job, slot));
        }
    }

    /// Queues an evaluation of `job`, unless one is already pending (it
    /// will see this change too). Older finished evaluations of the job are
    /// dropped so they do not pile up.
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

    /// The job's current (latest) rollout.
    pub fn deployment(&self, job: &str) -> Option<&Deployment> {
        self.deployments.get(job).and_then(|v| v.last())
    }

    fn deployment_mut(&mut self, job: &str) -> Option<&mut Deployment> {
        self.deployments.get_mut(job).and_then(|v| v.last_mut())
    }

    /// The allocations of one job, in replica order.
    pub fn allocs_of_job(&self, job: &str) -> Vec<&Allocation> {
        let mut v: Vec<&Allocation> = self.allocs_of(job).collect();
        v.sort_by_key(|a| (a.replica, a.create_index));
        v
    }

    /// The index of the last entry that added, changed or removed an
    /// allocation on `node` (or, when the state was loaded since, the
    /// index it was loaded at).
    pub fn allocs_changed_on(&self, node: &str) -> u64 {
        self.marks.allocs_on(node)
    }

    /// The index of the last entry that changed job `job`, one of its
    /// rollouts or one of its allocations (or, when the state was loaded
    /// since, the index it was loaded at).
    pub fn job_changed_at(&self, job: &str) -> u64 {
        self.marks.job_at(job)
    }

    /// The nodes where an allocation was added, changed or removed after
    /// `index`, in no order; `None` when the state cannot tell (it was
    /// loaded after `index`): everything may have changed.
    pub fn nodes_with_alloc_changes_after(&self, index: u64) -> Option<Vec<&str>> {
        self.marks.nodes_after(index)
    }

    /// The index of the last entry that changed the access records
    /// (namespaces, policies, registry logins, tokens, users).
    pub fn access_changed_at(&self) -> u64 {
        self.marks.access()
    }

    /// The index of the last entry that changed a node or a server.
    pub fn nodes_changed_at(&self) -> u64 {
        self.marks.nodes()
    }

    /// The index of the last entry that may have changed the cluster's
    /// endpoints or network members: an allocation with an address or in
    /// the host's network, a node, a server or the access records.
    pub fn network_changed_at(&self) -> u64 {
        self.marks.network()
    }

    /// The allocations of one job, in id order.
    pub fn allocs_of<'s>(&'s self, job: &str) -> impl Iterator<Item = &'s Allocation> + 's {
        self.allocs_by_job
            .get(job)
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id))
    }

    /// The ids of the allocations placed on one node.
    pub(crate) fn alloc_ids_on(&self, node: &str) -> Vec<String> {
        self.allocs_by_node
            .get(node)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The ids of the allocations placed on one node, in id order, without
    /// looking the allocations up.
    pub fn alloc_ids_on_node<'s>(&'s self, node: &str) -> impl Iterator<Item = &'s str> + 's {
        self.allocs_by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The allocations placed on one node.
    pub fn allocs_on_node(&self, node: &str) -> Vec<&Allocation> {
        self.allocs_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id))
            .collect()
    }

    /// Adds an allocation, indexed by its node.
    pub(crate) fn insert_alloc(&mut self, a: Allocation) {
        self.marks.alloc(self.index, &a);
        file_under(&mut self.allocs_by_node, &a.node, &a.id);
        file_under(&mut self.allocs_by_job, &a.job, &a.id);
        self.allocs.insert(a.id.clone(), a);
    }

    /// Removes an allocation and its index entry.
    pub(crate) fn remove_alloc(&mut self, id: &str) -> Option<Allocation> {
        let a = self.allocs.remove(id)?;
        self.marks.alloc(self.index, &a);
        unfile(&mut self.allocs_by_node, &a.node, id);
        unfile(&mut self.allocs_by_job, &a.job, id);
        self.forget_job_if_gone(&a.job);
        Some(a)
    }

    /// Drops a job's change mark once neither it nor any of its
    /// allocations is left, so the marks do not grow with every job ever
    /// run (a job that comes back reads the marks' floor: new to all).
    pub(crate) fn forget_job_if_gone(&mut self, job: &str) {
        if !self.jobs.contains_key(job) && !self.allocs_by_job.contains_key(job) {
            self.marks.forget_job(job);
        }
    }

    /// The most recent evaluation of a job.
    pub fn latest_eval(&self, job: &str) -> Option<&Evaluation> {
        self.evals_by_job
            .get(job)?
            .iter()
            .filter_map(|id| self.evals.get(id))
            .max_by_key(|e| e.create_index)
    }

    /// Checks what commands check but records loaded from disk or a
    /// snapshot did not go through: every allocation is filed under its
    /// own id and that id is one an agent may turn into a directory name.
    /// Returns the offending key and the rule.
    pub fn check_loaded(&self) -> Result<(), (String, String)> {
        for (key, a) in &self.allocs {
            if key != &a.id {
                return Err((
                    key.clone(),
                    format!("allocation filed under another id {:?}", a.id),
                ));
            }
            if !crate::check::valid_alloc_id(key) {
                return Err((key.clone(), "not an allocation id".to_string()));
            }
        }
        Ok(())
    }

    /// Rebuilds the derived lookup tables after the records were loaded
    /// from disk or a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.marks = marks::Marks::starting_at(self.index);
        for h in self.histories.values_mut() {
            h.fill_fingerprints();
        }
        self.allocs_by_node.clear();
        self.allocs_by_job.clear();
        for a in self.allocs.values_any_order() {
            file_under(&mut self.allocs_by_node, &a.node, &a.id);
            file_under(&mut self.allocs_by_job, &a.job, &a.id);
        }
        self.evals_by_job.clear();
        for e in self.evals.values() {
            file_under(&mut self.evals_by_job, &e.job, &e.id);
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

/// Files `id` under `key` in one of the state's derived lookup tables.
fn file_under(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
    match index.get_mut(key) {
        Some(ids) => {
            ids.insert(id.to_string());
        }
        None => {
            index.insert(key.to_string(), BTreeSet::from([id.to_string()]));
        }
    }
}

/// Takes `id` out from under `key`, dropping the key once it files none.
fn unfile(index: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;
