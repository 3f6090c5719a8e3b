//! The Raft driver: one thread owns the `RawNode`, ticks it, feeds it
//! proposals, peer messages and read requests, and runs the Ready loop in
//! the order raft-rs requires:
//!
//! 1. send the leader's messages (they may go out before the local write);
//! 2. install a snapshot from the leader, if any (log first, then state);
//! 3. append new entries and the hard state in one write to the log,
//!    fdatasynced (conflicting tails dropped);
//! 4. apply committed entries, and hand the changed records to the saver
//!    (`saver.rs`), which writes them with the applied index in one batch
//!    from time to time;
//! 5. send the messages that had to wait for the write;
//! 6. advance, persist the new commit index, send and apply what it adds;
//! 7. trim the log once it has grown long enough, and take a snapshot
//!    when raft-rs asks for one for a peer (`driver/compact.rs`).
//!
//! Applying entries and installing snapshots are in `driver/apply.rs`.
//! The thread is a plain OS thread: the log's fdatasync blocks, and
//! nothing here needs to await. The handle (`handle.rs`) talks to it over
//! a channel of [`Request`]s and reads what it publishes in [`Shared`].

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use slog::Drain as _;
use tokio::sync::{oneshot, watch};

use crate::command::ServerInfo;
use crate::error::StoreError;
use crate::events::EventLog;
use crate::log::RaftLog;
use crate::member::{RaftConfig, RaftStatus, Role, Transport};
use crate::saver::Saver;
use crate::state::{Applied, State};
use crate::statedb::StateDb;

mod apply;
mod compact;
mod guard;

/// What a membership change carries in its entry's context: the proposal
/// to answer, and the addresses of a server being added.
#[derive(Serialize, Deserialize)]
struct ConfChangeContext {
    proposal: u64,
    #[serde(default)]
    server: Option<ServerInfo>,
}

/// What the handle asks of the driver.
pub(crate) enum Request {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Applied, StoreError>>,
    },
    ConfChange {
        changes: Vec<(u64, ConfChangeType)>,
        server: Option<ServerInfo>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
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

/// What the driver publishes for the handle to read.
pub(crate) struct Shared {
    pub(crate) state: RwLock<State>,
    pub(crate) events: RwLock<EventLog>,
    /// The commit and last log index as of the latest Ready: `status()`
    /// reads them here, always current, while the published status may
    /// hold them back a few milliseconds (see `STATUS_EVERY`).
    pub(crate) commit: std::sync::atomic::AtomicU64,
    pub(crate) last_index: std::sync::atomic::AtomicU64,
    /// What the saver thread did.
    pub(crate) saves: Arc<crate::saver::SaveStats>,
    /// Commands applied since the store opened, by kind
    /// ([`crate::Command::kind`]): the work behind each placement, counted.
    pub(crate) applied_kinds: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// The handle's ends of a started driver.
pub(crate) struct Started {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) applied: watch::Receiver<u64>,
    pub(crate) status: watch::Receiver<RaftStatus>,
}

/// Starts the Raft thread over an opened log and the state loaded from
/// `statedb` (applied up to `state.index`), with the saver thread beside it.
pub(crate) fn start(
    cfg: &RaftConfig,
    log: RaftLog,
    statedb: StateDb,
    state: State,
    transport: Arc<dyn Transport>,
) -> Result<Started, StoreError> {
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
    let single_voter = log.conf_state().voters == [cfg.id] && log.conf_state().learners.is_empty();
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
    let index = state.index;
    let shared = Arc::new(Shared {
        state: RwLock::new(state),
        events: RwLock::new(EventLog::new(index)),
        commit: Default::default(),
        last_index: Default::default(),
        saves: Default::default(),
        applied_kinds: Default::default(),
    });
    let driver = Driver {
        id: cfg.id,
        raw,
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
        saver: Saver::start(statedb, index, shared.saves.clone())?,
        compacted_at: index,
        compacted_before: index,
        status_published: Instant::now(),
    };
    std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || driver.run())
        .map_err(|e| StoreError::corrupt("driver", "thread", e))?;
    Ok(Started {
        tx,
        shared,
        applied,
        status,
    })
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

/// The state a snapshot carries, as of the snapshot's index.
pub(crate) fn decode_state(snap: &Snapshot) -> Result<State, StoreError> {
    let mut state: State = serde_json::from_slice(&snap.data)
        .map_err(|e| StoreError::corrupt("snapshot", snap.get_metadata().index.to_string(), e))?;
    state.index = snap.get_metadata().index;
    state.check_loaded().map_err(|(key, why)| {
        StoreError::corrupt(
            "snapshot",
            format!("{} (allocation {key:?})", snap.get_metadata().index),
            why,
        )
    })?;
    state.rebuild_indexes();
    Ok(state)
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Driver {
    id: u64,
    raw: RawNode<RaftLog>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    transport: Arc<dyn Transport>,
    applied_tx: watch::Sender<u64>,
    status_tx: watch::Sender<RaftStatus>,
    pending: HashMap<u64, Reply<Applied>>,
    /// Proposals taken since the last `flush_proposals`.
    proposals: Vec<(u64, Vec<u8>, Reply<Applied>)>,
    pending_conf: HashMap<u64, Reply<u64>>,
    pending_reads: HashMap<u64, (Instant, Reply<u64>)>,
    next_id: u64,
    tick: Duration,
    snapshot_entries: u64,
    removed: bool,
    /// The records changed since the last save, and the saves.
    saver: Saver,
    /// The applied index at the last compaction and at the one before.
    compacted_at: u64,
    compacted_before: u64,
    /// When the status was last published.
    status_published: Instant,
}

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
        if let Err(e) = self.save_behind().and_then(|()| self.saver.wait()) {
            tracing::error!(error = %e, "saving state on shutdown");
        }
        if let Err(e) = self.saver.flush() {
            tracing::error!(error = %e, "flushing state on shutdown");
        }
        let Driver { raw, saver, .. } = self;
        drop(raw);
        drop(saver);
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
                if self.saver.due_on_tick() {
                    self.save_behind()?;
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
                // What raft-rs would stop the process on is dropped.
                if let Some(why) = self.unsafe_to_step(&msg) {
                    tracing::warn!(
                        from = msg.from,
                        kind = ?msg.get_msg_type(),
                        "a peer message with {why}; dropped"
                    );
                    return None;
                }
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

    /// Starts a save of the records changed so far, at the applied
    /// state's indexes (see [`Saver::save_behind`]).
    fn save_behind(&mut self) -> Result<(), StoreError> {
        let (index, unblock) = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (state.index, state.last_unblock_index)
        };
        self.saver.save_behind(index, unblock)
    }
}
