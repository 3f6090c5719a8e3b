//! Skiff's gRPC wire types, generated from `proto/skiff/v1/*.proto`, and the
//! conversions between them and the domain types of `skiff-model`.
//!
//! Conversions from the wire fail early with [`WireError`], which names the
//! field that was malformed; the domain rules themselves stay in the model
//! (`JobSpec::validate`).

#![forbid(unsafe_code)]

#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("skiff.v1");
    include!(concat!(env!("OUT_DIR"), "/skiff.v1.serde.rs"));
}

mod convert;
pub mod introspection;
mod secret_debug;

pub use convert::*;

/// Most bytes of output one exec returns per stream; more is dropped and
/// flagged as truncated.
pub const MAX_EXEC_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Largest exec answer a server or client accepts (both streams plus room).
pub const MAX_EXEC_MESSAGE_BYTES: usize = 2 * MAX_EXEC_OUTPUT_BYTES + 64 * 1024;
