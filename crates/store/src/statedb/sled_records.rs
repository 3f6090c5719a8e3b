//! The state machine's records in sled: one tree, `state`, keys
//! `TABLE/KEY` (`job/web`, `deployment/web/3`) and the save point under
//! `meta/applied` and `meta/unblock` (big-endian u64). Values are the
//! records' JSON as given.

use crate::error::StoreError;
use crate::state::Table;

use super::records::{RecordStore, SavePoint, Unsaved, Visit};

const KEY_APPLIED: &[u8] = b"meta/applied";
const KEY_UNBLOCK: &[u8] = b"meta/unblock";

/// A [`RecordStore`] on a sled database.
#[derive(Clone)]
pub struct SledRecords {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledRecords {
    pub fn open(db: sled::Db) -> Result<SledRecords, StoreError> {
        let tree = db.open_tree("state")?;
        Ok(SledRecords { db, tree })
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

/// Adds `records` and the save point to `batch`.
fn batch_records(batch: &mut sled::Batch, records: Unsaved, at: SavePoint) {
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
    batch.insert(KEY_APPLIED, &at.applied.to_be_bytes());
    batch.insert(KEY_UNBLOCK, &at.unblock.to_be_bytes());
}

impl RecordStore for SledRecords {
    fn commit(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch_records(&mut batch, records, at);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn replace_all(&self, records: Unsaved, at: SavePoint) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            batch.remove(k);
        }
        batch_records(&mut batch, records, at);
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn save_point(&self) -> Result<SavePoint, StoreError> {
        Ok(SavePoint {
            applied: self.read_u64(KEY_APPLIED)?,
            unblock: self.read_u64(KEY_UNBLOCK)?,
        })
    }

    fn scan(&self, table: Table, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let prefix = table.prefix();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            visit(&String::from_utf8_lossy(&k[prefix.len()..]), &v)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
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
