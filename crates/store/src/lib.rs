//! Skiff's replicated state machine.
//!
//! - [`command`]: the typed, versioned commands that change state;
//! - [`state`]: the state and its deterministic `apply`;
//! - [`log`]: the raft-rs `Storage` over sled (entries, hard state, conf state);
//! - [`statedb`]: the state machine's records in sled;
//! - [`raft_node`]: the task that owns the `RawNode` and runs the Ready loop.

#![forbid(unsafe_code)]

pub mod command;
mod error;
pub mod log;
pub mod driver;
pub mod state;
pub mod statedb;

pub use command::Command;
pub use command::ServerInfo;
pub use error::StoreError;
pub use raft::eraftpb::{ConfChangeType, Message as RaftMessage};
pub use driver::{Bootstrap, Compacted, Event, RaftConfig, RaftStatus, Role, Store, Transport};
pub use state::Table;
pub use state::{Outcome, Refusal, State};
