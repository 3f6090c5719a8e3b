//! What one Raft member is given and what it reports: its configuration
//! and how it starts ([`RaftConfig`], [`Bootstrap`]), where its messages
//! go ([`Transport`]), and its view of the cluster ([`RaftStatus`]). The
//! handle and the driver both speak these; neither owns them.

use std::time::Duration;

use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

/// The default of [`RaftConfig::snapshot_entries`]: one number for the
/// store, `skiff dev`, and `skiff server --snapshot-entries`, whose
/// default reads it.
pub const SNAPSHOT_ENTRIES: u64 = 20_000;

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
    /// Compact the log every this many applied entries, keeping the newest
    /// half (so followers a little behind catch up from the log) and
    /// nothing past the last state save; no snapshot is needed for that.
    /// 0: never (snapshots are then made only for peers that need one).
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
            snapshot_entries: SNAPSHOT_ENTRIES,
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
/// failures are reported back with
/// [`Store::report_unreachable`](crate::Store::report_unreachable) and,
/// for snapshots, [`Store::report_snapshot`](crate::Store::report_snapshot).
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
