//! Skiff's node agent.
//!
//! - [`agent`]: the process: registration, heartbeats, the allocation
//!   watch, and the log service;
//! - [`reconcile`]: makes the node's containers match its allocations;
//! - [`image`]: OCI image layouts, unpacked into a per-image cache;
//! - [`bundle`]: the OCI runtime spec for each container;
//! - [`runtime`]: runc, behind a small trait;
//! - [`shim`]: the per-container monitor that outlives the agent.

pub mod agent;
pub mod bundle;
pub mod host;
pub mod image;
pub mod logs;
pub mod paths;
pub mod reconcile;
pub mod runtime;
pub mod shim;
mod sys;

pub use agent::{run, AgentConfig, AgentError};

/// Largest gRPC message the agent accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
