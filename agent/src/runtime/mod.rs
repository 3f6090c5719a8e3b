//! The container runtime edge: a runc-compatible CLI, driven through the
//! shim for create/start and directly for kill, delete and state. Tests
//! use the recording fake in `fake.rs`.

#[cfg(any(test, feature = "fake-runtime"))]
pub mod fake;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout, Command};

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
    /// Runs `command` in the running container and collects its output.
    fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
}

/// What a command run in a container did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code, 128 + N when killed by signal N.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
    /// Killed after running past its timeout.
    pub timed_out: bool,
}

/// Reads all of `r`, keeping the first `limit` bytes; says whether more
/// was dropped. Reading on past the limit keeps the writer from blocking.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

/// Where `runc exec` writes the pid of a command: a fresh name in a 0700
/// directory beside runc's state (never a guessable name in a shared
/// /tmp, where another user could plant a link or read it first).
fn exec_pid_file(runtime_root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = runtime_root.parent().unwrap_or(runtime_root).join("exec");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.join(format!(
        "{}-{}.pid",
        std::process::id(),
        EXEC_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )))
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
    /// One shim started ahead of the next container ([`shim::spare`]).
    spare: Arc<Mutex<Option<Spare>>>,
}

/// A spare shim's ends: its flags go in, its report comes out.
#[derive(Debug)]
struct Spare {
    flags: ChildStdin,
    report: ChildStdout,
}

impl Runc {
    pub fn new(
        binary: PathBuf,
        root: PathBuf,
        shim_program: PathBuf,
        shim_prefix: Vec<OsString>,
    ) -> Runc {
        Runc {
            binary,
            root,
            shim_program,
            shim_prefix,
            spare: Arc::default(),
        }
    }

    /// Starts a shim that waits for its container; its first process
    /// exits at once and is reaped by tokio (the child is dropped).
    fn spawn_spare(&self) -> Result<Spare, RuntimeError> {
        let mut c = Command::new(&self.shim_program);
        c.args(&self.shim_prefix)
            .arg(shim::SPARE)
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().map_err(|source| RuntimeError::Spawn {
            program: self.shim_program.display().to_string(),
            source,
        })?;
        match (child.stdin.take(), child.stdout.take()) {
            (Some(flags), Some(report)) => Ok(Spare { flags, report }),
            _ => Err(RuntimeError::Start("the spare shim has no pipes".into())),
        }
    }

    /// Keeps one spare shim waiting (called after each start, and once
    /// when the agent starts, off any start's path).
    pub fn refill_spare(&self) {
        let mut held = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            match self.spawn_spare() {
                Ok(s) => *held = Some(s),
                Err(e) => tracing::warn!(error = %e, "cannot start a spare shim"),
            }
        }
    }

    /// Hands `flags` to the spare shim (a fresh one when there is none,
    /// or the one held has gone).
    async fn hand_over(&self, flags: &[u8]) -> Result<ChildStdout, RuntimeError> {
        let held = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut spare = match held {
            Some(s) => s,
            None => self.spawn_spare()?,
        };
        if spare.flags.write_all(flags).await.is_err() {
            spare = self.spawn_spare()?;
            spare
                .flags
                .write_all(flags)
                .await
                .map_err(|source| RuntimeError::Spawn {
                    program: self.shim_program.display().to_string(),
                    source,
                })?;
        }
        // Closing stdin tells the shim its flags are complete.
        drop(spare.flags);
        Ok(spare.report)
    }

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
        // A spare shim, already loaded and detached, takes the container:
        // it reports `ok PID` once the container runs and then closes its
        // end, staying on as the container's monitor.
        let report = self.hand_over(&shim::join_nul(&args.to_args())).await?;
        let mut text = String::new();
        let _ = report.take(64 * 1024).read_to_string(&mut text).await;
        // The next spare starts now, while this container gets going.
        let me = self.clone();
        tokio::spawn(async move { me.refill_spare() });
        if text.starts_with("ok ") {
            return Ok(());
        }
        let from_log = || {
            let log = std::fs::read_to_string(args.state_dir.join(shim::SHIM_LOG)).ok()?;
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        };
        let message = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
            .or_else(from_log)
            .unwrap_or_else(|| "the shim ended before the container started".to_string());
        Err(RuntimeError::Start(message))
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        // `runc kill ID SIGNAL`: the signal goes after the id.
        let mut c = self.command();
        c.arg("kill").arg(id).arg(signal);
        let out = c.output().await.map_err(|source| RuntimeError::Spawn {
            program: self.binary.display().to_string(),
            source,
        })?;
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

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        // runc writes the process's host pid here, so a command that runs
        // too long can be killed itself, not only runc's client.
        let pid_file = exec_pid_file(&self.root).map_err(|source| RuntimeError::Spawn {
            program: self.binary.display().to_string(),
            source,
        })?;
        let mut c = self.command();
        c.arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| RuntimeError::Spawn {
            program: self.binary.display().to_string(),
            source,
        })?;
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let limit = skiff_proto::MAX_EXEC_OUTPUT_BYTES;
        let collect = async {
            let (o, e) = tokio::join!(read_capped(out, limit), read_capped(err, limit));
            let status = child.wait().await;
            (o, e, status)
        };
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, collect).await.ok(),
            None => Some(collect.await),
        };
        let output = match result {
            Some(((stdout, t1), (stderr, t2), status)) => {
                let status = status.map_err(|source| RuntimeError::Spawn {
                    program: self.binary.display().to_string(),
                    source,
                })?;
                use std::os::unix::process::ExitStatusExt;
                let exit_code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255);
                ExecOutput {
                    exit_code,
                    stdout,
                    stderr,
                    truncated: t1 || t2,
                    timed_out: false,
                }
            }
            None => {
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let _ = crate::sys::kill(pid, libc::SIGKILL);
                }
                ExecOutput {
                    exit_code: 137,
                    timed_out: true,
                    ..ExecOutput::default()
                }
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        Ok(output)
    }
}

static EXEC_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Which runc-compatible runtime a binary is, from its name or from what
/// `--version` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Runc,
    Crun,
    Other,
}

impl Flavor {
    pub fn from_version_text(name: &str, version: &str) -> Flavor {
        let first = version.lines().next().unwrap_or("").to_ascii_lowercase();
        if name == "crun" || first.starts_with("crun") {
            Flavor::Crun
        } else if name == "runc" || first.starts_with("runc") {
            Flavor::Runc
        } else {
            Flavor::Other
        }
    }
}

/// The cgroup v2 controllers of a hybrid host (a cgroup2 hierarchy beside
/// the v1 ones, at `ROOT/unified`), or `None` when the host is not hybrid.
pub fn hybrid_v2_controllers(cgroup_root: &Path) -> Option<Vec<String>> {
    if !cgroup_root.join("memory").is_dir() {
        return None; // no v1 memory controller: pure v2 (or no cgroups)
    }
    let text = std::fs::read_to_string(cgroup_root.join("unified/cgroup.controllers")).ok()?;
    let controllers: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    (!controllers.is_empty()).then_some(controllers)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeChoiceError {
    #[error(
        "crun cannot run containers on this host: its cgroups are in hybrid mode (the cgroup v2 \
         hierarchy at {root}/unified holds the controllers: {controllers}) and crun refuses \
         hybrid hosts. Use --runtime runc, or move those controllers to cgroup v1 (for example \
         `mount -t cgroup -o hugetlb cgroup {root}/hugetlb`), or boot with a pure cgroup v1 or v2 \
         hierarchy"
    )]
    CrunOnHybrid { root: String, controllers: String },
    #[error("container runtime {0:?} not found: install runc (`apt-get install runc`) or pass --runtime PATH")]
    Missing(PathBuf),
    #[error(
        "runc at {path} is version {version}, which lacks the fix for CVE-2024-21626 (a container \
         escape through a leaked directory descriptor, fixed in runc 1.1.12 and in Debian's \
         1.1.5+ds1-1+deb12u1): install a fixed runc (`apt-get install runc` on Debian 12, or \
         upstream 1.2.8 or later) and pass --runtime PATH if it is not the one on PATH"
    )]
    Vulnerable { path: String, version: String },
    #[error(
        "cannot tell which runc {path} is: `{path} --version` printed {printed:?}; pass \
         --runtime with a runc that reports its version"
    )]
    UnknownVersion { path: String, printed: String },
}

/// What `runc --version` says about the fixes a runc carries.
#[derive(Debug, PartialEq, Eq)]
pub enum RuncCheck {
    /// Carries every fix known here.
    Current,
    /// Fixed for CVE-2024-21626 but older than the November 2025 fixes;
    /// the text is the warning to log once.
    Outdated(String),
}

/// Judges a runc by its `--version` text: upstream releases before 1.1.12
/// lack the fix for CVE-2024-21626 and are refused, except Debian 12's
/// build, which carries the fix as a backport (`+deb12u1` and later);
/// releases before 1.2.8, and 1.3 before 1.3.3, lack the fixes for
/// CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 and get a warning.
pub fn check_runc_version(path: &Path, text: &str) -> Result<RuncCheck, RuntimeChoiceError> {
    let unknown = || RuntimeChoiceError::UnknownVersion {
        path: path.display().to_string(),
        printed: text.chars().take(200).collect(),
    };
    let first = text.lines().next().unwrap_or("");
    let full = first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .ok_or_else(unknown)?;
    let numbers: Vec<u32> = full
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse().ok())
        .collect::<Option<Vec<u32>>>()
        .filter(|v| v.len() == 3)
        .ok_or_else(unknown)?;
    let v = (numbers[0], numbers[1], numbers[2]);
    if v < (1, 1, 12) && !debian_backport(text) {
        return Err(RuntimeChoiceError::Vulnerable {
            path: path.display().to_string(),
            version: full.to_string(),
        });
    }
    if v < (1, 2, 8) || ((1, 3, 0)..(1, 3, 3)).contains(&v) {
        return Ok(RuncCheck::Outdated(format!(
            "runc {full} at {} predates the fixes for CVE-2025-31133, CVE-2025-52565 and \
             CVE-2025-52881 (container escapes through /dev/null, /dev/console and /proc \
             writes by a malicious image; fixed in runc 1.2.8 and 1.3.3); install a newer runc \
             and pass --runtime PATH",
            path.display()
        )));
    }
    Ok(RuncCheck::Current)
}

/// Debian 12's runc (1.1.5) carries the CVE-2024-21626 fix from
/// `1.1.5+ds1-1+deb12u1` on; its version text names the package version.
fn debian_backport(text: &str) -> bool {
    text.split(|c: char| c.is_whitespace())
        .filter_map(|w| w.split_once("+deb12u").map(|(_, n)| n))
        .any(|n| {
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().is_ok_and(|u| u >= 1)
        })
}

/// Resolves `--runtime` (`runc`, `crun` or a path) and refuses a choice
/// this host cannot run: crun on a hybrid-cgroup host.
pub fn choose_runtime(
    requested: &Path,
    cgroup_root: &Path,
) -> Result<(PathBuf, Flavor), RuntimeChoiceError> {
    let name = requested
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = find_program(requested);
    let version = binary
        .as_ref()
        .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let flavor = Flavor::from_version_text(&name, &version);
    if flavor == Flavor::Crun {
        if let Some(controllers) = hybrid_v2_controllers(cgroup_root) {
            return Err(RuntimeChoiceError::CrunOnHybrid {
                root: cgroup_root.display().to_string(),
                controllers: controllers.join(" "),
            });
        }
    }
    let binary = binary.ok_or_else(|| RuntimeChoiceError::Missing(requested.to_path_buf()))?;
    if flavor == Flavor::Runc {
        if let RuncCheck::Outdated(warning) = check_runc_version(&binary, &version)? {
            tracing::warn!("{warning}");
        }
    }
    Ok((binary, flavor))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_pid_files_live_in_a_private_directory_under_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runc");
        let a = exec_pid_file(&root).unwrap();
        let b = exec_pid_file(&root).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(tmp.path()), "{}", a.display());
        assert!(!a.starts_with(std::env::temp_dir().join("skiff-exec")));
        let mode = std::fs::metadata(a.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    fn fake_sys(v2_controllers: Option<&str>, v1: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if v1 {
            std::fs::create_dir_all(d.path().join("memory")).unwrap();
        }
        if let Some(c) = v2_controllers {
            std::fs::create_dir_all(d.path().join("unified")).unwrap();
            std::fs::write(d.path().join("unified/cgroup.controllers"), c).unwrap();
        }
        d
    }

    #[test]
    fn hybrid_hosts_are_recognised() {
        let hybrid = fake_sys(Some("hugetlb\n"), true);
        assert_eq!(
            hybrid_v2_controllers(hybrid.path()),
            Some(vec!["hugetlb".to_string()])
        );
        // Controllers moved off v2: crun is fine.
        assert_eq!(
            hybrid_v2_controllers(fake_sys(Some("\n"), true).path()),
            None
        );
        // Pure v1 and pure v2.
        assert_eq!(hybrid_v2_controllers(fake_sys(None, true).path()), None);
        assert_eq!(
            hybrid_v2_controllers(fake_sys(Some("cpu memory"), false).path()),
            None
        );
    }

    #[test]
    fn a_runc_without_the_cve_2024_21626_fix_is_refused_and_an_old_one_is_warned_about() {
        let p = Path::new("/usr/sbin/runc");
        let debian = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        let outdated = check_runc_version(p, debian).unwrap();
        let RuncCheck::Outdated(warning) = outdated else {
            panic!("{outdated:?}")
        };
        for cve in [
            "CVE-2025-31133",
            "CVE-2025-52565",
            "CVE-2025-52881",
            "1.2.8",
            "1.3.3",
        ] {
            assert!(warning.contains(cve), "{warning}");
        }
        let later_debian = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u3\n";
        assert!(check_runc_version(p, later_debian).is_ok());
        for vulnerable in [
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n",
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u0\n",
            "runc version 1.1.11\ncommit: v1.1.11-0-g4bccb38c\n",
            "runc version 1.0.0-rc93\n",
        ] {
            let err = check_runc_version(p, vulnerable).unwrap_err();
            assert!(
                matches!(err, RuntimeChoiceError::Vulnerable { .. }),
                "{vulnerable}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("CVE-2024-21626") && msg.contains("--runtime"),
                "{msg}"
            );
        }
        assert!(matches!(
            check_runc_version(p, "runc version 1.1.12\n").unwrap(),
            RuncCheck::Outdated(_)
        ));
        assert!(matches!(
            check_runc_version(p, "runc version 1.3.2\n").unwrap(),
            RuncCheck::Outdated(_)
        ));
        for current in [
            "runc version 1.2.8\n",
            "runc version 1.3.3\n",
            "runc version 1.4.0\n",
        ] {
            assert_eq!(check_runc_version(p, current).unwrap(), RuncCheck::Current);
        }
        let err = check_runc_version(p, "runc: unknown flag\n").unwrap_err();
        assert!(err.to_string().contains("cannot tell which runc"), "{err}");
        // The agent's own choice goes through the check: a runtime that
        // says it is an unfixed runc is refused at startup.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runc");
        std::fs::write(&fake, "#!/bin/sh\necho 'runc version 1.1.11'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let v2 = fake_sys(Some("cpu memory pids"), false);
        assert!(matches!(
            choose_runtime(&fake, v2.path()),
            Err(RuntimeChoiceError::Vulnerable { .. })
        ));
        // The runc this machine has is accepted (Debian's backport, or newer).
        if let Some(real) = find_program(Path::new("runc")) {
            choose_runtime(&real, v2.path()).unwrap();
        }
    }

    #[test]
    fn crun_is_refused_on_a_hybrid_host_with_a_way_out() {
        let hybrid = fake_sys(Some("hugetlb"), true);
        let err = choose_runtime(Path::new("crun"), hybrid.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hybrid mode"), "{msg}");
        assert!(msg.contains("hugetlb"), "{msg}");
        assert!(msg.contains("--runtime runc"), "{msg}");
        // A runtime found by path that says it is crun is refused too.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("my-runtime");
        std::fs::write(&fake, "#!/bin/sh\necho 'crun version 1.8.1'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            choose_runtime(&fake, hybrid.path()),
            Err(RuntimeChoiceError::CrunOnHybrid { .. })
        ));
        // On a pure v2 host the same binary is accepted.
        let v2 = fake_sys(Some("cpu memory pids"), false);
        assert_eq!(
            choose_runtime(&fake, v2.path()).unwrap(),
            (fake, Flavor::Crun)
        );
        assert_eq!(
            choose_runtime(Path::new("no-such-runtime-here"), v2.path()).unwrap_err(),
            RuntimeChoiceError::Missing("no-such-runtime-here".into())
        );
    }
}
