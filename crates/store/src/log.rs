//! The Raft log, hard state and conf state in one sled tree, behind
//! raft-rs's `Storage` trait.
//!
//! Keys: `e` + big-endian index -> `Entry`; `m:hs` -> `HardState`;
//! `m:cs` -> `ConfState`; `m:snap` -> `SnapshotMetadata` (once the log has
//! been compacted). Values are raft's own protobuf encoding.
//!
//! [`RaftLog::persist`] writes new entries (dropping any conflicting tail)
//! and the hard state in one atomic batch, then fsyncs: nothing Raft acknowledges
//! can be lost to a crash.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::StoreError;

const KEY_HS: &[u8] = b"m:hs";
const KEY_CS: &[u8] = b"m:cs";
const KEY_SNAP: &[u8] = b"m:snap";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn index_of_key(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == b'e').then(|| u64::from_be_bytes(key[1..].try_into().unwrap()))
}

pub struct RaftLog {
    db: sled::Db,
    tree: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// Index of the last entry held (or the snapshot index when none).
    last: u64,
}

impl RaftLog {
    /// Opens (or creates) the log in `db`.
    pub fn open(db: sled::Db) -> Result<RaftLog, StoreError> {
        let tree = db.open_tree("raft")?;
        let hard_state = read_pb::<HardState>(&tree, KEY_HS)?.unwrap_or_default();
        let conf_state = read_pb::<ConfState>(&tree, KEY_CS)?.unwrap_or_default();
        let snapshot = read_pb::<SnapshotMetadata>(&tree, KEY_SNAP)?.unwrap_or_default();
        let last = match tree.scan_prefix(b"e").next_back() {
            Some(kv) => {
                let (k, _) = kv?;
                index_of_key(&k).ok_or_else(|| StoreError::corrupt("raft log", &k, "bad key"))?
            }
            None => snapshot.index,
        };
        Ok(RaftLog {
            db,
            tree,
            hard_state,
            conf_state,
            snapshot,
            last,
        })
    }

    /// True once the log has a configuration (it was bootstrapped or joined).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// Records the membership, durably.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StoreError> {
        self.tree
            .insert(KEY_CS, cs.write_to_bytes().map_err(raft::Error::from)?)?;
        self.db.flush()?;
        self.conf_state = cs;
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last
    }

    /// Appends `entries` (truncating any conflicting tail) and records `hs`,
    /// in one atomic batch; fsyncs when `sync` is set.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut new_last = self.last;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            for old in (last.index + 1)..=self.last {
                batch.remove(&entry_key(old));
            }
            for e in entries {
                batch.insert(
                    &entry_key(e.index),
                    e.write_to_bytes().map_err(raft::Error::from)?,
                );
            }
            debug_assert!(first.index <= self.last + 1, "log has no gaps");
            new_last = last.index;
        }
        if let Some(hs) = hs {
            batch.insert(KEY_HS, hs.write_to_bytes().map_err(raft::Error::from)?);
        }
        self.tree.apply_batch(batch)?;
        if sync {
            self.db.flush()?;
        }
        self.last = new_last;
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (from a light ready), durably.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs), true)
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        let key = entry_key(index);
        match self.tree.get(key) {
            Ok(Some(bytes)) => Entry::parse_from_bytes(&bytes).map_err(raft::Error::from),
            Ok(None) => Err(raft::Error::Store(StorageError::Unavailable)),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }
}

fn read_pb<M: protobuf::Message>(tree: &sled::Tree, key: &[u8]) -> Result<Option<M>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => M::parse_from_bytes(&bytes)
            .map(Some)
            .map_err(|e| StoreError::corrupt("raft log", key, e)),
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(raft::NO_LIMIT);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = self.read_entry(index)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Log compaction and snapshot transfer arrive with multi-server
        // clusters; a single voter never needs to send one.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> RaftLog {
        RaftLog::open(sled::open(dir).unwrap()).unwrap()
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..Default::default()
            };
            log.persist(&[entry(1, 1, b"a"), entry(2, 2, b"b")], Some(&hs), true)
                .unwrap();
        }
        let log = open(dir.path());
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.hard_state().commit, 2);
        assert_eq!(log.term(2).unwrap(), 2);
        let got = log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[1].data[..], b"b");
    }

    #[test]
    fn a_conflicting_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let es: Vec<_> = (1..=5).map(|i| entry(i, 1, b"old")).collect();
        log.persist(&es, None, true).unwrap();
        // A new leader overwrites from index 3 with a shorter tail.
        log.persist(&[entry(3, 2, b"new")], None, true).unwrap();
        assert_eq!(log.last_index(), 3);
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.last_index(), 3, "the truncation was persisted");
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(log.term(4).is_err());
    }

    #[test]
    fn size_limit_still_returns_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.persist(
            &[entry(1, 1, &[0; 100]), entry(2, 1, &[0; 100])],
            None,
            true,
        )
        .unwrap();
        let got = log
            .entries(1, 3, Some(10), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn conf_state_marks_the_log_initialized() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        assert!(!log.is_initialized());
        log.set_conf_state(ConfState {
            voters: vec![1],
            ..Default::default()
        })
        .unwrap();
        drop(log);
        assert!(open(dir.path()).is_initialized());
    }
}
