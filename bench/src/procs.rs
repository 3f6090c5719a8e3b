//! Starting and stopping the processes a benchmark measures.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; fine for a benchmark).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
