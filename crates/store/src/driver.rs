//! The Raft driver: one thread owns the `RawNode`, ticks it, feeds it
//! proposals, peer messages and read requests, and runs the Ready loop in
//! the order raft-rs requires:
//!
//! 1. send the leader's messages (they may go out before the local write);
//! 2. install a snapshot from the leader, if any (log first, then state);
//! 3. append new entries and the hard state in one atomic, fsynced batch
//!    (conflicting tails dropped);
//! 4. apply committed entries; save the changed records with the applied
//!    index in one batch;
//! 5. send the messages that had to wait for the write;
//! 6. advance, persist the new commit index, send and apply what it adds;
//! 7. compact the log behind a snapshot when it has grown long enough.
//!
//! The thread is a plain OS thread: sled's fsync blocks, and nothing here
//! needs to await. Callers talk to it over a channel and get answers
//! through oneshot channels, so async code never blocks on it.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
    Snapshot, SnapshotMetadata,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI as _;
use serde::{Deserialize, Serialize};
use slog::Drain as _;
use tokio::sync::{oneshot, watch};

use crate::command::ServerInfo;
use crate::command::{self, Command, Decoded};
use crate::error::StoreError;
use crate::log::RaftLog;
use crate::state::{Outcome, State, Table};
use crate::statedb::{self, StateDb, Unsaved};

/// Timing and identity of this Raft member.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub id: u64,
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// How long a write waits to be committed before it is reported as
    /// indeterminate.
    pub propose_timeout: Duration,
    /// Take a snapshot and compact the log once it holds this many entries
    /// past the last snapshot (0: never). Half of them are kept behind the
    /// snapshot so followers a little behind catch up from the log.
    pub snapshot_entries: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 1,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            propose_timeout: Duration::from_secs(10),
            snapshot_entries: 10_000,
        }
    }
}

/// How a server's Raft state starts on first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new cluster with these voters (ignored once initialized).
    Voters(Vec<u64>),
    /// Join an existing cluster: start empty and wait for the leader to
    /// send a snapshot.
    Join,
}

/// Where Raft messages go. Implementations must not block; delivery
/// failures are reported back with [`Store::report_unreachable`] and, for
/// snapshots, [`Store::report_snapshot`].
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msg: Message);
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What this member knows about the cluster's Raft state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub role: Role,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On the leader: each peer's replicated (matched) index.
    pub progress: Vec<(u64, u64)>,
    /// This server was removed from the cluster.
    pub removed: bool,
    /// Set when the driver stopped (on request, or on an error it cannot
    /// recover from).
    pub fatal: Option<String>,
}

/// One change of the state, for watchers: `value` is the record's JSON
/// after the change, `None` when it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub table: Table,
    pub key: String,
    pub value: Option<Arc<str>>,
}

/// The watch history no longer reaches back to the index asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest index a watch may resume from.
    pub first: u64,
}

/// Most recent events kept for watchers to resume from.
const EVENT_HISTORY: usize = 20_000;

struct EventLog {
    events: VecDeque<Event>,
    /// Watches may resume from any index >= this one.
    resumable_from: u64,
}

#[derive(Serialize, Deserialize)]
struct ConfChangeContext {
    proposal: u64,
    #[serde(default)]
    server: Option<ServerInfo>,
}

enum Request {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Outcome, StoreError>>,
    },
    ConfChange {
        changes: Vec<(u64, ConfChangeType)>,
        server: Option<ServerInfo>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// Stop the driver; `done` fires once the databases are closed.
    Shutdown {
        done: mpsc::Sender<()>,
    },
}

struct Shared {
    state: RwLock<State>,
    events: RwLock<EventLog>,
    /// The commit and last log index as of the latest Ready: `status()`
    /// reads them here, always current, while the published status may
    /// hold them back a few milliseconds (see `STATUS_EVERY`).
    commit: std::sync::atomic::AtomicU64,
    last_index: std::sync::atomic::AtomicU64,
}

/// A cheap, clonable handle on the replicated store.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    applied: watch::Receiver<u64>,
    status: watch::Receiver<RaftStatus>,
    propose_timeout: Duration,
}

impl Store {
    /// Opens the store under `data_dir` (`raft/` for the log, `state/` for
    /// the state machine) and starts the driver thread.
    pub fn open(
        data_dir: &Path,
        cfg: RaftConfig,
        bootstrap: Bootstrap,
        transport: Arc<dyn Transport>,
    ) -> Result<Store, StoreError> {
        let state_db = crate::statedb::open_db(sled::Config::new().path(data_dir.join("state")))?;
        let mut log = RaftLog::open(&data_dir.join("raft"))?;
        let statedb = StateDb::open(state_db)?;
        if !log.is_initialized() {
            if let Bootstrap::Voters(voters) = &bootstrap {
                // Every founding member starts from the same snapshot at
                // index 1: an empty state and the initial voters. A server
                // that joins later receives the leader's snapshot instead.
                let mut snap = Snapshot::default();
                let meta = snap.mut_metadata();
                meta.index = 1;
                meta.term = 1;
                meta.mut_conf_state().voters = voters.clone();
                let empty = State {
                    index: 1,
                    ..State::default()
                };
                snap.data = serde_json::to_vec(&empty).expect("state serializes").into();
                log.apply_snapshot(&snap)?;
                statedb.replace_all(&empty)?;
            }
        }
        let mut state = statedb.load()?;
        if log.snapshot_index() > state.index && log.first_index() > state.index + 1 {
            // A snapshot was installed but the state machine did not catch
            // up before a crash: restore it from the copy in the log.
            let snap = log
                .latest_snapshot()?
                .ok_or_else(|| StoreError::corrupt("raft log", "m:snap", "missing"))?;
            state = decode_state(&snap)?;
            statedb.replace_all(&state)?;
        }
        if state.index > log.last_index() {
            return Err(StoreError::Corrupt {
                what: "state",
                key: "meta/applied".into(),
                reason: format!(
                    "applied index {} is past the last log entry {}",
                    state.index,
                    log.last_index()
                ),
            });
        }
        if state.index > log.hard_state().commit {
            // Entries are applied only once committed, so a commit index
            // that was not yet fsynced can safely be raised to match.
            log.set_commit(state.index, true)?;
        }

        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied: state.index,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(
            tracing_slog::TracingSlogDrain.fuse(),
            slog::o!("raft_id" => cfg.id),
        );
        let single_voter =
            log.conf_state().voters == [cfg.id] && log.conf_state().learners.is_empty();
        let mut raw = RawNode::new(&raft_cfg, log, &logger)?;
        if single_voter {
            // Alone in the cluster: no need to wait out an election timeout.
            raw.campaign()?;
        }

        let (tx, rx) = mpsc::channel();
        let (applied_tx, applied) = watch::channel(state.index);
        let (status_tx, status) = watch::channel(RaftStatus {
            id: cfg.id,
            applied: state.index,
            ..Default::default()
        });
        let resumable_from = state.index;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events: RwLock::new(EventLog {
                events: VecDeque::new(),
                resumable_from,
            }),
            commit: Default::default(),
            last_index: Default::default(),
        });
        let statedb_for_saver = statedb.clone();
        let driver = Driver {
            id: cfg.id,
            raw,
            statedb,
            shared: shared.clone(),
            rx,
            transport,
            applied_tx,
            status_tx,
            pending: HashMap::new(),
            proposals: Vec::new(),
            pending_conf: HashMap::new(),
            pending_reads: HashMap::new(),
            next_id: rand::random::<u64>(),
            tick: cfg.tick,
            snapshot_entries: cfg.snapshot_entries,
            removed: false,
            unsaved: HashMap::new(),
            next_save: Instant::now() + save_interval(),
            saved_index: resumable_from,
            compacted_at: resumable_from,
            compacted_before: resumable_from,
            status_published: Instant::now(),
            saver: spawn_saver(statedb_for_saver)?,
            save_in_flight: None,
        };
        std::thread::Builder::new()
            .name(format!("raft-{}", cfg.id))
            .spawn(move || driver.run())
            .map_err(|e| StoreError::corrupt("driver", "thread", e))?;
        Ok(Store {
            tx,
            shared,
            applied,
            status,
            propose_timeout: cfg.propose_timeout,
        })
    }

    /// Replicates `command` and returns what applying it did. On a follower
    /// the proposal travels to the leader inside the Raft stream and is
    /// answered when this server applies it. Waits (up to the propose
    /// timeout) for a leader when none is known yet.
    pub async fn propose(&self, command: &Command) -> Result<Outcome, StoreError> {
        self.propose_encoded(command::encode(command)).await
    }

    /// [`Store::propose`] for a command already encoded (forwarded by a
    /// follower).
    pub async fn propose_encoded(&self, data: Vec<u8>) -> Result<Outcome, StoreError> {
        self.wait_for_leader(self.propose_timeout).await?;
        let (reply, rx) = oneshot::channel();
        self.send(Request::Propose { data, reply })?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Indeterminate),
        }
    }

    /// Proposes a membership change (this server must lead) and waits until
    /// it is applied. `server` carries the addresses of a server being added.
    pub async fn change_membership(
        &self,
        changes: Vec<(u64, ConfChangeType)>,
        server: Option<ServerInfo>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::ConfChange {
            changes,
            server,
            reply,
        })?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Stopped),
            // raft-rs silently drops a conf change while another is pending.
            Err(_) => Err(StoreError::Indeterminate),
        }
    }

    /// A linearizable read barrier: returns once this server has applied
    /// everything committed before the call (Raft's ReadIndex, confirmed by
    /// a quorum). Reads Raft dropped (no leader yet, a new leader without a
    /// commit in its term) are retried until `limit`.
    pub async fn read_barrier(&self, limit: Duration) -> Result<u64, StoreError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (reply, rx) = oneshot::channel();
            self.send(Request::ReadIndex { reply })?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(Ok(index))) => {
                    let mut applied = self.applied.clone();
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return match tokio::time::timeout(left, applied.wait_for(|a| *a >= index)).await
                    {
                        Ok(Ok(_)) => Ok(index),
                        Ok(Err(_)) => Err(StoreError::Stopped),
                        Err(_) => Err(StoreError::NoLeader(limit)),
                    };
                }
                Ok(Ok(Err(StoreError::Stopped))) | Ok(Err(_)) => return Err(StoreError::Stopped),
                Ok(Ok(Err(_))) => {} // dropped by Raft: try again
                Err(_) => return Err(StoreError::NoLeader(limit)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::NoLeader(limit));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until some leader is known.
    pub async fn wait_for_leader(&self, limit: Duration) -> Result<u64, StoreError> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(limit, async {
            status
                .wait_for(|s| s.leader_id != 0 || s.fatal.is_some())
                .await
                .map(|s| (s.leader_id, s.fatal.is_none()))
        })
        .await;
        match waited {
            Ok(Ok((leader, true))) => Ok(leader),
            Ok(_) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::NoLeader(limit)),
        }
    }

    fn send(&self, req: Request) -> Result<(), StoreError> {
        self.tx.send(req).map_err(|_| StoreError::Stopped)
    }

    /// Hands a message from a peer to Raft.
    pub fn step(&self, msg: Message) {
        let _ = self.send(Request::Step(Box::new(msg)));
    }

    /// The transport could not deliver to `peer`.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.send(Request::Unreachable(peer));
    }

    /// A snapshot sent to `peer` arrived (`ok`) or did not.
    pub fn report_snapshot(&self, peer: u64, ok: bool) {
        let _ = self.send(Request::SnapshotDone { to: peer, ok });
    }

    /// Asks the leader (this server) to hand leadership to `peer`.
    pub fn transfer_leader(&self, peer: u64) {
        let _ = self.send(Request::TransferLeader(peer));
    }

    /// Read access to the applied state. Hold it briefly: the driver waits
    /// for it to apply entries.
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Events with an index greater than `after`, oldest first, at most
    /// `limit` of them.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, Compacted> {
        let log = self
            .shared
            .events
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if after < log.resumable_from {
            return Err(Compacted {
                first: log.resumable_from,
            });
        }
        let start = log.events.partition_point(|e| e.index <= after);
        Ok(log.events.iter().skip(start).take(limit).cloned().collect())
    }

    /// Fires each time entries are applied, with the applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn status(&self) -> RaftStatus {
        use std::sync::atomic::Ordering;
        let mut s = self.status.borrow().clone();
        if s.fatal.is_none() {
            s.commit = s.commit.max(self.shared.commit.load(Ordering::Acquire));
            let last = self.shared.last_index.load(Ordering::Acquire);
            if last > 0 {
                s.last_index = last;
            }
            s.applied = s.applied.max(*self.applied.borrow());
        }
        s
    }

    /// Fires on every change of the Raft status (leader, term, commit).
    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.status.borrow().role == Role::Leader
    }

    /// Stops the driver and waits until its databases are flushed and
    /// closed. Blocking: call it from a blocking context. Later proposals
    /// fail with [`StoreError::Stopped`].
    pub fn shutdown(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Request::Shutdown { done }).is_ok() {
            let _ = wait.recv();
        }
    }
}

/// An entry's context: the proposing server and its proposal number.
fn proposal_context(server: u64, proposal: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&server.to_be_bytes());
    ctx.extend_from_slice(&proposal.to_be_bytes());
    ctx
}

/// The proposal number, when this server proposed the entry.
fn own_proposal(ctx: &[u8], me: u64) -> Option<u64> {
    let ctx: [u8; 16] = ctx.try_into().ok()?;
    (u64::from_be_bytes(ctx[..8].try_into().unwrap()) == me)
        .then(|| u64::from_be_bytes(ctx[8..].try_into().unwrap()))
}

fn decode_state(snap: &Snapshot) -> Result<State, StoreError> {
    let mut state: State = serde_json::from_slice(&snap.data)
        .map_err(|e| StoreError::corrupt("snapshot", snap.get_metadata().index.to_string(), e))?;
    state.index = snap.get_metadata().index;
    state.rebuild_indexes();
    Ok(state)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Records to save, the applied index and unblock index they bring the
/// saved state to, and where to answer.
struct SaveJob {
    records: Unsaved,
    index: u64,
    unblock: u64,
    done: std::sync::mpsc::Sender<Result<(), StoreError>>,
}

/// The thread that writes state batches to sled, one at a time, so the
/// Raft thread never waits on sled (except when it must: before trimming
/// the log, installing a snapshot or stopping).
fn spawn_saver(db: StateDb) -> Result<std::sync::mpsc::SyncSender<SaveJob>, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<SaveJob>(1);
    std::thread::Builder::new()
        .name("state-saver".into())
        .spawn(move || {
            for job in rx {
                // Flushed before it counts as saved: the log is trimmed up
                // to a saved index, so that index must survive a crash.
                let result = db
                    .commit(job.records, job.index, job.unblock)
                    .and_then(|()| db.flush());
                let _ = job.done.send(result);
            }
        })
        .map_err(|source| StoreError::Io {
            path: "the state-saver thread".into(),
            source,
        })?;
    Ok(tx)
}

struct Driver {
    id: u64,
    raw: RawNode<RaftLog>,
    statedb: StateDb,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    transport: Arc<dyn Transport>,
    applied_tx: watch::Sender<u64>,
    status_tx: watch::Sender<RaftStatus>,
    pending: HashMap<u64, Reply<Outcome>>,
    /// Proposals taken since the last `flush_proposals`.
    proposals: Vec<(u64, Vec<u8>, Reply<Outcome>)>,
    pending_conf: HashMap<u64, Reply<()>>,
    pending_reads: HashMap<u64, (Instant, Reply<u64>)>,
    next_id: u64,
    tick: Duration,
    snapshot_entries: u64,
    removed: bool,
    /// Records changed since the state was last written to sled, encoded.
    unsaved: Unsaved,
    /// When the timer saves next (see [`save_interval`]).
    next_save: Instant,
    /// Batches for the saver thread, with where to answer.
    saver: std::sync::mpsc::SyncSender<SaveJob>,
    /// The answer of the save in flight.
    save_in_flight: Option<(u64, std::sync::mpsc::Receiver<Result<(), StoreError>>)>,
    /// The applied index of the last save written: the log is never
    /// trimmed past it, so a restart can apply the rest again.
    saved_index: u64,
    /// The applied index at the last compaction and at the one before.
    compacted_at: u64,
    compacted_before: u64,
    /// When the status was last published.
    status_published: Instant,
}

/// How often the state machine's changed records are written to sled. The
/// Raft log holds every applied entry durably (and is not trimmed past the
/// last save), so a crash loses nothing: the entries after the saved index
/// are applied again on start. Writing each record once per interval, not
/// once per entry, saves most of sled's work when the same records change
/// often (a busy job's record, its history and rollout indexes), and a
/// version or rollout that is created and trimmed again within one
/// interval is never written at all.
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// [`SAVE_EVERY`] plus up to half of it, drawn anew for each save, so that
/// servers started together do not all save at the same moment (a save
/// takes a core for a while; three at once on a small machine show in
/// every server's write latency).
fn save_interval() -> Duration {
    SAVE_EVERY + SAVE_EVERY.mul_f64(rand::random::<f64>() / 2.0)
}
/// ...or once this many records are waiting (bounds the memory they hold).
const SAVE_RECORDS: usize = 50_000;

/// How often a status that differs only in its indexes is published.
const STATUS_EVERY: Duration = Duration::from_millis(20);

/// Most requests folded into one Ready (one fsync).
const MAX_BATCH: usize = 1024;
/// A read Raft has not answered by then was dropped; the caller retries.
const READ_EXPIRY: Duration = Duration::from_millis(500);

impl Driver {
    fn run(mut self) {
        let result = self.run_loop();
        let reason = match &result {
            Ok(_) if self.removed => "removed from the cluster".to_string(),
            Ok(_) => "stopped".to_string(),
            Err(e) => {
                tracing::error!(error = %e, "raft driver stopped");
                e.to_string()
            }
        };
        self.status_tx.send_modify(|s| {
            s.fatal = Some(reason);
            s.removed = self.removed;
            s.role = Role::Follower;
            s.leader_id = 0;
        });
        self.fail_pending(|| StoreError::Stopped);
        if let Err(e) = self.save_state() {
            tracing::error!(error = %e, "saving state on shutdown");
        }
        if let Err(e) = self.statedb.flush() {
            tracing::error!(error = %e, "flushing state on shutdown");
        }
        let Driver { raw, statedb, .. } = self;
        drop(raw);
        drop(statedb);
        if let Ok(Some(done)) = result {
            let _ = done.send(());
        }
    }

    fn fail_pending(&mut self, err: impl Fn() -> StoreError) {
        for (_, _, reply) in self.proposals.drain(..) {
            let _ = reply.send(Err(err()));
        }
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(err()));
        }
        for (_, reply) in self.pending_conf.drain() {
            let _ = reply.send(Err(err()));
        }
        for (_, (_, reply)) in self.pending_reads.drain() {
            let _ = reply.send(Err(err()));
        }
    }

    /// Runs until shut down (returning who to tell), until all handles are
    /// gone or this server is removed (`None`).
    fn run_loop(&mut self) -> Result<Option<mpsc::Sender<()>>, StoreError> {
        let mut next_tick = Instant::now() + self.tick;
        self.on_ready()?;
        self.publish_status();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(req) => {
                    if let Some(done) = self.handle(req) {
                        return Ok(Some(done));
                    }
                    for _ in 0..MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(req) => {
                                if let Some(done) = self.handle(req) {
                                    return Ok(Some(done));
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
            self.flush_proposals();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.tick;
                if next_tick < now {
                    next_tick = now + self.tick;
                }
                self.expire_reads(now);
                if !self.unsaved.is_empty() && Instant::now() >= self.next_save {
                    self.save_state_behind()?;
                }
                // Indexes held back by the throttle appear by the next tick
                // even when nothing else happens (a lone server, idle).
                self.publish_status();
            }
            self.on_ready()?;
            if self.removed {
                tracing::warn!(id = self.id, "this server was removed from the cluster");
                return Ok(None);
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Hands the gathered proposals to Raft as one MsgPropose: on a follower
    /// that is one message to the leader for the lot (as `RawNode::propose`
    /// does for one entry).
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.proposals);
        let mut entries = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (id, data, reply) in batch {
            entries.push(Entry {
                data: data.into(),
                context: proposal_context(self.id, id).into(),
                ..Default::default()
            });
            replies.push((id, reply));
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        m.set_entries(entries.into());
        match self.raw.raft.step(m) {
            Ok(()) => {
                for (id, reply) in replies {
                    self.pending.insert(id, reply);
                }
            }
            Err(e) => {
                let mut first = Some(e);
                for (_, reply) in replies {
                    let e = first.take().unwrap_or(raft::Error::ProposalDropped);
                    let _ = reply.send(Err(e.into()));
                }
            }
        }
    }

    /// Feeds one request to Raft; returns the shutdown waiter if asked to stop.
    fn handle(&mut self, req: Request) -> Option<mpsc::Sender<()>> {
        match req {
            Request::Shutdown { done } => return Some(done),
            Request::Propose { data, reply } => {
                // A follower's proposal goes to the leader inside the Raft
                // stream (MsgPropose); this server answers once it applies
                // the entry, which it recognizes by the context.
                if self.raw.raft.leader_id == 0 {
                    let _ = reply.send(Err(self.not_leader()));
                    return None;
                }
                // Proposals are gathered and handed to Raft together (see
                // `flush_proposals`): one message to the leader, not one each.
                let id = self.next_id();
                self.proposals.push((id, data, reply));
            }
            Request::ConfChange {
                changes,
                server,
                reply,
            } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return None;
                }
                let id = self.next_id();
                let ctx = serde_json::to_vec(&ConfChangeContext {
                    proposal: id,
                    server,
                })
                .expect("context serializes");
                let mut cc = ConfChangeV2::default();
                cc.set_changes(
                    changes
                        .into_iter()
                        .map(|(node, kind)| {
                            let mut c = ConfChangeSingle {
                                node_id: node,
                                ..Default::default()
                            };
                            c.set_change_type(kind);
                            c
                        })
                        .collect::<Vec<_>>()
                        .into(),
                );
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        self.pending_conf.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Request::ReadIndex { reply } => {
                let id = self.next_id();
                self.raw.read_index(id.to_be_bytes().to_vec());
                self.pending_reads.insert(id, (Instant::now(), reply));
            }
            Request::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "peer message refused");
                }
            }
            Request::Unreachable(peer) => self.raw.report_unreachable(peer),
            Request::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Request::TransferLeader(peer) => self.raw.transfer_leader(peer),
        }
        None
    }

    fn not_leader(&self) -> StoreError {
        let leader = self.raw.raft.leader_id;
        StoreError::NotLeader {
            leader: (leader != 0).then_some(leader),
        }
    }

    fn expire_reads(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > READ_EXPIRY)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, reply)) = self.pending_reads.remove(&id) {
                let _ = reply.send(Err(self.not_leader()));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if rd.ss().is_some() {
            self.on_role_change();
        }
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        let must_sync = rd.must_sync();
        self.raw
            .mut_store()
            .persist(rd.entries(), rd.hs(), must_sync)?;
        for rs in rd.take_read_states() {
            if let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                if let Some((_, reply)) = self.pending_reads.remove(&u64::from_be_bytes(ctx)) {
                    let _ = reply.send(Ok(rs.index));
                }
            }
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        self.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit, false)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        self.publish_status();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                tracing::info!(
                    to = m.to,
                    index = m.get_snapshot().get_metadata().index,
                    "sending a snapshot"
                );
            }
            self.transport.send(m);
        }
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), StoreError> {
        let index = snap.get_metadata().index;
        let state = decode_state(&snap)?;
        tracing::info!(index, "installing a snapshot from the leader");
        // Log first: if we crash before the state is replaced, the next
        // start restores the state from the snapshot kept in the log.
        self.raw.mut_store().apply_snapshot(&snap)?;
        // A save in flight must land before, not after, the replacement.
        self.wait_saved()?;
        self.statedb.replace_all(&state)?;
        self.unsaved.clear();
        self.next_save = Instant::now() + save_interval();
        self.saved_index = index;
        {
            let mut guard = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *guard = state;
        }
        {
            let mut events = self
                .shared
                .events
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            events.events.clear();
            events.resumable_from = index;
        }
        self.applied_tx.send_replace(index);
        Ok(())
    }

    fn on_role_change(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            // Proposals made here (as leader, or forwarded to a leader that
            // is gone now) may have been dropped or may yet commit.
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(StoreError::Indeterminate));
            }
            for (_, reply) in self.pending_conf.drain() {
                let _ = reply.send(Err(StoreError::Indeterminate));
            }
        }
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let store = self.raw.store();
        {
            // Under load every Ready moves the indexes; those alone are
            // published at most every STATUS_EVERY (anything else at once),
            // which spares building the status and waking its watchers
            // hundreds of times a second.
            use std::sync::atomic::Ordering;
            self.shared
                .commit
                .store(raft.raft_log.committed, Ordering::Release);
            self.shared
                .last_index
                .store(store.last_index(), Ordering::Release);
            let s = self.status_tx.borrow();
            let same_shape = s.leader_id == raft.leader_id
                && s.term == raft.term
                && s.role == role
                && s.removed == self.removed
                && s.first_index == store.first_index()
                && s.snapshot_index == store.snapshot_index()
                && s.voters == store.conf_state().voters
                && s.learners == store.conf_state().learners;
            if same_shape && self.status_published.elapsed() < STATUS_EVERY {
                return;
            }
        }
        self.status_published = Instant::now();
        let progress = if role == Role::Leader {
            let mut p: Vec<(u64, u64)> = raft
                .prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect();
            p.sort_unstable();
            p
        } else {
            Vec::new()
        };
        let next = RaftStatus {
            id: raft.id,
            leader_id: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            applied: *self.applied_tx.borrow(),
            first_index: store.first_index(),
            last_index: store.last_index(),
            snapshot_index: store.snapshot_index(),
            voters: store.conf_state().voters.clone(),
            learners: store.conf_state().learners.clone(),
            progress,
            removed: self.removed,
            fatal: None,
        };
        self.status_tx.send_if_modified(|s| {
            if *s != next {
                *s = next;
                true
            } else {
                false
            }
        });
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut replies = Vec::new();
        let mut conf_replies = Vec::new();
        let mut new_events = Vec::new();
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for e in entries {
                if e.index <= state.index {
                    continue;
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => state.skip(e.index),
                    EntryType::EntryNormal => {
                        let waiting = own_proposal(&e.context, self.id)
                            .is_some_and(|id| self.pending.contains_key(&id));
                        let outcome = match command::decode(&e.data) {
                            Decoded::Command(c) => {
                                let kind = c.kind();
                                let out = state.apply_owned(e.index, *c, waiting);
                                tracing::debug!(index = e.index, kind, "applied");
                                out
                            }
                            Decoded::Unknown { version, reason } => {
                                tracing::warn!(index = e.index, version, %reason, "skipping a command this server does not understand");
                                state.skip(e.index);
                                Outcome::Skipped
                            }
                        };
                        if let Some(id) = own_proposal(&e.context, self.id) {
                            if let Some(reply) = self.pending.remove(&id) {
                                replies.push((reply, outcome));
                            }
                        }
                    }
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        let was_member = self.is_member();
                        let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                            raft::eraftpb::ConfChange::parse_from_bytes(&e.data)
                                .map_err(raft::Error::from)?
                                .into_v2()
                        } else {
                            ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::from)?
                        };
                        let cs = self.raw.apply_conf_change(&cc)?;
                        tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                        self.raw.mut_store().set_conf_state(cs)?;
                        let ctx: Option<ConfChangeContext> =
                            serde_json::from_slice(&e.context).ok();
                        let removed: Vec<u64> = cc
                            .get_changes()
                            .iter()
                            .filter(|c| c.get_change_type() == ConfChangeType::RemoveNode)
                            .map(|c| c.node_id)
                            .collect();
                        let added = ctx.as_ref().and_then(|c| c.server.as_ref());
                        state.apply_membership(e.index, added, &removed);
                        if let Some(ctx) = ctx {
                            if let Some(reply) = self.pending_conf.remove(&ctx.proposal) {
                                conf_replies.push(reply);
                            }
                        }
                        if was_member && !self.is_member() {
                            self.removed = true;
                        }
                    }
                }
                // Each changed record is encoded once: for the watchers
                // here, and for the batch that persists it below.
                for (table, key) in std::mem::take(&mut state.changes) {
                    let value = statedb::record_json(&state, table, &key);
                    self.unsaved.insert((table, key.clone()), value.clone());
                    new_events.push(Event {
                        index: e.index,
                        table,
                        key,
                        value,
                    });
                }
            }
        }
        if self.unsaved.len() >= SAVE_RECORDS || Instant::now() >= self.next_save {
            self.save_state_behind()?;
        }
        if !new_events.is_empty() {
            let mut log = self
                .shared
                .events
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            log.events.extend(new_events);
            while log.events.len() > EVENT_HISTORY {
                if let Some(old) = log.events.pop_front() {
                    log.resumable_from = log.resumable_from.max(old.index);
                }
            }
        }
        self.applied_tx.send_replace(last);
        for (reply, outcome) in replies {
            let _ = reply.send(Ok(outcome));
        }
        for reply in conf_replies {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    fn is_member(&self) -> bool {
        let cs = self.raw.store().conf_state();
        cs.voters.contains(&self.id) || cs.learners.contains(&self.id)
    }

    /// Writes the changed records and the applied index to sled (one atomic
    /// batch).
    fn save_state(&mut self) -> Result<(), StoreError> {
        self.save_state_behind()?;
        self.wait_saved()
    }

    /// Starts a save: the batch is made here (briefly holding the state),
    /// and written by the saver thread while this one goes on with Raft.
    /// At most one save is in flight; its error, if any, surfaces at the
    /// next save or wait.
    fn save_state_behind(&mut self) -> Result<(), StoreError> {
        self.wait_saved()?;
        let (index, unblock) = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (state.index, state.last_unblock_index)
        };
        // The next interval likely changes as many records: sized for them
        // up front, the map does not rehash as it fills.
        let capacity = self.unsaved.len();
        let records = std::mem::replace(&mut self.unsaved, Unsaved::with_capacity(capacity));
        self.next_save = Instant::now() + save_interval();
        let (done, wait) = std::sync::mpsc::channel();
        let job = SaveJob {
            records,
            index,
            unblock,
            done,
        };
        match self.saver.send(job) {
            Ok(()) => {
                self.save_in_flight = Some((index, wait));
                Ok(())
            }
            Err(std::sync::mpsc::SendError(job)) => {
                self.statedb.commit(job.records, job.index, job.unblock)?;
                self.statedb.flush()?;
                self.saved_index = index;
                Ok(())
            }
        }
    }

    /// Waits until the save in flight, if any, is written.
    fn wait_saved(&mut self) -> Result<(), StoreError> {
        match self.save_in_flight.take() {
            Some((index, wait)) => {
                wait.recv().unwrap_or(Err(StoreError::Stopped))?;
                self.saved_index = index;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Notes a save that has finished, without waiting for one that has not.
    fn poll_saved(&mut self) -> Result<(), StoreError> {
        if let Some((index, wait)) = &self.save_in_flight {
            match wait.try_recv() {
                Ok(result) => {
                    let index = *index;
                    self.save_in_flight = None;
                    result?;
                    self.saved_index = index;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.save_in_flight = None;
                    return Err(StoreError::Stopped);
                }
            }
        }
        Ok(())
    }

    /// Trims the log once enough entries piled up (up to the last save:
    /// the saved state covers what is dropped), and makes a snapshot of the
    /// state when Raft asked for one (a peer is behind the log's start).
    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let applied = *self.applied_tx.borrow();
        let store = self.raw.store();
        let requested = store.take_snapshot_request() && applied > store.snapshot_index();
        let since = self.compacted_at;
        let due = self.snapshot_entries > 0 && applied >= since + self.snapshot_entries;
        if !requested && !due {
            return Ok(());
        }
        let before = self.compacted_before;
        self.compacted_before = since;
        self.compacted_at = applied;
        self.poll_saved()?;
        if self.saved_index < before && self.save_in_flight.is_none() {
            // The log can be trimmed only up to the last save: one two
            // compactions ago at the latest, so the log stays about three
            // compactions long however rarely the timer saves. (Each save
            // writes every record changed since the last, once: under
            // sustained writes to the same jobs, fewer saves is less work.)
            self.save_state_behind()?;
        }
        let trim_to = if self.snapshot_entries == 0 {
            0 // snapshots only for peers that need one; the log is kept
        } else {
            // Keep a tail so that followers a little behind catch up from
            // the log, and nothing after the last save: a restart applies
            // that again (later saves let later compactions trim more).
            applied
                .saturating_sub(self.snapshot_entries / 2)
                .min(self.saved_index)
        };
        if !requested {
            tracing::debug!(index = applied, trim_to, "compacting the log");
            return self.raw.mut_store().trim(trim_to);
        }
        let store = self.raw.store();
        let term = raft::Storage::term(store, applied)?;
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(store.conf_state().clone());
        let data = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            serde_json::to_vec(&*state).expect("state serializes")
        };
        tracing::info!(
            index = applied,
            trim_to,
            bytes = data.len(),
            "snapshot taken for a peer; compacting the log"
        );
        self.raw.mut_store().compact(meta, data, trim_to)
    }
}
