//! What every service and controller of the server shares: the store, the
//! peer links, the heartbeat table and this server's addresses, with the
//! few helpers they all use (proposing a command, a linearizable read
//! barrier, the wall clock, mapping store errors to gRPC statuses).
//! A leaf of the crate: it imports no service or controller.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::pb;
use skiff_store::{Applied, Command, Outcome, ServerInfo, Store, StoreError};
use tonic::Status;

use crate::heartbeats::{Heartbeats, LivenessConfig};
use crate::tls::Tls;
use crate::transport::PeerTransport;

/// How long a write may wait for a leader before it is refused.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a linearizable read may wait to be confirmed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What every service shares.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub peers: Arc<PeerTransport>,
    pub heartbeats: Arc<Heartbeats>,
    pub liveness: Arc<LivenessConfig>,
    pub me: ServerInfo,
    /// This server's TLS (or `--insecure`).
    pub tls: Tls,
    /// How long the certificates this server signs are valid.
    pub leaf_lifetime: std::time::Duration,
    /// This server's audit log.
    pub audit: Arc<crate::audit::AuditLog>,
    /// How registries are reached, to resolve image tags at apply.
    pub registries: Arc<skiff_registry::RegistryAccess>,
    /// The servers' secrets key, which seals namespaces' registry logins.
    pub secrets: crate::secrets::Keyring,
    /// Where nodes' subnets are assigned from.
    pub node_subnets: Option<skiff_model::subnet::Subnet>,
    /// What happened in the cluster, as this server applied it.
    pub events: Arc<crate::events::Journal>,
    /// What this server counts for `/metrics`.
    pub metrics: Arc<crate::metrics::ServerMetrics>,
}

impl Ctx {
    /// Commits a command: proposed here, and carried to the leader inside
    /// the Raft stream when this server follows. Waits while no leader is
    /// known; reports a write whose fate is unknown (the leader changed
    /// before it was applied here) as indeterminate rather than retrying it.
    pub async fn propose(&self, cmd: &Command) -> Result<Outcome, Status> {
        Ok(self.commit(cmd).await?.outcome)
    }

    /// [`Ctx::propose`], also saying at which Raft index the command was
    /// applied (what write responses report as their `index`).
    pub async fn commit(&self, cmd: &Command) -> Result<Applied, Status> {
        if let Some(object) = crate::audit::object_of(cmd) {
            crate::audit::name_object(object);
        }
        let started = std::time::Instant::now();
        let applied = self.commit_encoded(skiff_store::command::encode(cmd)).await;
        self.metrics.proposed(applied.is_ok(), started.elapsed());
        applied
    }

    async fn commit_encoded(&self, data: Vec<u8>) -> Result<Applied, Status> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            if let Some(reason) = self.store.status().fatal {
                return Err(Status::unavailable(format!(
                    "this server stopped: {reason}"
                )));
            }
            match self.store.propose_encoded(data.clone()).await {
                Err(StoreError::NotLeader { .. }) | Err(StoreError::NoLeader(_)) => {}
                other => return other.map_err(store_status),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Status::unavailable(format!(
                    "no leader accepted the write within {WRITE_TIMEOUT:?}"
                )));
            }
            let _ = self
                .store
                .wait_for_leader(left.min(Duration::from_millis(200)))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The heartbeat ages and GPU samples this server holds, as the peer
    /// API sends them (the leader's are authoritative).
    pub fn heartbeat_ages(&self) -> pb::HeartbeatAgesResponse {
        pb::HeartbeatAgesResponse {
            age_ms: self
                .heartbeats
                .ages()
                .into_iter()
                .map(|(n, d)| (n, d.as_millis() as u64))
                .collect(),
            gpu: self
                .heartbeats
                .all_gpu_metrics()
                .into_iter()
                .map(|(n, (m, age))| {
                    let samples = pb::NodeGpuSamples {
                        metrics: m.iter().map(Into::into).collect(),
                        age_ms: age.as_millis() as u64,
                    };
                    (n, samples)
                })
                .collect(),
            usage: self.heartbeats.all_usage().into_iter().collect(),
        }
    }

    /// Waits until this server's state is current (linearizable), unless
    /// the caller accepts a stale answer.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        self.store
            .read_barrier(READ_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                StoreError::NoLeader(_) => Status::unavailable(
                    "cannot confirm this server is current (no leader reachable); retry, or pass --stale to read its local state",
                ),
                other => store_status(other),
            })
    }
}

/// The wall clock in milliseconds since the Unix epoch. Read only by
/// servers, put into commands as data; never inside the state machine.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Maps store errors to gRPC statuses a client can act on.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotLeader { .. } | StoreError::NoLeader(_) | StoreError::Stopped => {
            Status::unavailable(e.to_string())
        }
        StoreError::Indeterminate => Status::deadline_exceeded(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// What a follower gets when the server it forwarded to is not the
/// leader (any more): safe to retry, nothing was proposed.
pub fn not_leader_status() -> Status {
    Status::failed_precondition("not the leader")
}

/// A new allocation id: 128 random bits as 32 hex digits.
pub fn new_alloc_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
