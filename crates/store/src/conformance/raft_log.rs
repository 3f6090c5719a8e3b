//! The Raft log suite: raft-rs reads its log only through `Storage`, so
//! our write-ahead log must answer as raft-rs's own `MemStorage` does
//! after the same writes (appends with conflicting tails, compaction, a
//! snapshot, hard and conf state), errors included: `Compacted` below the
//! log's start, `Unavailable` past its end. Each body runs against both;
//! a long run of random operations then compares their answers one by one.
//!
//! Where the two differ by design, the suite leaves the question out:
//! - after a compaction our log still knows the term of the last entry it
//!   dropped (raft-rs asks for it to match a follower's log; the log
//!   tests check it), where `MemStorage` knows only its snapshot's;
//! - `MemStorage` makes a snapshot from its commit index whenever asked;
//!   ours serves the stored one, or asks the driver for a fresh one;
//! - asking past the end of the log or writing out of order makes
//!   `MemStorage` panic, and our log return an error.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage, StorageError};

use crate::log::RaftLog;

/// A Raft log under test: read through raft-rs's `Storage`, written with
/// the operations both logs have (named as `MemStorage` names them).
trait Log {
    type Storage: Storage;
    fn new() -> Self;
    fn storage(&self) -> &Self::Storage;
    /// Closes the log and opens it again (`MemStorage`: the same log).
    fn reopen(self) -> Self;
    /// Appends entries from an index at most one past the last, replacing
    /// the tail from there.
    fn append(&mut self, entries: &[Entry]);
    fn set_hard_state(&mut self, hs: HardState);
    fn set_conf_state(&mut self, cs: ConfState);
    /// Drops every entry before `index` (nothing when the log starts there
    /// or later).
    fn compact(&mut self, index: u64);
    /// Replaces the whole log with the snapshot.
    fn apply_snapshot(&mut self, snap: Snapshot);
}

struct Ours {
    dir: tempfile::TempDir,
    log: RaftLog,
}

impl Log for Ours {
    type Storage = RaftLog;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = RaftLog::open(dir.path()).unwrap();
        Ours { dir, log }
    }

    fn storage(&self) -> &RaftLog {
        &self.log
    }

    fn reopen(self) -> Self {
        let Ours { dir, log } = self;
        drop(log);
        let log = RaftLog::open(dir.path()).unwrap();
        Ours { dir, log }
    }

    fn append(&mut self, entries: &[Entry]) {
        // Not fsynced: a reopen in the same process reads what was written.
        self.log.persist(entries, None, false).unwrap();
    }

    fn set_hard_state(&mut self, hs: HardState) {
        self.log.persist(&[], Some(&hs), false).unwrap();
    }

    fn set_conf_state(&mut self, cs: ConfState) {
        self.log.set_conf_state(cs).unwrap();
    }

    fn compact(&mut self, index: u64) {
        self.log.trim(index.saturating_sub(1)).unwrap();
    }

    fn apply_snapshot(&mut self, snap: Snapshot) {
        self.log.apply_snapshot(&snap).unwrap();
    }
}

impl Log for MemStorage {
    type Storage = MemStorage;

    fn new() -> Self {
        MemStorage::new()
    }

    fn storage(&self) -> &MemStorage {
        self
    }

    fn reopen(self) -> Self {
        self
    }

    fn append(&mut self, entries: &[Entry]) {
        self.wl().append(entries).unwrap();
    }

    fn set_hard_state(&mut self, hs: HardState) {
        self.wl().set_hardstate(hs);
    }

    fn set_conf_state(&mut self, cs: ConfState) {
        self.wl().set_conf_state(cs);
    }

    fn compact(&mut self, index: u64) {
        self.wl().compact(index).unwrap();
    }

    fn apply_snapshot(&mut self, snap: Snapshot) {
        self.wl().apply_snapshot(snap).unwrap();
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index}").into_bytes().into(),
        ..Default::default()
    }
}

/// Entries `from..=to`, all of `term`.
fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term)).collect()
}

const COMPACTED: raft::Error = raft::Error::Store(StorageError::Compacted);
const UNAVAILABLE: raft::Error = raft::Error::Store(StorageError::Unavailable);

fn read(s: &impl Storage, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
    s.entries(low, high, max_size, GetEntriesContext::empty(false))
}

/// The indexes and terms of a range, or its error.
fn span(s: &impl Storage, low: u64, high: u64) -> raft::Result<Vec<(u64, u64)>> {
    read(s, low, high, None).map(|es| es.iter().map(|e| (e.index, e.term)).collect())
}

fn bounds(s: &impl Storage) -> (u64, u64) {
    (s.first_index().unwrap(), s.last_index().unwrap())
}

fn a_new_log_is_empty_and_knows_only_index_zero<L: Log>() {
    let log = L::new();
    let s = log.storage();
    assert_eq!(bounds(s), (1, 0));
    assert_eq!(s.term(0), Ok(0));
    assert_eq!(s.term(1), Err(UNAVAILABLE));
    let rs = s.initial_state().unwrap();
    assert_eq!(rs.hard_state, HardState::default());
    assert_eq!(rs.conf_state, ConfState::default());
    assert!(!rs.initialized());
}

fn appended_entries_read_back_by_range_and_term<L: Log>() {
    let mut log = L::new();
    log.append(&[
        entry(1, 1),
        entry(2, 1),
        entry(3, 2),
        entry(4, 2),
        entry(5, 3),
    ]);
    let s = log.storage();
    assert_eq!(bounds(s), (1, 5));
    assert_eq!(span(s, 2, 5), Ok(vec![(2, 1), (3, 2), (4, 2)]));
    assert_eq!(span(s, 5, 6), Ok(vec![(5, 3)]));
    assert_eq!(read(s, 3, 4, None).unwrap()[0].data, b"entry 3"[..]);
    assert_eq!((s.term(1), s.term(3), s.term(5)), (Ok(1), Ok(2), Ok(3)));
    assert_eq!(s.term(6), Err(UNAVAILABLE));
}

fn a_size_limit_cuts_a_range_but_never_below_one_entry<L: Log>() {
    let mut log = L::new();
    log.append(&entries(1, 5, 1));
    let s = log.storage();
    let one = u64::from(protobuf::Message::compute_size(&entry(1, 1)));
    assert_eq!(read(s, 1, 6, Some(0)).unwrap().len(), 1);
    assert_eq!(read(s, 1, 6, Some(one)).unwrap().len(), 1);
    assert_eq!(read(s, 1, 6, Some(2 * one)).unwrap().len(), 2);
    assert_eq!(read(s, 1, 6, Some(2 * one + 1)).unwrap().len(), 2);
    assert_eq!(read(s, 1, 6, Some(raft::NO_LIMIT)).unwrap().len(), 5);
}

fn an_append_inside_the_log_replaces_the_tail_from_there<L: Log>() {
    let mut log = L::new();
    log.append(&entries(1, 5, 1));
    log.append(&entries(3, 4, 2));
    assert_eq!(bounds(log.storage()), (1, 4));
    assert_eq!(
        span(log.storage(), 1, 5),
        Ok(vec![(1, 1), (2, 1), (3, 2), (4, 2)])
    );
    assert_eq!(log.storage().term(5), Err(UNAVAILABLE));
    // Right after the last entry, an append only extends.
    log.append(&entries(5, 6, 3));
    assert_eq!(span(log.storage(), 4, 7), Ok(vec![(4, 2), (5, 3), (6, 3)]));
    let log = log.reopen();
    assert_eq!(bounds(log.storage()), (1, 6));
    assert_eq!(
        span(log.storage(), 2, 6),
        Ok(vec![(2, 1), (3, 2), (4, 2), (5, 3)])
    );
}

fn compaction_drops_the_head_and_reads_below_it_are_compacted<L: Log>() {
    let mut log = L::new();
    log.append(&[
        entry(1, 1),
        entry(2, 1),
        entry(3, 2),
        entry(4, 2),
        entry(5, 3),
    ]);
    log.compact(3);
    // Compacting at or before the log's start changes nothing.
    log.compact(2);
    log.compact(3);
    let check = |log: &L| {
        let s = log.storage();
        assert_eq!(bounds(s), (3, 5));
        assert_eq!(span(s, 2, 4), Err(COMPACTED));
        assert_eq!(span(s, 1, 2), Err(COMPACTED));
        assert_eq!(span(s, 3, 6), Ok(vec![(3, 2), (4, 2), (5, 3)]));
        assert_eq!(s.term(1), Err(COMPACTED));
        assert_eq!((s.term(3), s.term(5)), (Ok(2), Ok(3)));
        assert_eq!(s.term(6), Err(UNAVAILABLE));
    };
    check(&log);
    check(&log.reopen());
}

fn hard_state_and_conf_state_come_back_as_written<L: Log>() {
    let mut log = L::new();
    log.append(&entries(1, 3, 2));
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 3,
        ..Default::default()
    };
    let cs = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    };
    log.set_hard_state(hs.clone());
    log.set_conf_state(cs.clone());
    let log = log.reopen();
    let rs = log.storage().initial_state().unwrap();
    assert_eq!((rs.hard_state, rs.conf_state), (hs, cs));
    assert!(log.storage().initial_state().unwrap().initialized());
}

fn a_snapshot_replaces_the_whole_log_and_the_log_goes_on_after_it<L: Log>() {
    let mut log = L::new();
    log.append(&entries(1, 5, 1));
    log.set_hard_state(HardState {
        term: 1,
        commit: 5,
        ..Default::default()
    });
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
    snap.data = b"state at 10".to_vec().into();
    log.apply_snapshot(snap);
    let check = |log: &L| {
        let s = log.storage();
        let rs = s.initial_state().unwrap();
        assert_eq!((rs.hard_state.term, rs.hard_state.commit), (3, 10));
        assert_eq!(rs.conf_state.voters, [1, 2]);
        assert_eq!(s.term(10), Ok(3));
        assert_eq!(s.term(5), Err(COMPACTED));
        assert_eq!(span(s, 5, 11), Err(COMPACTED));
        let served = s.snapshot(0, 1).unwrap();
        let meta = served.get_metadata();
        assert_eq!((meta.index, meta.term), (10, 3));
        assert_eq!(meta.get_conf_state().voters, [1, 2]);
    };
    assert_eq!(bounds(log.storage()), (11, 10));
    check(&log);
    log.append(&entries(11, 12, 3));
    let log = log.reopen();
    check(&log);
    assert_eq!(bounds(log.storage()), (11, 12));
    assert_eq!(span(log.storage(), 11, 13), Ok(vec![(11, 3), (12, 3)]));
}

/// Runs each body against each log.
macro_rules! suite {
    ($($body:ident),* $(,)?) => {
        mod ours {
            $(#[test] fn $body() { super::$body::<super::Ours>() })*
        }
        mod mem_storage {
            $(#[test] fn $body() { super::$body::<raft::storage::MemStorage>() })*
        }
    };
}

suite!(
    a_new_log_is_empty_and_knows_only_index_zero,
    appended_entries_read_back_by_range_and_term,
    a_size_limit_cuts_a_range_but_never_below_one_entry,
    an_append_inside_the_log_replaces_the_tail_from_there,
    compaction_drops_the_head_and_reads_below_it_are_compacted,
    hard_state_and_conf_state_come_back_as_written,
    a_snapshot_replaces_the_whole_log_and_the_log_goes_on_after_it,
);

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every answer of both logs compared, after each of a few hundred random
/// appends (some replacing a tail) and compactions.
#[test]
fn our_log_answers_as_mem_storage_does_over_a_long_run_of_writes() {
    let mut ours = Ours::new();
    let mut mem = MemStorage::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut term = 1;
    for step in 0..300 {
        let (first, last) = bounds(mem.storage());
        if last >= first + 2 && rng.below(5) == 0 {
            // Keep at least one entry: a MemStorage compacted empty
            // forgets where it started.
            let to = first + 1 + rng.below(last - first);
            ours.compact(to);
            mem.compact(to);
        } else {
            let from = first + rng.below(last + 2 - first);
            term += rng.below(2);
            let batch = entries(from, from + rng.below(4), term);
            ours.append(&batch);
            mem.append(&batch);
        }
        let (a, b) = (ours.storage(), mem.storage());
        let (first, last) = bounds(b);
        assert_eq!(bounds(a), (first, last), "step {step}");
        for i in 0..=last + 1 {
            if first > 1 && (i == 0 || i + 1 == first) {
                // Below the log, MemStorage knows the term of its snapshot
                // (index 0 here) and ours that of the last entry dropped.
                continue;
            }
            assert_eq!(a.term(i), b.term(i), "term({i}) at step {step}");
        }
        for low in first.saturating_sub(1).max(1)..=last {
            let high = low + 1 + rng.below(last + 1 - low);
            let max = (rng.below(3) == 0).then(|| rng.below(200));
            assert_eq!(
                read(a, low, high, max),
                read(b, low, high, max),
                "entries({low}, {high}, {max:?}) at step {step}"
            );
        }
    }
    let ours = ours.reopen();
    let (a, b) = (ours.storage(), mem.storage());
    let (first, last) = bounds(b);
    assert_eq!(bounds(a), (first, last));
    assert_eq!(
        read(a, first, last + 1, None),
        read(b, first, last + 1, None)
    );
}
