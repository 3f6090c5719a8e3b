//! Where the state machine's records are saved: the [`RecordStore`] trait,
//! and [`MemRecords`], an implementation in memory. The sled one is in
//! `sled_records.rs`; both pass the same conformance suite
//! (`src/conformance/`).
//!
//! A record is named by its table and key (`job` + `web`) and holds JSON.
//! Beside the records a store keeps its [`SavePoint`]: the applied index
//! (and unblock index) the saved records are as of. Records and save
//! point move together, in one atomic batch, so after a crash they always
//! agree.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::error::StoreError;
use crate::state::Table;

/// Records changed since the last save, encoded (`None`: removed).
pub type Unsaved = HashMap<(Table, String), Option<Arc<str>>>;

/// The indexes the saved records are as of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavePoint {
    /// Raft index of the last entry the records reflect (0: none).
    pub applied: u64,
    /// The state's `last_unblock_index` as of then.
    pub unblock: u64,
}

/// What [`RecordStore::scan`] calls with each record's key and value.
pub type Visit<'a> = dyn FnMut(&str, &[u8]) -> Result<(), StoreError> + 'a;

/// Storage for the state machine's records.
pub trait RecordStore: Send + Sync {
    /// Writes `records` (`None` removes one; removing a record that does
    /// not exist is no error) and moves the save point to `at`, all or
    /// nothing. Durable only once [`RecordStore::flush`] returns.
    fn commit(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError>;

    /// Replaces every record with `records` (a `None` among them is
    /// skipped) and the save point with `at`, all or nothing; durable when
    /// it returns.
    fn replace_all(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError>;

    /// The save point of the records (zeros in a new store).
    fn save_point(&self) -> Result<SavePoint, StoreError>;

    /// Calls `visit` with the key and value of each record of `table`, in
    /// byte order of the keys; stops at its first error.
    fn scan(&self, table: Table, visit: &mut Visit<'_>) -> Result<(), StoreError>;

    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Records in memory, for tests and as the suite's reference: clones share
/// one store, so a clone taken before dropping the original "reopens" it.
/// Nothing survives the process, and a flush does nothing.
#[derive(Clone, Default)]
pub struct MemRecords {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    tables: BTreeMap<Table, BTreeMap<String, Arc<str>>>,
    at: SavePoint,
}

impl MemRecords {
    pub fn new() -> MemRecords {
        MemRecords::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemInner {
    fn write(&mut self, records: Unsaved) {
        for ((table, key), value) in records {
            let rows = self.tables.entry(table).or_default();
            match value {
                Some(v) => {
                    rows.insert(key, v);
                }
                None => {
                    rows.remove(&key);
                }
            }
        }
    }
}

impl RecordStore for MemRecords {
    fn commit(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.write(records);
        inner.at = at;
        Ok(())
    }

    fn replace_all(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.tables.clear();
        inner.write(records);
        inner.at = at;
        Ok(())
    }

    fn save_point(&self) -> Result<SavePoint, StoreError> {
        Ok(self.lock().at)
    }

    fn scan(&self, table: Table, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        // Visited from a copy of the table's handles, not under the lock,
        // so `visit` may use the store.
        let rows: Vec<(String, Arc<str>)> = self
            .lock()
            .tables
            .get(&table)
            .map(|rows| rows.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (key, value) in rows {
            visit(&key, value.as_bytes())?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
