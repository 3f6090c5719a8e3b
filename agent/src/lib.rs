//! Skiff's node agent.
//!
//! - [`agent`]: the process: its data directory, credentials, the
//!   agent's API (logs, exec), certificate renewal and image collection
//!   around the node's [`session`];
//! - [`reconcile`]: makes the node's containers match its allocations: a
//!   pure decision over one state per container, and an executor;
//! - [`clock`]: the time as the agent reads it (one `now_ms`, and the
//!   reconciler's clock, which tests move by hand);
//! - [`gpu`]: the GPU inventory (NVML, or a fake from a file), health,
//!   live metrics, and injecting exactly a container's GPUs;
//! - [`image`]: OCI image layouts, unpacked into a per-image cache;
//! - [`bundle`]: the OCI runtime spec for each container;
//! - [`seccomp`]: the default seccomp profile;
//! - [`rootfs`]: each container's root filesystem (overlayfs or a copy);
//! - [`runtime`]: runc, behind a small trait (with a recording fake for
//!   tests), and the runtime choice;
//! - [`shim`]: the per-container monitor that outlives the agent;
//! - [`crilog`] and [`logs`]: the CRI-format log files and reading them;
//! - [`metrics`]: the agent's Prometheus metrics (allocations' cgroups,
//!   image pulls, container starts, GPUs under DCGM's names);
//! - [`probe`]: exec, http and tcp health probes;
//! - [`servers`]: the servers' connections and failing over between them;
//! - [`session`]: the node's side of the node API (registration,
//!   heartbeats, the allocation watch, status reports);
//! - `sim` (feature `sim`): simulated nodes on a pretend runtime, for the
//!   control plane's benchmarks;
//! - [`service`]: the agent's own API (logs, exec);
//! - [`tls`]: the node's credentials (joining with a token) and its TLS.

pub mod agent;
pub mod bundle;
pub mod clock;
pub mod crilog;
pub mod gpu;
pub mod host;
pub mod image;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod probe;
pub mod reconcile;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod servers;
pub mod service;
pub mod session;
pub mod shim;
#[cfg(feature = "sim")]
pub mod sim;
mod sys;
pub mod tls;
pub mod watch;

pub use agent::{run, AgentConfig, AgentError};

/// Largest gRPC message the agent accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
