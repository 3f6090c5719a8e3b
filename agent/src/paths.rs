//! Where the agent keeps things under its data directory.

use std::path::{Path, PathBuf};

/// `containers/ID/{bundle,state}`, `logs/ID/{stdout,stderr}.log`,
/// `images/` (unpacked image cache), `runc/` (the runtime's state).
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn container_dir(&self, alloc_id: &str) -> PathBuf {
        self.containers().join(alloc_id)
    }

    pub fn bundle(&self, alloc_id: &str) -> PathBuf {
        self.container_dir(alloc_id).join("bundle")
    }

    pub fn state_dir(&self, alloc_id: &str) -> PathBuf {
        self.container_dir(alloc_id).join("state")
    }

    pub fn log_dir(&self, alloc_id: &str) -> PathBuf {
        self.root.join("logs").join(alloc_id)
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.root.join("runc")
    }
}

/// The runtime's name for an allocation's container.
pub fn container_id(alloc_id: &str) -> String {
    format!("skiff-{alloc_id}")
}
