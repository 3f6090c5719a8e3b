//! Syncs from git on the wire and in the model. The wire form is read
//! leniently (zero is the default); the servers validate the result.

use skiff_model::sync as m;

use crate::pb;

impl From<&m::SyncSource> for pb::SyncSource {
    fn from(s: &m::SyncSource) -> Self {
        pb::SyncSource {
            name: s.name.clone(),
            repo: s.repo.clone(),
            branch: s.branch.clone(),
            path: s.path.clone(),
            namespace: s.namespace.clone(),
            prune: s.prune.clone().unwrap_or_default(),
            interval_seconds: s.interval_secs,
        }
    }
}

impl From<pb::SyncSource> for m::SyncSource {
    fn from(s: pb::SyncSource) -> Self {
        m::SyncSource {
            name: s.name,
            repo: s.repo,
            branch: if s.branch.is_empty() {
                "main".into()
            } else {
                s.branch
            },
            path: s.path.trim_matches('/').to_string(),
            namespace: if s.namespace.is_empty() {
                skiff_model::DEFAULT_NAMESPACE.into()
            } else {
                s.namespace
            },
            prune: (!s.prune.is_empty()).then_some(s.prune),
            interval_secs: if s.interval_seconds == 0 {
                m::DEFAULT_INTERVAL_SECS
            } else {
                s.interval_seconds
            },
        }
    }
}

impl From<&m::SyncStatus> for pb::SyncStatus {
    fn from(s: &m::SyncStatus) -> Self {
        pb::SyncStatus {
            commit: s.commit.clone(),
            applied_at_ms: s.applied_at_ms,
            head: s.head.clone(),
            error: s.error.clone(),
            jobs: s.jobs.clone(),
            drift: s.drift.clone(),
            drift_at_ms: s.drift_at_ms,
            pruned: s.pruned.clone(),
        }
    }
}

impl From<pb::SyncStatus> for m::SyncStatus {
    fn from(s: pb::SyncStatus) -> Self {
        m::SyncStatus {
            commit: s.commit,
            applied_at_ms: s.applied_at_ms,
            head: s.head,
            error: s.error,
            jobs: s.jobs,
            drift: s.drift,
            drift_at_ms: s.drift_at_ms,
            pruned: s.pruned,
        }
    }
}

impl From<&m::SyncRecord> for pb::Sync {
    fn from(r: &m::SyncRecord) -> Self {
        pb::Sync {
            source: Some((&r.source).into()),
            status: Some((&r.status).into()),
        }
    }
}
