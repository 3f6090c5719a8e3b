//! The Raft driver: one thread owns the `RawNode`, ticks it, feeds it
//! proposals, and runs the Ready loop in the order raft-rs requires:
//!
//! 1. send the leader's messages;
//! 2. append new entries and the hard state in one atomic, fsynced batch
//!    (conflicting tails dropped);
//! 3. apply committed entries to the state machine and save the changed
//!    records with the applied index in one batch;
//! 4. send the messages that had to wait for the write;
//! 5. advance, persist the new commit index, apply what it committed.
//!
//! The thread is a plain OS thread: sled's fsync blocks, and nothing here
//! needs to await. Callers talk to it over a channel and get answers
//! through oneshot channels, so async code never blocks on it.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use slog::Drain as _;
use tokio::sync::{oneshot, watch};

use crate::command::{self, Command, Decoded};
use crate::error::StoreError;
use crate::log::RaftLog;
use crate::state::{Outcome, State};
use crate::statedb::StateDb;

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
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 1,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            propose_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    Leader,
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
    /// Set when the driver stopped on an error it cannot recover from.
    pub fatal: Option<String>,
}

enum Request {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Outcome, StoreError>>,
    },
    /// Stop the driver; `done` fires once the databases are closed.
    Shutdown { done: mpsc::Sender<()> },
}

struct Shared {
    state: RwLock<State>,
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
    /// the state machine), bootstrapping a one-voter cluster on first start,
    /// and starts the driver thread.
    pub fn open(data_dir: &Path, cfg: RaftConfig) -> Result<Store, StoreError> {
        let raft_db = sled::Config::new()
            .path(data_dir.join("raft"))
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let state_db = sled::open(data_dir.join("state"))?;
        let mut log = RaftLog::open(raft_db)?;
        if !log.is_initialized() {
            log.set_conf_state(ConfState {
                voters: vec![cfg.id],
                ..Default::default()
            })?;
        }
        let statedb = StateDb::open(state_db)?;
        let state = statedb.load()?;
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
            // Entries are applied only once committed, so the commit index
            // that was not yet fsynced can safely be raised to match.
            log.set_commit(state.index)?;
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
        let single_voter = log.conf_state().voters == [cfg.id];
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
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
        });
        let driver = Driver {
            raw,
            statedb,
            shared: shared.clone(),
            rx,
            applied_tx,
            status_tx,
            pending: Default::default(),
            next_proposal: rand::random::<u64>(),
            tick: cfg.tick,
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

    /// Replicates `command` and returns what applying it did. Waits (up to
    /// the propose timeout) for a leader when none is known yet.
    pub async fn propose(&self, command: &Command) -> Result<Outcome, StoreError> {
        self.wait_for_leader(self.propose_timeout).await?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Propose {
                data: command::encode(command),
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Indeterminate),
        }
    }

    async fn wait_for_leader(&self, limit: Duration) -> Result<(), StoreError> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(limit, async {
            status
                .wait_for(|s| s.leader_id != 0 || s.fatal.is_some())
                .await
                .map(|s| s.fatal.is_none())
        })
        .await;
        match waited {
            Ok(Ok(true)) => Ok(()),
            Ok(_) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::NoLeader(limit)),
        }
    }

    /// Read access to the applied state. Hold it briefly: the driver waits
    /// for it to apply entries.
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fires each time entries are applied, with the applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
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

struct Driver {
    raw: RawNode<RaftLog>,
    statedb: StateDb,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    applied_tx: watch::Sender<u64>,
    status_tx: watch::Sender<RaftStatus>,
    pending: std::collections::HashMap<u64, oneshot::Sender<Result<Outcome, StoreError>>>,
    next_proposal: u64,
    tick: Duration,
}

/// Most requests folded into one Ready (one fsync).
const MAX_BATCH: usize = 1024;

impl Driver {
    fn run(mut self) {
        let result = self.run_loop();
        let reason = match &result {
            Ok(_) => "stopped".to_string(),
            Err(e) => {
                tracing::error!(error = %e, "raft driver stopped");
                e.to_string()
            }
        };
        self.status_tx.send_modify(|s| s.fatal = Some(reason));
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(StoreError::Stopped));
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

    /// Runs until shut down (returning who to tell) or until all handles
    /// are gone (`None`).
    fn run_loop(&mut self) -> Result<Option<mpsc::Sender<()>>, StoreError> {
        let mut next_tick = Instant::now() + self.tick;
        self.on_ready()?;
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
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += self.tick;
                if next_tick < now {
                    next_tick = now + self.tick;
                }
            }
            self.on_ready()?;
        }
    }

    /// Feeds one request to Raft; returns the shutdown waiter if asked to stop.
    fn handle(&mut self, req: Request) -> Option<mpsc::Sender<()>> {
        match req {
            Request::Shutdown { done } => return Some(done),
            Request::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let leader = self.raw.raft.leader_id;
                    let _ = reply.send(Err(StoreError::NotLeader {
                        leader: (leader != 0).then_some(leader),
                    }));
                    return None;
                }
                let id = self.next_proposal;
                self.next_proposal = self.next_proposal.wrapping_add(1);
                match self.raw.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
        }
        None
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
            // Only a leader that compacted its log sends snapshots, and
            // compaction is not enabled yet.
            tracing::error!(
                index = rd.snapshot().get_metadata().index,
                "unexpected snapshot"
            );
        }
        let must_sync = rd.must_sync();
        self.raw
            .mut_store()
            .persist(rd.entries(), rd.hs(), must_sync)?;
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        self.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.publish_status();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        // One voter has nobody to talk to; peer transport comes with
        // multi-server clusters.
        for m in msgs {
            tracing::trace!(to = m.to, kind = ?m.get_msg_type(), "dropping raft message: no transport");
        }
    }

    fn on_role_change(&mut self) {
        if self.raw.raft.state != StateRole::Leader && !self.pending.is_empty() {
            // Our uncommitted proposals may be overwritten by the new leader.
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(StoreError::Indeterminate));
            }
        }
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let applied = *self.applied_tx.borrow();
        let next = RaftStatus {
            id: raft.id,
            leader_id: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            applied,
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
                        let outcome = match command::decode(&e.data) {
                            Decoded::Command(c) => {
                                let out = state.apply(e.index, &c);
                                tracing::debug!(index = e.index, kind = c.kind(), "applied");
                                out
                            }
                            Decoded::Unknown { version, reason } => {
                                tracing::warn!(index = e.index, version, %reason, "skipping a command this server does not understand");
                                state.skip(e.index);
                                Outcome::Skipped
                            }
                        };
                        if let Ok(ctx) = <[u8; 8]>::try_from(&e.context[..]) {
                            if let Some(reply) = self.pending.remove(&u64::from_be_bytes(ctx)) {
                                replies.push((reply, outcome));
                            }
                        }
                    }
                    EntryType::EntryConfChange => {
                        let cc =
                            ConfChange::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                        let cs = self.raw.apply_conf_change(&cc)?;
                        self.raw.mut_store().set_conf_state(cs)?;
                        state.skip(e.index);
                    }
                    EntryType::EntryConfChangeV2 => {
                        let cc =
                            ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                        let cs = self.raw.apply_conf_change(&cc)?;
                        self.raw.mut_store().set_conf_state(cs)?;
                        state.skip(e.index);
                    }
                }
            }
            self.statedb.save(&mut state)?;
        }
        self.applied_tx.send_replace(last);
        for (reply, outcome) in replies {
            let _ = reply.send(Ok(outcome));
        }
        Ok(())
    }
}
