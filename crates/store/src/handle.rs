//! The handle on the replicated store: [`Store`] opens the Raft log and
//! the state database under a data directory (bootstrapping a new
//! cluster, or restoring the state from the log's snapshot after a crash
//! between the two), starts the driver thread, and is then how the rest
//! of the server talks to it: proposals, membership changes, read
//! barriers, peer messages, reads of the applied state, watches and the
//! Raft status. Requests go to the driver over a channel and are answered
//! through oneshot channels, so async code never blocks on the driver.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use raft::eraftpb::{ConfChangeType, Message, Snapshot};
use tokio::sync::{oneshot, watch};

use crate::command::{self, Command, ServerInfo};
use crate::driver::{self, Request, Shared};
use crate::error::StoreError;
use crate::events::{Compacted, Event};
use crate::log::RaftLog;
use crate::member::{Bootstrap, RaftConfig, RaftStatus, Role, Transport};
use crate::state::{Applied, Outcome, State};
use crate::statedb::StateDb;

/// sled's page cache for the state database (see `Store::open`).
const STATE_DB_CACHE_BYTES: u64 = 64 << 20;

/// A cheap, clonable handle on the replicated store.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    applied: watch::Receiver<u64>,
    status: watch::Receiver<RaftStatus>,
    propose_timeout: Duration,
    data_dir: std::path::PathBuf,
}

/// Bytes a store holds on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUse {
    /// The Raft log's segments (`raft/`).
    pub log_bytes: u64,
    /// The state database (`state/`): what a snapshot is made from.
    pub state_bytes: u64,
}

/// Bytes of the files under `dir`, its subdirectories included.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
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
        let state_dir = data_dir.join("state");
        crate::private::private_dir(&state_dir).map_err(|source| StoreError::Io {
            path: state_dir.clone(),
            source,
        })?;
        // The state lives in memory; its database is written behind and
        // read only on start, so sled's page cache (1 GiB by default) need
        // not hold what it wrote: a small one keeps the server's memory to
        // the state itself.
        let state_db = crate::statedb::open_db(
            sled::Config::new()
                .path(&state_dir)
                .cache_capacity(STATE_DB_CACHE_BYTES),
        )?;
        // sled creates its files with the process's umask; the Raft
        // log's records and the state are for the server's user only.
        crate::private::tighten_files(&state_dir).map_err(|source| StoreError::Io {
            path: state_dir.clone(),
            source,
        })?;
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
            state = driver::decode_state(&snap)?;
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

        let started = driver::start(&cfg, log, statedb, state, transport)?;
        Ok(Store {
            tx: started.tx,
            shared: started.shared,
            applied: started.applied,
            status: started.status,
            propose_timeout: cfg.propose_timeout,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Replicates `command` and returns what applying it did. On a follower
    /// the proposal travels to the leader inside the Raft stream and is
    /// answered when this server applies it. Waits (up to the propose
    /// timeout) for a leader when none is known yet.
    pub async fn propose(&self, command: &Command) -> Result<Outcome, StoreError> {
        Ok(self
            .propose_encoded(command::encode(command))
            .await?
            .outcome)
    }

    /// [`Store::propose`] for a command already encoded (forwarded by a
    /// follower).
    pub async fn propose_encoded(&self, data: Vec<u8>) -> Result<Applied, StoreError> {
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
    /// it is applied; returns the Raft index of its entry. `server` carries
    /// the addresses of a server being added.
    pub async fn change_membership(
        &self,
        changes: Vec<(u64, ConfChangeType)>,
        server: Option<ServerInfo>,
    ) -> Result<u64, StoreError> {
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
        self.shared
            .events
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .after(after, limit)
    }

    /// Fires each time entries are applied, with the applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Commands applied since the store opened, by kind
    /// ([`crate::Command::kind`]).
    pub fn applied_by_kind(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.shared
            .applied_kinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// What the state saver did since the store opened.
    pub fn save_counts(&self) -> crate::saver::SaveCounts {
        self.shared.saves.read()
    }

    /// Bytes the log and the state database hold on disk now (read from
    /// the file system: for metrics, not a hot path).
    pub fn disk_use(&self) -> DiskUse {
        DiskUse {
            log_bytes: dir_bytes(&self.data_dir.join("raft")),
            state_bytes: dir_bytes(&self.data_dir.join("state")),
        }
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
