//! Skiff's domain model.
//!
//! This crate owns the types every other room speaks in: [`JobSpec`] (what an
//! operator asks for), [`Job`] (a stored, versioned job), [`Node`],
//! [`Allocation`], [`Evaluation`] and [`Deployment`]. It also owns their validation and the
//! resource arithmetic ([`fit`]) that the scheduler and the state machine's plan
//! check share, so the two can never disagree about whether something fits.
//!
//! The vocabulary (`job`, `resources`, `alloc`, `node`, `gpu`, ...) imports
//! no rules; the rules (`spec`, which parses and validates job specs,
//! [`registration`], [`fit`], [`workload`]) import the vocabulary.
//!
//! No I/O, no async, no clock: everything here is a plain value.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod deployment;
pub mod dns;
pub mod duration;
pub mod error;
pub mod eval;
pub mod fit;
pub mod gpu;
pub mod job;
mod key;
pub mod labels;
pub mod lifecycle;
pub mod namespace;
pub mod node;
pub mod placement;
pub mod plan;
pub mod ports;
pub mod quantity;
pub mod queue;
pub mod registration;
pub mod registry_ref;
pub mod resources;
mod spec;
pub mod subnet;
pub mod sync;
pub use spec::check_dns_label;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod workload;

pub use alloc::{AllocStatus, Allocation, DesiredStatus, GangRank};
pub use deployment::{Deployment, DeploymentStatus, JobHistory, JobVersion};
pub use error::{FieldError, SpecError};
pub use eval::{EvalStatus, EvalTrigger, Evaluation};
pub use gpu::{Gpu, GpuDriver, GpuFilter, GpuLink, GpuMetrics, LinkLevel};
pub use job::{
    job_key, split_job_key, Amount, GangFailure, ImageRef, Job, JobSpec, JobType, NetworkMode,
    PullPolicy, TaskSpec, UpdateSpec, DEFAULT_NAMESPACE,
};
pub use lifecycle::{
    Backoff, Probe, ProbeAction, Probes, RestartPolicy, RestartSpec, Security, UserId,
};
pub use node::{Node, NodeStatus};
pub use placement::{Affinity, Constraint, ConstraintOp, Spread};
pub use plan::{Placement, Plan, Stop};
pub use ports::PortSpec;
pub use resources::{Resources, TaskResources};
pub use spec::MAX_SPEC_BYTES;
pub use workload::{AllocFacts, BatchProgress, BatchState, RolloutCounts};
