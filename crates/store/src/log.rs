//! The Raft log, hard state, conf state and latest snapshot in one sled
//! tree, behind raft-rs's `Storage` trait.
//!
//! Keys: `b` + big-endian index -> a batch of entries starting at that
//! index (each Ready's new entries are one record); `m:hs` -> `HardState`;
//! `m:cs` -> `ConfState`; `m:trim` -> index and term of the last entry
//! removed by compaction; `m:snap` -> `SnapshotMetadata`; `m:snapdata` ->
//! the snapshot's state machine bytes. Entries use raft's protobuf encoding.
//!
//! Writing one record per batch, not one per entry, keeps sled's B-tree
//! small and its node splits rare: a Raft log only ever appends at the end
//! and drops from the front. The entries after the last compaction are also
//! kept in memory, where raft-rs reads them (replication reads constantly).
//!
//! Every write that Raft depends on is one atomic sled batch, fsynced before
//! the driver acknowledges anything: new entries (dropping a conflicting
//! tail) with the hard state; a received snapshot with everything it
//! replaces; a compaction with the snapshot that covers it.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::StoreError;

const KEY_HS: &[u8] = b"m:hs";
const KEY_CS: &[u8] = b"m:cs";
const KEY_TRIM: &[u8] = b"m:trim";
const KEY_SNAP: &[u8] = b"m:snap";
const KEY_SNAP_DATA: &[u8] = b"m:snapdata";

fn batch_key(first: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'b';
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

fn index_of_key(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == b'b').then(|| u64::from_be_bytes(key[1..].try_into().unwrap()))
}

fn pb_bytes<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, StoreError> {
    Ok(m.write_to_bytes().map_err(raft::Error::from)?)
}

/// Entries as `(u32 length, protobuf bytes)*`.
fn encode_batch(entries: &[Entry]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    for e in entries {
        let bytes = pb_bytes(e)?;
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

fn decode_batch(key: &[u8], mut data: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(StoreError::corrupt("raft log", key, "truncated length"));
        }
        let len = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if data.len() < 4 + len {
            return Err(StoreError::corrupt("raft log", key, "truncated entry"));
        }
        out.push(
            Entry::parse_from_bytes(&data[4..4 + len])
                .map_err(|e| StoreError::corrupt("raft log", key, e))?,
        );
        data = &data[4 + len..];
    }
    Ok(out)
}

pub struct RaftLog {
    db: sled::Db,
    tree: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry removed from the log: (index, term). Entries start
    /// right after it.
    trimmed: (u64, u64),
    /// The latest snapshot's metadata (index 0: none).
    snapshot: SnapshotMetadata,
    /// Every entry after `trimmed`, in order.
    entries: VecDeque<Entry>,
    /// The stored batch records: first index -> last index.
    batches: BTreeMap<u64, u64>,
    /// Raft asked for a snapshot the stored one cannot serve (a peer that
    /// joined after it was taken): the driver takes a fresh one.
    want_snapshot: std::sync::atomic::AtomicBool,
}

impl RaftLog {
    /// Opens (or creates) the log in `db`.
    pub fn open(db: sled::Db) -> Result<RaftLog, StoreError> {
        let tree = db.open_tree("raft")?;
        let hard_state = read_pb::<HardState>(&tree, KEY_HS)?.unwrap_or_default();
        let conf_state = read_pb::<ConfState>(&tree, KEY_CS)?.unwrap_or_default();
        let snapshot = read_pb::<SnapshotMetadata>(&tree, KEY_SNAP)?.unwrap_or_default();
        let trimmed = match tree.get(KEY_TRIM)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().unwrap()),
                u64::from_be_bytes(v[8..].try_into().unwrap()),
            ),
            Some(_) => return Err(StoreError::corrupt("raft log", KEY_TRIM, "not 16 bytes")),
            None => (0, 0),
        };
        let mut entries: VecDeque<Entry> = VecDeque::new();
        let mut batches = BTreeMap::new();
        for kv in tree.scan_prefix(b"b") {
            let (k, v) = kv?;
            let first =
                index_of_key(&k).ok_or_else(|| StoreError::corrupt("raft log", &k, "bad key"))?;
            let batch = decode_batch(&k, &v)?;
            let Some(last) = batch.last().map(|e| e.index) else {
                continue;
            };
            batches.insert(first, last);
            for e in batch {
                if e.index <= trimmed.0 {
                    continue; // compacted away; the record still holds later ones
                }
                let expected = trimmed.0 + 1 + entries.len() as u64;
                if e.index != expected {
                    return Err(StoreError::corrupt(
                        "raft log",
                        &k,
                        format!("entry {} where {expected} was expected", e.index),
                    ));
                }
                entries.push_back(e);
            }
        }
        Ok(RaftLog {
            db,
            tree,
            hard_state,
            conf_state,
            trimmed,
            snapshot,
            entries,
            batches,
            want_snapshot: Default::default(),
        })
    }

    /// True (once) when Raft needed a newer snapshot than the stored one.
    pub fn take_snapshot_request(&self) -> bool {
        self.want_snapshot
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// True once the log has a configuration (it was bootstrapped or
    /// received a snapshot from a leader).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// Records the membership, durably.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StoreError> {
        self.tree.insert(KEY_CS, pb_bytes(&cs)?)?;
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
        self.trimmed.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.trimmed.0 + self.entries.len() as u64
    }

    /// Index of the latest snapshot (0 when there is none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// Appends `new` (truncating any conflicting tail) and records `hs`, in
    /// one atomic batch; fsyncs when `sync` is set.
    pub fn persist(
        &mut self,
        new: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if new.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        if let Some(first) = new.first().map(|e| e.index) {
            if first <= self.trimmed.0 || first > self.last_index() + 1 {
                return Err(StoreError::corrupt(
                    "raft log",
                    "append",
                    format!(
                        "entries from {first} do not follow the log ({}..={})",
                        self.first_index(),
                        self.last_index()
                    ),
                ));
            }
            // Drop a conflicting tail: whole records after it, and the part
            // of the record it starts in.
            if first <= self.last_index() {
                self.entries.truncate((first - self.first_index()) as usize);
                let affected: Vec<(u64, u64)> = self
                    .batches
                    .range(..)
                    .filter(|(_, end)| **end >= first)
                    .map(|(s, e)| (*s, *e))
                    .collect();
                for (start, _) in affected {
                    batch.remove(&batch_key(start));
                    self.batches.remove(&start);
                    if start < first {
                        let keep: Vec<Entry> = self
                            .entries
                            .iter()
                            .filter(|e| e.index >= start)
                            .cloned()
                            .collect();
                        if let Some(end) = keep.last().map(|e| e.index) {
                            batch.insert(&batch_key(start), encode_batch(&keep)?);
                            self.batches.insert(start, end);
                        }
                    }
                }
            }
            batch.insert(&batch_key(first), encode_batch(new)?);
            self.batches
                .insert(first, new.last().map(|e| e.index).unwrap_or(first));
        }
        if let Some(hs) = hs {
            batch.insert(KEY_HS, pb_bytes(hs)?);
        }
        self.tree.apply_batch(batch)?;
        if sync {
            self.db.flush()?;
        }
        self.entries.extend(new.iter().cloned());
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index; fsynced only when `sync` is set. A
    /// commit index lost to a crash is harmless: it is learned again from
    /// the leader, and on start it is raised to the applied index (entries
    /// are applied only once committed).
    pub fn set_commit(&mut self, commit: u64, sync: bool) -> Result<(), StoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs), sync)
    }

    /// Installs a snapshot (received from the leader, or the bootstrap
    /// one): the whole log is replaced by it, the conf state and commit
    /// index follow it. One atomic, fsynced batch.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let mut batch = sled::Batch::default();
        for start in self.batches.keys() {
            batch.remove(&batch_key(*start));
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        batch.insert(KEY_HS, pb_bytes(&hs)?);
        batch.insert(KEY_CS, pb_bytes(&cs)?);
        batch.insert(KEY_SNAP, pb_bytes(meta)?);
        batch.insert(KEY_SNAP_DATA, snap.data.to_vec());
        batch.insert(KEY_TRIM, trim_bytes(meta.index, meta.term).to_vec());
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.hard_state = hs;
        self.conf_state = cs;
        self.snapshot = meta.clone();
        self.trimmed = (meta.index, meta.term);
        self.entries.clear();
        self.batches.clear();
        Ok(())
    }

    /// Stores a snapshot of the state at `meta.index` and drops entries up
    /// to `trim_to` (at most the snapshot index), keeping a tail so that
    /// followers a little behind still catch up from the log.
    pub fn compact(
        &mut self,
        meta: SnapshotMetadata,
        data: Vec<u8>,
        trim_to: u64,
    ) -> Result<(), StoreError> {
        let trim_to = trim_to.min(meta.index).min(self.last_index());
        let trimming = trim_to > self.trimmed.0;
        let trim_term = if trimming {
            self.entry(trim_to)?.term
        } else {
            self.trimmed.1
        };
        let mut batch = sled::Batch::default();
        let gone: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, end)| **end <= trim_to)
            .map(|(start, _)| *start)
            .collect();
        for start in &gone {
            batch.remove(&batch_key(*start));
        }
        batch.insert(KEY_SNAP, pb_bytes(&meta)?);
        batch.insert(KEY_SNAP_DATA, data);
        if trimming {
            batch.insert(KEY_TRIM, trim_bytes(trim_to, trim_term).to_vec());
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.snapshot = meta;
        for start in gone {
            self.batches.remove(&start);
        }
        if trimming {
            let drop = (trim_to - self.trimmed.0) as usize;
            self.entries.drain(..drop);
            self.trimmed = (trim_to, trim_term);
        }
        Ok(())
    }

    /// The latest snapshot with its data, if any.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        if self.snapshot.index == 0 {
            return Ok(None);
        }
        let data = self
            .tree
            .get(KEY_SNAP_DATA)?
            .ok_or_else(|| StoreError::corrupt("raft log", KEY_SNAP_DATA, "missing"))?;
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        snap.data = data.to_vec().into();
        Ok(Some(snap))
    }

    fn entry(&self, index: u64) -> raft::Result<&Entry> {
        if index <= self.trimmed.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((index - self.trimmed.0 - 1) as usize)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
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

fn trim_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
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
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(raft::NO_LIMIT);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = self.entry(index)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.trimmed.0 {
            return Ok(self.trimmed.1);
        }
        if idx == self.snapshot.index && idx != 0 {
            return Ok(self.snapshot.term);
        }
        if idx < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match self.latest_snapshot() {
            Ok(Some(snap)) if snap.get_metadata().index >= request_index => {
                // A peer that is not in the snapshot's configuration (it
                // joined later) would refuse it: take a newer one.
                let cs = snap.get_metadata().get_conf_state();
                if cs.voters.contains(&to) || cs.learners.contains(&to) {
                    return Ok(snap);
                }
                self.want_snapshot
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
            Ok(_) => {
                self.want_snapshot
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
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
        RaftLog::open(open_db(sled::Config::new().path(dir)).unwrap()).unwrap()
    }

    fn snapshot(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = voters;
        s.data = data.to_vec().into();
        s
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
    fn a_bootstrap_snapshot_initializes_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        assert!(!log.is_initialized());
        log.apply_snapshot(&snapshot(1, 1, vec![1, 2, 3], b"{}"))
            .unwrap();
        drop(log);
        let log = open(dir.path());
        assert!(log.is_initialized());
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        assert_eq!((log.first_index(), log.last_index()), (2, 1));
        assert_eq!(log.term(1).unwrap(), 1);
        assert_eq!(log.hard_state().commit, 1);
        assert_eq!(&log.snapshot(0, 2).unwrap().data[..], b"{}");
    }

    #[test]
    fn compaction_keeps_a_tail_and_answers_the_term_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.apply_snapshot(&snapshot(1, 1, vec![1], b"s1")).unwrap();
        let es: Vec<_> = (2..=20).map(|i| entry(i, 2, b"x")).collect();
        log.persist(&es, None, true).unwrap();
        let mut meta = SnapshotMetadata {
            index: 20,
            term: 2,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1];
        log.compact(meta, b"s20".to_vec(), 15).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.first_index(), 16);
        assert_eq!(log.term(15).unwrap(), 2, "term of the last trimmed entry");
        assert!(matches!(
            log.entries(10, 12, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            log.entries(16, 21, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            5
        );
        let snap = log.snapshot(0, 1).unwrap();
        assert_eq!(snap.get_metadata().index, 20);
        assert_eq!(&snap.data[..], b"s20");
    }

    #[test]
    fn a_peer_outside_the_snapshot_configuration_asks_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.apply_snapshot(&snapshot(1, 1, vec![1, 2, 3], b"s1"))
            .unwrap();
        assert!(log.snapshot(0, 3).is_ok());
        assert!(!log.take_snapshot_request());
        // Server 4 joined after the snapshot was taken: it would refuse it.
        assert!(matches!(
            log.snapshot(0, 4),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(log.take_snapshot_request());
        assert!(!log.take_snapshot_request(), "asked once");
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let es: Vec<_> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
        log.persist(&es, None, true).unwrap();
        log.apply_snapshot(&snapshot(50, 3, vec![1, 2], b"state"))
            .unwrap();
        assert_eq!((log.first_index(), log.last_index()), (51, 50));
        assert_eq!(log.hard_state().commit, 50);
        assert_eq!(log.hard_state().term, 3);
        assert!(log.term(3).is_err());
    }
}
