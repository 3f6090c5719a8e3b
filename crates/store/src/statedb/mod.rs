//! The state machine's records in sled: one tree, keys `job/NAME`,
//! `node/NAME`, `alloc/ID`, `eval/ID`, `server/ID`, `deployment/JOB`
//! (+ `/SLOT` per rollout), `history/JOB` (+ `/SLOT` per version), and
//! `meta/applied`, `meta/unblock`. Values are JSON.
//!
//! [`StateDb::commit`] writes the records changed since the last save
//! together with the applied index in one atomic batch, so after a crash
//! the state and its index always agree; entries after that index are
//! applied again from the (durable) Raft log, which is not trimmed past it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skiff_model::{Deployment, JobHistory, JobVersion};

use crate::error::StoreError;
use crate::state::{State, Table};

const KEY_APPLIED: &[u8] = b"meta/applied";

/// Records changed since the last save, encoded (`None`: removed).
pub type Unsaved = HashMap<(Table, String), Option<Arc<str>>>;
const KEY_UNBLOCK: &[u8] = b"meta/unblock";

#[derive(Clone)]
pub struct StateDb {
    db: sled::Db,
    tree: sled::Tree,
}

impl StateDb {
    pub fn open(db: sled::Db) -> Result<StateDb, StoreError> {
        let tree = db.open_tree("state")?;
        Ok(StateDb { db, tree })
    }

    /// Reads the whole state back.
    pub fn load(&self) -> Result<State, StoreError> {
        let mut state = State {
            index: self.read_u64(KEY_APPLIED)?,
            last_unblock_index: self.read_u64(KEY_UNBLOCK)?,
            ..State::default()
        };
        let mut rollouts: BTreeMap<String, Vec<Deployment>> = BTreeMap::new();
        let mut rollout_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut indexes: BTreeMap<String, HistoryIndex> = BTreeMap::new();
        let mut versions: BTreeMap<String, Vec<JobVersion>> = BTreeMap::new();
        for table in Table::ALL {
            for kv in self.tree.scan_prefix(table.prefix()) {
                let (k, v) = kv?;
                let key = String::from_utf8_lossy(&k[table.prefix().len()..]).into_owned();
                match table {
                    Table::Job => {
                        state.jobs.insert(key, decode(&k, &v)?);
                    }
                    Table::Node => {
                        state.nodes.insert(key, decode(&k, &v)?);
                    }
                    Table::Alloc => {
                        state.allocs.insert(key, decode(&k, &v)?);
                    }
                    Table::Eval => {
                        state.evals.insert(key, decode(&k, &v)?);
                    }
                    Table::Server => {
                        let id = key
                            .parse()
                            .map_err(|_| StoreError::corrupt("state", &k, "not a server id"))?;
                        state.servers.insert(id, decode(&k, &v)?);
                    }
                    Table::Deployment => match key.split_once('/') {
                        Some((job, _)) => {
                            let d: Deployment = decode(&k, &v)?;
                            rollouts.entry(job.to_string()).or_default().push(d);
                        }
                        None => {
                            let order: DeploymentIndex = decode(&k, &v)?;
                            rollout_order.insert(key, order.order);
                        }
                    },
                    Table::History => match key.rsplit_once('/') {
                        Some((job, _)) => {
                            let v: JobVersion = decode(&k, &v)?;
                            versions.entry(job.to_string()).or_default().push(v);
                        }
                        None => {
                            indexes.insert(key, decode(&k, &v)?);
                        }
                    },
                }
            }
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
        state.rebuild_indexes();
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
        let mut batch = sled::Batch::default();
        let mut key = String::new();
        for ((table, name), value) in records {
            key.clear();
            key.push_str(table.prefix());
            key.push_str(&name);
            match value {
                Some(v) => batch.insert(key.as_bytes(), v.as_bytes()),
                None => batch.remove(key.as_bytes()),
            }
        }
        batch.insert(KEY_APPLIED, &index.to_be_bytes());
        batch.insert(KEY_UNBLOCK, &unblock.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces everything with `state` (a snapshot from the leader), in one
    /// atomic batch.
    pub fn replace_all(&self, state: &State) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            batch.remove(k);
        }
        for (name, job) in &state.jobs {
            batch.insert(
                format!("{}{name}", Table::Job.prefix()).as_bytes(),
                encode(job),
            );
        }
        for (name, node) in &state.nodes {
            batch.insert(
                format!("{}{name}", Table::Node.prefix()).as_bytes(),
                encode(node),
            );
        }
        for (id, a) in &state.allocs {
            batch.insert(
                format!("{}{id}", Table::Alloc.prefix()).as_bytes(),
                encode(a),
            );
        }
        for (id, e) in &state.evals {
            batch.insert(
                format!("{}{id}", Table::Eval.prefix()).as_bytes(),
                encode(e),
            );
        }
        for (id, s) in &state.servers {
            batch.insert(
                format!("{}{id}", Table::Server.prefix()).as_bytes(),
                encode(s),
            );
        }
        for (job, list) in &state.deployments {
            // The job's rollouts, oldest first.
            batch.insert(
                format!("{}{job}", Table::Deployment.prefix()).as_bytes(),
                encode(&DeploymentIndex::of(list)),
            );
            for d in list {
                batch.insert(
                    format!("{}{job}/{}", Table::Deployment.prefix(), d.slot).as_bytes(),
                    encode(d),
                );
            }
        }
        for (job, h) in &state.histories {
            batch.insert(
                format!("{}{job}", Table::History.prefix()).as_bytes(),
                encode(&HistoryIndex::of(h)),
            );
            for v in &h.versions {
                batch.insert(
                    format!("{}{job}/{}", Table::History.prefix(), v.slot).as_bytes(),
                    encode(v),
                );
            }
        }
        batch.insert(KEY_APPLIED, &state.index.to_be_bytes());
        batch.insert(KEY_UNBLOCK, &state.last_unblock_index.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.tree.get(key)? {
            None => Ok(0),
            Some(v) => {
                Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StoreError::corrupt("state", key, "not 8 bytes")
                })?))
            }
        }
    }
}

/// Opens a sled database, waiting a little when another handle in this
/// process is still closing it (sled releases its file lock from a
/// background thread after the last handle is dropped).
pub fn open_db(config: sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
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
        Table::Job => state.jobs.get(key).map(|v| write(out, v)),
        Table::Node => state.nodes.get(key).map(|v| write(out, v)),
        Table::Alloc => state.allocs.get(key).map(|v| write(out, v)),
        Table::Eval => state.evals.get(key).map(|v| write(out, v)),
        Table::Server => key
            .parse::<u64>()
            .ok()
            .and_then(|id| state.servers.get(&id))
            .map(|v| write(out, v)),
        Table::Deployment => match key.split_once('/') {
            Some((job, slot)) => {
                let slot: u32 = slot.parse().ok()?;
                state
                    .deployments
                    .get(job)?
                    .iter()
                    .find(|d| d.slot == slot)
                    .map(|v| write(out, v))
            }
            None => state
                .deployments
                .get(key)
                .map(|l| write(out, &DeploymentIndex::of(l))),
        },
        Table::History => match key.rsplit_once('/') {
            Some((job, slot)) => {
                let slot: u32 = slot.parse().ok()?;
                state
                    .histories
                    .get(job)?
                    .versions
                    .iter()
                    .find(|v| v.slot == slot)
                    .map(|v| write(out, v))
            }
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

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records serialize")
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::corrupt("state", key, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, NodeRegistration};
    use skiff_model::{JobSpec, Resources};

    #[test]
    fn saved_state_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::default();
        state.apply(
            1,
            &Command::RegisterNode {
                registration: NodeRegistration {
                    name: "n1".into(),
                    labels: [("zone".to_string(), "a".to_string())].into(),
                    capacity: Resources::new(2000, 1 << 30),
                    reserved: Resources::ZERO,
                    address: "127.0.0.1:7702".into(),
                    agent_version: "t".into(),
                    gpus: vec![],
                    gpu_links: vec![],
                    gpu_driver: Default::default(),
                },
            },
        );
        let spec = JobSpec::from_yaml("name: web\ntask: {image: 'oci:/i'}").unwrap();
        state.apply(2, &Command::UpsertJob { spec });
        state.apply(3, &Command::DeleteJob { name: "web".into() });
        {
            let db = StateDb::open(open_db(sled::Config::new().path(dir.path())).unwrap()).unwrap();
            db.save(&mut state).unwrap();
            db.flush().unwrap();
            assert!(state.changes.is_empty());
        }
        let db = StateDb::open(open_db(sled::Config::new().path(dir.path())).unwrap()).unwrap();
        let loaded = db.load().unwrap();
        assert_eq!(loaded, state);
        assert!(!loaded.jobs.contains_key("web"), "deletes are persisted");
        assert_eq!(
            loaded.latest_eval("web").map(|e| &e.id),
            state.latest_eval("web").map(|e| &e.id),
            "derived lookups are rebuilt on load"
        );
        assert!(loaded.latest_eval("web").is_some());
        assert_eq!(loaded.index, 3);
    }

    #[test]
    fn a_history_is_saved_one_version_at_a_time_and_loads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(open_db(sled::Config::new().path(dir.path())).unwrap()).unwrap();
        let mut state = State::default();
        let spec = |image: &str| {
            JobSpec::from_yaml(&format!(
                "name: web\nreplicas: 0\nversions_kept: 3\ntask: {{image: 'oci:/{image}'}}"
            ))
            .unwrap()
        };
        // Four versions, then back to the third: three are kept, in the
        // order they were last applied; each save writes what changed.
        for (i, image) in ["a", "b", "c", "d", "c"].into_iter().enumerate() {
            state.apply(i as u64 + 1, &Command::UpsertJob { spec: spec(image) });
            let written: Vec<(Table, String)> = state
                .changes
                .iter()
                .filter(|(t, _)| *t == Table::History)
                .cloned()
                .collect();
            assert!(
                written.len() <= 3,
                "the index, the new version and a trimmed one: {written:?}"
            );
            db.save(&mut state).unwrap();
        }
        let h = &state.histories["web"];
        let order: Vec<u64> = h.versions.iter().map(|v| v.version).collect();
        assert_eq!(order, [2, 4, 3]);
        let loaded = db.load().unwrap();
        assert_eq!(loaded.histories, state.histories);
        assert_eq!(loaded, state);
        assert_eq!(
            db.tree.scan_prefix(Table::History.prefix()).count(),
            3 + 1,
            "a new version takes over the record of the one it pushed out"
        );
        // Deleting the job removes every record of its history.
        state.apply(6, &Command::DeleteJob { name: "web".into() });
        db.save(&mut state).unwrap();
        let loaded = db.load().unwrap();
        assert!(loaded.histories.is_empty());
        assert_eq!(db.tree.scan_prefix(Table::History.prefix()).count(), 0);
        assert_eq!(db.tree.scan_prefix(Table::Deployment.prefix()).count(), 0);
    }

    #[test]
    fn rollouts_are_saved_one_at_a_time_and_the_oldest_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(open_db(sled::Config::new().path(dir.path())).unwrap()).unwrap();
        let mut state = State::default();
        for i in 0..(crate::state::DEPLOYMENTS_KEPT as u64 + 3) {
            let spec = JobSpec::from_yaml(&format!(
                "name: web\nreplicas: 0\ntask: {{image: 'oci:/v{i}'}}"
            ))
            .unwrap();
            state.apply(i + 1, &Command::UpsertJob { spec });
            db.save(&mut state).unwrap();
        }
        assert_eq!(
            state.deployments["web"].len(),
            crate::state::DEPLOYMENTS_KEPT
        );
        let loaded = db.load().unwrap();
        assert_eq!(loaded.deployments, state.deployments);
        assert_eq!(
            db.tree.scan_prefix(Table::Deployment.prefix()).count(),
            crate::state::DEPLOYMENTS_KEPT + 1,
            "one record per kept rollout, plus the index"
        );
    }
}
