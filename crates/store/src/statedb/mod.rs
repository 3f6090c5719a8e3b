//! The state machine's records as saved: how the state is cut into
//! records and put back together, over a [`RecordStore`] that keeps them
//! (sled on disk, `sled_records.rs`; or memory, `records.rs`).
//!
//! Records are named by table and key: `job/NAME`, `node/NAME`,
//! `alloc/ID`, `eval/ID`, `server/ID`, `deployment/JOB` (+ `/SLOT` per
//! rollout), `history/JOB` (+ `/SLOT` per version). Values are JSON.
//!
//! [`StateDb::commit`] writes the records changed since the last save
//! together with the applied index in one atomic batch, so after a crash
//! the state and its index always agree; entries after that index are
//! applied again from the (durable) Raft log, which is not trimmed past it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_model::{Deployment, JobHistory, JobVersion};

use crate::error::StoreError;
use crate::state::{slot_key, split_slot_key, State, Table};

mod records;
mod sled_records;

pub use records::{MemRecords, RecordStore, SavePoint, Unsaved, Visit};
pub use sled_records::{open_db, SledRecords};

/// The state's records in a [`RecordStore`]; cheap to clone (the saver
/// thread holds one).
#[derive(Clone)]
pub struct StateDb {
    records: Arc<dyn RecordStore>,
}

impl StateDb {
    /// The state's records in a sled database (its `state` tree).
    pub fn open(db: sled::Db) -> Result<StateDb, StoreError> {
        Ok(StateDb::new(SledRecords::open(db)?))
    }

    /// The state's records in `records`.
    pub fn new(records: impl RecordStore + 'static) -> StateDb {
        StateDb {
            records: Arc::new(records),
        }
    }

    /// Reads the whole state back.
    pub fn load(&self) -> Result<State, StoreError> {
        let at = self.records.save_point()?;
        let mut state = State {
            index: at.applied,
            last_unblock_index: at.unblock,
            ..State::default()
        };
        let mut rollouts: BTreeMap<String, Vec<Deployment>> = BTreeMap::new();
        let mut rollout_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut indexes: BTreeMap<String, HistoryIndex> = BTreeMap::new();
        // Records saved before namespaces, under `JOB/SLOT`: read, then
        // everything is written again under today's keys.
        let mut legacy = false;
        let mut versions: BTreeMap<String, Vec<JobVersion>> = BTreeMap::new();
        for table in Table::ALL {
            self.records.scan(table, &mut |key, v| {
                // The full key names a corrupt record.
                let k = || format!("{}{key}", table.prefix());
                let key = key.to_string();
                match table {
                    Table::Job => {
                        state.jobs.insert(key, decode(&k(), v)?);
                    }
                    Table::Node => {
                        state.nodes.insert(key, decode(&k(), v)?);
                    }
                    Table::Alloc => {
                        state.allocs.insert(key, decode(&k(), v)?);
                    }
                    Table::Eval => {
                        state.evals.insert(key, decode(&k(), v)?);
                    }
                    Table::Server => {
                        let id = key
                            .parse()
                            .map_err(|_| StoreError::corrupt("state", k(), "not a server id"))?;
                        state.servers.insert(id, decode(&k(), v)?);
                    }
                    Table::Deployment => match saved_slot(&key) {
                        Some(job) => {
                            let d: Deployment = decode(&k(), v)?;
                            rollouts.entry(job.to_string()).or_default().push(d);
                        }
                        None => match decode::<DeploymentIndex>(&k(), v) {
                            Ok(order) => {
                                rollout_order.insert(key, order.order);
                            }
                            Err(e) => {
                                let job = legacy_slot(&key).ok_or(e)?;
                                let d: Deployment = decode(&k(), v)?;
                                rollouts.entry(job.to_string()).or_default().push(d);
                                legacy = true;
                            }
                        },
                    },
                    Table::History => match saved_slot(&key) {
                        Some(job) => {
                            let v: JobVersion = decode(&k(), v)?;
                            versions.entry(job.to_string()).or_default().push(v);
                        }
                        None => match decode::<HistoryIndex>(&k(), v) {
                            Ok(index) => {
                                indexes.insert(key, index);
                            }
                            Err(e) => {
                                let job = legacy_slot(&key).ok_or(e)?;
                                let v: JobVersion = decode(&k(), v)?;
                                versions.entry(job.to_string()).or_default().push(v);
                                legacy = true;
                            }
                        },
                    },
                    Table::Access => {
                        state.access = decode(&k(), v)?;
                    }
                }
                Ok(())
            })?;
        }
        for (job, order) in rollout_order {
            let mut kept = rollouts.remove(&job).unwrap_or_default();
            let list: Vec<Deployment> = order
                .iter()
                .filter_map(|id| {
                    let i = kept.iter().position(|d| d.id == *id)?;
                    Some(kept.swap_remove(i))
                })
                .collect();
            state.deployments.insert(job, list);
        }
        for (job, index) in indexes {
            let HistoryIndex {
                order,
                next_version,
            } = index;
            let mut kept = versions.remove(&job).unwrap_or_default();
            let versions = order
                .iter()
                .filter_map(|n| {
                    let i = kept.iter().position(|v| v.version == *n)?;
                    Some(kept.swap_remove(i))
                })
                .collect();
            state.histories.insert(
                job,
                JobHistory {
                    versions,
                    next_version,
                },
            );
        }
        state
            .check_loaded()
            .map_err(|(key, why)| StoreError::corrupt("allocation record", key, why))?;
        state.rebuild_indexes();
        if legacy {
            tracing::info!(
                "state records saved by an earlier version rewritten under today's keys"
            );
            self.replace_all(&state)?;
        }
        Ok(state)
    }

    /// Writes the records changed since the last save (`state.changes`,
    /// which it takes) and the applied index, atomically. Not fsynced: the
    /// Raft log holds the entries durably.
    pub fn save(&self, state: &mut State) -> Result<(), StoreError> {
        let mut changed = Unsaved::new();
        for (table, key) in std::mem::take(&mut state.changes) {
            let value = record_json(state, table, &key);
            changed.insert((table, key), value);
        }
        self.commit(changed, state.index, state.last_unblock_index)
    }

    /// Writes records already encoded (by [`record_json`]; `None` removes
    /// one) and the applied index in one atomic batch. Needs no access to
    /// the state: the saver thread does this while Raft goes on.
    pub fn commit(&self, records: Unsaved, index: u64, unblock: u64) -> Result<(), StoreError> {
        let at = SavePoint {
            applied: index,
            unblock,
        };
        self.records.commit(records, at)
    }

    /// Replaces everything with `state` (a snapshot from the leader), in one
    /// atomic batch, durably.
    pub fn replace_all(&self, state: &State) -> Result<(), StoreError> {
        let mut records = Unsaved::new();
        let mut put = |table: Table, key: String, value: String| {
            records.insert((table, key), Some(Arc::from(value)));
        };
        for (name, job) in &state.jobs {
            put(Table::Job, name.clone(), encode(job));
        }
        for (name, node) in &state.nodes {
            put(Table::Node, name.clone(), encode(node));
        }
        for (id, a) in &state.allocs {
            put(Table::Alloc, id.clone(), encode(a));
        }
        for (id, e) in &state.evals {
            put(Table::Eval, id.clone(), encode(e));
        }
        for (id, s) in &state.servers {
            put(Table::Server, id.to_string(), encode(s));
        }
        for (job, list) in &state.deployments {
            // The job's rollouts, oldest first.
            put(
                Table::Deployment,
                job.clone(),
                encode(&DeploymentIndex::of(list)),
            );
            for d in list {
                put(Table::Deployment, slot_key(job, d.slot), encode(d));
            }
        }
        for (job, h) in &state.histories {
            put(Table::History, job.clone(), encode(&HistoryIndex::of(h)));
            for v in &h.versions {
                put(Table::History, slot_key(job, v.slot), encode(v));
            }
        }
        if state.access != crate::state::Access::default() {
            put(
                Table::Access,
                crate::state::access_key().to_string(),
                encode(&state.access),
            );
        }
        let at = SavePoint {
            applied: state.index,
            unblock: state.last_unblock_index,
        };
        self.records.replace_all(records, at)
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.records.flush()
    }
}

/// The stored form of one record as shared text (records are JSON), `None`
/// when it no longer exists: for watchers and [`StateDb::commit`].
pub fn record_json(state: &State, table: Table, key: &str) -> Option<Arc<str>> {
    // Encoded into one reused buffer (no growing a new one per record),
    // then copied once into the shared text.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        write_record(state, table, key, buf)?;
        Some(Arc::from(
            std::str::from_utf8(buf).expect("records are JSON text"),
        ))
    })
}

/// Appends the stored form of one record to `out`; `None` (and nothing
/// written) when it no longer exists.
fn write_record(state: &State, table: Table, key: &str, out: &mut Vec<u8>) -> Option<()> {
    match table {
        Table::Access => {
            write(out, &state.access);
            Some(())
        }
        Table::Job => state.jobs.get(key).map(|v| write(out, v)),
        Table::Node => state.nodes.get(key).map(|v| write(out, v)),
        Table::Alloc => state.allocs.get(key).map(|v| write(out, v)),
        Table::Eval => state.evals.get(key).map(|v| write(out, v)),
        Table::Server => key
            .parse::<u64>()
            .ok()
            .and_then(|id| state.servers.get(&id))
            .map(|v| write(out, v)),
        Table::Deployment => match split_slot_key(key) {
            Some((job, slot)) => state
                .deployments
                .get(job)?
                .iter()
                .find(|d| d.slot == slot)
                .map(|v| write(out, v)),
            None => state
                .deployments
                .get(key)
                .map(|l| write(out, &DeploymentIndex::of(l))),
        },
        Table::History => match split_slot_key(key) {
            Some((job, slot)) => state
                .histories
                .get(job)?
                .versions
                .iter()
                .find(|v| v.slot == slot)
                .map(|v| write(out, v)),
            None => state
                .histories
                .get(key)
                .map(|h| write(out, &HistoryIndex::of(h))),
        },
    }
}

fn write<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("state records serialize");
}

/// A job's rollouts are stored as this small record (`deployment/JOB`,
/// their ids oldest first) and one record per rollout
/// (`deployment/JOB/SLOT`), so a change writes that rollout alone, and a
/// new rollout overwrites the record of the one it pushed out.
#[derive(Debug, Serialize, Deserialize)]
struct DeploymentIndex {
    order: Vec<String>,
}

impl DeploymentIndex {
    fn of(list: &[Deployment]) -> DeploymentIndex {
        DeploymentIndex {
            order: list.iter().map(|d| d.id.clone()).collect(),
        }
    }
}

/// A job's history is stored as this small record (`history/JOB`) and one
/// record per version (`history/JOB/SLOT`), so adding a version writes one
/// spec, not every kept one, over the record of the version it pushed out.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryIndex {
    /// Version numbers, oldest first (the order `JobHistory` keeps).
    order: Vec<u64>,
    next_version: u64,
}

impl HistoryIndex {
    fn of(h: &JobHistory) -> HistoryIndex {
        HistoryIndex {
            order: h.versions.iter().map(|v| v.version).collect(),
            next_version: h.next_version,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("state records serialize")
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::corrupt("state", key, e))
}

/// The job of a saved rollout or kept-version record (`JOB#SLOT`); `None`
/// for a job's index record (`JOB`).
fn saved_slot(key: &str) -> Option<&str> {
    split_slot_key(key).map(|(job, _)| job)
}

/// The job of a record saved before namespaces as `JOB/SLOT` (job names
/// had no slash then); only asked of a record that is not an index.
fn legacy_slot(key: &str) -> Option<&str> {
    let (job, slot) = key.split_once('/')?;
    (!slot.contains('/') && slot.parse::<u32>().is_ok()).then_some(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    /// Two jobs, each applied in three versions: rollouts and kept
    /// versions in several slots.
    fn state_with_rollouts() -> State {
        let mut state = State::default();
        let mut index = 0;
        for job in ["web", "api"] {
            for image in ["a", "b", "c"] {
                index += 1;
                let spec = skiff_model::JobSpec::from_yaml(&format!(
                    "name: {job}\nreplicas: 1\ntask: {{image: 'oci:/i/{image}'}}"
                ))
                .unwrap();
                state.apply(index, &Command::UpsertJob { spec });
            }
        }
        state.changes.clear();
        assert!(!state.deployments.is_empty() && !state.histories.is_empty());
        state
    }

    #[test]
    fn records_saved_before_namespaces_are_read_and_rewritten() {
        let state = state_with_rollouts();
        let db = StateDb::new(MemRecords::new());
        db.replace_all(&state).unwrap();
        // The same records under the keys an earlier version used.
        let mut old = Unsaved::new();
        for table in [Table::Deployment, Table::History] {
            db.records
                .scan(table, &mut |key, v| {
                    if let Some((job, slot)) = split_slot_key(key) {
                        old.insert((table, key.to_string()), None);
                        old.insert(
                            (table, format!("{job}/{slot}")),
                            Some(Arc::from(std::str::from_utf8(v).unwrap())),
                        );
                    }
                    Ok(())
                })
                .unwrap();
        }
        assert!(!old.is_empty());
        db.commit(old, state.index, state.last_unblock_index)
            .unwrap();
        let loaded = db.load().unwrap();
        assert_eq!(loaded, state);
        // Rewritten: a second load reads today's keys only, no slot twice.
        let mut slash = 0;
        db.records
            .scan(Table::Deployment, &mut |key, _| {
                slash += usize::from(legacy_slot(key).is_some());
                Ok(())
            })
            .unwrap();
        assert_eq!(slash, 0);
        assert_eq!(db.load().unwrap(), state);
    }
}
