//! `model` <-> `pb` conversions, one room per family of types:
//! `resources.rs` (resources, GPUs, their samples and links, ports),
//! `spec.rs` (a job's spec: task, lifecycle, probes, security, placement
//! rules, update strategy) and `state.rs` (stored objects: jobs, nodes,
//! allocations, rollouts, evaluations). Every wire type crosses through one
//! `From`/`TryFrom`; a malformed message fails with a [`WireError`] that
//! names each bad field.

mod enums;
mod namespace;
#[cfg(test)]
mod properties;
mod queue;
mod resources;
mod spec;
mod state;
mod sync;
#[cfg(test)]
mod tests;

use std::time::Duration;

use skiff_model as m;
use skiff_model::FieldError;

pub use enums::*;
pub use resources::gpu_link_from_wire;
pub use spec::{gang_failure_to_wire, job_type_to_wire, spec_tree, wire_field};

/// A wire message that cannot become a domain value; names every bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct WireError(pub Vec<FieldError>);

impl WireError {
    fn one(field: &str, message: impl Into<String>) -> Self {
        WireError(vec![FieldError::new(field, message)])
    }
}

impl From<WireError> for m::SpecError {
    fn from(e: WireError) -> Self {
        m::SpecError::Invalid(e.0)
    }
}

impl From<m::SpecError> for WireError {
    fn from(e: m::SpecError) -> Self {
        match e {
            m::SpecError::Invalid(errors) => WireError(errors),
            other => WireError::one("spec", other.to_string()),
        }
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, WireError> {
    v.ok_or_else(|| WireError::one(field, "is required"))
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}
