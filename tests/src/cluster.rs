//! Several `skiff server` processes on loopback. Raft traffic between each
//! ordered pair of servers goes through a TCP proxy in the test process, so
//! a test can cut links (a partition) the way a real network would: open
//! connections are dropped and new ones refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::ServerProc;

/// A proxy for one direction of one peer link: it forwards connections to
/// whatever address the target server last wrote to its `peer.addr`.
struct Link {
    addr: String,
    blocked: watch::Sender<bool>,
}

async fn start_link(target_dir: PathBuf) -> Link {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (blocked, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                return;
            };
            if *rx.borrow() {
                drop(inbound);
                continue;
            }
            let target = std::fs::read_to_string(target_dir.join("peer.addr")).unwrap_or_default();
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target.trim()).await else {
                    return;
                };
                let (mut a, mut b) = (inbound, outbound);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    _ = rx.wait_for(|blocked| *blocked) => {}
                }
            });
        }
    });
    Link { addr, blocked }
}

/// N servers with proxied peer links.
pub struct ServerCluster {
    pub servers: Vec<Arc<Mutex<ServerProc>>>,
    /// links[i][j]: server i+1's connection to server j+1.
    links: Vec<Vec<Option<Link>>>,
    pub root: PathBuf,
}

impl ServerCluster {
    /// Starts `n` servers (ids 1..=n) as a static cluster; `extra` args go
    /// to every server.
    pub async fn start(root: &Path, n: usize, extra: &[&str]) -> ServerCluster {
        let dirs: Vec<PathBuf> = (1..=n).map(|i| root.join(format!("s{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut links = Vec::new();
        for i in 0..n {
            let mut row = Vec::new();
            for (j, dir) in dirs.iter().enumerate() {
                row.push(if i == j {
                    None
                } else {
                    Some(start_link(dir.clone()).await)
                });
            }
            links.push(row);
        }
        let mut servers = Vec::new();
        for i in 0..n {
            let peers: Vec<String> = (0..n)
                .map(|j| match &links[i][j] {
                    Some(l) => format!("{}={}", j + 1, l.addr),
                    None => format!("{}=127.0.0.1:0", j + 1),
                })
                .collect();
            let id = (i + 1).to_string();
            let peers = peers.join(",");
            let mut args = vec!["--id", &id, "--peers", &peers];
            args.extend_from_slice(extra);
            let dir = dirs[i].clone();
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let proc_ = tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                ServerProc::start_with(&dir, "127.0.0.1:0", &a)
            })
            .await
            .unwrap();
            servers.push(Arc::new(Mutex::new(proc_)));
        }
        ServerCluster {
            servers,
            links,
            root: root.to_path_buf(),
        }
    }

    pub fn url(&self, i: usize) -> String {
        self.servers[i].lock().unwrap().url()
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Every server's URL, joined by commas, with server `first` at place
    /// `at` (agents start at the place in their list their name picks:
    /// `skiff_agent::servers::first_server`).
    pub fn urls_with(&self, first: usize, at: usize) -> String {
        let mut urls: Vec<String> = (0..self.servers.len())
            .filter(|i| *i != first)
            .map(|i| self.url(i))
            .collect();
        urls.insert(at.min(urls.len()), self.url(first));
        urls.join(",")
    }

    /// Cuts every link between `side` and the other servers (0-based).
    pub fn partition(&self, side: &[usize]) {
        let side: BTreeSet<usize> = side.iter().copied().collect();
        for (i, row) in self.links.iter().enumerate() {
            for (j, link) in row.iter().enumerate() {
                if let Some(l) = link {
                    let _ = l.blocked.send(side.contains(&i) != side.contains(&j));
                }
            }
        }
    }

    pub fn heal(&self) {
        for row in &self.links {
            for l in row.iter().flatten() {
                let _ = l.blocked.send(false);
            }
        }
    }

    pub async fn status(&self, i: usize) -> Option<skiff_client_status::Status> {
        let url = self.url(i);
        let mut c = tokio::time::timeout(Duration::from_secs(2), crate::connect(&url))
            .await
            .ok()?
            .ok()?;
        let s = tokio::time::timeout(Duration::from_secs(2), c.status())
            .await
            .ok()?
            .ok()?;
        Some(skiff_client_status::Status {
            id: s.id,
            leader_id: s.leader_id,
            role: s.role,
            commit: s.commit_index,
            applied: s.applied_index,
            first_index: s.first_index,
            snapshot_index: s.snapshot_index,
            digest: s.state_digest,
            voters: s.voters,
        })
    }

    /// The 0-based index of the server every live server agrees leads.
    pub async fn leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            for i in 0..self.servers.len() {
                if let Some(s) = self.status(i).await {
                    if s.role == "leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn kill9(&self, i: usize) {
        let s = self.servers[i].clone();
        tokio::task::spawn_blocking(move || s.lock().unwrap().kill9())
            .await
            .unwrap();
    }

    pub async fn restart(&self, i: usize) {
        let s = self.servers[i].clone();
        tokio::task::spawn_blocking(move || s.lock().unwrap().restart())
            .await
            .unwrap();
    }

    /// Waits until the given servers (0-based) have applied the same index
    /// and hold identical state; returns the state digest.
    pub async fn converged(&self, which: &[usize], limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let mut seen = BTreeSet::new();
            let mut all = true;
            for &i in which {
                match self.status(i).await {
                    Some(s) => {
                        seen.insert((s.applied, s.digest));
                    }
                    None => all = false,
                }
            }
            if all && seen.len() == 1 {
                return seen.into_iter().next().unwrap().1;
            }
            assert!(
                Instant::now() < deadline,
                "servers {which:?} did not converge within {limit:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the tests read from `Status`.
pub mod skiff_client_status {
    #[derive(Debug, Clone)]
    pub struct Status {
        pub id: u64,
        pub leader_id: u64,
        pub role: String,
        pub commit: u64,
        pub applied: u64,
        pub first_index: u64,
        pub snapshot_index: u64,
        pub digest: u64,
        pub voters: Vec<u64>,
    }
}
