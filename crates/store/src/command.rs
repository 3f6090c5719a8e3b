//! The typed, versioned commands that change cluster state. Every change goes
//! through Raft as exactly one of these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use skiff_model::{AllocStatus, Gpu, GpuDriver, GpuLink, JobSpec, Placement, Resources, Stop};

/// Version of the command encoding written by this build. An entry written
/// by a newer server, carrying a command this build does not know, is
/// skipped (and logged) rather than stopping the state machine.
pub const COMMAND_VERSION: u32 = 1;

// A command lives briefly, one at a time, on its way through Raft; the
// size of the job spec variant (with its probes and security options)
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Create a job, or change it. Creates an evaluation when it changed.
    UpsertJob { spec: JobSpec },
    /// Remove a job. Its allocations are stopped by the evaluation this creates.
    DeleteJob { name: String },
    /// Add a node, or refresh what it reports about itself.
    RegisterNode { registration: NodeRegistration },
    /// Commit the scheduler's plan for one evaluation, re-checking each
    /// placement against the state as it is now.
    ApplyPlan { plan: PlanCommand },
    /// Statuses an agent observed for the allocations on its node.
    /// `at_ms` is when the server that took the report received it
    /// (wall-clock ms, as data): an allocation turning healthy records it.
    UpdateAllocStatus {
        node: String,
        updates: Vec<AllocUpdate>,
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// An operator cordons, drains or uncordons a node.
    SetNodeEligibility {
        name: String,
        cordoned: bool,
        draining: bool,
        /// When a drain stops everything left (ms since the Unix epoch),
        /// decided by the server that took the request.
        #[serde(default)]
        drain_deadline_ms: Option<u64>,
    },
    /// The leader's drainer moves allocations off a draining node.
    MigrateAllocs {
        node: String,
        alloc_ids: Vec<String>,
        reason: String,
    },
    /// The leader's drainer found a draining node empty.
    FinishDrain { node: String },
    /// The leader's garbage collector drops finished allocations it no
    /// longer keeps (see `State::collect_allocs`).
    CollectAllocs { alloc_ids: Vec<String> },
    /// A control-plane server records where it can be reached.
    RegisterServer { info: ServerInfo },
    /// Sets a job's replicas (`skiff scale`); the version stays.
    ScaleJob { name: String, replicas: u32 },
    /// Pauses, resumes or promotes the job's rollout.
    ControlRollout {
        job: String,
        action: RolloutAction,
        at_ms: u64,
    },
    /// Returns the job to an earlier version of its history (`skiff rollout
    /// undo`): the version before the current one that rolled out
    /// successfully, or `to_version`.
    UndoRollout {
        job: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_version: Option<u64>,
        at_ms: u64,
    },
    /// What the leader's deployment controller observed and decided for
    /// one rollout.
    UpdateDeployment { update: DeploymentUpdate },
    /// The leader's liveness check: a node missed its heartbeats (`Down`:
    /// its allocations are lost and replaced elsewhere), or is back
    /// (`Ready`).
    SetNodeStatus {
        name: String,
        status: skiff_model::NodeStatus,
        #[serde(default)]
        reason: String,
    },
    /// Records the cluster CA (the first server, or each founding server
    /// of a static cluster, with the same CA).
    SetCa { ca: CaRecord },
    /// The leader renewed the CA's certificate: the same key, new dates.
    RenewCa { ca: CaRecord },
    /// An admin made a join token (its secret only as a hash).
    CreateToken { token: TokenRecord },
    /// An admin revoked a join token.
    RevokeToken { id: String },
    /// An admin removed a node for good (`skiff node remove`).
    RemoveNode { name: String },
    /// An admin made a user (its certificate is signed once this applied).
    CreateUser { user: UserRecord },
    /// An admin revoked a user: its certificate stops working at once, and
    /// its name is never given out again.
    RevokeUser { name: String },
    /// An admin made a bearer token for a user (its secret only as a
    /// hash).
    CreateUserToken { token: UserTokenRecord },
    /// An admin revoked a user's bearer token.
    RevokeUserToken { id: String },
    /// An admin described a namespace (its policy and quota), new or again.
    PutNamespace {
        namespace: skiff_model::namespace::Namespace,
    },
    /// An admin deleted a namespace no job lives in (and its registry
    /// logins with it).
    DeleteNamespace { name: String },
    /// An admin described a team queue, new or again.
    PutQueue { queue: skiff_model::queue::Queue },
    /// An admin deleted a team queue no job names.
    DeleteQueue { name: String },
    /// The servers' secrets key, by id: the first proposed is the
    /// cluster's; a server holding another fetches this one from a peer.
    SetSecretsKey { key_id: String },
    /// An admin set a namespace's login for a registry; the password
    /// arrives sealed with the secrets key `key_id` names (which must be
    /// the cluster's).
    PutRegistryLogin {
        namespace: String,
        login: RegistryLoginRecord,
    },
    /// An admin removed a namespace's login for a registry.
    DeleteRegistryLogin { namespace: String, registry: String },
    /// A user described a sync from git, new or again (its status is
    /// kept; the applied commit is forgotten when the repository, branch,
    /// path or namespace changes).
    PutSync {
        source: skiff_model::sync::SyncSource,
    },
    /// A user deleted a sync (its jobs stay).
    DeleteSync { name: String },
    /// The leader's sync controller recorded what it did.
    ReportSync {
        name: String,
        status: skiff_model::sync::SyncStatus,
    },
    /// A joiner presented a token whose secret hashes to `secret_hash`, at
    /// `at_ms` (as the taking server read its clock).
    Join {
        token_id: String,
        secret_hash: String,
        joiner: Joiner,
        at_ms: u64,
    },
}

/// Where a control-plane server can be reached. Membership itself (voter
/// or learner) lives in Raft's configuration; this is the address book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: u64,
    /// Client and node API address (`host:port`).
    pub api_addr: String,
    /// Raft peer address (`host:port`).
    pub peer_addr: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an operator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Pause,
    Resume,
    Promote,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
        }
    }
}

/// The deployment controller's observations for one deployment. Times are
/// the leader's wall clock, carried as data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentUpdate {
    pub job: String,
    /// The deployment this was decided for; ignored if another replaced it.
    pub deployment_id: String,
    pub at_ms: u64,
    /// Allocations that stayed healthy for `min_healthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healthy: Vec<String>,
    /// Allocations that crashed or missed `healthy_deadline`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<String>,
    /// Progress was made (an allocation proved healthy): the progress
    /// deadline counts again from `at_ms`.
    #[serde(default)]
    pub progress: bool,
    /// The rollout failed, for this reason; an automatic rollback follows
    /// when the job allows it and there is a version to return to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// A new description of where the rollout stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UpsertJob { .. } => "upsert_job",
            Command::DeleteJob { .. } => "delete_job",
            Command::RegisterNode { .. } => "register_node",
            Command::ApplyPlan { .. } => "apply_plan",
            Command::UpdateAllocStatus { .. } => "update_alloc_status",
            Command::SetNodeEligibility { .. } => "set_node_eligibility",
            Command::MigrateAllocs { .. } => "migrate_allocs",
            Command::FinishDrain { .. } => "finish_drain",
            Command::CollectAllocs { .. } => "collect_allocs",
            Command::RegisterServer { .. } => "register_server",
            Command::ScaleJob { .. } => "scale_job",
            Command::ControlRollout { .. } => "control_rollout",
            Command::UndoRollout { .. } => "undo_rollout",
            Command::UpdateDeployment { .. } => "update_deployment",
            Command::SetNodeStatus { .. } => "set_node_status",
            Command::SetCa { .. } => "set_ca",
            Command::RenewCa { .. } => "renew_ca",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::RemoveNode { .. } => "remove_node",
            Command::CreateUser { .. } => "create_user",
            Command::RevokeUser { .. } => "revoke_user",
            Command::PutNamespace { .. } => "put_namespace",
            Command::CreateUserToken { .. } => "create_user_token",
            Command::RevokeUserToken { .. } => "revoke_user_token",
            Command::DeleteNamespace { .. } => "delete_namespace",
            Command::SetSecretsKey { .. } => "set_secrets_key",
            Command::PutQueue { .. } => "put_queue",
            Command::DeleteQueue { .. } => "delete_queue",
            Command::PutRegistryLogin { .. } => "put_registry_login",
            Command::DeleteRegistryLogin { .. } => "delete_registry_login",
            Command::PutSync { .. } => "put_sync",
            Command::DeleteSync { .. } => "delete_sync",
            Command::ReportSync { .. } => "report_sync",
            Command::Join { .. } => "join",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub reserved: Resources,
    pub address: String,
    pub agent_version: String,
    /// The node's GPUs and MIG instances, with their health. The agent
    /// registers again whenever they or their health change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_links: Vec<GpuLink>,
    #[serde(default, skip_serializing_if = "GpuDriver::is_empty")]
    pub gpu_driver: GpuDriver,
    /// Directories under which the agent runs `oci:` layouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_roots: Vec<String>,
    /// The node's subnet for `network: bridge` (empty: keep the one it
    /// holds); refused when it overlaps another node's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Where the agent serves Prometheus metrics; empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    /// Where the scheduler picks the node's `host: 0` ports from.
    #[serde(
        default,
        skip_serializing_if = "skiff_model::ports::PortRange::is_default"
    )]
    pub dynamic_ports: skiff_model::ports::PortRange,
}

/// A plan as it travels through Raft: the scheduler's plan plus the ids the
/// leader chose for new allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCommand {
    pub eval_id: String,
    pub job: String,
    /// The job version the plan was made for (new allocations get it).
    pub job_version: u64,
    /// The job's `modify_index` in the snapshot the plan was made from, 0
    /// when the job was absent. If the job changed since, the whole plan is
    /// refused and the evaluation runs again.
    pub job_modify_index: u64,
    /// Applied index of the snapshot the plan was made from.
    pub snapshot_index: u64,
    pub placements: Vec<NewAlloc>,
    pub stops: Vec<Stop>,
    /// Allocations of lower-priority jobs to stop so the placements fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evictions: Vec<Stop>,
    /// The plan admits its job (in a team queue) as a whole.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admit: bool,
    /// Jobs of other queues of the cohort whose evictions give back lent
    /// capacity (whatever their priority); they wait to be admitted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<String>,
    pub unplaced: u32,
    pub explanation: String,
    /// When the leader planned (wall-clock ms, as data): new allocations
    /// record it, and `healthy_deadline` counts from it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAlloc {
    pub id: String,
    #[serde(flatten)]
    pub placement: Placement,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocUpdate {
    pub alloc_id: String,
    pub status: AllocStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: String,
    /// Restarts on the node so far.
    #[serde(default)]
    pub restart_count: u32,
    /// Readiness; `None` while not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Machine-readable reason (`oom_killed`, `back_off`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The digest the node pulled for an image its task names by tag
    /// only: the job's version is pinned to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_digest: String,
    /// `network: bridge`: the running container's address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
}

/// A raft entry's data: `{"v": VERSION, "c": {"upsert_job": {...}}}`. The
/// command is externally tagged so it decodes in one streaming pass.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    c: &'a Command,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    c: Command,
}

/// Only the version, when the command itself is not one this build knows.
#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default)]
    v: u32,
}

/// What a raft entry's data decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Boxed: a command is large next to the other variant.
    Command(Box<Command>),
    /// Not a command this build understands; applied as a no-op.
    Unknown { version: u32, reason: String },
}

pub fn encode(command: &Command) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut {
        v: COMMAND_VERSION,
        c: command,
    })
    .expect("commands always serialize")
}

pub fn decode(data: &[u8]) -> Decoded {
    match serde_json::from_slice::<EnvelopeIn>(data) {
        Ok(e) => Decoded::Command(Box::new(e.c)),
        Err(e) => Decoded::Unknown {
            version: serde_json::from_slice::<VersionOnly>(data).map_or(0, |v| v.v),
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_envelope() {
        let c = Command::DeleteJob { name: "web".into() };
        let bytes = encode(&c);
        assert!(String::from_utf8_lossy(&bytes).contains("\"v\":1"));
        assert_eq!(decode(&bytes), Decoded::Command(Box::new(c)));
    }

    #[test]
    fn a_command_from_a_newer_server_is_skipped_not_fatal() {
        let bytes = br#"{"v":2,"c":{"set_quota":{"quota":7}}}"#;
        match decode(bytes) {
            Decoded::Unknown { version, reason } => {
                assert_eq!(version, 2);
                assert!(reason.contains("set_quota"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(b"\x00garbage"), Decoded::Unknown { .. }));
    }
}

/// What a join token lets its holder become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRole {
    Node,
    Server,
}

impl JoinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Node => "node",
            JoinRole::Server => "server",
        }
    }
}

/// What a user may do; the table is in docs/security.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// Everything.
    Admin,
    /// Reads everything, logs, and runs the nodes (cordon, drain, GPU
    /// reset, remove); changes no job and execs into nothing.
    Operator,
    /// Reads, changes jobs, logs and exec; reads nodes.
    Developer,
    /// Reads and logs.
    Viewer,
    /// Scrapes servers' and agents' `/metrics` (with a bearer token) and
    /// nothing else: what Prometheus is given.
    Metrics,
}

impl UserRole {
    pub const ALL: [UserRole; 5] = [
        UserRole::Admin,
        UserRole::Operator,
        UserRole::Developer,
        UserRole::Viewer,
        UserRole::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Operator => "operator",
            UserRole::Developer => "developer",
            UserRole::Viewer => "viewer",
            UserRole::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        UserRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A user as the servers keep it: its identity is its name, in its
/// certificate; its role is read from here on every call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: UserRole,
    /// The namespaces a developer or viewer is granted (a viewer with
    /// none reads all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub create_index: u64,
}

/// A user's bearer token as the servers keep it: whose it is, a hash of
/// its secret, when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTokenRecord {
    pub id: String,
    pub user: String,
    /// sha256 of the secret, hex.
    pub secret_hash: String,
    pub expires_ms: u64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub create_index: u64,
}

/// A join token as the servers keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: JoinRole,
    /// sha256 of the secret, hex.
    pub secret_hash: String,
    pub expires_ms: u64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub uses: u32,
    pub create_index: u64,
}

/// The cluster CA, PEM. The key signs every certificate; it is kept here so
/// every server can sign, and never leaves the servers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaRecord { key: <secret> }")
    }
}

/// A namespace's login for one registry: the password only sealed
/// (AEAD with the servers' secrets key, bound to the namespace, registry
/// and user name), never in the clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLoginRecord {
    /// HOST[:PORT], normalised (`docker.io` for Docker Hub).
    pub registry: String,
    pub username: String,
    /// Hex: nonce, then ciphertext and tag.
    pub sealed: String,
    /// The secrets key it was sealed with.
    pub key_id: String,
    /// When it was set, ms since the Unix epoch.
    pub set_at_ms: u64,
}

impl std::fmt::Debug for RegistryLoginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLoginRecord")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Who a join makes of its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Joiner {
    Node { name: String },
    Server { id: u64 },
}
