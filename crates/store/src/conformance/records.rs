//! The record store suite: every [`RecordStore`] keeps records and their
//! save point the same way, and the state saved through [`StateDb`] loads
//! back equal on each. Crash atomicity of a batch is each engine's own
//! promise (sled's `apply_batch`); what is checked here is that records
//! and save point are written and read back together.

use std::sync::Arc;

use skiff_model::{JobSpec, Resources};

use crate::command::{Command, NodeRegistration};
use crate::error::StoreError;
use crate::state::{State, Table, DEPLOYMENTS_KEPT};
use crate::statedb::{open_db, MemRecords, RecordStore, SavePoint, SledRecords, StateDb, Unsaved};

/// A record store under test, and how to close and open it again.
trait Engine {
    type Store: RecordStore + Clone + 'static;
    fn new() -> Self;
    fn store(&self) -> &Self::Store;
    /// Closes the store and opens it again (every handle on it must be
    /// gone): what was flushed is back.
    fn reopen(&mut self);
}

struct OnSled {
    dir: tempfile::TempDir,
    store: Option<SledRecords>,
}

fn open_sled(dir: &std::path::Path) -> SledRecords {
    SledRecords::open(open_db(sled::Config::new().path(dir)).unwrap()).unwrap()
}

impl Engine for OnSled {
    type Store = SledRecords;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Some(open_sled(dir.path()));
        OnSled { dir, store }
    }

    fn store(&self) -> &SledRecords {
        self.store.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.store.take());
        self.store = Some(open_sled(self.dir.path()));
    }
}

struct InMemory {
    store: MemRecords,
}

impl Engine for InMemory {
    type Store = MemRecords;

    fn new() -> Self {
        InMemory {
            store: MemRecords::new(),
        }
    }

    fn store(&self) -> &MemRecords {
        &self.store
    }

    /// A clone shares the store: it is the same records "reopened".
    fn reopen(&mut self) {
        let again = self.store.clone();
        self.store = again;
    }
}

fn records(rows: &[(Table, &str, Option<&str>)]) -> Unsaved {
    rows.iter()
        .map(|(t, k, v)| ((*t, k.to_string()), v.map(Arc::from)))
        .collect()
}

fn at(applied: u64, unblock: u64) -> SavePoint {
    SavePoint { applied, unblock }
}

/// The records of `table`, in the order the store gives them.
fn scan(store: &impl RecordStore, table: Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    store
        .scan(table, &mut |k, v| {
            out.push((k.to_string(), String::from_utf8(v.to_vec()).unwrap()));
            Ok(())
        })
        .unwrap();
    out
}

fn rows(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn a_new_store_is_empty_at_save_point_zero<E: Engine>() {
    let e = E::new();
    assert_eq!(e.store().save_point().unwrap(), SavePoint::default());
    for table in Table::ALL {
        assert!(scan(e.store(), table).is_empty(), "{table:?}");
    }
}

fn a_commit_writes_its_records_and_save_point_together<E: Engine>() {
    let e = E::new();
    e.store()
        .commit(
            records(&[
                (Table::Job, "web", Some(r#"{"v":1}"#)),
                (Table::Node, "n1", Some(r#"{"n":1}"#)),
            ]),
            at(5, 3),
        )
        .unwrap();
    assert_eq!(e.store().save_point().unwrap(), at(5, 3));
    assert_eq!(scan(e.store(), Table::Job), rows(&[("web", r#"{"v":1}"#)]));
    assert_eq!(scan(e.store(), Table::Node), rows(&[("n1", r#"{"n":1}"#)]));
    assert!(scan(e.store(), Table::Alloc).is_empty());
}

fn a_later_commit_overwrites_and_removes_records<E: Engine>() {
    let e = E::new();
    let s = e.store();
    s.commit(
        records(&[
            (Table::Job, "web", Some("1")),
            (Table::Job, "api", Some("1")),
        ]),
        at(1, 0),
    )
    .unwrap();
    s.commit(
        records(&[
            (Table::Job, "web", Some("2")),
            (Table::Job, "api", None),
            // Removing what is not there is no error.
            (Table::Job, "gone", None),
        ]),
        at(2, 0),
    )
    .unwrap();
    assert_eq!(scan(s, Table::Job), rows(&[("web", "2")]));
}

fn the_save_point_follows_each_commit_even_one_without_records<E: Engine>() {
    let e = E::new();
    let s = e.store();
    s.commit(records(&[(Table::Eval, "e1", Some("{}"))]), at(5, 2))
        .unwrap();
    s.commit(Unsaved::new(), at(9, 2)).unwrap();
    assert_eq!(s.save_point().unwrap(), at(9, 2));
    s.commit(Unsaved::new(), at(12, 11)).unwrap();
    assert_eq!(s.save_point().unwrap(), at(12, 11));
    assert_eq!(scan(s, Table::Eval), rows(&[("e1", "{}")]));
}

fn records_come_back_in_key_order_and_tables_keep_apart<E: Engine>() {
    let e = E::new();
    e.store()
        .commit(
            records(&[
                (Table::Deployment, "web#2", Some("c")),
                (Table::Deployment, "web#10", Some("b")),
                (Table::Deployment, "web", Some("a")),
                (Table::Deployment, "api", Some("z")),
                (Table::Job, "web", Some("j")),
                (Table::History, "web", Some("h")),
            ]),
            at(1, 0),
        )
        .unwrap();
    assert_eq!(
        scan(e.store(), Table::Deployment),
        rows(&[("api", "z"), ("web", "a"), ("web#10", "b"), ("web#2", "c")])
    );
    assert_eq!(scan(e.store(), Table::Job), rows(&[("web", "j")]));
    assert_eq!(scan(e.store(), Table::History), rows(&[("web", "h")]));
}

fn a_visit_error_stops_the_scan_and_comes_back<E: Engine>() {
    let e = E::new();
    e.store()
        .commit(
            records(&[
                (Table::Alloc, "a1", Some("1")),
                (Table::Alloc, "a2", Some("2")),
            ]),
            at(1, 0),
        )
        .unwrap();
    let mut seen = 0;
    let result = e.store().scan(Table::Alloc, &mut |k, _| {
        seen += 1;
        Err(StoreError::corrupt("state", k, "refused by the visitor"))
    });
    assert!(
        matches!(result, Err(StoreError::Corrupt { .. })),
        "{result:?}"
    );
    assert_eq!(seen, 1);
}

fn flushed_commits_survive_a_reopen<E: Engine>() {
    let mut e = E::new();
    e.store()
        .commit(
            records(&[
                (Table::Server, "1", Some("s1")),
                (Table::Job, "web", Some("j")),
            ]),
            at(7, 4),
        )
        .unwrap();
    e.store()
        .commit(records(&[(Table::Job, "web", None)]), at(8, 4))
        .unwrap();
    e.store().flush().unwrap();
    e.reopen();
    assert_eq!(e.store().save_point().unwrap(), at(8, 4));
    assert_eq!(scan(e.store(), Table::Server), rows(&[("1", "s1")]));
    assert!(scan(e.store(), Table::Job).is_empty());
}

fn replace_all_keeps_only_what_it_is_given_and_is_durable_at_once<E: Engine>() {
    let mut e = E::new();
    e.store()
        .commit(
            records(&[
                (Table::Job, "old", Some("1")),
                (Table::Node, "n1", Some("1")),
            ]),
            at(3, 1),
        )
        .unwrap();
    e.store()
        .replace_all(
            records(&[(Table::Job, "new", Some("2")), (Table::Node, "n1", None)]),
            at(20, 7),
        )
        .unwrap();
    // No flush: a replacement is durable when it returns.
    e.reopen();
    assert_eq!(e.store().save_point().unwrap(), at(20, 7));
    assert_eq!(scan(e.store(), Table::Job), rows(&[("new", "2")]));
    assert!(scan(e.store(), Table::Node).is_empty());
}

fn node(name: &str) -> Command {
    Command::RegisterNode {
        registration: NodeRegistration {
            metrics_address: String::new(),
            image_roots: Vec::new(),
            dynamic_ports: Default::default(),
            subnet: String::new(),
            name: name.into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            capacity: Resources::new(2000, 1 << 30),
            reserved: Resources::ZERO,
            address: "127.0.0.1:7702".into(),
            agent_version: "t".into(),
            gpus: vec![],
            gpu_links: vec![],
            gpu_driver: Default::default(),
        },
    }
}

fn count(e: &impl Engine, table: Table) -> usize {
    scan(e.store(), table).len()
}

fn a_saved_state_loads_back_equal<E: Engine>() {
    let mut e = E::new();
    let mut state = State::default();
    state.apply(1, &node("n1"));
    let spec = JobSpec::from_yaml("name: web\ntask: {image: 'oci:/i'}").unwrap();
    state.apply(2, &Command::UpsertJob { spec });
    state.apply(3, &Command::DeleteJob { name: "web".into() });
    {
        let db = StateDb::new(e.store().clone());
        db.save(&mut state).unwrap();
        db.flush().unwrap();
        assert!(state.changes.is_empty());
    }
    e.reopen();
    let loaded = StateDb::new(e.store().clone()).load().unwrap();
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

fn a_history_is_saved_one_version_at_a_time_and_loads_back_in_order<E: Engine>() {
    let e = E::new();
    let db = StateDb::new(e.store().clone());
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
        count(&e, Table::History),
        3 + 1,
        "a new version takes over the record of the one it pushed out"
    );
    // Deleting the job removes every record of its history.
    state.apply(6, &Command::DeleteJob { name: "web".into() });
    db.save(&mut state).unwrap();
    let loaded = db.load().unwrap();
    assert!(loaded.histories.is_empty());
    assert_eq!(count(&e, Table::History), 0);
    assert_eq!(count(&e, Table::Deployment), 0);
}

fn rollouts_are_saved_one_at_a_time_and_the_oldest_are_dropped<E: Engine>() {
    let e = E::new();
    let db = StateDb::new(e.store().clone());
    let mut state = State::default();
    for i in 0..(DEPLOYMENTS_KEPT as u64 + 3) {
        let spec = JobSpec::from_yaml(&format!(
            "name: web\nreplicas: 0\ntask: {{image: 'oci:/v{i}'}}"
        ))
        .unwrap();
        state.apply(i + 1, &Command::UpsertJob { spec });
        db.save(&mut state).unwrap();
    }
    assert_eq!(state.deployments["web"].len(), DEPLOYMENTS_KEPT);
    let loaded = db.load().unwrap();
    assert_eq!(loaded.deployments, state.deployments);
    assert_eq!(
        count(&e, Table::Deployment),
        DEPLOYMENTS_KEPT + 1,
        "one record per kept rollout, plus the index"
    );
}

fn a_replaced_state_loads_back_as_the_snapshot_alone<E: Engine>() {
    let mut e = E::new();
    let mut before = State::default();
    before.apply(1, &node("old"));
    let mut snapshot = State::default();
    snapshot.apply(1, &node("n1"));
    for (i, image) in ["a", "b"].into_iter().enumerate() {
        let spec = JobSpec::from_yaml(&format!(
            "name: web\nreplicas: 0\ntask: {{image: 'oci:/{image}'}}"
        ))
        .unwrap();
        snapshot.apply(i as u64 + 2, &Command::UpsertJob { spec });
    }
    snapshot.changes.clear();
    {
        let db = StateDb::new(e.store().clone());
        db.save(&mut before).unwrap();
        db.replace_all(&snapshot).unwrap();
    }
    e.reopen();
    let loaded = StateDb::new(e.store().clone()).load().unwrap();
    assert_eq!(loaded, snapshot);
    assert!(!loaded.nodes.contains_key("old"));
}

/// Runs each body against each engine.
macro_rules! suite {
    ($($body:ident),* $(,)?) => {
        mod on_sled {
            $(#[test] fn $body() { super::$body::<super::OnSled>() })*
        }
        mod in_memory {
            $(#[test] fn $body() { super::$body::<super::InMemory>() })*
        }
    };
}

suite!(
    a_new_store_is_empty_at_save_point_zero,
    a_commit_writes_its_records_and_save_point_together,
    a_later_commit_overwrites_and_removes_records,
    the_save_point_follows_each_commit_even_one_without_records,
    records_come_back_in_key_order_and_tables_keep_apart,
    a_visit_error_stops_the_scan_and_comes_back,
    flushed_commits_survive_a_reopen,
    replace_all_keeps_only_what_it_is_given_and_is_durable_at_once,
    a_saved_state_loads_back_equal,
    a_history_is_saved_one_version_at_a_time_and_loads_back_in_order,
    rollouts_are_saved_one_at_a_time_and_the_oldest_are_dropped,
    a_replaced_state_loads_back_as_the_snapshot_alone,
);
