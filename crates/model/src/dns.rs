//! The cluster's names, as each node's DNS answers them for its bridged
//! containers: `JOB.NAMESPACE.skiff` (the job's ready replicas),
//! `ALLOC-ID.JOB.NAMESPACE.skiff` (one replica) and
//! `_PORT._tcp.JOB.NAMESPACE.skiff` (SRV).

/// The cluster's domain.
pub const DOMAIN: &str = "skiff";

/// The name of allocation `id` of the job keyed `job_key` (`NS/NAME` or
/// `NAME` in `default`), without the final dot.
pub fn alloc_name(id: &str, job_key: &str) -> String {
    let (ns, job) = crate::split_job_key(job_key);
    format!("{id}.{job}.{ns}.{DOMAIN}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_is_named_under_its_job_and_namespace() {
        assert_eq!(alloc_name("ab12", "lab/train"), "ab12.train.lab.skiff");
        assert_eq!(alloc_name("ab12", "train"), "ab12.train.default.skiff");
    }
}
