//! Starting and stopping the processes a benchmark measures.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `n` distinct free loopback ports for servers to listen on, below the
/// kernel's ephemeral range (32768 and up on Linux): a port handed out
/// there could meanwhile become the local end of some outgoing connection
/// (etcd's peers dial each other while Skiff's servers start), and the
/// server meant for it would fail to bind. All are held until all are
/// found, so no two are the same.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + ((seed >> 33) % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "free ports between 20000 and 32000");
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Kills the child on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub program: PathBuf,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let mut p = Proc {
            child: None,
            args: args.to_vec(),
            program: program.to_path_buf(),
            log: log.to_path_buf(),
        };
        p.start()?;
        Ok(p)
    }

    /// CPU time the process has used so far (user and system, from
    /// `/proc/PID/stat`, in USER_HZ ticks of 10 ms); 0 once it is gone.
    pub fn cpu_ticks(&self) -> u64 {
        self.child.as_ref().map_or(0, |c| cpu_ticks_of(c.id()))
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `check` holds, polling every 50 ms.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` every 20 ms until it answers `Some`, or fails after `limit`
/// naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time process `pid` has used so far (user and system, from
/// `/proc/PID/stat`, in USER_HZ ticks of 10 ms); 0 once it is gone.
pub fn cpu_ticks_of(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
