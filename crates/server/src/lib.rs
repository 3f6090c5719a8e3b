//! Skiff's control-plane server: the gRPC services (client API, node API,
//! peer API) over the replicated store, and the leader-only controllers.
//!
//! The modules form a stack; each imports only those above it:
//!
//! - [`heartbeats`], [`transport`]: plain shared parts (the in-memory
//!   heartbeat table and liveness settings; the outbound Raft links);
//! - [`ctx`]: what every service shares (store, links, heartbeats, this
//!   server's addresses) and proposing a command, reading current state;
//! - [`audit`]: the audit log and the wrapper that records each service's
//!   mutating calls and denials;
//! - [`members`]: joining, removing, listing servers; promoting learners;
//! - [`liveness`]: declaring nodes down when their heartbeats stop;
//! - [`nodes`]: the `NodeApi` service agents talk to;
//! - [`peer`]: the inbound `Peer` service (Raft messages, relayed
//!   heartbeats and membership changes);
//! - [`api`]: the `Cluster` service the CLI talks to;
//! - [`evals`]: the leader's evaluation loop (pending evaluation ->
//!   scheduler -> plan -> Raft);
//! - [`deployments`]: the leader's deployment controller (allocation
//!   health, min_healthy, deadlines -> rollout progress, failure and
//!   automatic rollback, as Raft commands);
//! - [`drainer`]: moving a draining node's allocations away at a pace
//!   each job can bear.

#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bells;
pub mod bootstrap;
pub mod ctx;
pub mod deployments;
pub mod drainer;
pub mod endpoints;
pub mod evals;
pub mod events;
pub mod gc;
pub mod heartbeats;
pub mod introspection;
pub mod key_agreement;
pub mod liveness;
pub mod members;
pub mod metrics;
pub mod namespaces;
pub mod nodes;
pub mod peer;
pub mod peer_list;
pub(crate) mod planners;
pub mod queue_book;
pub mod queues;
pub mod registry_logins;
pub mod resolve;
pub mod sched_copy;
pub mod secrets;
pub mod sync;
pub mod syncs;
pub mod tls;
pub mod transport;
pub mod user_tokens;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::pb;
use skiff_store::{Bootstrap, RaftConfig, ServerInfo, Store, StoreError};
use tokio::net::TcpListener;

use ctx::Ctx;

/// Largest gRPC message the client and node APIs accept.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Client and node API address (port 0 picks a free port; the bound
    /// address is written to `DATA_DIR/api.addr`).
    pub api_addr: SocketAddr,
    /// Raft peer address (port 0 picks one; written to `DATA_DIR/peer.addr`).
    pub peer_addr: SocketAddr,
    /// Addresses to advertise when `api_addr`/`peer_addr` bind a wildcard.
    pub advertise_api: Option<String>,
    pub advertise_peer: Option<String>,
    /// The founding members' peer addresses (including this server's), for
    /// a static cluster. Empty: a one-server cluster, unless `join` is set.
    pub peers: HashMap<u64, String>,
    /// An existing server's API URL to join through.
    pub join: Option<String>,
    pub raft: RaftConfig,
    /// How the leader's scheduler places work.
    pub scheduler: evals::SchedulerSettings,
    /// Heartbeat TTLs and how nodes are declared down.
    pub liveness: heartbeats::LivenessConfig,
    /// TLS and credentials (or `--insecure`).
    pub security: bootstrap::Security,
    /// How long finished allocations are kept.
    pub gc: gc::GcSettings,
    /// How registries are reached (tags are resolved at apply).
    pub registries: skiff_registry::AccessConfig,
    /// The range each node's `network: bridge` subnet (a /24) is
    /// assigned from (`--node-subnets`).
    pub node_subnets: Option<skiff_model::subnet::Subnet>,
    /// Where `GET /metrics` is served (plain HTTP, loopback only; port 0
    /// picks one, written to `DATA_DIR/metrics.addr`); `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// More exposition served after the server's own on its metrics
    /// address (`skiff dev`'s agent).
    pub metrics_appendix: skiff_metrics::Appendix,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
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
    Registry(#[from] skiff_registry::RegistryError),
    #[error("--peers must include this server's id {0}")]
    SelfNotInPeers(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the raft driver stopped: {0}")]
    RaftStopped(String),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
    #[error("the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    MetricsAddr(#[from] metrics::MetricsAddrError),
}

/// Which port a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Api,
    Peer,
}

/// Serves one port until `stop`; each time this server's certificate is
/// renewed, serves it again on the same address with the new one
/// (connections under way are let finish).
async fn serve_port<F>(
    port: Port,
    first: TcpListener,
    addr: SocketAddr,
    tls: tls::Tls,
    mut stop: tokio::sync::broadcast::Receiver<()>,
    routes: F,
) -> Result<(), ServerError>
where
    F: Fn(&mut tonic::transport::Server) -> tonic::transport::server::Router,
{
    let mut renewed = match &tls {
        tls::Tls::On(cell) => Some(cell.subscribe()),
        tls::Tls::Off => None,
    };
    let mut listener = Some(first);
    loop {
        let mut builder = tonic::transport::Server::builder();
        let config = match port {
            Port::Api => tls.api_listener(),
            Port::Peer => tls.peer_listener(),
        };
        if let Some(config) = config {
            builder = builder.tls_config(config)?;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })?,
        };
        let again = std::sync::atomic::AtomicBool::new(false);
        let until = async {
            let renewal = async {
                match renewed.as_mut() {
                    Some(r) => {
                        let _ = r.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.recv() => {}
                _ = renewal => again.store(true, std::sync::atomic::Ordering::Relaxed),
            }
        };
        routes(&mut builder)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                until,
            )
            .await?;
        if !again.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        tracing::info!(?port, %addr, "serving again with the renewed certificate");
    }
}

/// A started server: its context and listeners.
pub struct Running {
    pub ctx: Ctx,
    pub api_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    api: TcpListener,
    peer: TcpListener,
    join: Option<String>,
    scheduler: evals::SchedulerSettings,
    founding_ca: Option<skiff_pki::Ca>,
    data_dir: PathBuf,
    /// How long each renewal of the CA's certificate is valid.
    ca_lifetime: std::time::Duration,
    gc: gc::GcSettings,
    /// `GET /metrics`'s listener, if any, and what it appends.
    metrics: Option<TcpListener>,
    metrics_appendix: skiff_metrics::Appendix,
}

fn write_addr(dir: &std::path::Path, name: &str, addr: &str) {
    let file = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    if std::fs::write(&tmp, addr)
        .and_then(|_| std::fs::rename(&tmp, &file))
        .is_err()
    {
        tracing::warn!(path = %file.display(), "could not record an address");
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    Ok((l, bound))
}

/// Who may read metrics served off loopback, and the TLS configuration
/// of the moment (this server's certificate, renewed as it is).
fn metrics_security(ctx: &Ctx) -> (skiff_metrics::Access, Arc<skiff_metrics::CurrentTls>) {
    let check_ctx = ctx.clone();
    let access = skiff_metrics::Access::Guarded(Arc::new(move |header: Option<String>| {
        let said = auth::metrics_bearer(&check_ctx, header.as_deref());
        Box::pin(std::future::ready(said)) as skiff_metrics::CheckFuture
    }));
    let tls = ctx.tls.clone();
    let current = skiff_metrics::follow_creds(
        move || tls.creds(),
        |c: &tls::ServerCreds| (c.cert_pem.as_str(), c.key_pem.as_str()),
    );
    (access, current)
}

/// Opens the store and binds both ports; `serve` then runs everything.
pub async fn start(cfg: &ServerConfig) -> Result<Running, ServerError> {
    skiff_store::private::private_dir(&cfg.data_dir).map_err(|source| ServerError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let id = cfg.raft.id;
    if !cfg.peers.is_empty() && !cfg.peers.contains_key(&id) {
        return Err(ServerError::SelfNotInPeers(id));
    }
    if let Some(addr) = cfg.metrics_addr {
        skiff_metrics::check_addr(addr, cfg.security.insecure)?;
    }
    let (api, api_addr) = bind(cfg.api_addr).await?;
    let (peer, peer_addr) = bind(cfg.peer_addr).await?;
    let metrics = match cfg.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let me = ServerInfo {
        id,
        api_addr: cfg
            .advertise_api
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
        peer_addr: cfg
            .advertise_peer
            .clone()
            .unwrap_or_else(|| peer_addr.to_string()),
    };
    let start = bootstrap::Start {
        data_dir: &cfg.data_dir,
        join: cfg.join.as_deref(),
        alone: cfg.peers.is_empty(),
        security: &cfg.security,
    };
    let creds = bootstrap::credentials(&start, &me)
        .await
        .map_err(|e| ServerError::Credentials(e.0))?;
    let mut fixed = cfg.peers.clone();
    fixed.remove(&id);
    let peers = transport::PeerTransport::new(
        id,
        fixed,
        tokio::runtime::Handle::current(),
        creds.tls.clone(),
    );
    let bootstrap = if cfg.join.is_some() {
        Bootstrap::Join
    } else if cfg.peers.is_empty() {
        Bootstrap::Voters(vec![id])
    } else {
        let mut ids: Vec<u64> = cfg.peers.keys().copied().collect();
        ids.sort_unstable();
        Bootstrap::Voters(ids)
    };
    let store = Store::open(
        &cfg.data_dir,
        cfg.raft.clone(),
        bootstrap,
        Arc::new(transport::StoreTransport(peers.clone())),
    )?;
    peers.attach(store.clone());
    for s in store.state().servers.values() {
        peers.learn(s.id, &s.peer_addr);
    }
    let audit = Arc::new(audit::AuditLog::open(&cfg.data_dir, id).map_err(ServerError::Audit)?);
    write_addr(&cfg.data_dir, "api.addr", &api_addr.to_string());
    write_addr(&cfg.data_dir, "peer.addr", &peer_addr.to_string());
    if let Some((_, addr)) = &metrics {
        write_addr(&cfg.data_dir, skiff_metrics::ADDR_FILE, &addr.to_string());
    }
    Ok(Running {
        ctx: Ctx {
            store,
            peers,
            heartbeats: Arc::new(heartbeats::Heartbeats::default()),
            liveness: Arc::new(cfg.liveness.clone()),
            me,
            tls: creds.tls,
            leaf_lifetime: cfg.security.leaf_lifetime,
            audit,
            registries: Arc::new(skiff_registry::RegistryAccess::load(&cfg.registries)?),
            node_subnets: cfg.node_subnets,
            events: Default::default(),
            metrics: Default::default(),
            secrets: secrets::Keyring::open(&cfg.data_dir)
                .map_err(|e| ServerError::Credentials(e.to_string()))?,
        },
        api_addr,
        peer_addr,
        api,
        peer,
        join: cfg.join.clone(),
        scheduler: cfg.scheduler,
        founding_ca: creds.founding_ca,
        data_dir: cfg.data_dir.clone(),
        ca_lifetime: cfg.security.ca_lifetime(),
        gc: cfg.gc,
        metrics: metrics.map(|(l, _)| l),
        metrics_appendix: cfg.metrics_appendix.clone(),
    })
}

/// Runs the gRPC services and controllers until `shutdown` resolves, the
/// Raft driver stops, or this server is removed from the cluster.
pub async fn serve(
    running: Running,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Running {
        ctx,
        api_addr,
        peer_addr,
        api,
        peer,
        join,
        scheduler,
        founding_ca,
        data_dir,
        ca_lifetime,
        gc: cfg_gc,
        metrics: metrics_listener,
        metrics_appendix,
    } = running;
    let store = ctx.store.clone();
    tracing::info!(algorithm = %scheduler.algorithm, "scheduler");
    let mut background = vec![
        tokio::spawn(events::record(store.clone(), ctx.events.clone())),
        tokio::spawn(evals::run(store.clone(), scheduler, ctx.metrics.clone())),
        tokio::spawn(metrics::follow_leader(store.clone(), ctx.metrics.clone())),
        tokio::spawn(deployments::run(store.clone())),
        tokio::spawn(members::promote_learners(ctx.clone())),
        tokio::spawn(members::keep_address_book(ctx.clone())),
        tokio::spawn(members::register_self(ctx.clone())),
        tokio::spawn(liveness::run(ctx.clone(), (*ctx.liveness).clone())),
        tokio::spawn(drainer::run(ctx.clone())),
        tokio::spawn(gc::run(ctx.clone(), cfg_gc)),
    ];
    if let Some(url) = join {
        background.push(tokio::spawn(members::join(ctx.clone(), url)));
    }
    background.push(tokio::spawn(key_agreement::agree(
        ctx.clone(),
        data_dir.clone(),
    )));
    background.push(tokio::spawn(sync::run(ctx.clone(), data_dir.clone())));
    background.push(tokio::spawn(bootstrap::renew(ctx.clone(), data_dir)));
    background.push(tokio::spawn(bootstrap::renew_ca(ctx.clone(), ca_lifetime)));
    if let Some(ca) = founding_ca {
        background.push(tokio::spawn(bootstrap::record_ca(ctx.clone(), ca)));
    }
    // Calls are counted only when metrics are served.
    let api_metrics = metrics_listener
        .is_some()
        .then(|| Arc::new(metrics::ApiMetrics::default()));
    if let (Some(l), Some(api)) = (metrics_listener, &api_metrics) {
        // Off loopback: HTTPS with this server's certificate, to a bearer
        // token of a metrics user.
        let secured = l
            .local_addr()
            .is_ok_and(skiff_metrics::needs_tls)
            .then(|| metrics_security(&ctx));
        background.push(tokio::spawn(metrics::serve(
            l,
            metrics::Served {
                store: store.clone(),
                api: api.clone(),
                server: ctx.metrics.clone(),
                appendix: metrics_appendix,
            },
            secured,
            std::future::pending(),
        )));
    }
    // grpc.health.v1 (serving while a leader is known) and reflection.
    let (reporter, health) = skiff_proto::introspection::health();
    background.push(tokio::spawn(introspection::follow_leader(
        reporter,
        store.clone(),
    )));
    let reflection = skiff_proto::introspection::reflection()?;
    let peer_health = tonic::service::interceptor::InterceptedService::new(
        health.clone(),
        peer::members_only(ctx.clone()),
    );
    let peer_reflection = tonic::service::interceptor::InterceptedService::new(
        reflection.clone(),
        peer::members_only(ctx.clone()),
    );

    let cluster = pb::cluster_server::ClusterServer::new(api::ClusterApi::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let node_api = pb::node_api_server::NodeApiServer::new(nodes::NodeService::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let access_api = pb::access_server::AccessServer::new(access::AccessService::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let peer_api = tonic::service::interceptor::InterceptedService::new(
        pb::peer_server::PeerServer::new(peer::PeerService { ctx: ctx.clone() })
            .max_decoding_message_size(transport::MAX_PEER_MESSAGE),
        peer::members_only(ctx.clone()),
    );
    let snapshot_api = tonic::service::interceptor::InterceptedService::new(
        pb::peer_snapshot_server::PeerSnapshotServer::new(peer::PeerSnapshotService {
            peer: peer::PeerService { ctx: ctx.clone() },
        })
        .max_decoding_message_size(transport::MAX_SNAPSHOT_MESSAGE),
        peer::members_only(ctx.clone()),
    );

    tracing::info!(id = ctx.me.id, api = %api_addr, peer = %peer_addr, "serving");
    let mut fatal = store.watch_status();
    let raft_stopped = async move {
        fatal
            .wait_for(|s| s.fatal.is_some())
            .await
            .map(|s| (s.fatal.clone().unwrap_or_default(), s.removed))
            .unwrap_or_default()
    };
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let tls_on = ctx.tls.is_on();
    let api_server = serve_port(
        Port::Api,
        api,
        api_addr,
        ctx.tls.clone(),
        stop_tx.subscribe(),
        |b: &mut tonic::transport::Server| {
            b.add_service(
                audit::Audited::new(cluster.clone(), ctx.audit.clone(), tls_on)
                    .counted(api_metrics.clone()),
            )
            .add_service(
                audit::Audited::new(node_api.clone(), ctx.audit.clone(), tls_on)
                    .counted(api_metrics.clone()),
            )
            .add_service(
                audit::Audited::new(access_api.clone(), ctx.audit.clone(), tls_on)
                    .counted(api_metrics.clone()),
            )
            // Without a client certificate, like a join.
            .add_service(health.clone())
            .add_service(reflection.clone())
        },
    );
    let peer_server = serve_port(
        Port::Peer,
        peer,
        peer_addr,
        ctx.tls.clone(),
        stop_tx.subscribe(),
        |b: &mut tonic::transport::Server| {
            b.add_service(
                audit::Audited::new(peer_api.clone(), ctx.audit.clone(), tls_on)
                    .counted(api_metrics.clone()),
            )
            .add_service(
                audit::Audited::new(snapshot_api.clone(), ctx.audit.clone(), tls_on)
                    .counted(api_metrics.clone()),
            )
            .add_service(peer_health.clone())
            .add_service(peer_reflection.clone())
        },
    );
    let servers = async { tokio::try_join!(api_server, peer_server) };
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r.map(|_| ()),
        _ = shutdown => Ok(()),
        (reason, removed) = raft_stopped => {
            if removed {
                tracing::warn!("this server was removed from the cluster; stopping");
                Ok(())
            } else {
                Err(ServerError::RaftStopped(reason))
            }
        }
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), &mut servers).await;
    for task in background {
        task.abort();
    }
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    result
}
