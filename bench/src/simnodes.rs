//! Simulated nodes: many agents in one process, each speaking the real
//! node API to real servers over loopback (join with a node token,
//! register, heartbeat, follow its allocations, report them), with no
//! containers: an allocation the servers want run is reported running
//! after `start_delay`, one they want stopped is reported complete. For
//! measuring and testing the control plane at sizes one machine cannot
//! run containers for (issue 21's `simnodes`).
//!
//! Every start is counted per allocation id ([`SimStats::starts`]), so a
//! test can check that each allocation ran exactly once. Nodes can offer
//! GPUs from a fake inventory (`SimOptions::gpus`; a node counts being
//! told to use a GPU it lacks or one that is taken) and fail the
//! allocations of chosen jobs (`SimOptions::fail_jobs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_proto::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The image root every simulated node registers: jobs for them name
/// `oci:/srv/images/...` (nothing is read).
pub const IMAGE_ROOT: &str = "/srv/images";

/// How the simulated nodes behave.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// From an allocation reaching the node to it reporting it running.
    pub start_delay: Duration,
    /// What each node offers.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// GPUs each node registers (a fake inventory: `GPU-NODE-I`, 80 GB,
    /// healthy).
    pub gpus: u32,
    /// Allocations of jobs whose names start with this fail at start
    /// (reported `failed`, exit code 1) instead of running.
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

/// What the simulated nodes did.
#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Calls that failed, all kinds together, and by kind below.
    pub errors: AtomicU64,
    pub register_errors: AtomicU64,
    pub heartbeat_errors: AtomicU64,
    /// Watch calls refused, and watch streams that ended.
    pub watch_errors: AtomicU64,
    pub report_errors: AtomicU64,
    /// Times each allocation was reported running.
    pub starts: Mutex<HashMap<String, u32>>,
    /// Allocations reported running, by job name (without its namespace).
    pub started_by_job: Mutex<HashMap<String, u64>>,
    /// Allocations reported failed (`SimOptions::fail_jobs`).
    pub failed: AtomicU64,
    /// Times a node was told to run an allocation on a GPU it does not
    /// have, or one that another allocation running there holds.
    pub gpu_conflicts: AtomicU64,
}

impl SimStats {
    /// Counts a failed call of the kind `kind` counts.
    fn failed_call(&self, kind: &AtomicU64) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        kind.fetch_add(1, Ordering::Relaxed);
    }

    /// Allocations reported running more than once.
    pub fn started_twice(&self) -> usize {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|n| **n > 1)
            .count()
    }

    /// Allocations reported running of the jobs whose names start with
    /// `prefix`.
    pub fn started(&self, prefix: &str) -> u64 {
        self.started_by_job
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How many nodes join at once (a lab's machines boot together).
const JOINING_AT_ONCE: usize = 16;

/// Joins `names` to the cluster whose servers are at `urls` (TLS; `token`
/// is a node join token), node `i` first talking to server `i % len` and
/// moving to the next when a call fails (as agents follow their server
/// list), and runs them.
pub async fn start(
    urls: &[String],
    token: &str,
    names: &[String],
    opts: SimOptions,
) -> anyhow::Result<SimNodes> {
    anyhow::ensure!(!urls.is_empty(), "no server to join");
    let stats = Arc::new(SimStats::default());
    let mut tasks = Vec::new();
    let mut joining = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        if joining.len() >= JOINING_AT_ONCE {
            tasks.push(start_one(&mut joining, &opts, &stats).await?);
        }
        let (urls, token, name) = (urls.to_vec(), token.to_string(), name.clone());
        joining.spawn(async move {
            let joiner = skiff_client::join::Joiner::Node(name.clone());
            let mut last = None;
            for attempt in 0..(3 * urls.len()) {
                let url = &urls[(i + attempt) % urls.len()];
                match skiff_client::join::join(url, &token, &joiner).await {
                    Ok(joined) => return Ok((i, name, urls, joined)),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(anyhow::anyhow!("{name} cannot join: {last:?}"))
        });
    }
    while !joining.is_empty() {
        tasks.push(start_one(&mut joining, &opts, &stats).await?);
    }
    Ok(SimNodes { stats, tasks })
}

type Joined = anyhow::Result<(usize, String, Vec<String>, skiff_client::join::Joined)>;

/// Waits for one join to end and starts that node.
async fn start_one(
    joining: &mut tokio::task::JoinSet<Joined>,
    opts: &SimOptions,
    stats: &Arc<SimStats>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (i, name, urls, joined) = joining
        .join_next()
        .await
        .expect("one is joining")
        .map_err(|e| anyhow::anyhow!("a join task failed: {e}"))??;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&joined.ca_pem))
        .identity(Identity::from_pem(&joined.cert_pem, &joined.key_pem))
        .domain_name(skiff_pki::SERVER_DNS);
    let mut clients = Vec::new();
    for url in &urls {
        let channel = Channel::from_shared(url.clone())?
            .tls_config(tls.clone())?
            .connect_lazy();
        clients.push(
            pb::node_api_client::NodeApiClient::new(channel).max_decoding_message_size(64 << 20),
        );
    }
    let node = SimNode {
        name,
        route: Arc::new(Route {
            current: std::sync::atomic::AtomicUsize::new(i % clients.len()),
            clients,
        }),
        opts: opts.clone(),
        stats: stats.clone(),
        reported: HashMap::new(),
    };
    Ok(tokio::spawn(node.run()))
}

/// A node's clients, one per server, and the one it talks to now.
struct Route {
    clients: Vec<pb::node_api_client::NodeApiClient<Channel>>,
    current: std::sync::atomic::AtomicUsize,
}

impl Route {
    /// The server to call now and its client.
    fn api(&self) -> (usize, pb::node_api_client::NodeApiClient<Channel>) {
        let at = self.current.load(Ordering::Relaxed) % self.clients.len();
        (at, self.clients[at].clone())
    }

    /// A call to server `at` failed: the next one, unless another call
    /// moved on already.
    fn failed(&self, at: usize) {
        let _ = self.current.compare_exchange(
            at,
            (at + 1) % self.clients.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

struct SimNode {
    name: String,
    route: Arc<Route>,
    opts: SimOptions,
    stats: Arc<SimStats>,
    /// What this node reported of each allocation (the servers' view
    /// catches up a moment later: not reported twice).
    reported: HashMap<String, i32>,
}

impl SimNode {
    async fn run(mut self) {
        loop {
            let (at, mut api) = self.route.api();
            let reg = api
                .register(pb::RegisterRequest {
                    name: self.name.clone(),
                    capacity: Some(pb::Resources {
                        cpu_millis: self.opts.cpu_millis,
                        memory_bytes: self.opts.memory_bytes,
                        gpus: self.opts.gpus,
                    }),
                    gpus: (0..self.opts.gpus)
                        .map(|i| pb::Gpu {
                            uuid: format!("GPU-{}-{i}", self.name),
                            model: "simulated H100".into(),
                            memory_bytes: 80 << 30,
                            healthy: true,
                            index: i,
                            ..Default::default()
                        })
                        .collect(),
                    reserved: Some(pb::Resources::default()),
                    address: "127.0.0.1:9".into(),
                    agent_version: "simnode".into(),
                    image_roots: vec![IMAGE_ROOT.into()],
                    ..Default::default()
                })
                .await;
            if reg.is_ok() {
                break;
            }
            self.route.failed(at);
            self.stats.failed_call(&self.stats.register_errors);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.stats.registered.fetch_add(1, Ordering::Relaxed);
        let beats = tokio::spawn(heartbeats(
            self.route.clone(),
            self.name.clone(),
            self.stats.clone(),
        ));
        self.follow().await;
        beats.abort();
    }

    /// Follows the node's allocations, reconnecting when the stream ends.
    async fn follow(&mut self) {
        let mut min_index = 0;
        loop {
            let (at, mut api) = self.route.api();
            let stream = api
                .watch_allocations(pb::WatchAllocationsRequest {
                    node: self.name.clone(),
                    min_index,
                })
                .await;
            let Ok(stream) = stream else {
                self.route.failed(at);
                self.stats.failed_call(&self.stats.watch_errors);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            let mut allocs: BTreeMap<String, pb::Allocation> = BTreeMap::new();
            while let Ok(Some(set)) = stream.message().await {
                if set.reset {
                    allocs.clear();
                }
                for id in &set.removed {
                    allocs.remove(id);
                }
                for a in set.allocs {
                    allocs.insert(a.id.clone(), a);
                }
                min_index = min_index.max(set.index);
                if !set.partial {
                    self.act(&allocs).await;
                }
            }
            // The server went away or ended the stream: the next one.
            self.route.failed(at);
            self.stats.failed_call(&self.stats.watch_errors);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reports what the servers want: the pending ones running (after the
    /// start delay), the ones to stop complete.
    async fn act(&mut self, allocs: &BTreeMap<String, pb::Allocation>) {
        let run = pb::DesiredStatus::Run as i32;
        let (pending, running) = (
            pb::AllocStatus::Pending as i32,
            pb::AllocStatus::Running as i32,
        );
        let mut updates = Vec::new();
        let mut jobs: HashMap<&str, &str> = HashMap::new();
        let failing = |job: &str| {
            self.opts
                .fail_jobs
                .as_deref()
                .is_some_and(|prefix| job.starts_with(prefix))
        };
        // The GPUs the allocations that run here hold.
        let mut held: HashMap<&str, &str> = HashMap::new();
        for a in allocs.values().filter(|a| a.status == running) {
            for g in &a.gpus {
                held.insert(g, &a.id);
            }
        }
        for a in allocs.values() {
            let job = a.job.rsplit_once('/').map_or(a.job.as_str(), |(_, j)| j);
            let status = if a.desired == run && a.status == pending && failing(job) {
                pb::AllocStatus::Failed
            } else if a.desired == run && a.status == pending {
                pb::AllocStatus::Running
            } else if a.desired != run && (a.status == pending || a.status == running) {
                pb::AllocStatus::Complete
            } else {
                continue;
            };
            if self.reported.get(&a.id) == Some(&(status as i32)) {
                continue;
            }
            if status == pb::AllocStatus::Running {
                let prefix = format!("GPU-{}-", self.name);
                for g in &a.gpus {
                    let theirs = held.insert(g, &a.id).is_some_and(|other| other != a.id);
                    if theirs || !g.starts_with(&prefix) {
                        self.stats.gpu_conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            jobs.insert(&a.id, job);
            updates.push(pb::AllocStatusUpdate {
                alloc_id: a.id.clone(),
                status: status as i32,
                healthy: (status == pb::AllocStatus::Running).then_some(true),
                exit_code: match status {
                    pb::AllocStatus::Complete => Some(0),
                    pb::AllocStatus::Failed => Some(1),
                    _ => None,
                },
                ..Default::default()
            });
        }
        self.reported.retain(|id, _| allocs.contains_key(id));
        if updates.is_empty() {
            return;
        }
        if updates.iter().any(|u| u.status == running) {
            tokio::time::sleep(self.opts.start_delay).await;
        }
        for chunk in updates.chunks(1000) {
            // A report that fails (its server went away, a leader is being
            // elected) is sent again, to the next server, as an agent does:
            // no later message may come to bring it back.
            for _ in 0..60 {
                let (at, mut api) = self.route.api();
                let sent = api
                    .update_alloc_status(pb::UpdateAllocStatusRequest {
                        node: self.name.clone(),
                        updates: chunk.to_vec(),
                    })
                    .await;
                if sent.is_ok() {
                    for u in chunk {
                        self.reported.insert(u.alloc_id.clone(), u.status);
                    }
                    let mut starts = self.stats.starts.lock().unwrap_or_else(|p| p.into_inner());
                    let mut by_job = self
                        .stats
                        .started_by_job
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let failed = pb::AllocStatus::Failed as i32;
                    let fails = chunk.iter().filter(|u| u.status == failed).count();
                    self.stats.failed.fetch_add(fails as u64, Ordering::Relaxed);
                    for u in chunk.iter().filter(|u| u.status == running) {
                        *starts.entry(u.alloc_id.clone()).or_default() += 1;
                        let job = jobs.get(u.alloc_id.as_str()).copied().unwrap_or("");
                        *by_job.entry(job.to_string()).or_default() += 1;
                    }
                    break;
                }
                self.route.failed(at);
                self.stats.failed_call(&self.stats.report_errors);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn heartbeats(route: Arc<Route>, name: String, stats: Arc<SimStats>) {
    let mut period = Duration::from_secs(1);
    loop {
        tokio::time::sleep(period).await;
        let (at, mut api) = route.api();
        let beat = api.heartbeat(pb::HeartbeatRequest {
            name: name.clone(),
            ..Default::default()
        });
        match tokio::time::timeout(Duration::from_secs(2), beat)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 2 s")))
        {
            Ok(r) => {
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                period = Duration::from_millis(r.into_inner().ttl_ms.max(300)) / 3;
            }
            Err(_) => {
                route.failed(at);
                stats.failed_call(&stats.heartbeat_errors);
                period = Duration::from_millis(500);
            }
        }
    }
}
