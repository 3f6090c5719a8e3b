//! The agent process: sets up the data directory, credentials, GPUs and
//! the bridge, serves logs and exec, renews the certificate and collects
//! images, and runs the node's session (`session.rs`: registration,
//! heartbeats, the allocation watch, the reconciler, status reports).

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
use crate::reconcile::{Reconciler, Settings};
use crate::rootfs::RootfsMode;
use crate::runtime::{choose_runtime, Runc, RuntimeChoiceError};
use crate::servers::Servers;
use crate::tls::AgentTls;

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
    make_data_dirs(&paths)?;
    let tls = crate::tls::credentials(&cfg.security, paths.root(), &cfg.name, &cfg.servers).await?;
    let servers = Servers::new(&cfg.servers, &tls)?.first_for(&cfg.name);

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
        resync: crate::reconcile::RESYNC,
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
    let to_release = network.clone();
    let mut rec = Reconciler::new(runtime, paths, settings, events_tx.clone());
    rec.adopt().await;

    let session = crate::session::Session {
        servers: servers.clone(),
        registration,
        gpus: gpus.clone(),
        health: Some(health),
        usage: Some(crate::metrics::usage::UsageSampler::new(
            served.metrics.clone(),
        )),
        images,
        network,
        calls: Default::default(),
    };
    let tasks = async {
        let renew = renew_loop(servers.clone(), data_root, tls, tls_tx);
        tokio::join!(session.run(rec, events_tx, events_rx), renew, image_gc);
    };
    tokio::select! {
        _ = tasks => {}
        _ = shutdown => tracing::info!("agent stopping; containers keep running"),
    }
    api_server.abort();
    served.task.iter().for_each(|t| t.abort());
    if let Some(n) = to_release {
        n.release();
    }
    if let Some(stop) = monitor_stop {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// The data directory's rooms, 0700 (see [`Paths`]).
pub fn make_data_dirs(paths: &Paths) -> Result<(), AgentError> {
    for dir in [
        paths.containers(),
        paths.images(),
        paths.runtime_root(),
        paths.root().join("logs"),
    ] {
        skiff_pki::files::make_private_dir(&dir)
            .map_err(|source| AgentError::DataDir { path: dir, source })?;
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
