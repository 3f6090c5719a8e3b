//! Small builders the reconciler's tests share.

use skiff_model::{Allocation, JobSpec, TaskSpec};

use crate::shim::ExitRecord;

/// An allocation id (32 hex digits, as the servers make them).
pub const ID: &str = "0123456789abcdef0123456789abcdef";

/// A task with the given `restart:` block (flow YAML).
pub fn task(restart: &str) -> TaskSpec {
    spec(&format!("restart: {restart}"))
}

/// A task with these fields beside its image (flow YAML).
pub fn spec(fields: &str) -> TaskSpec {
    JobSpec::from_yaml(&format!("name: t\ntask: {{image: 'oci:/i', {fields}}}"))
        .unwrap()
        .task
}

/// A pending allocation wanted to run, with the given `restart:` block.
pub fn alloc(id: &str, restart: &str) -> Allocation {
    Allocation::new(id, "j", 1, 0, "n", task(restart))
}

/// An exit with `code` after a run of `ran_secs`.
pub fn exit(code: i32, ran_secs: u64, oom: bool) -> ExitRecord {
    ExitRecord {
        exit_code: code,
        signal: (code > 128).then_some(code - 128),
        oom_killed: oom,
        started_at_ms: 1_000_000,
        finished_at_ms: 1_000_000 + ran_secs * 1000,
    }
}
