//! Skiff's replicated state machine.
//!
//! - [`command`]: the typed, versioned commands that change state, and
//!   the servers' address book entry ([`ServerInfo`]);
//! - [`check`]: the rules of a command's shape, checked again at apply;
//! - [`state`]: the state and its deterministic `apply`;
//! - [`log`]: the Raft log, our own write-ahead log behind raft-rs's
//!   `Storage` (entries, hard state, conf state, snapshots);
//! - [`statedb`]: the state machine's records as saved (sled on disk);
//! - [`handle`]: [`Store`], the handle the server holds: open, propose,
//!   read, watch;
//! - `driver`: the thread that owns the `RawNode` and runs the Ready
//!   loop, applies entries and compacts the log;
//! - `saver`: the thread that saves the changed records, and when;
//! - [`member`]: a member's configuration and status, which the handle
//!   and the driver share;
//! - [`events`]: the watch history.

#![forbid(unsafe_code)]

pub mod check;
pub mod command;
#[cfg(test)]
mod conformance;
mod driver;
mod error;
pub mod events;
pub mod handle;
pub mod log;
mod log_record;
pub mod member;
pub mod private;
mod saver;
pub mod state;
pub mod statedb;

pub use command::{Command, ServerInfo};
pub use error::StoreError;
pub use events::{Compacted, Event};
pub use handle::{DiskUse, Store};
pub use member::{Bootstrap, RaftConfig, RaftStatus, Role, Transport, SNAPSHOT_ENTRIES};
pub use raft::eraftpb::{ConfChangeType, Message as RaftMessage, MessageType as RaftMessageType};
pub use saver::SaveCounts;
pub use state::{split_slot_key, AllocTable, Applied, Outcome, Refusal, State, Table};
