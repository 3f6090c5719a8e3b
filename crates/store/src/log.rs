//! The Raft log: a write-ahead log of our own, behind raft-rs's `Storage`.
//!
//! Files under the log's directory:
//! - `wal-NNNNNNNNNNNN.log`: segments of records, appended and fdatasynced;
//!   a new segment starts once the current one passes [`SEGMENT_BYTES`],
//!   opening with a checkpoint of the hard state, conf state, trim point
//!   and snapshot metadata (no entries: they are not written twice). An
//!   older segment is deleted once every entry in it is trimmed away (or a
//!   received snapshot replaced the log), oldest first. Replay then starts
//!   at a segment whose first entries may follow a gap after its
//!   checkpoint's trim point: the trim record that allowed the deletion
//!   comes later in the log and closes it (without one, the log is
//!   corrupt).
//! - `snap-INDEX.data`: the latest snapshot's state machine bytes, written
//!   to a temporary file, fsynced and renamed before its metadata record is
//!   appended.
//!
//! A record is `[u32 length][u32 crc32 of the payload][payload]`, the
//! payload a kind byte and a body: a batch of entries, a hard state, a
//! conf state, a trim point, a reset (a received snapshot replaced the
//! whole log), or snapshot metadata. Replaying the segments in order
//! rebuilds the log; a batch starting at or before the last index replaces
//! the tail from there (Raft's conflict truncation). A torn record at the
//! end of the last segment (a crash mid-write) is cut off; anything else
//! that fails its checksum, or a length that does not fit with data after
//! it, is corruption and stops the server, naming the file and offset
//! (acknowledged entries after it are never dropped).
//!
//! Each `persist` is one `write` and one `fdatasync`: the new entries and
//! the hard state are durable together before anything is acknowledged.
//! The segment file is kept [`ZERO_AHEAD`] bytes of zeros longer than its
//! records, so most writes overwrite blocks the file already has: their
//! fdatasync then writes the data alone, without a journal commit for a new
//! size and new blocks (about a third cheaper in time and CPU on ext4,
//! measured). Replay stops at the first zero length where only zeros
//! follow; a record's length is never zero.
//! The entries after the last compaction are also kept in memory, where
//! raft-rs reads them.
//!
//! This replaced an earlier layout on sled: measured with `raftbench`, sled's
//! B-tree node splits and blob files took about 40% of the servers' CPU for a
//! log that only appends at one end and drops at the other.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::StoreError;
use crate::log_record::{
    decode_batch, encode_batch, frame, index_term, is_zero, pb_bytes, read_index_term,
    record_after, KIND_CONF_STATE, KIND_ENTRIES, KIND_HARD_STATE, KIND_RESET, KIND_SNAPSHOT,
    KIND_TRIM, MAX_RECORD,
};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// How far past its last record a segment is filled with zeros ahead of
/// time (see the module's doc).
pub const ZERO_AHEAD: u64 = 1 << 20;
static ZEROS: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn segment_name(n: u64) -> String {
    format!("wal-{n:012}.log")
}

fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.data")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

pub struct RaftLog {
    dir: PathBuf,
    /// The segment being appended to, its number, the end of its records
    /// (where the next write goes) and the file's length: only zeros lie
    /// between the two.
    file: File,
    segment: u64,
    segment_bytes: u64,
    zeroed_to: u64,
    /// Older segments, oldest first, with the last index written while
    /// each was current: deleted once the log is trimmed past that.
    closed: Vec<(u64, u64)>,
    /// Size past which a new segment starts.
    segment_limit: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry removed from the log: (index, term). Entries start
    /// right after it.
    trimmed: (u64, u64),
    /// The latest snapshot's metadata (index 0: none).
    snapshot: SnapshotMetadata,
    /// Every entry after `trimmed`, in order.
    entries: VecDeque<Entry>,
    /// Raft asked for a snapshot the stored one cannot serve (a peer that
    /// joined after it was taken): the driver takes a fresh one.
    want_snapshot: std::sync::atomic::AtomicBool,
    /// While replaying: the oldest segment's entries began after a gap
    /// (older segments were deleted), so `trimmed`'s term is not known
    /// until a later trim or reset record gives it.
    gap_open: bool,
}

impl RaftLog {
    /// Opens (or creates) the log in `dir`, replaying its segments.
    pub fn open(dir: &Path) -> Result<RaftLog, StoreError> {
        Self::open_with_segment_limit(dir, SEGMENT_BYTES)
    }

    /// [`RaftLog::open`] with another segment size (tests use small ones).
    pub fn open_with_segment_limit(dir: &Path, segment_limit: u64) -> Result<RaftLog, StoreError> {
        crate::private::private_dir(dir).map_err(|e| io_err(dir, e))?;
        let mut segments: Vec<u64> = fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("wal-")?
                    .strip_suffix(".log")?
                    .parse::<u64>()
                    .ok()
            })
            .collect();
        segments.sort_unstable();
        let mut log = RaftLog {
            dir: dir.to_path_buf(),
            file: tempfile_placeholder(dir)?,
            segment: 0,
            segment_bytes: 0,
            zeroed_to: 0,
            closed: Vec::new(),
            segment_limit,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            trimmed: (0, 0),
            snapshot: SnapshotMetadata::default(),
            entries: VecDeque::new(),
            want_snapshot: Default::default(),
            gap_open: false,
        };
        let count = segments.len();
        for (i, n) in segments.iter().enumerate() {
            let last_segment = i + 1 == count;
            let valid = log.replay(*n, last_segment, i == 0)?;
            if last_segment {
                log.segment = *n;
                log.segment_bytes = valid;
            } else {
                log.closed.push((*n, log.last_index()));
            }
        }
        if log.gap_open {
            return Err(StoreError::corrupt(
                "raft log",
                dir.display().to_string(),
                format!(
                    "the oldest segment's entries start after index {}, and no trim record covers the gap",
                    log.trimmed.0
                ),
            ));
        }
        if count == 0 {
            log.segment = 1;
            log.segment_bytes = 0;
        }
        let path = dir.join(segment_name(log.segment));
        log.file = open_segment(&path)?;
        log.zeroed_to = log
            .file
            .metadata()
            .map_err(|e| io_err(&path, e))?
            .len()
            .max(log.segment_bytes);
        if count == 0 {
            sync_dir(dir)?;
        }
        Ok(log)
    }

    /// Applies one segment's records; returns the length of its valid
    /// prefix (a torn tail of the last segment is cut off).
    fn replay(&mut self, n: u64, last_segment: bool, oldest: bool) -> Result<u64, StoreError> {
        let path = self.dir.join(segment_name(n));
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| io_err(&path, e))?;
        let name = path.display().to_string();
        let mut at = 0usize;
        while at < data.len() {
            let zero_len = data[at..].iter().take(4).all(|b| *b == 0);
            if zero_len && is_zero(&data[at..]) {
                break; // the zero-filled room ahead of the records
            }
            let torn = |why: &str| -> Result<u64, StoreError> {
                if last_segment {
                    tracing::warn!(segment = %name, offset = at, why, "cutting off a torn record at the end of the log");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io_err(&path, e))?;
                    f.set_len(at as u64).map_err(|e| io_err(&path, e))?;
                    f.sync_all().map_err(|e| io_err(&path, e))?;
                    Ok(at as u64)
                } else {
                    Err(StoreError::corrupt(
                        "raft log",
                        &name,
                        format!("{why} at offset {at}"),
                    ))
                }
            };
            if data.len() - at < 8 {
                return torn("short header");
            }
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let crc = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap());
            if len == 0 || len > MAX_RECORD || data.len() - at - 8 < len {
                // A header that cannot be read is a torn write only if no
                // whole record follows it: one that does was acknowledged
                // after it, so this is damage in the middle.
                if record_after(&data, at + 1) {
                    return Err(StoreError::corrupt(
                        "raft log",
                        &name,
                        format!(
                            "a record's length ({len} bytes) at offset {at} does not fit, with data after it: damage, not a torn write; nothing was cut"
                        ),
                    ));
                }
                return torn("short record");
            }
            let payload = &data[at + 8..at + 8 + len];
            if crc32fast::hash(payload) != crc {
                if !is_zero(&data[at + 8 + len..]) {
                    // Valid-looking data follows: not a torn final write
                    // but damage in the middle, which must not be cut off.
                    return Err(StoreError::corrupt(
                        "raft log",
                        &name,
                        format!("checksum mismatch at offset {at}, with records after it"),
                    ));
                }
                return torn("checksum mismatch");
            }
            self.apply_record(&name, payload[0], &payload[1..], oldest)?;
            at += 8 + len;
        }
        Ok(at as u64)
    }

    fn apply_record(
        &mut self,
        what: &str,
        kind: u8,
        body: &[u8],
        oldest: bool,
    ) -> Result<(), StoreError> {
        let bad = |e: &dyn std::fmt::Display| StoreError::corrupt("raft log", what, e.to_string());
        match kind {
            KIND_ENTRIES => {
                let batch = decode_batch(what, body)?;
                if let Some(first) = batch.first().map(|e| e.index) {
                    if oldest && self.entries.is_empty() && first > self.trimmed.0 + 1 {
                        // The segments before this one were deleted once
                        // trimmed: a later trim record gives the term.
                        self.trimmed = (first - 1, 0);
                        self.gap_open = true;
                    }
                    self.append_in_memory(first, batch).map_err(|e| bad(&e))?;
                }
            }
            KIND_HARD_STATE => {
                self.hard_state = HardState::parse_from_bytes(body).map_err(|e| bad(&e))?
            }
            KIND_CONF_STATE => {
                self.conf_state = ConfState::parse_from_bytes(body).map_err(|e| bad(&e))?
            }
            KIND_TRIM => {
                let (index, term) = read_index_term(body).ok_or_else(|| bad(&"trim record"))?;
                self.trim_in_memory(index, term);
            }
            KIND_RESET => {
                let (index, term) = read_index_term(body).ok_or_else(|| bad(&"reset record"))?;
                self.entries.clear();
                self.trimmed = (index, term);
                self.gap_open = false;
            }
            KIND_SNAPSHOT => {
                self.snapshot = SnapshotMetadata::parse_from_bytes(body).map_err(|e| bad(&e))?
            }
            other => return Err(bad(&format!("unknown record kind {other}"))),
        }
        Ok(())
    }

    /// Places entries starting at `first`, replacing any tail from there.
    fn append_in_memory(&mut self, first: u64, batch: Vec<Entry>) -> Result<(), String> {
        if first <= self.trimmed.0 {
            // Already compacted (a batch straddling the trim point).
            let skip = (self.trimmed.0 + 1 - first) as usize;
            if skip >= batch.len() {
                return Ok(());
            }
            let rest: Vec<Entry> = batch.into_iter().skip(skip).collect();
            return self.append_in_memory(self.trimmed.0 + 1, rest);
        }
        if first > self.last_index() + 1 {
            return Err(format!(
                "entries from {first} leave a gap after {}",
                self.last_index()
            ));
        }
        self.entries.truncate((first - self.first_index()) as usize);
        self.entries.extend(batch);
        Ok(())
    }

    fn trim_in_memory(&mut self, index: u64, term: u64) {
        if self.gap_open && index >= self.trimmed.0 {
            self.gap_open = false;
        } else if index <= self.trimmed.0 {
            return;
        }
        let drop = ((index - self.trimmed.0) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.trimmed = (index, term);
    }

    /// Appends framed records to the current segment; fdatasyncs when asked.
    /// When the zeros ahead run short, [`ZERO_AHEAD`] more are written past
    /// the records (made durable by the same fdatasync).
    fn write(&mut self, buf: &[u8], sync: bool) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let io = |e| io_err(&self.dir.join(segment_name(self.segment)), e);
        let end = self.segment_bytes + buf.len() as u64;
        self.file
            .write_all_at(buf, self.segment_bytes)
            .map_err(io)?;
        if end + ZERO_AHEAD / 4 > self.zeroed_to {
            let from = end.max(self.zeroed_to);
            self.file.write_all_at(&ZEROS, from).map_err(io)?;
            self.zeroed_to = from + ZERO_AHEAD;
        }
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        self.segment_bytes = end;
        Ok(())
    }

    /// Starts a new segment (with a checkpoint) once the current one is
    /// big enough, and deletes segments holding only compacted entries.
    fn maybe_rotate(&mut self) -> Result<(), StoreError> {
        if self.segment_bytes < self.segment_limit {
            return Ok(());
        }
        // A closed segment gives back its zeros.
        self.file
            .set_len(self.segment_bytes)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        self.closed.push((self.segment, self.last_index()));
        self.segment += 1;
        let path = self.dir.join(segment_name(self.segment));
        self.file = open_segment(&path)?;
        self.segment_bytes = 0;
        self.zeroed_to = 0;
        let mut buf = Vec::new();
        frame(&mut buf, KIND_CONF_STATE, &pb_bytes(&self.conf_state)?);
        frame(&mut buf, KIND_HARD_STATE, &pb_bytes(&self.hard_state)?);
        frame(
            &mut buf,
            KIND_TRIM,
            &index_term(self.trimmed.0, self.trimmed.1),
        );
        frame(&mut buf, KIND_SNAPSHOT, &pb_bytes(&self.snapshot)?);
        self.write(&buf, true)?;
        sync_dir(&self.dir)?;
        self.remove_trimmed_segments(false)
    }

    /// Deletes the oldest closed segments while every entry in them is
    /// trimmed away (all of them after a reset). Called once the record
    /// that trimmed them is durable.
    fn remove_trimmed_segments(&mut self, all: bool) -> Result<(), StoreError> {
        let mut removed = false;
        while let Some(&(n, last)) = self.closed.first() {
            if !all && last > self.trimmed.0 {
                break;
            }
            let old = self.dir.join(segment_name(n));
            fs::remove_file(&old).map_err(|e| io_err(&old, e))?;
            self.closed.remove(0);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
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
        let mut buf = Vec::new();
        frame(&mut buf, KIND_CONF_STATE, &pb_bytes(&cs)?);
        self.write(&buf, true)?;
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

    /// Appends `new` (replacing any conflicting tail) and records `hs`, in
    /// one write; fdatasyncs when `sync` is set.
    pub fn persist(
        &mut self,
        new: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        if new.is_empty() && hs.is_none() {
            return Ok(());
        }
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
        }
        let mut buf = Vec::new();
        if !new.is_empty() {
            frame(&mut buf, KIND_ENTRIES, &encode_batch(new)?);
        }
        if let Some(hs) = hs {
            frame(&mut buf, KIND_HARD_STATE, &pb_bytes(hs)?);
        }
        self.write(&buf, sync)?;
        if let Some(first) = new.first().map(|e| e.index) {
            self.append_in_memory(first, new.to_vec())
                .map_err(|e| StoreError::corrupt("raft log", "append", e))?;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        self.maybe_rotate()
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

    /// Writes a snapshot's data file durably (write, fsync, rename).
    fn write_snapshot_data(&self, index: u64, data: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(snapshot_name(index));
        let tmp = path.with_extension("tmp");
        {
            let mut f = crate::private::create_private(&tmp).map_err(|e| io_err(&tmp, e))?;
            f.write_all(data).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        sync_dir(&self.dir)
    }

    /// Removes snapshot files other than the current one.
    fn remove_old_snapshots(&self) {
        let keep = snapshot_name(self.snapshot.index);
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("snap-") && name != keep {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Installs a snapshot (received from the leader, or the bootstrap
    /// one): the whole log is replaced by it, the conf state and commit
    /// index follow it. Durable before it returns.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        self.write_snapshot_data(meta.index, &snap.data)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        let mut buf = Vec::new();
        frame(&mut buf, KIND_RESET, &index_term(meta.index, meta.term));
        frame(&mut buf, KIND_CONF_STATE, &pb_bytes(&cs)?);
        frame(&mut buf, KIND_HARD_STATE, &pb_bytes(&hs)?);
        frame(&mut buf, KIND_SNAPSHOT, &pb_bytes(meta)?);
        self.write(&buf, true)?;
        self.hard_state = hs;
        self.conf_state = cs;
        self.snapshot = meta.clone();
        self.trimmed = (meta.index, meta.term);
        self.entries.clear();
        self.remove_old_snapshots();
        self.remove_trimmed_segments(true)
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
        self.write_snapshot_data(meta.index, &data)?;
        let mut buf = Vec::new();
        frame(&mut buf, KIND_SNAPSHOT, &pb_bytes(&meta)?);
        if trimming {
            frame(&mut buf, KIND_TRIM, &index_term(trim_to, trim_term));
        }
        self.write(&buf, true)?;
        self.snapshot = meta;
        if trimming {
            self.trim_in_memory(trim_to, trim_term);
        }
        self.remove_old_snapshots();
        self.remove_trimmed_segments(false)
    }

    /// Drops entries up to `trim_to` without taking a snapshot: the state
    /// machine's saved copy (flushed) already covers them. A peer
    /// that needs them gets a snapshot made when it asks.
    pub fn trim(&mut self, trim_to: u64) -> Result<(), StoreError> {
        let trim_to = trim_to.min(self.last_index());
        if trim_to <= self.trimmed.0 {
            return Ok(());
        }
        let trim_term = self.entry(trim_to)?.term;
        let mut buf = Vec::new();
        frame(&mut buf, KIND_TRIM, &index_term(trim_to, trim_term));
        self.write(&buf, true)?;
        self.trim_in_memory(trim_to, trim_term);
        self.remove_trimmed_segments(false)
    }

    /// The latest snapshot with its data, if any.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        if self.snapshot.index == 0 {
            return Ok(None);
        }
        let path = self.dir.join(snapshot_name(self.snapshot.index));
        let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        snap.data = data.into();
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

/// Opens a segment for writing at explicit offsets (not appending: the
/// file runs on in zeros past its records).
fn open_segment(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))
}

/// A throwaway file handle to fill the struct while the real segment is
/// opened after replay.
fn tempfile_placeholder(dir: &Path) -> Result<File, StoreError> {
    File::open(dir).map_err(|e| io_err(dir, e))
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
            // Older than the log's start, a snapshot is of no use: the
            // peer would still miss the entries trimmed after it.
            Ok(Some(snap)) if snap.get_metadata().index >= request_index.max(self.trimmed.0) => {
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
        RaftLog::open(dir).unwrap()
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

    fn segments(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("wal-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            let es: Vec<_> = (1..=3).map(|i| entry(i, 1, b"x")).collect();
            log.persist(&es, None, true).unwrap();
        }
        // A segment without zeros ahead (as one written before they were,
        // or one whose zeros were given back): a crash in the middle of
        // the next write leaves half a record at the very end.
        let seg = dir.path().join(&segments(dir.path())[0]);
        let data = std::fs::read(&seg).unwrap();
        let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
        let mut f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(end as u64).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap();
        std::io::Write::write_all(&mut f, &[0, 0, 0, 40, 1, 2, 3, 4, 1, 9]).unwrap();
        drop(f);
        let mut log = open(dir.path());
        assert_eq!(log.last_index(), 3);
        // And it keeps appending after the cut.
        log.persist(&[entry(4, 1, b"y")], None, true).unwrap();
        drop(log);
        assert_eq!(open(dir.path()).last_index(), 4);
    }

    #[test]
    fn zeros_ahead_of_the_records_are_room_not_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            let es: Vec<_> = (1..=3).map(|i| entry(i, 1, b"x")).collect();
            log.persist(&es, None, true).unwrap();
        }
        let seg = dir.path().join(&segments(dir.path())[0]);
        let data = std::fs::read(&seg).unwrap();
        let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
        assert!(
            data.len() as u64 >= end as u64 + ZERO_AHEAD / 2,
            "the file runs on in zeros: {} bytes, records end at {end}",
            data.len()
        );
        // Reopened, the log continues right after its records.
        {
            let mut log = open(dir.path());
            assert_eq!(log.last_index(), 3);
            log.persist(&[entry(4, 1, b"y")], None, true).unwrap();
        }
        let log = open(dir.path());
        assert_eq!(log.last_index(), 4);
        let got = log
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got[3].data.as_ref(), b"y");
        drop(log);
        // A write torn inside the zeros (its header made it, the rest did
        // not) is cut off like one at the end of the file.
        let data = std::fs::read(&seg).unwrap();
        let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0, 0, 0, 40, 1, 2, 3, 4, 1, 9], end as u64)
            .unwrap();
        drop(f);
        let mut log = open(dir.path());
        assert_eq!(log.last_index(), 4);
        log.persist(&[entry(5, 1, b"z")], None, true).unwrap();
        drop(log);
        assert_eq!(open(dir.path()).last_index(), 5);
    }

    #[test]
    fn a_corrupt_record_before_the_end_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            for i in 1..=20 {
                log.persist(&[entry(i, 1, &[7; 40])], None, true).unwrap();
            }
        }
        // Flip a byte inside the first record: acknowledged entries follow
        // it, so this is damage, not a torn write, and nothing is dropped.
        let seg = dir.path().join(&segments(dir.path())[0]);
        let mut data = std::fs::read(&seg).unwrap();
        data[20] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        match RaftLog::open(dir.path()) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("checksum mismatch"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a corrupt log was accepted"),
        }
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            data,
            "the file was left as it was"
        );
    }

    #[test]
    fn a_damaged_length_in_the_middle_is_refused_not_taken_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            for i in 1..=20 {
                log.persist(&[entry(i, 1, &[7; 40])], None, true).unwrap();
            }
        }
        // The first record's length now claims more than the file holds:
        // before the fix everything from there on was cut off as torn.
        let seg = dir.path().join(&segments(dir.path())[0]);
        let mut data = std::fs::read(&seg).unwrap();
        data[0] = 0x7f;
        std::fs::write(&seg, &data).unwrap();
        match RaftLog::open(dir.path()) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("length") && reason.contains("offset 0"),
                    "{reason}"
                );
            }
            Err(other) => panic!("{other}"),
            Ok(log) => panic!(
                "a damaged log was accepted, last index {}",
                log.last_index()
            ),
        }
        assert_eq!(std::fs::read(&seg).unwrap(), data, "nothing was cut");
        // A zero length with records after it is damage too.
        data[..4].copy_from_slice(&[0, 0, 0, 0]);
        std::fs::write(&seg, &data).unwrap();
        assert!(RaftLog::open(dir.path()).is_err());
    }

    /// The highest entry index in a segment file (0: none).
    fn last_index_in(path: &std::path::Path) -> u64 {
        let data = std::fs::read(path).unwrap();
        let mut at = 0;
        let mut last = 0;
        while at + 8 <= data.len() {
            let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            let payload = &data[at + 8..at + 8 + len];
            if payload[0] == KIND_ENTRIES {
                let batch = decode_batch("test", &payload[1..]).unwrap();
                last = last.max(batch.last().map_or(0, |e| e.index));
            }
            at += 8 + len;
        }
        last
    }

    #[test]
    fn segments_rotate_without_rewriting_entries_and_go_once_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open_with_segment_limit(dir.path(), 300).unwrap();
        log.apply_snapshot(&snapshot(1, 1, vec![1], b"s")).unwrap();
        let hs = HardState {
            term: 3,
            vote: 1,
            commit: 40,
            ..Default::default()
        };
        for i in 2..=40 {
            log.persist(&[entry(i, 3, &[1; 30])], Some(&hs), true)
                .unwrap();
        }
        let before = segments(dir.path());
        assert!(before.len() > 5, "segments rotated: {before:?}");
        // Each entry was written once: no segment repeats another's.
        let total: u64 = before
            .iter()
            .map(|n| {
                let data = std::fs::read(dir.path().join(n)).unwrap();
                data.iter()
                    .rposition(|b| *b != 0)
                    .map_or(0, |i| i as u64 + 1)
            })
            .sum();
        assert!(
            total < 39 * 120 + before.len() as u64 * 400,
            "{total} bytes"
        );
        let mut meta = SnapshotMetadata {
            index: 30,
            term: 3,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1];
        log.compact(meta, b"s30".to_vec(), 25).unwrap();
        for i in 41..=60 {
            log.persist(&[entry(i, 3, &[1; 30])], None, true).unwrap();
        }
        // Segments holding only trimmed entries are gone; the oldest left
        // still holds entry 26 or an earlier one (nothing live was lost).
        let segs = segments(dir.path());
        let oldest = segs
            .iter()
            .map(|n| dir.path().join(n))
            .find(|p| last_index_in(p) > 0)
            .unwrap();
        assert!(
            !segs.contains(&before[0]),
            "the first segment went: {segs:?}"
        );
        assert!(last_index_in(&oldest) >= 26, "{segs:?}");
        drop(log);
        // Replay starts after the deleted segments: the first entries left
        // follow a gap that the trim record closes.
        let log = RaftLog::open_with_segment_limit(dir.path(), 300).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (26, 60));
        assert_eq!(log.hard_state().term, 3);
        assert_eq!(log.conf_state().voters, vec![1]);
        assert_eq!(log.snapshot(0, 1).unwrap().get_metadata().index, 30);
        assert_eq!(log.term(25).unwrap(), 3);
        let got = log
            .entries(26, 61, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 35);
        assert!(got.iter().zip(26..).all(|(e, i)| e.index == i));
        drop(log);
        // Trimmed right up to a segment's last entry, the next one is
        // replayed from a gap whose trim record names its very start.
        let mut log = RaftLog::open_with_segment_limit(dir.path(), 300).unwrap();
        let segs = segments(dir.path());
        let edge = last_index_in(&dir.path().join(&segs[segs.len() - 3]));
        log.trim(edge).unwrap();
        drop(log);
        let log = RaftLog::open_with_segment_limit(dir.path(), 300).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (edge + 1, 60));
        assert_eq!(log.term(edge).unwrap(), 3);
    }

    #[test]
    fn a_gap_no_trim_record_explains_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = RaftLog::open_with_segment_limit(dir.path(), 300).unwrap();
            log.apply_snapshot(&snapshot(1, 1, vec![1], b"s")).unwrap();
            for i in 2..=30 {
                log.persist(&[entry(i, 3, &[1; 30])], None, true).unwrap();
            }
        }
        // Losing the oldest segments without a trim (a deleted file, a
        // bad restore) must not pass for a shorter log.
        let segs = segments(dir.path());
        for n in &segs[..2] {
            std::fs::remove_file(dir.path().join(n)).unwrap();
        }
        match RaftLog::open_with_segment_limit(dir.path(), 300) {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert!(reason.contains("no trim record covers the gap"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(log) => panic!("accepted: {}..={}", log.first_index(), log.last_index()),
        }
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
