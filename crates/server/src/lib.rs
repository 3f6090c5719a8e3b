//! Skiff's control-plane server: the gRPC services (client API and node
//! API) over the replicated store, and the leader-only controllers.
//!
//! - [`api`]: the `Cluster` service the CLI talks to;
//! - [`nodes`]: the `NodeApi` service agents talk to, and the leader's
//!   in-memory heartbeat table;
//! - [`evals`]: the leader's evaluation loop (pending evaluation ->
//!   scheduler -> plan -> Raft).

#![forbid(unsafe_code)]

pub mod api;
pub mod evals;
pub mod nodes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use skiff_proto::pb;
use skiff_store::{RaftConfig, Store, StoreError};
use tokio::net::TcpListener;

/// Largest gRPC message the server accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Client and node API address (port 0 picks a free port; the bound
    /// address is written to `DATA_DIR/api.addr`).
    pub api_addr: SocketAddr,
    pub raft: RaftConfig,
    /// How the leader's scheduler places work.
    pub scheduler: evals::SchedulerSettings,
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
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the raft driver stopped: {0}")]
    RaftStopped(String),
}

/// A started server: its store and the address it listens on.
pub struct Running {
    pub store: Store,
    pub api_addr: SocketAddr,
    pub scheduler: evals::SchedulerSettings,
}

/// Opens the store, binds the API address and returns; `serve` then runs
/// the services until `shutdown` resolves.
pub async fn start(cfg: &ServerConfig) -> Result<(Running, TcpListener), ServerError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&cfg.data_dir, cfg.raft.clone())?;
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.api_addr,
            source,
        })?;
    let api_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.api_addr,
            source,
        })?;
    let addr_file = cfg.data_dir.join("api.addr");
    let tmp = cfg.data_dir.join("api.addr.tmp");
    if std::fs::write(&tmp, api_addr.to_string())
        .and_then(|_| std::fs::rename(&tmp, &addr_file))
        .is_err()
    {
        tracing::warn!(path = %addr_file.display(), "could not record the API address");
    }
    Ok((
        Running {
            store,
            api_addr,
            scheduler: cfg.scheduler,
        },
        listener,
    ))
}

/// Runs the gRPC services and controllers until `shutdown` resolves or
/// the Raft driver stops.
pub async fn serve(
    running: Running,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = running.store;
    let heartbeats = Arc::new(nodes::Heartbeats::default());
    tracing::info!(algorithm = %running.scheduler.algorithm, "scheduler");
    let evals = tokio::spawn(evals::run(store.clone(), running.scheduler));

    let cluster = pb::cluster_server::ClusterServer::new(api::ClusterApi::new(
        store.clone(),
        heartbeats.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let node_api =
        pb::node_api_server::NodeApiServer::new(nodes::NodeService::new(store.clone(), heartbeats))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);

    tracing::info!(addr = %running.api_addr, "serving the cluster and node APIs");
    let mut fatal = store.watch_status();
    let raft_stopped = async move {
        let reason = fatal
            .wait_for(|s| s.fatal.is_some())
            .await
            .map(|s| s.fatal.clone().unwrap_or_default())
            .unwrap_or_default();
        reason
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(cluster)
        .add_service(node_api)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.map_err(ServerError::from),
        _ = shutdown => {
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await;
            Ok(())
        }
        reason = raft_stopped => Err(ServerError::RaftStopped(reason)),
    };
    evals.abort();
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    result
}

/// Maps store errors to gRPC statuses a client can act on.
pub(crate) fn store_status(e: StoreError) -> tonic::Status {
    match e {
        StoreError::NotLeader { .. } | StoreError::NoLeader(_) | StoreError::Stopped => {
            tonic::Status::unavailable(e.to_string())
        }
        StoreError::Indeterminate => tonic::Status::deadline_exceeded(e.to_string()),
        other => tonic::Status::internal(other.to_string()),
    }
}
