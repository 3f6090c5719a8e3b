//! The agent process: registers the node, heartbeats, watches the node's
//! allocations, runs the reconciler, and serves logs and exec.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_model::Resources;
use skiff_proto::pb;
use tokio::sync::mpsc;

use crate::gpu::{GpuConfig, GpuNode, InventoryError};
use crate::paths::Paths;
use crate::reconcile::{self, Event, Observed, Reconciler, Settings};
use crate::rootfs::RootfsMode;
use crate::runtime::{choose_runtime, Runc, RuntimeChoiceError};
use crate::servers::Servers;
use crate::tls::AgentTls;
use crate::watch::AllocView;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Server API URLs (`http://host:7700`); the agent fails over between them.
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where the agent serves logs (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address servers use to reach the agent; the bound listen
    /// address when unset.
    pub advertise: Option<SocketAddr>,
    /// runc, or a path to a runc-compatible runtime.
    pub runtime: PathBuf,
    /// The program and leading arguments that start a shim.
    pub shim_program: PathBuf,
    pub shim_prefix: Vec<std::ffi::OsString>,
    /// Time between the stop signal and SIGKILL when stopping a container
    /// whose task names no `stop_grace`.
    pub stop_grace: Duration,
    /// Held back from what the node offers.
    pub reserved: Resources,
    /// A container's log is rotated when it reaches this size...
    pub log_max_size: u64,
    /// ...keeping at most this many files (the current one included).
    pub log_max_files: u32,
    /// How container root filesystems are made.
    pub rootfs: RootfsMode,
    /// Where the GPU inventory comes from and how GPU health is judged.
    pub gpu: GpuConfig,
    /// The node's credentials: a join token, or `--insecure`.
    pub security: crate::tls::Security,
    /// Directories under which `oci:` layouts may be read
    /// (`--image-roots`).
    pub image_roots: Vec<PathBuf>,
    /// How long preparing an image (verifying and unpacking its layers)
    /// may take before the start fails (`--image-timeout`).
    pub image_timeout: Duration,
    /// How registries are reached (`--insecure-registry`,
    /// `--registry-ca`, `--registry-auth`).
    pub registry: skiff_registry::AccessConfig,
    /// When unused images are removed (`--image-gc-high`, `--image-gc-low`,
    /// `--image-cache-size`).
    pub image_gc: crate::image::gc::GcPolicy,
    /// How often the image cache is checked.
    pub image_gc_every: Duration,
    /// The bridge network (`--bridge`, `--network-subnet`, `--cni-path`).
    pub network: crate::network::NetworkConfig,
    /// Where `/metrics` is served, and dcgm-exporter's job mapping.
    pub metrics: crate::metrics::MetricsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent must run as root (runc needs it)")]
    NotRoot,
    #[error(transparent)]
    Runtime(#[from] RuntimeChoiceError),
    #[error("--reserve {reserved} is more than this node has ({capacity})")]
    ReserveTooLarge {
        reserved: Resources,
        capacity: Resources,
    },
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Servers(#[from] crate::servers::ServersError),
    #[error(transparent)]
    Gpu(#[from] InventoryError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Registry(#[from] skiff_registry::RegistryError),
    #[error("cannot start the GPU monitor: {0}")]
    GpuMonitor(std::io::Error),
    #[error("credentials: {0}")]
    Credentials(#[from] crate::tls::CredentialsError),
    #[error("TLS for the agent's API: {0}")]
    Tls(String),
}

const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent until `shutdown` resolves. Containers keep running
/// after the agent stops; the next start re-adopts them.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    if !crate::sys::is_root() {
        return Err(AgentError::NotRoot);
    }
    let (runtime_binary, flavor) =
        choose_runtime(&cfg.runtime, std::path::Path::new(crate::shim::CGROUP_ROOT))?;
    let capacity = crate::host::capacity();
    if !cfg.reserved.fits_in(capacity) || cfg.reserved == capacity {
        return Err(AgentError::ReserveTooLarge {
            reserved: cfg.reserved,
            capacity,
        });
    }
    // Absolute, so runc, the shims and overlay mounts never depend on a
    // working directory.
    // 0700: host users must not reach a container's root filesystem (a
    // setuid file made inside it would be theirs to run), its bundle
    // (config.json holds the environment) or its logs.
    skiff_pki::files::make_private_dir(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let data_dir = std::fs::canonicalize(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let paths = Paths::new(data_dir);
    for dir in [
        paths.containers(),
        paths.images(),
        paths.runtime_root(),
        paths.root().join("logs"),
    ] {
        skiff_pki::files::make_private_dir(&dir)
            .map_err(|source| AgentError::DataDir { path: dir, source })?;
    }
    let tls = crate::tls::credentials(&cfg.security, paths.root(), &cfg.name, &cfg.servers).await?;
    let servers = Servers::new(&cfg.servers, &tls)?;

    // GPUs: a machine without the driver has none (said once, in the log);
    // a fake inventory that cannot be read stops the agent.
    let health_file = paths.root().join("gpu-health.json");
    let (gpus, monitor_stop) = match crate::gpu::open_inventory(&cfg.gpu)? {
        Some(mut inventory) => {
            let found = inventory.discover()?;
            tracing::info!(
                inventory = inventory.kind(),
                gpus = found.gpus.len(),
                driver = %found.driver.driver_version,
                "GPU inventory"
            );
            let node = Arc::new(GpuNode::new(found, &cfg.gpu, Some(health_file)));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            crate::gpu::spawn_monitor(inventory, node.clone(), &cfg.gpu, stop.clone())
                .map_err(AgentError::GpuMonitor)?;
            (node, Some(stop))
        }
        None => (Arc::new(GpuNode::empty()), None),
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let advertise = cfg.advertise.unwrap_or(bound);
    let runtime = Arc::new(Runc::new(
        runtime_binary.clone(),
        paths.runtime_root(),
        cfg.shim_program.clone(),
        cfg.shim_prefix.clone(),
    ));
    runtime.refill_spare();
    let puller = std::sync::Arc::new(crate::image::registry::Puller::new(
        &paths.images().join("content"),
        std::sync::Arc::new(skiff_registry::RegistryAccess::load(&cfg.registry)?),
    )?);
    let images_in_use: crate::image::gc::InUse = Default::default();
    let api = pb::agent_api_server::AgentApiServer::with_interceptor(
        crate::service::AgentService::new(paths.clone(), runtime.clone(), gpus.clone())
            .with_images(crate::service::ImageTools {
                puller: puller.clone(),
                store: crate::image::ImageStore::new(paths.images()),
                in_use: images_in_use.clone(),
            }),
        crate::tls::only_servers as fn(_) -> _,
    );
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls.clone());
    // Fail at start, not later, on a certificate the listener cannot use.
    if let Some(config) = tls.listener() {
        tonic::transport::Server::builder()
            .tls_config(config)
            .map_err(|e| AgentError::Tls(e.to_string()))?;
    }
    // grpc.health.v1 (serving while the servers take the node's
    // heartbeats) and reflection, for servers only like the API.
    let (health, health_service) = skiff_proto::introspection::health();
    let reflection = skiff_proto::introspection::reflection()
        .map_err(|e| AgentError::Tls(format!("the reflection service: {e}")))?;
    let only_servers = crate::tls::only_servers as fn(_) -> _;
    let services = tonic::service::Routes::new(api)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            health_service,
            only_servers,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection,
            only_servers,
        ));
    let api_server = tokio::spawn(serve_api(services, listener, bound, tls_rx));
    tracing::info!(
        node = %cfg.name,
        listen = %bound,
        advertise = %advertise,
        runtime = %runtime_binary.display(),
        ?flavor,
        reserved = %cfg.reserved,
        "agent starting"
    );

    let secure = || crate::metrics::secure::security(servers.clone(), tls_tx.subscribe());
    let host = advertise.ip();
    let served = crate::metrics::setup(
        &cfg.metrics,
        &cfg.name,
        &gpus,
        &puller,
        paths.root(),
        host,
        secure,
    )
    .await
    .map_err(|(addr, source)| AgentError::Listen { addr, source })?;
    let images = crate::image::ImagePolicy::new(cfg.image_roots.clone());
    let registration = pb::RegisterRequest {
        image_roots: images.roots(),
        name: cfg.name.clone(),
        labels: cfg.labels.clone(),
        capacity: Some(capacity.into()),
        reserved: Some(cfg.reserved.into()),
        address: advertise.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        // Filled in from `gpus` each time the node registers.
        gpus: Vec::new(),
        gpu_links: Vec::new(),
        gpu_driver_version: String::new(),
        cuda_version: String::new(),
        subnet: cfg.network.subnet.clone(),
        metrics_address: served.address.clone(),
        dynamic_ports: cfg.network.dynamic_ports.to_string(),
    };

    let (events_tx, events_rx) = mpsc::channel(256);
    let settings = Settings {
        runtime_binary,
        stop_grace: cfg.stop_grace,
        image_timeout: cfg.image_timeout,
        registry: puller,
        log_max_size: cfg.log_max_size,
        log_max_files: cfg.log_max_files,
        rootfs: cfg.rootfs,
        gpus: Some(gpus.clone()),
        images: images.clone(),
        images_in_use,
        network: Some(Arc::new(crate::network::Network::new(
            paths.root(),
            cfg.network.clone(),
        )?)),
        node_host: advertise.ip().to_string(),
        live: served.live.clone(),
    };
    let image_gc = image_gc_loop(
        crate::image::gc::ImageCache::new(paths.images()),
        cfg.image_gc,
        cfg.image_gc_every,
        settings.images_in_use.clone(),
        settings.registry.progress(),
    );
    let data_root = paths.root().to_path_buf();
    let network = settings.network.clone();
    let mut rec = Reconciler::new(runtime, paths, settings, events_tx.clone());
    rec.adopt().await;

    let node = cfg.name.clone();
    let tasks = async {
        let subnet = register_gpus(&servers, &registration, &gpus).await;
        // The node keeps its subnet from then on (as given, or assigned).
        network.iter().for_each(|n| n.set_subnet(&subnet));
        let hb = heartbeat_loop(
            servers.clone(),
            registration.clone(),
            gpus.clone(),
            health.clone(),
            crate::metrics::usage::UsageSampler::new(served.metrics.clone()),
        );
        let again = registration_loop(servers.clone(), registration.clone(), gpus.clone());
        let watch = watch_loop(
            servers.clone(),
            node.clone(),
            events_tx,
            images,
            network.clone(),
        );
        let report_servers = servers.clone();
        let report_node = node.clone();
        let rec_loop = reconcile::run_loop(rec, events_rx, move |updates| {
            let s = report_servers.clone();
            let n = report_node.clone();
            async move { report(&s, &n, updates).await }
        });
        let renew = renew_loop(servers.clone(), data_root, tls, tls_tx);
        tokio::join!(hb, again, watch, rec_loop, renew, image_gc);
    };
    tokio::select! {
        _ = tasks => {}
        _ = shutdown => tracing::info!("agent stopping; containers keep running"),
    }
    api_server.abort();
    served.task.iter().for_each(|t| t.abort());
    if let Some(stop) = monitor_stop {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Collects unused images now and then (see [`crate::image::gc`]); the
/// references the node's allocations want are kept.
async fn image_gc_loop(
    cache: crate::image::gc::ImageCache,
    policy: crate::image::gc::GcPolicy,
    every: Duration,
    in_use: crate::image::gc::InUse,
    pulls: std::sync::Arc<crate::image::progress::PullProgress>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (cache, in_use, pulls) = (cache.clone(), in_use.clone(), pulls.clone());
        let done = tokio::task::spawn_blocking(move || {
            cache.collect_round(&policy, &in_use, &pulls, &mut || match cache.fs_percent() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the image filesystem's use");
                    0
                }
            })
        })
        .await;
        if let Ok(Some(r)) = done {
            if !r.images_removed.is_empty() || r.blobs_removed > 0 {
                tracing::info!(
                    images = r.images_removed.len(),
                    blobs = r.blobs_removed,
                    bytes = r.bytes_freed,
                    "image garbage collection"
                );
            }
        }
    }
}

/// Serves the agent's API (with health and reflection, each behind the
/// check that callers are servers), again on the same address with the
/// renewed certificate each time `tls` changes.
async fn serve_api(
    services: tonic::service::Routes,
    first: tokio::net::TcpListener,
    bound: SocketAddr,
    mut tls: tokio::sync::watch::Receiver<AgentTls>,
) {
    let mut listener = Some(first);
    loop {
        let current = tls.borrow_and_update().clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(config) = current.listener() {
            builder = match builder.tls_config(config) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "the renewed certificate cannot serve; keeping the old one");
                    if tls.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match tokio::net::TcpListener::bind(bound).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, addr = %bound, "cannot listen again after renewing the certificate");
                    return;
                }
            },
        };
        let mut changed = tls.clone();
        let served = builder
            .add_routes(services.clone())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                async move {
                    let _ = changed.changed().await;
                },
            );
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the agent's API stopped");
            return;
        }
        tracing::info!("serving the agent's API with the renewed certificate");
    }
}

/// Renews the node's certificate two thirds into its lifetime, saves it,
/// and moves the connections to the servers and the agent's API to it.
/// Retries every 30 s while no server renews it.
async fn renew_loop(
    servers: Servers,
    data_dir: PathBuf,
    tls: AgentTls,
    tx: tokio::sync::watch::Sender<AgentTls>,
) {
    let AgentTls::On(mut creds) = tls else {
        return; // --insecure
    };
    loop {
        let wait = match creds.renew_in() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the node's certificate; it will not be renewed");
                return;
            }
        };
        // At least a second apart, whatever the certificate says.
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
        let renewed = match creds.renewed(servers.channel()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "certificate not renewed; retrying in 30s");
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
        };
        if let Err(e) = renewed.save(&data_dir) {
            tracing::error!(error = %e, "cannot save the renewed certificate; retrying in 30s");
            tokio::time::sleep(Duration::from_secs(30)).await;
            continue;
        }
        creds = Arc::new(renewed);
        let tls = AgentTls::On(creds.clone());
        if let Err(e) = servers.refresh(&tls) {
            tracing::error!(error = %e, "cannot use the renewed certificate");
        }
        let _ = tx.send(tls);
        tracing::info!("node certificate renewed");
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
async fn register_gpus(servers: &Servers, base: &pb::RegisterRequest, gpus: &GpuNode) -> String {
    let (reg, generation) = with_gpus(base, gpus);
    let answer = register(servers, &reg).await;
    gpus.mark_registered(generation, answer.index);
    answer.subnet
}

/// Registers again whenever the GPUs or their health change: the only
/// GPU news that goes through Raft.
async fn registration_loop(servers: Servers, base: pb::RegisterRequest, gpus: Arc<GpuNode>) {
    let mut changes = gpus.subscribe();
    loop {
        if gpus.generation() > gpus.registered_generation() {
            tracing::info!("GPU inventory or health changed; registering again");
            register_gpus(&servers, &base, &gpus).await;
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Registers until a server accepts; returns its answer.
async fn register(servers: &Servers, reg: &pb::RegisterRequest) -> pb::RegisterResponse {
    let mut backoff = Duration::from_millis(200);
    loop {
        match tokio::time::timeout(RPC_TIMEOUT, servers.client().register(reg.clone())).await {
            Ok(Ok(resp)) => {
                tracing::info!(node = %reg.name, "registered");
                return resp.into_inner();
            }
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "registration failed; retrying");
                servers.failed(&status);
            }
            Err(_) => tracing::warn!("registration timed out; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What the agent's health service answers: SERVING while the servers
/// take its heartbeats. Sets it only when it changes from `was`; returns
/// `up`.
async fn set_health(health: &tonic_health::server::HealthReporter, was: bool, up: bool) -> bool {
    use skiff_proto::introspection::{set_status, ServingStatus};
    if was == up {
        return up;
    }
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
    health: tonic_health::server::HealthReporter,
    mut usage: crate::metrics::usage::UsageSampler,
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
            usage: Some(usage.sample()),
        };
        match tokio::time::timeout(RPC_TIMEOUT, servers.client().heartbeat(req)).await {
            Ok(Ok(resp)) => {
                // Beat three times per TTL, so one lost beat does not matter.
                let ttl = Duration::from_millis(resp.into_inner().ttl_ms.max(300));
                period = ttl / 3;
                up = set_health(&health, up, true).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                tracing::warn!("the servers do not know this node; registering again");
                up = set_health(&health, up, false).await;
                register_gpus(&servers, &reg, &gpus).await;
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
) {
    let mut backoff = Duration::from_millis(200);
    // The index of the last set received: a server we fail over to never
    // answers with an older view, nor repeats a set we already have.
    let mut seen = 0u64;
    loop {
        let req = pb::WatchAllocationsRequest {
            node: node.clone(),
            min_index: seen,
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
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "cannot watch allocations");
                servers.failed(&status);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn report(servers: &Servers, node: &str, updates: Vec<Observed>) -> bool {
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
        Ok(Ok(_)) => true,
        Ok(Err(status)) => {
            tracing::warn!(error = %status.message(), "status update failed");
            servers.failed(&status);
            false
        }
        Err(_) => false,
    }
}
