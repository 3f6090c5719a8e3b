//! Job keys: how the cluster names a job across namespaces.

use crate::job::{JobSpec, DEFAULT_NAMESPACE};

/// The key of job `name` in namespace `ns`: the bare name in the default
/// namespace, `NS/NAME` in any other. Names and namespaces are DNS labels,
/// so the slash cannot be part of either and a key has one reading. It is
/// what allocations, evaluations and deployments name their job by, and
/// what `skiff get allocs` shows.
pub fn job_key(ns: &str, name: &str) -> String {
    if ns.is_empty() || ns == DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// The namespace and the name of a job key.
pub fn split_job_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((DEFAULT_NAMESPACE, key))
}

impl JobSpec {
    /// The key the cluster knows this job by (see [`job_key`]).
    pub fn key(&self) -> String {
        job_key(&self.namespace, &self.name)
    }
}
