//! Skiff's benchmarks and load generators: criterion benches under
//! `benches/`, load generators under `src/bin/` (`raftbench` for the
//! replicated store, `schedbench` for the scheduler).

#![forbid(unsafe_code)]

pub mod cluster;
pub mod creds;
pub mod http;
pub mod procs;
pub mod sched;
pub mod simnodes;
pub mod stats;

pub use sched::*;

/// etcd's KV API (only `Put`), to drive etcd with the same gRPC stack.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}
