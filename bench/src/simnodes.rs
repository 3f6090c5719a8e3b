//! Simulated nodes: many agents in one process, each speaking the real
//! node API to real servers over loopback (join with a node token,
//! register, heartbeat, follow its allocations, report them), with no
//! containers: an allocation the servers want run is reported running
//! after `start_delay`, one they want stopped is reported complete. For
//! measuring and testing the control plane at sizes one machine cannot
//! run containers for (issue 21's `simnodes`).
//!
//! Every start is counted per allocation id ([`SimStats::starts`]), so a
//! test can check that each allocation ran exactly once.

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
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            start_delay: Duration::from_millis(200),
            cpu_millis: 32_000,
            memory_bytes: 128 << 30,
        }
    }
}

/// What the simulated nodes did.
#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub heartbeats: AtomicU64,
    pub errors: AtomicU64,
    /// Times each allocation was reported running.
    pub starts: Mutex<HashMap<String, u32>>,
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

/// Joins `names` to the cluster at `url` (TLS; `token` is a node join
/// token) and runs them.
pub async fn start(
    url: &str,
    token: &str,
    names: &[String],
    opts: SimOptions,
) -> anyhow::Result<SimNodes> {
    let stats = Arc::new(SimStats::default());
    let mut tasks = Vec::new();
    for name in names {
        let joined =
            skiff_client::join::join(url, token, &skiff_client::join::Joiner::Node(name.clone()))
                .await?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&joined.ca_pem))
            .identity(Identity::from_pem(&joined.cert_pem, &joined.key_pem))
            .domain_name(skiff_pki::SERVER_DNS);
        let channel = Channel::from_shared(url.to_string())?
            .tls_config(tls)?
            .connect_lazy();
        let node = SimNode {
            name: name.clone(),
            api: pb::node_api_client::NodeApiClient::new(channel)
                .max_decoding_message_size(64 << 20),
            opts: opts.clone(),
            stats: stats.clone(),
            reported: HashMap::new(),
        };
        tasks.push(tokio::spawn(node.run()));
    }
    Ok(SimNodes { stats, tasks })
}

struct SimNode {
    name: String,
    api: pb::node_api_client::NodeApiClient<Channel>,
    opts: SimOptions,
    stats: Arc<SimStats>,
    /// What this node reported of each allocation (the servers' view
    /// catches up a moment later: not reported twice).
    reported: HashMap<String, i32>,
}

impl SimNode {
    async fn run(mut self) {
        loop {
            let reg = self
                .api
                .register(pb::RegisterRequest {
                    name: self.name.clone(),
                    capacity: Some(pb::Resources {
                        cpu_millis: self.opts.cpu_millis,
                        memory_bytes: self.opts.memory_bytes,
                        gpus: 0,
                    }),
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
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.stats.registered.fetch_add(1, Ordering::Relaxed);
        let beats = tokio::spawn(heartbeats(
            self.api.clone(),
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
            let stream = self
                .api
                .watch_allocations(pb::WatchAllocationsRequest {
                    node: self.name.clone(),
                    min_index,
                })
                .await;
            let Ok(stream) = stream else {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
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
        for a in allocs.values() {
            let status = if a.desired == run && a.status == pending {
                pb::AllocStatus::Running
            } else if a.desired != run && (a.status == pending || a.status == running) {
                pb::AllocStatus::Complete
            } else {
                continue;
            };
            if self.reported.get(&a.id) == Some(&(status as i32)) {
                continue;
            }
            updates.push(pb::AllocStatusUpdate {
                alloc_id: a.id.clone(),
                status: status as i32,
                healthy: (status == pb::AllocStatus::Running).then_some(true),
                exit_code: (status == pb::AllocStatus::Complete).then_some(0),
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
            let sent = self
                .api
                .update_alloc_status(pb::UpdateAllocStatusRequest {
                    node: self.name.clone(),
                    updates: chunk.to_vec(),
                })
                .await;
            match sent {
                Ok(_) => {
                    for u in chunk {
                        self.reported.insert(u.alloc_id.clone(), u.status);
                    }
                    let mut starts = self.stats.starts.lock().unwrap_or_else(|p| p.into_inner());
                    for u in chunk.iter().filter(|u| u.status == running) {
                        *starts.entry(u.alloc_id.clone()).or_default() += 1;
                    }
                }
                Err(_) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn heartbeats(
    mut api: pb::node_api_client::NodeApiClient<Channel>,
    name: String,
    stats: Arc<SimStats>,
) {
    let mut period = Duration::from_secs(1);
    loop {
        tokio::time::sleep(period).await;
        match api
            .heartbeat(pb::HeartbeatRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                period = Duration::from_millis(r.into_inner().ttl_ms.max(300)) / 3;
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                period = Duration::from_millis(500);
            }
        }
    }
}
