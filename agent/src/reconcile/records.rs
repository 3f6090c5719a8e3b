//! What is kept on disk per container, behind [`Records`]: the exit
//! record and pid file its shim writes, and the agent's own
//! `restarts.json`. [`FileRecords`] reads the data directory; tests use
//! the in-memory [`MemRecords`].

use std::future::Future;
use std::io;

use super::restarts::{Restarts, RESTARTS_FILE};
use crate::paths::Paths;
use crate::shim::{self, ExitRecord};

/// The per-container records the reconciler reads and writes.
pub trait Records: Send + Sync + 'static {
    /// The allocations that have a container directory (left by an
    /// earlier run of the agent, when it starts).
    fn containers(&self) -> Vec<String>;
    /// How the container ended, once its shim recorded it.
    fn exit(&self, id: &str) -> Option<ExitRecord>;
    /// The container's shim still runs.
    fn shim_alive(&self, id: &str) -> bool;
    /// Resolves when the container's shim exits; `None` when no shim is
    /// recorded to wait for.
    fn shim_exit(&self, id: &str) -> Option<impl Future<Output = io::Result<()>> + Send + 'static>;
    /// The restart bookkeeping (none when nothing was recorded).
    fn restarts(&self, id: &str) -> Restarts;
    fn save_restarts(&self, id: &str, restarts: Restarts) -> io::Result<()>;
    /// Removes the container's records (the logs stay for `skiff logs`).
    fn remove(&self, id: &str);
    /// The allocations that have a log directory.
    fn logged(&self) -> Vec<String>;
    /// Removes an allocation's logs (the servers dropped it).
    fn remove_logs(&self, id: &str);
}

/// The records in the agent's data directory:
/// `containers/ID/{state/exit.json,state/shim.pid,restarts.json}`.
#[derive(Debug, Clone)]
pub struct FileRecords {
    paths: Paths,
}

impl FileRecords {
    pub fn new(paths: Paths) -> FileRecords {
        FileRecords { paths }
    }
}

impl Records for FileRecords {
    fn containers(&self) -> Vec<String> {
        ids_in(&self.paths.containers())
    }

    fn exit(&self, id: &str) -> Option<ExitRecord> {
        ExitRecord::read(&self.paths.state_dir(id).ok()?)
    }

    fn shim_alive(&self, id: &str) -> bool {
        self.paths
            .state_dir(id)
            .is_ok_and(|dir| shim::shim_alive(&dir))
    }

    fn shim_exit(&self, id: &str) -> Option<impl Future<Output = io::Result<()>> + Send + 'static> {
        let (pid, start) = shim::read_shim_pid(&self.paths.state_dir(id).ok()?)?;
        Some(crate::sys::wait_process_exit(pid, start))
    }

    fn restarts(&self, id: &str) -> Restarts {
        match self.paths.container_dir(id) {
            Ok(dir) => Restarts::read(&dir.join(RESTARTS_FILE)),
            Err(_) => Restarts::default(),
        }
    }

    fn save_restarts(&self, id: &str, restarts: Restarts) -> io::Result<()> {
        let path = self.paths.container_dir(id)?.join(RESTARTS_FILE);
        self.paths.confined(&path)?;
        restarts.write(&path)
    }

    fn remove(&self, id: &str) {
        if let Err(e) = self
            .paths
            .container_dir(id)
            .and_then(|dir| self.paths.remove_dir_all(&dir))
        {
            tracing::warn!(alloc = %id, error = %e, "could not remove the container's records");
        }
    }

    fn logged(&self) -> Vec<String> {
        ids_in(&self.paths.root().join("logs"))
    }

    fn remove_logs(&self, id: &str) {
        if let Err(e) = self
            .paths
            .log_dir(id)
            .and_then(|dir| self.paths.remove_dir_all(&dir))
        {
            tracing::warn!(alloc = %id, error = %e, "could not remove the allocation's logs");
        }
    }
}

/// The allocation ids that name entries of `dir` (none when it is not
/// there).
fn ids_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| crate::paths::valid_alloc_id(id))
        .collect()
}

/// Records in memory, for tests: what a test puts in is what the
/// reconciler finds.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemRecords(std::sync::Mutex<Mem>);

#[cfg(test)]
#[derive(Debug, Default)]
struct Mem {
    containers: std::collections::BTreeSet<String>,
    exits: std::collections::HashMap<String, ExitRecord>,
    alive: std::collections::HashSet<String>,
    restarts: std::collections::HashMap<String, Restarts>,
    removed: Vec<String>,
    logs: std::collections::BTreeSet<String>,
    /// Exit records looked for.
    exit_reads: u64,
}

#[cfg(test)]
impl MemRecords {
    pub fn new() -> MemRecords {
        MemRecords::default()
    }

    /// A container directory, as an earlier run of the agent left it.
    pub fn add(&self, id: &str, restarts: Restarts) {
        let mut m = self.0.lock().unwrap();
        m.containers.insert(id.to_string());
        m.restarts.insert(id.to_string(), restarts);
    }

    /// The shim records the container's exit (and ends).
    pub fn record_exit(&self, id: &str, record: ExitRecord) {
        let mut m = self.0.lock().unwrap();
        m.alive.remove(id);
        m.exits.insert(id.to_string(), record);
    }

    pub fn set_alive(&self, id: &str, alive: bool) {
        let mut m = self.0.lock().unwrap();
        if alive {
            m.alive.insert(id.to_string());
        } else {
            m.alive.remove(id);
        }
    }

    /// How many times an exit record was looked for.
    pub fn exit_reads(&self) -> u64 {
        self.0.lock().unwrap().exit_reads
    }

    /// The containers whose records were removed, in order.
    pub fn removed(&self) -> Vec<String> {
        self.0.lock().unwrap().removed.clone()
    }

    /// A log directory, as a container leaves it.
    pub fn add_logs(&self, id: &str) {
        self.0.lock().unwrap().logs.insert(id.to_string());
    }
}

#[cfg(test)]
impl Records for MemRecords {
    fn containers(&self) -> Vec<String> {
        self.0.lock().unwrap().containers.iter().cloned().collect()
    }

    fn exit(&self, id: &str) -> Option<ExitRecord> {
        let mut m = self.0.lock().unwrap();
        m.exit_reads += 1;
        m.exits.get(id).cloned()
    }

    fn shim_alive(&self, id: &str) -> bool {
        self.0.lock().unwrap().alive.contains(id)
    }

    fn shim_exit(
        &self,
        _id: &str,
    ) -> Option<impl Future<Output = io::Result<()>> + Send + 'static> {
        // Nothing to wait on: the reconciler's resync notices exits.
        None::<std::future::Ready<io::Result<()>>>
    }

    fn restarts(&self, id: &str) -> Restarts {
        let m = self.0.lock().unwrap();
        m.restarts.get(id).copied().unwrap_or_default()
    }

    fn save_restarts(&self, id: &str, restarts: Restarts) -> io::Result<()> {
        let mut m = self.0.lock().unwrap();
        m.containers.insert(id.to_string());
        m.restarts.insert(id.to_string(), restarts);
        Ok(())
    }

    fn remove(&self, id: &str) {
        let mut m = self.0.lock().unwrap();
        m.containers.remove(id);
        m.exits.remove(id);
        m.alive.remove(id);
        m.restarts.remove(id);
        m.removed.push(id.to_string());
    }

    fn logged(&self) -> Vec<String> {
        self.0.lock().unwrap().logs.iter().cloned().collect()
    }

    fn remove_logs(&self, id: &str) {
        self.0.lock().unwrap().logs.remove(id);
    }
}
