use std::time::Duration;

/// Errors of the replicated store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("I/O on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("corrupt record {key:?} in {what}: {reason}")]
    Corrupt {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("this server is not the leader (leader: {})", .leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader { leader: Option<u64> },
    #[error("no leader was elected within {0:?}")]
    NoLeader(Duration),
    #[error(
        "leadership changed before the write was acknowledged; it may or may not have been applied"
    )]
    Indeterminate,
    #[error("the store has stopped")]
    Stopped,
}

impl StoreError {
    pub(crate) fn corrupt(
        what: &'static str,
        key: impl AsRef<[u8]>,
        reason: impl ToString,
    ) -> Self {
        StoreError::Corrupt {
            what,
            key: String::from_utf8_lossy(key.as_ref()).into_owned(),
            reason: reason.to_string(),
        }
    }
}
