//! The container runtime edge: a runc-compatible CLI, driven through the
//! shim for create/start and directly for kill, delete and state.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

use crate::shim::{self, ShimArgs};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The container did not start; the message is the runtime's own.
    #[error("{0}")]
    Start(String),
    #[error("{verb} {id}: {message}")]
    Failed {
        verb: &'static str,
        id: String,
        message: String,
    },
    #[error("cannot parse `runc {verb}` output: {source}")]
    Parse {
        verb: &'static str,
        source: serde_json::Error,
    },
}

/// What `runc state` reports (our own type: oci-spec's has no `paused`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub pid: i64,
    pub status: String,
}

/// Operations the agent needs from a runtime. The real one is [`Runc`].
pub trait Runtime: Send + Sync + 'static {
    /// Starts the container through a shim; returns once it runs.
    fn start(&self, args: &ShimArgs) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Sends a signal (`TERM`, `KILL`, ...) to the container's init.
    fn kill(&self, id: &str, signal: &str)
        -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a stopped container (`force` kills it first).
    fn delete(
        &self,
        id: &str,
        force: bool,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The container's state, `None` when the runtime does not know it.
    fn state(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ContainerState>, RuntimeError>> + Send;
}

/// runc (or crun/youki, which take the same verbs).
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's `--root` (its state files).
    pub root: PathBuf,
    /// The program to run as the shim, and the arguments before the
    /// shim's own (for us: the `skiff` binary and `shim`).
    pub shim_program: PathBuf,
    pub shim_prefix: Vec<OsString>,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c.kill_on_drop(true);
        c
    }

    async fn run(
        &self,
        verb: &'static str,
        id: &str,
        extra: &[&str],
    ) -> Result<std::process::Output, RuntimeError> {
        let mut c = self.command();
        c.arg(verb).args(extra).arg(id);
        c.output().await.map_err(|source| RuntimeError::Spawn {
            program: self.binary.display().to_string(),
            source,
        })
    }
}

fn failure(verb: &'static str, id: &str, out: &std::process::Output) -> RuntimeError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    // runc prints `time=... level=error msg="..."`; keep the message part.
    let message = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| match l.find("msg=") {
            Some(i) => l[i + 4..].trim_matches('"').to_string(),
            None => l.to_string(),
        })
        .unwrap_or_else(|| out.status.to_string());
    RuntimeError::Failed {
        verb,
        id: id.to_string(),
        message,
    }
}

impl Runtime for Runc {
    async fn start(&self, args: &ShimArgs) -> Result<(), RuntimeError> {
        let shim_log = args.state_dir.join(shim::SHIM_LOG);
        std::fs::create_dir_all(&args.state_dir).map_err(|source| RuntimeError::Spawn {
            program: "mkdir".into(),
            source,
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log)
            .map_err(|source| RuntimeError::Spawn {
                program: shim_log.display().to_string(),
                source,
            })?;
        let mut c = Command::new(&self.shim_program);
        c.args(&self.shim_prefix)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The shim's first process exits as soon as the container started
        // (or failed to); its detached child keeps watching the container.
        let status = c.status().await.map_err(|source| RuntimeError::Spawn {
            program: self.shim_program.display().to_string(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&shim_log).unwrap_or_default();
        let message = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the shim failed without a message")
            .to_string();
        Err(RuntimeError::Start(message))
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let out = self.run("kill", id, &[]).await;
        // `runc kill ID SIGNAL`: the signal goes after the id.
        let out = match out {
            Ok(_) => {
                let mut c = self.command();
                c.arg("kill").arg(id).arg(signal);
                c.output().await.map_err(|source| RuntimeError::Spawn {
                    program: self.binary.display().to_string(),
                    source,
                })?
            }
            Err(e) => return Err(e),
        };
        if out.status.success() {
            Ok(())
        } else {
            Err(failure("kill", id, &out))
        }
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        let out = self.run("delete", id, extra).await?;
        if out.status.success() {
            return Ok(());
        }
        let err = failure("delete", id, &out);
        if err.to_string().contains("does not exist") {
            return Ok(());
        }
        Err(err)
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let out = self.run("state", id, &[]).await?;
        if !out.status.success() {
            let err = failure("state", id, &out);
            if err.to_string().contains("does not exist") {
                return Ok(None);
            }
            return Err(err);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|source| RuntimeError::Parse {
                verb: "state",
                source,
            })
    }
}

/// Finds a program on `PATH` (or takes a path as it is).
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
