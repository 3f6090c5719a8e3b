//! Conformance suites for the store's storage traits: each behaviour is
//! one test body written against the trait, run against every
//! implementation (TiKV's `engine_traits_tests` habit), so a new engine
//! is measured against the same rules, not against its own tests.
//!
//! - `records`: [`crate::statedb::RecordStore`] on sled and in memory,
//!   and the state saved through [`crate::statedb::StateDb`] on each;
//! - `raft_log`: raft-rs's `Storage` as our [`crate::log::RaftLog`]
//!   answers it, beside raft-rs's own `MemStorage` answering the same
//!   operations.

mod raft_log;
mod records;
