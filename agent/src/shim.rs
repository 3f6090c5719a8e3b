//! The container monitor ("shim"): one small process per container that
//! outlives the agent.
//!
//! `skiff shim ...` forks once; the parent waits only until the container
//! has started (or failed to) and exits with 0 or 1, so the agent learns
//! the start result synchronously. The child starts a new session, becomes
//! a child subreaper, runs `runc create` and `runc start` with the log
//! files as the container's stdout and stderr, and then waits: when
//! `runc create` exits, the container's init is re-parented to the shim,
//! so its exit status reaches us. The shim writes it to `exit.json`
//! (write-then-rename) and exits. The agent is never the container's
//! parent and can restart at will.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sys::{self, Exit, Fork};

/// Files the shim keeps in its state directory.
pub const SHIM_PID: &str = "shim.pid";
pub const INIT_PID: &str = "init.pid";
pub const EXIT_FILE: &str = "exit.json";
pub const RUNTIME_LOG: &str = "runtime.log";
pub const SHIM_LOG: &str = "shim.log";

#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// Container id for the runtime.
    pub id: String,
    pub bundle: PathBuf,
    /// Where the shim writes `shim.pid`, `init.pid`, `exit.json`.
    pub state_dir: PathBuf,
    /// runc (or a runc-compatible runtime).
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl ShimArgs {
    /// The command-line form `skiff shim` parses back.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |flag: &str, value: &std::ffi::OsStr| {
            v.push(flag.into());
            v.push(value.to_owned());
        };
        push("--id", self.id.as_ref());
        push("--bundle", self.bundle.as_os_str());
        push("--state-dir", self.state_dir.as_os_str());
        push("--runtime", self.runtime.as_os_str());
        push("--runtime-root", self.runtime_root.as_os_str());
        push("--stdout", self.stdout.as_os_str());
        push("--stderr", self.stderr.as_os_str());
        v
    }
}

/// How the container ended, as the shim saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + signal when killed by a signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

impl ExitRecord {
    pub fn read(state_dir: &Path) -> Option<ExitRecord> {
        let text = fs::read(state_dir.join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// Runs the shim; returns the process exit code.
pub fn run(args: &ShimArgs) -> i32 {
    if let Err(e) = fs::create_dir_all(&args.state_dir) {
        eprintln!("shim: cannot create {}: {e}", args.state_dir.display());
        return 1;
    }
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shim: pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("shim: fork: {e}");
            1
        }
        Ok(Fork::Parent) => {
            drop(writer);
            let mut report = String::new();
            let _ = reader.read_to_string(&mut report);
            if report.starts_with("ok") {
                0
            } else {
                let msg = report.trim();
                eprintln!(
                    "{}",
                    if msg.is_empty() {
                        "shim exited before the container started"
                    } else {
                        msg
                    }
                );
                1
            }
        }
        Ok(Fork::Child) => {
            drop(reader);
            monitor(args, writer)
        }
    }
}

fn monitor(args: &ShimArgs, mut report: std::io::PipeWriter) -> i32 {
    let setup = || -> std::io::Result<()> {
        sys::setsid()?;
        sys::set_child_subreaper()?;
        sys::ignore_hup_and_pipe();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.state_dir.join(SHIM_LOG))?;
        sys::redirect_stdio(&log)?;
        let me = std::process::id() as i32;
        let start = sys::process_start_time(me).unwrap_or(0);
        write_atomic(
            &args.state_dir.join(SHIM_PID),
            format!("{me} {start}").as_bytes(),
        )
    };
    if let Err(e) = setup() {
        let _ = writeln!(report, "shim setup failed: {e}");
        return 1;
    }
    let init = match start_container(args) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("{e}");
            let _ = writeln!(report, "{e}");
            return 1;
        }
    };
    let _ = writeln!(report, "ok {init}");
    drop(report);

    let exit = loop {
        match sys::wait_any() {
            Ok(Some((pid, exit))) if pid == init => break exit,
            Ok(Some(_)) => continue, // some other orphan we adopted
            Ok(None) => {
                // Not our child (should not happen): watch it from outside.
                while sys::process_exists(init) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                eprintln!("container init {init} was not our child; its exit code is unknown");
                break Exit::Code(255);
            }
            Err(e) => {
                eprintln!("waitpid: {e}");
                break Exit::Code(255);
            }
        }
    };
    let record = match exit {
        Exit::Code(code) => ExitRecord {
            exit_code: code,
            signal: None,
            finished_at_ms: now_ms(),
        },
        Exit::Signal(sig) => ExitRecord {
            exit_code: 128 + sig,
            signal: Some(sig),
            finished_at_ms: now_ms(),
        },
    };
    let json = serde_json::to_vec(&record).expect("exit record serializes");
    if let Err(e) = write_atomic(&args.state_dir.join(EXIT_FILE), &json) {
        eprintln!("cannot record the exit: {e}");
        return 1;
    }
    0
}

/// `runc create` then `runc start`; returns the container's init pid.
fn start_container(args: &ShimArgs) -> Result<i32, String> {
    let open_log = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("cannot open log {}: {e}", p.display()))
    };
    let stdout = open_log(&args.stdout)?;
    let stderr = open_log(&args.stderr)?;
    let runtime_log = args.state_dir.join(RUNTIME_LOG);
    let pid_file = args.state_dir.join(INIT_PID);
    let runtime = |verb: &str| {
        let mut c = Command::new(&args.runtime);
        c.arg("--root")
            .arg(&args.runtime_root)
            .arg("--log")
            .arg(&runtime_log)
            .arg("--log-format")
            .arg("json")
            .arg(verb);
        c
    };
    let status = runtime("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.display()))?;
    if !status.success() {
        return Err(last_runtime_error(&runtime_log)
            .unwrap_or_else(|| format!("runc create failed: {status}")));
    }
    let init: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("runc wrote no pid to {}", pid_file.display()))?;
    let status = runtime("start")
        .arg(&args.id)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.display()))?;
    if !status.success() {
        let msg = last_runtime_error(&runtime_log)
            .unwrap_or_else(|| format!("runc start failed: {status}"));
        let _ = runtime("delete").arg("--force").arg(&args.id).status();
        return Err(msg);
    }
    Ok(init)
}

/// The message of the last error line runc wrote to its JSON log.
pub fn last_runtime_error(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "error")
            .then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader sees the old content or the new, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shim's pid file: `PID STARTTIME`.
pub fn read_shim_pid(state_dir: &Path) -> Option<(i32, u64)> {
    let text = fs::read_to_string(state_dir.join(SHIM_PID)).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// True while the shim recorded in `state_dir` still runs (same pid and
/// same start time, so a recycled pid does not count).
pub fn shim_alive(state_dir: &Path) -> bool {
    match read_shim_pid(state_dir) {
        Some((pid, start)) => sys::process_start_time(pid) == Some(start),
        None => false,
    }
}
