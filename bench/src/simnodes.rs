//! Simulated nodes: many agents in one process, each the agent's own code
//! from the join on (`skiff_agent::sim`: its credentials from a node
//! token, registration, heartbeats, the allocation watch, the reconciler
//! with its start pipeline, status reports, failing over between servers)
//! over a pretend runtime: a container "starts" `start_delay` after the
//! start call and "exits" when signalled. For measuring and testing the
//! control plane at sizes one machine cannot run containers for (issue
//! 21's `simnodes`).
//!
//! Every start is counted per allocation id, so a test can check that
//! each allocation ran exactly once. Nodes can offer GPUs from a fake
//! inventory (`SimOptions::gpus`; a node counts being told to use a GPU
//! that a container running there holds) and fail the containers of
//! chosen jobs (`SimOptions::fail_jobs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_agent::session::Calls;
use skiff_agent::sim::{self, SimBehaviour, SimNode, SimRuntime, SimStarts};

/// How the simulated nodes behave.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// From an allocation's start call to its container running.
    pub start_delay: Duration,
    /// What each node offers.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// GPUs each node has (a fake inventory: `GPU-NODE-I`, 80 GB,
    /// healthy).
    pub gpus: u32,
    /// Containers of jobs whose names start with this fail to start.
    pub fail_jobs: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            start_delay: Duration::from_millis(200),
            cpu_millis: 32_000,
            memory_bytes: 128 << 30,
            gpus: 0,
            fail_jobs: None,
        }
    }
}

/// What the simulated nodes did: their calls to the servers (all nodes
/// together) and their containers' starts.
#[derive(Debug, Default)]
pub struct SimStats {
    pub calls: Arc<Calls>,
    pub runtime: Arc<SimStarts>,
    /// Nodes that could not begin (their join or directory failed).
    pub not_begun: AtomicU64,
}

impl SimStats {
    pub fn heartbeats(&self) -> u64 {
        self.calls.heartbeats.load(Ordering::Relaxed)
    }

    pub fn registered(&self) -> u64 {
        self.calls.registered.load(Ordering::Relaxed)
    }

    /// Containers that failed to start because their job was told to.
    pub fn failed(&self) -> u64 {
        self.runtime.failed.load(Ordering::Relaxed)
    }

    pub fn gpu_conflicts(&self) -> u64 {
        self.runtime.gpu_conflicts.load(Ordering::Relaxed)
    }

    /// Times each allocation's container started.
    pub fn starts(&self) -> std::collections::HashMap<String, u32> {
        self.runtime
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Allocations started more than once.
    pub fn started_twice(&self) -> usize {
        self.starts().values().filter(|n| **n > 1).count()
    }

    /// Containers started of the jobs whose names start with `prefix`.
    pub fn started(&self, prefix: &str) -> u64 {
        self.runtime
            .by_job
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(job, _)| job.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The simulated nodes, running until dropped.
pub struct SimNodes {
    pub stats: Arc<SimStats>,
    /// The image their jobs name (`oci:...`, a one-file layout under the
    /// nodes' image root).
    pub image: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How many nodes are between starting and registered at once (a lab's
/// machines boot together, not all in the same millisecond).
const JOINING_AT_ONCE: u64 = 16;

/// The image the nodes of `dir` offer (see [`SimNodes::image`]).
fn image_root(dir: &Path) -> PathBuf {
    dir.join("image-root")
}

/// Starts `names` as nodes of the cluster whose servers are at `urls`
/// (TLS; `token` is a node join token), each with its data under
/// `dir/nodes/NAME`; returns once each has registered.
pub async fn start(
    dir: &Path,
    urls: &[String],
    token: &str,
    names: &[String],
    opts: SimOptions,
) -> anyhow::Result<SimNodes> {
    anyhow::ensure!(!urls.is_empty(), "no server to join");
    let layout = image_root(dir).join("sim");
    sim::write_image(&layout)?;
    let stats = Arc::new(SimStats::default());
    let behaviour = SimBehaviour {
        start_delay: opts.start_delay,
        fail_jobs: opts.fail_jobs.clone(),
    };
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node_dir = dir.join("nodes").join(name);
        let fake_gpus = (opts.gpus > 0)
            .then(|| write_gpus(&dir.join("gpus"), name, opts.gpus))
            .transpose()?;
        let node = SimNode {
            name: name.clone(),
            servers: urls.to_vec(),
            token: token.to_string(),
            data_dir: node_dir,
            image_roots: vec![image_root(dir)],
            capacity: skiff_model::Resources::new(opts.cpu_millis, opts.memory_bytes),
            fake_gpus,
        };
        let runtime = Arc::new(SimRuntime::new(behaviour.clone(), stats.runtime.clone()));
        let s = stats.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = sim::run_node(node, runtime, s.calls.clone()).await {
                eprintln!("a simulated node could not begin: {e}");
                s.not_begun.fetch_add(1, Ordering::Relaxed);
            }
        }));
        wait_begun(&stats, (i as u64 + 1).saturating_sub(JOINING_AT_ONCE)).await?;
    }
    wait_begun(&stats, names.len() as u64).await?;
    Ok(SimNodes {
        stats,
        image: format!("oci:{}", image_root(dir).join("sim").display()),
        tasks,
    })
}

/// Waits until `n` nodes have registered (or failed to begin, an error).
async fn wait_begun(stats: &SimStats, n: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let failed = stats.not_begun.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} simulated nodes could not begin");
        if stats.registered() >= n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} simulated nodes registered in 600 s",
            stats.registered()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fake inventory of `gpus` healthy 80 GB GPUs, `GPU-NAME-I`, for node
/// `name`, in `dir`; returns its path.
fn write_gpus(dir: &Path, name: &str, gpus: u32) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.yaml"));
    // /dev/null stands in for every device node (no container runs to
    // open them).
    let mut text = String::from("driver_version: 550.54.15\ncuda_version: \"12.4\"\ngpus:\n");
    for i in 0..gpus {
        text.push_str(&format!(
            "  - {{uuid: GPU-{name}-{i}, model: simulated H100, memory: 80Gi, index: {i}, device: /dev/null}}\n"
        ));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}
