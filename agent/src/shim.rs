//! The container monitor ("shim"): one small process per container that
//! outlives the agent.
//!
//! `skiff shim ...` forks once; the parent waits only until the container
//! has started (or failed to) and exits with 0 or 1, so the agent learns
//! the start result synchronously. The child starts a new session, becomes
//! a child subreaper, and runs `runc run --detach` with two pipes as the
//! container's stdout and stderr. When runc exits, the container's init is
//! re-parented to the shim, so its exit status reaches us. Meanwhile the
//! shim copies what the container writes into timestamped, size-rotated
//! log files ([`crate::crilog`]). When init ends, the shim reads the
//! cgroup's OOM-kill counter, writes `exit.json` (write-then-rename) and
//! exits. The agent is never the container's parent and can restart at
//! will. The agent starts its shims ahead as spares ([`spare`]): forked
//! and detached at once, they take their flags on stdin and report on
//! stdout; from there they run as described.
//!
//! The shim runs before any async runtime exists and starts no threads; it
//! is kept small (no tokio, no allocation per line beyond its buffers).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::crilog::{LineSplitter, LogWriter, Stream};
use crate::sys::{self, Exit, Fork};

/// Files the shim keeps in its state directory.
pub const SHIM_PID: &str = "shim.pid";
pub const INIT_PID: &str = "init.pid";
pub const EXIT_FILE: &str = "exit.json";
pub const RUNTIME_LOG: &str = "runtime.log";
pub const SHIM_LOG: &str = "shim.log";

/// How long the shim keeps reading the container's pipes after its init
/// ended (other processes holding them are killed with the init).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Where `container.log` and its rotated files go.
    pub log_dir: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// The container's cgroup path (`linux.cgroupsPath`), for OOM kills.
    pub cgroup: String,
}

const FLAGS: &[&str] = &[
    "--id",
    "--bundle",
    "--state-dir",
    "--runtime",
    "--runtime-root",
    "--log-dir",
    "--log-max-size",
    "--log-max-files",
    "--cgroup",
];

impl ShimArgs {
    /// The command-line form [`ShimArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let values: [OsString; 9] = [
            self.id.clone().into(),
            self.bundle.clone().into(),
            self.state_dir.clone().into(),
            self.runtime.clone().into(),
            self.runtime_root.clone().into(),
            self.log_dir.clone().into(),
            self.log_max_size.to_string().into(),
            self.log_max_files.to_string().into(),
            self.cgroup.clone().into(),
        ];
        FLAGS
            .iter()
            .zip(values)
            .flat_map(|(f, v)| [OsString::from(f), v])
            .collect()
    }

    /// Parses the flags the agent passes (kept off clap so the shim
    /// touches as little code, and memory, as it can).
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<ShimArgs, String> {
        let mut values: [Option<OsString>; 9] = Default::default();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let i = FLAGS
                .iter()
                .position(|f| flag == **f)
                .ok_or_else(|| format!("unknown flag {flag:?}; expected {}", FLAGS.join(" ")))?;
            values[i] = Some(
                it.next()
                    .ok_or_else(|| format!("{} needs a value", FLAGS[i]))?,
            );
        }
        let mut take = |i: usize| {
            values[i]
                .take()
                .ok_or_else(|| format!("{} is required", FLAGS[i]))
        };
        let text =
            |v: OsString, flag: &str| v.into_string().map_err(|_| format!("{flag} must be UTF-8"));
        let number = |v: OsString, flag: &str| -> Result<u64, String> {
            text(v, flag)?
                .parse()
                .map_err(|_| format!("{flag} must be a number"))
        };
        Ok(ShimArgs {
            id: text(take(0)?, FLAGS[0])?,
            bundle: take(1)?.into(),
            state_dir: take(2)?.into(),
            runtime: take(3)?.into(),
            runtime_root: take(4)?.into(),
            log_dir: take(5)?.into(),
            log_max_size: number(take(6)?, FLAGS[6])?,
            log_max_files: u32::try_from(number(take(7)?, FLAGS[7])?)
                .map_err(|_| "--log-max-files is too large".to_string())?,
            cgroup: text(take(8)?, FLAGS[8])?,
        })
    }
}

/// How the container ended, as the shim saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + signal when killed by a signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
    /// When the container started, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

impl ExitRecord {
    pub fn read(state_dir: &Path) -> Option<ExitRecord> {
        let text = fs::read(state_dir.join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }

    /// How long the container ran.
    pub fn ran_for(&self) -> Duration {
        Duration::from_millis(self.finished_at_ms.saturating_sub(self.started_at_ms))
    }

    /// "exited with code 3", "killed by signal 9", ...
    pub fn describe(&self) -> String {
        match (self.oom_killed && !self.succeeded(), self.signal) {
            (true, _) => format!(
                "killed by the OOM killer (memory limit reached; exit code {})",
                self.exit_code
            ),
            (false, Some(sig)) => format!("killed by signal {sig}"),
            (false, None) => format!("exited with code {}", self.exit_code),
        }
    }
}

/// The first argument that makes a shim a spare ([`spare`]).
pub const SPARE: &str = "--spare";

/// `skiff shim --spare LABEL` (what the agent starts) or `skiff shim
/// FLAGS...` (the form agents before spares start: kept, so an agent still
/// running when its binary is replaced by a newer one keeps starting
/// containers); returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|a| a == SPARE) {
        return spare();
    }
    match ShimArgs::parse(args) {
        Ok(a) => run(&a),
        Err(e) => {
            eprintln!("skiff shim (started by the agent, not for direct use): {e}");
            2
        }
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
            let mut report = writer;
            if let Err(e) = detach() {
                let _ = writeln!(report, "shim setup failed: {e}");
                return 1;
            }
            monitor(args, report)
        }
    }
}

/// Leaves the caller's session, adopts the container's init once runc
/// has gone, and ignores the hang-ups and broken pipes of a detached life.
fn detach() -> std::io::Result<()> {
    sys::setsid()?;
    sys::set_child_subreaper()?;
    sys::ignore_hup_and_pipe();
    Ok(())
}

/// `skiff shim --spare LABEL`: a shim started before it is needed, so a
/// container's start does not wait for the shim's own exec, loading, fork
/// and detaching. It forks at once (the first process exits, for the
/// agent to reap), detaches, and waits for its flags on stdin, each ended
/// by a NUL byte; then it runs as a shim started with those flags would,
/// reporting `ok PID` (or the reason it failed) on stdout and closing it.
/// Stdin closed with nothing on it (the agent let it go, or ended) ends
/// it quietly. LABEL is not read: the agent passes its runtime root, so
/// `ps` tells whose spare it is.
pub fn spare() -> i32 {
    match sys::fork() {
        Err(e) => {
            eprintln!("shim: fork: {e}");
            1
        }
        Ok(Fork::Parent) => 0,
        Ok(Fork::Child) => spare_child(),
    }
}

fn spare_child() -> i32 {
    use std::os::fd::AsFd;
    // Its stderr goes nowhere: an error is reported with the flags.
    let detached = detach();
    // The report's own descriptor: stdout itself goes to /dev/null with
    // the rest of stdio once the container's log is open.
    let mut report = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fs::File::from(fd),
        Err(e) => {
            eprintln!("shim: stdout: {e}");
            return 1;
        }
    };
    let mut input = Vec::new();
    if std::io::stdin().lock().read_to_end(&mut input).is_err() || input.is_empty() {
        return 0;
    }
    if let Err(e) = detached {
        let _ = writeln!(report, "shim: detaching: {e}");
        return 1;
    }
    let args = match ShimArgs::parse(split_nul(&input)) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(report, "skiff shim --spare: {e}");
            return 2;
        }
    };
    if let Err(e) = fs::create_dir_all(&args.state_dir) {
        let _ = writeln!(
            report,
            "shim: cannot create {}: {e}",
            args.state_dir.display()
        );
        return 1;
    }
    monitor(&args, report)
}

/// Flags as a spare reads them: each ended by a NUL byte.
pub fn join_nul(args: &[OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

fn split_nul(input: &[u8]) -> Vec<OsString> {
    use std::os::unix::ffi::OsStringExt;
    let body = input.strip_suffix(&[0]).unwrap_or(input);
    body.split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Runs the container and watches it, once the caller has detached.
fn monitor(args: &ShimArgs, mut report: impl Write) -> i32 {
    let setup = || -> std::io::Result<LogWriter> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(args.state_dir.join(SHIM_LOG))?;
        sys::redirect_stdio(&log)?;
        let me = std::process::id() as i32;
        let start = sys::process_start_time(me).unwrap_or(0);
        write_atomic(
            &args.state_dir.join(SHIM_PID),
            format!("{me} {start}").as_bytes(),
        )?;
        LogWriter::open(&args.log_dir, args.log_max_size, args.log_max_files)
    };
    let mut log = match setup() {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(report, "shim setup failed: {e}");
            return 1;
        }
    };
    let (init, mut out, mut err) = match start_container(args) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("{e}");
            let _ = writeln!(report, "{e}");
            return 1;
        }
    };
    let started_at_ms = now_ms();
    let _ = writeln!(report, "ok {init}");
    drop(report);
    // From here on the shim only copies output and waits: let go of the
    // start-up code it no longer runs.
    sys::release_startup_pages();

    let exit = pump(init, &mut out, &mut err, &mut log);
    let oom_killed = oom_kills(Path::new(CGROUP_ROOT), &args.cgroup).unwrap_or(0) > 0;
    let (exit_code, signal) = match exit {
        Exit::Code(code) => (code, None),
        Exit::Signal(sig) => (128 + sig, Some(sig)),
    };
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed,
        started_at_ms,
        finished_at_ms: now_ms(),
    };
    let json = serde_json::to_vec(&record).expect("exit record serializes");
    if let Err(e) = write_atomic(&args.state_dir.join(EXIT_FILE), &json) {
        eprintln!("cannot record the exit: {e}");
        return 1;
    }
    0
}

/// The container's output pipe for one stream, until it reaches EOF.
struct Pipe {
    reader: Option<std::io::PipeReader>,
    lines: LineSplitter,
}

/// Copies the container's output into the log until its init has ended
/// and the pipes are closed (or a short while has passed); returns how
/// init ended.
fn pump(init: i32, out: &mut Pipe, err: &mut Pipe, log: &mut LogWriter) -> Exit {
    // Readable once init has ended; without pidfds, poll with a timeout.
    let pidfd = sys::pidfd_open(init).ok();
    let mut exit: Option<Exit> = None;
    let mut drain_until: Option<Instant> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = Vec::with_capacity(3);
        for p in [&*out, &*err] {
            if let Some(r) = &p.reader {
                fds.push(r.as_raw_fd());
            }
        }
        let pid_slot = match (&pidfd, exit) {
            (Some(fd), None) => {
                fds.push(fd.as_raw_fd());
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let timeout = match drain_until {
            Some(t) => t.saturating_duration_since(Instant::now()).as_millis() as i32,
            None if pidfd.is_some() => 5_000,
            None => 200,
        };
        let ready = if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(timeout.max(0) as u64));
            Vec::new()
        } else {
            sys::poll_readable(&fds, timeout).unwrap_or_default()
        };
        let mut i = 0;
        for (pipe, stream) in [(&mut *out, Stream::Stdout), (&mut *err, Stream::Stderr)] {
            let Some(r) = pipe.reader.as_mut() else {
                continue;
            };
            if ready.get(i).copied().unwrap_or(false) {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = pipe.lines.finish(log);
                        pipe.reader = None;
                    }
                    Ok(n) => {
                        if let Err(e) = pipe.lines.feed(&buf[..n], log) {
                            eprintln!("writing the {} log: {e}", stream.as_str());
                        }
                    }
                }
            }
            i += 1;
        }
        let check_children = match pid_slot {
            Some(slot) => ready.get(slot).copied().unwrap_or(false),
            None => exit.is_none(),
        };
        if check_children {
            while let Ok(Some((pid, how))) = sys::wait_any_nohang() {
                if pid == init {
                    exit = Some(how);
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
            }
            if exit.is_none() && !sys::process_exists(init) {
                eprintln!("container init {init} was not our child; its exit code is unknown");
                exit = Some(Exit::Code(255));
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
        if let Some(e) = exit {
            let closed = out.reader.is_none() && err.reader.is_none();
            if closed || drain_until.is_some_and(|t| Instant::now() >= t) {
                for p in [out, err] {
                    let _ = p.lines.finish(log);
                }
                // Reap whatever else was left to us.
                while let Ok(Some(_)) = sys::wait_any_nohang() {}
                return e;
            }
        }
    }
}

/// `runc run --detach`; returns the container's init pid and the read ends
/// of its stdout and stderr.
///
/// One `run` costs one runtime process; `create` + `start` cost two (about
/// a third more time per start here) and buy nothing the shim uses yet.
fn start_container(args: &ShimArgs) -> Result<(i32, Pipe, Pipe), String> {
    let pipe = || std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let runtime_log = args.state_dir.join(RUNTIME_LOG);
    let pid_file = args.state_dir.join(INIT_PID);
    let status = Command::new(&args.runtime)
        .arg("--root")
        .arg(&args.runtime_root)
        .arg("--log")
        .arg(&runtime_log)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.display()))?;
    if !status.success() {
        return Err(last_runtime_error(&runtime_log)
            .unwrap_or_else(|| format!("runc run failed: {status}")));
    }
    let init: i32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("runc wrote no pid to {}", pid_file.display()))?;
    let pipe = |r, stream| Pipe {
        reader: Some(r),
        lines: LineSplitter::new(stream),
    };
    Ok((
        init,
        pipe(out_r, Stream::Stdout),
        pipe(err_r, Stream::Stderr),
    ))
}

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How many times the OOM killer struck in the container's memory cgroup:
/// `memory.oom_control`'s `oom_kill` on cgroup v1, `memory.events`'s on v2.
pub fn oom_kills(root: &Path, cgroup: &str) -> Option<u64> {
    let rel = cgroup.trim_start_matches('/');
    let candidates = [
        (root.join("memory").join(rel).join("memory.oom_control")),
        (root.join(rel).join("memory.events")),
    ];
    candidates.iter().find_map(|p| {
        let text = fs::read_to_string(p).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == "oom_kill").then(|| v.trim().parse().ok())?
        })
    })
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
///
/// There is no fsync: these files describe processes, and a crash of the
/// machine ends the processes too; what matters is that the agent never
/// reads half a file, and the rename gives that. (An fsync here cost
/// milliseconds on every container start.)
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, data, 0o644)
}

/// [`write_atomic`] for a file only its owner may read (0600).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, data, 0o600)
}

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_flags_round_trip() {
        let a = ShimArgs {
            id: "skiff-1".into(),
            bundle: "/b".into(),
            state_dir: "/s".into(),
            runtime: "/usr/bin/runc".into(),
            runtime_root: "/r".into(),
            log_dir: "/l".into(),
            log_max_size: 1024,
            log_max_files: 3,
            cgroup: "/skiff/skiff-1".into(),
        };
        assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        // As a spare reads them from stdin.
        assert_eq!(
            ShimArgs::parse(split_nul(&join_nul(&a.to_args()))).unwrap(),
            a
        );
        let err = ShimArgs::parse(vec!["--id".into()]).unwrap_err();
        assert!(err.contains("--id needs a value"), "{err}");
        let err = ShimArgs::parse(vec!["--colour".into(), "x".into()]).unwrap_err();
        assert!(err.contains("unknown flag"), "{err}");
        let err = ShimArgs::parse(vec!["--id".into(), "x".into()]).unwrap_err();
        assert!(err.contains("--bundle is required"), "{err}");
    }

    #[test]
    fn oom_kills_are_read_from_either_cgroup_version() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("memory/skiff/c1");
        fs::create_dir_all(&v1).unwrap();
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(root.path(), "/skiff/c1"), Some(2));
        let v2 = root.path().join("skiff/c2");
        fs::create_dir_all(&v2).unwrap();
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kills(root.path(), "/skiff/c2"), Some(1));
        assert_eq!(oom_kills(root.path(), "/skiff/none"), None);
    }

    #[test]
    fn exits_describe_themselves() {
        let r = |exit_code, signal, oom_killed| ExitRecord {
            exit_code,
            signal,
            oom_killed,
            started_at_ms: 1_000,
            finished_at_ms: 4_000,
        };
        assert_eq!(r(3, None, false).describe(), "exited with code 3");
        assert_eq!(r(137, Some(9), false).describe(), "killed by signal 9");
        assert!(r(137, Some(9), true)
            .describe()
            .starts_with("killed by the OOM killer"));
        assert!(r(0, None, true).succeeded());
        assert_eq!(r(0, None, false).ran_for(), Duration::from_secs(3));
    }
}
