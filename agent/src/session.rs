//! The node's side of the node API, the same for the agent and for the
//! simulated nodes of `simnodes` (bench/): registering (again whenever the
//! GPUs change), heartbeats at the pace the servers' TTL asks, following
//! the node's allocations into the reconciler, and reporting what the
//! reconciler observed. Each call's outcome is counted in [`Calls`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::pb;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::gpu::GpuNode;
use crate::reconcile::{self, Event, Observed, Reconciler, Records};
use crate::runtime::Runtime;
use crate::servers::Servers;
use crate::watch::AllocView;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's calls to the servers so far: how many went through, and
/// how many failed, by kind.
#[derive(Debug, Default)]
pub struct Calls {
    pub registered: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Status reports the servers took.
    pub reports: AtomicU64,
    pub register_errors: AtomicU64,
    pub heartbeat_errors: AtomicU64,
    /// Watch calls refused, and watch streams that broke.
    pub watch_errors: AtomicU64,
    pub report_errors: AtomicU64,
}

impl Calls {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed calls of every kind.
    pub fn errors(&self) -> u64 {
        [
            &self.register_errors,
            &self.heartbeat_errors,
            &self.watch_errors,
            &self.report_errors,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// What the node says about itself and what its calls feed.
pub struct Session {
    pub servers: Servers,
    /// The registration without GPUs (they are read from `gpus` each time).
    pub registration: pb::RegisterRequest,
    pub gpus: Arc<GpuNode>,
    /// The agent's health service, SERVING while heartbeats go through.
    pub health: Option<tonic_health::server::HealthReporter>,
    /// What the node and its allocations use, sent with each heartbeat.
    pub usage: Option<crate::metrics::usage::UsageSampler>,
    /// Where `oci:` layouts may be read; the namespaces' image paths and
    /// registry logins arrive with the allocations.
    pub images: crate::image::ImagePolicy,
    pub network: Option<Arc<crate::network::Network>>,
    pub calls: Arc<Calls>,
}

impl Session {
    /// Registers, then heartbeats, follows the allocations and runs the
    /// reconciler `rec` (whose events come on `events`; `tx` sends to it)
    /// until the process stops.
    pub async fn run<R: Runtime, X: Records, C: Clock>(
        self,
        rec: Reconciler<R, X, C>,
        tx: mpsc::Sender<Event>,
        events: mpsc::Receiver<Event>,
    ) {
        let Session {
            servers,
            registration,
            gpus,
            health,
            usage,
            images,
            network,
            calls,
        } = self;
        let subnet = register_gpus(&servers, &registration, &gpus, &calls).await;
        // The node keeps its subnet from then on (as given, or assigned).
        network.iter().for_each(|n| n.set_subnet(&subnet));
        let node = registration.name.clone();
        let hb = heartbeat_loop(
            servers.clone(),
            registration.clone(),
            gpus.clone(),
            health,
            usage,
            calls.clone(),
        );
        let again = registration_loop(servers.clone(), registration, gpus, calls.clone());
        let watch = watch_loop(
            servers.clone(),
            node.clone(),
            tx,
            images,
            network,
            calls.clone(),
        );
        let rec_loop = reconcile::run_loop(rec, events, move |updates| {
            let (s, n, c) = (servers.clone(), node.clone(), calls.clone());
            async move { report(&s, &n, updates, &c).await }
        });
        tokio::join!(hb, again, watch, rec_loop);
    }
}

/// The registration with the node's GPUs as they are now, and the GPU
/// generation it describes.
fn with_gpus(base: &pb::RegisterRequest, gpus: &GpuNode) -> (pb::RegisterRequest, u64) {
    let generation = gpus.generation();
    let driver = gpus.driver();
    let mut reg = base.clone();
    reg.gpus = gpus.gpus().iter().map(Into::into).collect();
    reg.gpu_links = gpus.links().iter().map(Into::into).collect();
    reg.gpu_driver_version = driver.driver_version;
    reg.cuda_version = driver.cuda_version;
    (reg, generation)
}

/// Registers the node with its GPUs as they are now, until a server
/// accepts; answers the node's subnet.
async fn register_gpus(
    servers: &Servers,
    base: &pb::RegisterRequest,
    gpus: &GpuNode,
    calls: &Calls,
) -> String {
    let (reg, generation) = with_gpus(base, gpus);
    let answer = register(servers, &reg, calls).await;
    gpus.mark_registered(generation, answer.index);
    answer.subnet
}

/// Registers again whenever the GPUs or their health change: the only
/// GPU news that goes through Raft.
async fn registration_loop(
    servers: Servers,
    base: pb::RegisterRequest,
    gpus: Arc<GpuNode>,
    calls: Arc<Calls>,
) {
    let mut changes = gpus.subscribe();
    loop {
        if gpus.generation() > gpus.registered_generation() {
            tracing::info!("GPU inventory or health changed; registering again");
            register_gpus(&servers, &base, &gpus, &calls).await;
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Registers until a server accepts; returns its answer.
async fn register(
    servers: &Servers,
    reg: &pb::RegisterRequest,
    calls: &Calls,
) -> pb::RegisterResponse {
    let mut backoff = Duration::from_millis(200);
    loop {
        match tokio::time::timeout(RPC_TIMEOUT, servers.client().register(reg.clone())).await {
            Ok(Ok(resp)) => {
                tracing::info!(node = %reg.name, "registered");
                Calls::count(&calls.registered);
                return resp.into_inner();
            }
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "registration failed; retrying");
                servers.failed(&status);
            }
            Err(_) => tracing::warn!("registration timed out; retrying"),
        }
        Calls::count(&calls.register_errors);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What the agent's health service answers: SERVING while the servers
/// take its heartbeats. Sets it only when it changes from `was`; returns
/// `up`.
async fn set_health(
    health: &Option<tonic_health::server::HealthReporter>,
    was: bool,
    up: bool,
) -> bool {
    use skiff_proto::introspection::{set_status, ServingStatus};
    let Some(health) = health.as_ref().filter(|_| was != up) else {
        return up;
    };
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    set_status(health, &[pb::agent_api_server::SERVICE_NAME], status).await;
    up
}

async fn heartbeat_loop(
    servers: Servers,
    reg: pb::RegisterRequest,
    gpus: Arc<GpuNode>,
    health: Option<tonic_health::server::HealthReporter>,
    mut usage: Option<crate::metrics::usage::UsageSampler>,
    calls: Arc<Calls>,
) {
    // Registered: the servers know the node. Set again only when it
    // changes (each set wakes the health service's watchers).
    let mut up = set_health(&health, false, true).await;
    let mut period = Duration::from_secs(2);
    loop {
        tokio::time::sleep(period).await;
        let req = pb::HeartbeatRequest {
            name: reg.name.clone(),
            gpu_metrics: gpus.metrics().iter().map(Into::into).collect(),
            usage: usage.as_mut().map(|u| u.sample()),
        };
        match tokio::time::timeout(RPC_TIMEOUT, servers.client().heartbeat(req)).await {
            Ok(Ok(resp)) => {
                // Beat three times per TTL, so one lost beat does not matter.
                let ttl = Duration::from_millis(resp.into_inner().ttl_ms.max(300));
                period = ttl / 3;
                up = set_health(&health, up, true).await;
                Calls::count(&calls.heartbeats);
                continue;
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                tracing::warn!("the servers do not know this node; registering again");
                up = set_health(&health, up, false).await;
                register_gpus(&servers, &reg, &gpus, &calls).await;
            }
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "heartbeat failed");
                up = set_health(&health, up, false).await;
                servers.failed(&status);
            }
            Err(_) => {
                tracing::warn!("heartbeat timed out");
                up = set_health(&health, up, false).await;
            }
        }
        Calls::count(&calls.heartbeat_errors);
    }
}

/// Follows the node's allocations, reconnecting (and failing over) when
/// the stream breaks.
async fn watch_loop(
    servers: Servers,
    node: String,
    events: mpsc::Sender<Event>,
    images: crate::image::ImagePolicy,
    network: Option<Arc<crate::network::Network>>,
    calls: Arc<Calls>,
) {
    let mut backoff = Duration::from_millis(200);
    // The index of the last set received: a server we fail over to never
    // answers with an older view, nor repeats a set we already have.
    let mut seen = 0u64;
    loop {
        let req = pb::WatchAllocationsRequest {
            node: node.clone(),
            min_index: seen,
            without_peers: network.is_none(),
        };
        match servers.client().watch_allocations(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                let mut view = AllocView::default();
                loop {
                    match stream.message().await {
                        Ok(Some(set)) => {
                            backoff = Duration::from_millis(200);
                            seen = seen.max(set.index);
                            let Some(news) = view.apply(set) else {
                                continue; // more of this change follows
                            };
                            images.set_namespaces(news.image_paths);
                            images.set_logins(news.logins);
                            if let (Some(net), Some(peers)) = (&network, news.peers) {
                                net.set_peers(peers).await;
                            }
                            if let (Some(net), Some(e)) = (&network, news.endpoints) {
                                net.set_endpoints(&e).await;
                            }
                            if let (Some(net), Some(m)) = (&network, news.members) {
                                net.set_members(m).await;
                            }
                            let allocs = view.allocations();
                            tracing::debug!(index = seen, count = allocs.len(), "allocations");
                            if events.send(Event::Desired(allocs)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "allocation stream broke");
                            servers.failed(&status);
                            Calls::count(&calls.watch_errors);
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot watch allocations");
                servers.failed(&status);
                Calls::count(&calls.watch_errors);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn report(servers: &Servers, node: &str, updates: Vec<Observed>, calls: &Calls) -> bool {
    let req = pb::UpdateAllocStatusRequest {
        node: node.to_string(),
        updates: updates
            .into_iter()
            .map(|u| pb::AllocStatusUpdate {
                alloc_id: u.alloc_id,
                status: pb::AllocStatus::from(u.status) as i32,
                exit_code: u.exit_code,
                message: u.message,
                restart_count: u.restart_count,
                healthy: u.healthy,
                reason: skiff_proto::reason_to_wire(&u.reason) as i32,
                image_digest: u.image_digest,
                address: u.address,
            })
            .collect(),
    };
    match tokio::time::timeout(RPC_TIMEOUT, servers.client().update_alloc_status(req)).await {
        Ok(Ok(_)) => {
            Calls::count(&calls.reports);
            true
        }
        Ok(Err(status)) => {
            tracing::warn!(error = %status.message(), "status update failed");
            servers.failed(&status);
            Calls::count(&calls.report_errors);
            false
        }
        Err(_) => {
            Calls::count(&calls.report_errors);
            false
        }
    }
}
