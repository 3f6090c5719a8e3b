//! A three-server Skiff cluster on loopback for the load generators
//! (`raftbench`, `scalebench`).

use std::path::Path;
use std::time::Duration;

use crate::creds::global as creds;
use crate::procs::Proc;

/// Three `skiff server` processes founding one cluster.
pub struct SkiffCluster {
    pub procs: Vec<Proc>,
    pub urls: Vec<String>,
}

impl SkiffCluster {
    /// Starts three servers on `ports` (three peer ports, then three API
    /// ports), each with `security` (see `Creds::shared_ca`), `--metrics-addr
    /// metrics` and `extra`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        ports: &[u16],
        security: &[String],
        metrics: &str,
        extra: &[String],
    ) -> anyhow::Result<SkiffCluster> {
        let (peers, apis) = ports.split_at(3);
        let peer_list: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let mut args: Vec<String> = vec![
                "server".into(),
                "--metrics-addr".into(),
                metrics.into(),
                "--id".into(),
                (i + 1).to_string(),
                "--data-dir".into(),
                dir.join(format!("skiff{}", i + 1)).display().to_string(),
                "--api".into(),
                format!("127.0.0.1:{}", apis[i]),
                "--peer-addr".into(),
                format!("127.0.0.1:{}", peers[i]),
                "--peers".into(),
                peer_list.join(","),
            ];
            args.extend_from_slice(security);
            args.extend_from_slice(extra);
            procs.push(Proc::spawn(
                bin,
                &args,
                &dir.join(format!("skiff{}.log", i + 1)),
            )?);
        }
        Ok(SkiffCluster {
            procs,
            urls: apis
                .iter()
                .map(|p| creds().url(&format!("127.0.0.1:{p}")))
                .collect(),
        })
    }

    /// The server that says it leads, if one does.
    pub async fn leader(&self) -> Option<usize> {
        leader_among(&self.urls, |_| true, Duration::from_millis(500)).await
    }
}

/// The position in `urls` of the server that says it leads, asking only
/// those `alive` lets through, each given `patience` to connect and
/// answer.
pub async fn leader_among(
    urls: &[String],
    alive: impl Fn(usize) -> bool,
    patience: Duration,
) -> Option<usize> {
    for (i, url) in urls.iter().enumerate().filter(|(i, _)| alive(*i)) {
        let Ok(Ok(mut c)) = tokio::time::timeout(patience, creds().connect(url)).await else {
            continue;
        };
        if let Ok(Ok(s)) = tokio::time::timeout(patience, c.status()).await {
            if s.role == "leader" {
                return Some(i);
            }
        }
    }
    None
}
