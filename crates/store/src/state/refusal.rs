//! Why a well-formed command changed nothing. A refusal is part of the
//! deterministic outcome (every server computes the same one), and its
//! text is what an operator reads: the API maps the kind to a status code
//! and passes the text on, so callers never classify a refusal by its
//! words.

use serde::{Deserialize, Serialize};
use skiff_model::job::MAX_REPLICAS;
use skiff_model::DeploymentStatus;

use super::table::Table;
use crate::command::RolloutAction;

/// A command the state machine refused; nothing changed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The command breaks a rule of its shape (checked again at apply,
    /// whoever proposed it); names the field and the rule.
    Invalid {
        why: String,
    },
    /// The job or node the command names does not exist.
    NotFound {
        kind: Table,
        name: String,
    },
    /// A plan for an evaluation that is no longer pending.
    EvalNotPending {
        eval: String,
    },
    /// Allocations are moved this way off a draining node only.
    NodeNotDraining {
        node: String,
    },
    /// A drain finishes only on a draining node that runs nothing.
    NodeNotDrained {
        node: String,
    },
    /// A batch job's size is its `completions` and `parallelism`.
    BatchNotScalable {
        job: String,
    },
    /// A gang's ranks share WORLD_SIZE: its size is part of its version.
    GangNotResizable {
        job: String,
    },
    ReplicasOutOfRange {
        replicas: u32,
    },
    /// Batch jobs and gangs are replaced whole: no rollout to control.
    NoRollout {
        job: String,
    },
    /// The rollout is not in a state the action applies to.
    NothingTo {
        action: RolloutAction,
        version: u64,
        status: DeploymentStatus,
    },
    /// A promotion with no canaries waiting for it.
    NoCanariesWaiting {
        version: u64,
    },
    /// A batch job has no rollouts to undo.
    BatchNotUndoable {
        job: String,
    },
    /// An undo with no version to return to.
    NoEarlierVersion {
        job: String,
    },
    /// An undo to the version that already runs.
    AlreadyRuns {
        job: String,
        version: u64,
    },
    /// An undo to a version the history no longer (or never) kept.
    VersionNotKept {
        job: String,
        version: u64,
        kept: Vec<u64>,
    },
    /// A deployment controller's update for a job without a rollout.
    NoRolloutToUpdate {
        job: String,
    },
    /// A deployment controller's update for a rollout that is no longer
    /// the job's active one.
    DeploymentNotActive {
        deployment: String,
    },
    /// A cluster has one CA; another was offered.
    CaAlreadySet,
    /// A token id is taken (a random id met another).
    TokenExists {
        id: String,
    },
    TokenNotFound {
        id: String,
    },
    /// A join whose token is unknown, revoked, expired or of another role.
    TokenRefused {
        why: String,
    },
    /// Another credential holds this node name.
    NodeNameTaken {
        node: String,
    },
    /// A removed server's id is never given out again.
    ServerIdRemoved {
        id: u64,
    },
    ServerIdTaken {
        id: u64,
    },
    /// A user name is taken (or was, by a revoked user, or is `admin`).
    UserExists {
        name: String,
        revoked: bool,
    },
    UserNotFound {
        name: String,
    },
    /// A job names a namespace no admin described.
    NamespaceMissing {
        name: String,
    },
    /// A namespace is deleted only once no job lives in it.
    NamespaceInUse {
        name: String,
        jobs: usize,
    },
    /// A job names a team queue no admin described.
    QueueMissing {
        name: String,
    },
    /// No sync by this name.
    SyncMissing {
        name: String,
    },
    /// A queue is deleted only once no job names it.
    QueueInUse {
        name: String,
        jobs: usize,
        /// The first few of them, by key.
        #[serde(default)]
        named: Vec<String>,
    },
    /// The namespace's policy does not allow what the spec asks for.
    PolicyDenied {
        why: String,
    },
    /// The namespace's quota does not hold the spec with the rest.
    QuotaExceeded {
        why: String,
    },
    /// A registry login sealed with a key other than the cluster's
    /// secrets key (or before the cluster has one).
    SecretsKeyMismatch {
        sealed_with: String,
        cluster: Option<String>,
    },
    /// A node's subnet overlaps another node's.
    SubnetTaken {
        subnet: String,
        node: String,
    },
    /// A namespace holds no login for that registry.
    RegistryLoginMissing {
        namespace: String,
        registry: String,
    },
}

impl Refusal {
    pub fn job_not_found(name: &str) -> Refusal {
        Refusal::NotFound {
            kind: Table::Job,
            name: name.to_string(),
        }
    }

    pub fn node_not_found(name: &str) -> Refusal {
        Refusal::NotFound {
            kind: Table::Node,
            name: name.to_string(),
        }
    }

    /// The command named something that does not exist (rather than
    /// something in the wrong state for it).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Refusal::NotFound { .. }
                | Refusal::TokenNotFound { .. }
                | Refusal::UserNotFound { .. }
                | Refusal::NamespaceMissing { .. }
                | Refusal::QueueMissing { .. }
                | Refusal::SyncMissing { .. }
                | Refusal::RegistryLoginMissing { .. }
        )
    }

    /// Something the command would create already exists (a name or an
    /// id another holds).
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Refusal::NodeNameTaken { .. }
                | Refusal::ServerIdTaken { .. }
                | Refusal::TokenExists { .. }
                | Refusal::UserExists { .. }
        )
    }

    /// The command itself broke a rule (rather than the state's).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Refusal::Invalid { .. })
    }

    /// A join refused for its credential (rather than for the state).
    pub fn is_policy_denied(&self) -> bool {
        matches!(self, Refusal::PolicyDenied { .. })
    }

    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self, Refusal::QuotaExceeded { .. })
    }

    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Refusal::TokenRefused { .. })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid { why }
            | Refusal::PolicyDenied { why }
            | Refusal::QuotaExceeded { why } => f.write_str(why),
            Refusal::SecretsKeyMismatch {
                sealed_with,
                cluster: Some(cluster),
            } => write!(
                f,
                "sealed with secrets key {sealed_with}, but the cluster's is {cluster}: this server does not hold the cluster's key yet; try again"
            ),
            Refusal::SecretsKeyMismatch { cluster: None, .. } => write!(
                f,
                "the cluster has no secrets key yet; try again once its servers agreed on one"
            ),
            Refusal::SubnetTaken { subnet, node } => write!(
                f,
                "subnet {subnet} overlaps node {node:?}'s; give each node its own (--network-subnet), or let the servers assign one"
            ),
            Refusal::RegistryLoginMissing {
                namespace,
                registry,
            } => write!(
                f,
                "namespace {namespace:?} holds no login for registry {registry:?}"
            ),
            Refusal::NamespaceMissing { name } => write!(
                f,
                "namespace {name:?} not found: an admin creates it with `skiff namespace apply`"
            ),
            Refusal::QueueMissing { name } => write!(
                f,
                "queue {name:?} not found: an admin creates it with `skiff queue apply`"
            ),
            Refusal::SyncMissing { name } => write!(
                f,
                "sync {name:?} not found: `skiff sync apply` describes it"
            ),
            Refusal::QueueInUse { name, jobs, named } => write!(
                f,
                "queue {name:?} is still named by {jobs} job(s) ({}{}); delete them or move them to another queue first",
                named.join(", "),
                if *jobs > named.len() { ", ..." } else { "" }
            ),
            Refusal::NamespaceInUse { name, jobs } => write!(
                f,
                "namespace {name:?} still holds {jobs} job(s); delete them first"
            ),
            Refusal::UserExists { name, revoked: false } => {
                write!(f, "user {name:?} already exists")
            }
            Refusal::UserExists { name, revoked: true } => write!(
                f,
                "user {name:?} was revoked; a name is never given out again (its old certificate names it): choose another"
            ),
            Refusal::UserNotFound { name } => write!(f, "user {name:?} not found"),
            Refusal::NotFound { kind, name } => write!(f, "{} {name:?} not found", kind.as_str()),
            Refusal::EvalNotPending { eval } => {
                write!(f, "evaluation {eval} is not pending; plan dropped")
            }
            Refusal::NodeNotDraining { node } => write!(f, "node {node:?} is not draining"),
            Refusal::NodeNotDrained { node } => {
                write!(f, "node {node:?} is not an empty, draining node")
            }
            Refusal::BatchNotScalable { job } => write!(
                f,
                "job {job:?} is a batch job: it runs `completions` allocations, `parallelism` at once; change those in its spec"
            ),
            Refusal::GangNotResizable { job } => write!(
                f,
                "job {job:?} is a gang: its ranks share WORLD_SIZE, so its size cannot change while it runs; delete it and apply it with the new replicas"
            ),
            Refusal::ReplicasOutOfRange { replicas } => write!(
                f,
                "replicas: {replicas} must be a whole number from 0 to {MAX_REPLICAS}"
            ),
            Refusal::NoRollout { job } => write!(
                f,
                "job {job:?} has no rollout (batch jobs and gangs are replaced whole)"
            ),
            Refusal::NothingTo {
                action,
                version,
                status,
            } => write!(
                f,
                "the rollout of version {version} is {}; there is nothing to {}",
                status.as_str(),
                action.as_str()
            ),
            Refusal::NoCanariesWaiting { version } => write!(
                f,
                "the rollout of version {version} has no canaries waiting for promotion"
            ),
            Refusal::BatchNotUndoable { job } => write!(
                f,
                "job {job:?} is a batch job: it has no rollouts to undo; apply the spec you want to run"
            ),
            Refusal::NoEarlierVersion { job } => {
                write!(f, "job {job:?} has no earlier version to return to")
            }
            Refusal::AlreadyRuns { job, version } => {
                write!(f, "job {job:?} already runs version {version}")
            }
            Refusal::VersionNotKept { job, version, kept } => {
                let kept: Vec<String> = kept.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "version {version} of job {job:?} is not in its history (kept: {})",
                    kept.join(", ")
                )
            }
            Refusal::NoRolloutToUpdate { job } => write!(f, "job {job:?} has no rollout"),
            Refusal::DeploymentNotActive { deployment } => write!(
                f,
                "deployment {deployment} is not the job's active rollout; update dropped"
            ),
            Refusal::CaAlreadySet => write!(
                f,
                "this cluster already has a CA; a server with another CA cannot join it"
            ),
            Refusal::TokenExists { id } => write!(f, "token {id} exists already"),
            Refusal::TokenNotFound { id } => write!(f, "token {id:?} not found"),
            Refusal::TokenRefused { why } => write!(f, "join refused: {why}"),
            Refusal::NodeNameTaken { node } => write!(
                f,
                "node {node:?} has joined already with another credential; if this machine replaces it, run `skiff node remove {node}` first"
            ),
            Refusal::ServerIdRemoved { id } => write!(
                f,
                "server id {id} was removed from this cluster and is never reused; join with a new id"
            ),
            Refusal::ServerIdTaken { id } => {
                write!(f, "server id {id} is a member already; join with a new id")
            }
        }
    }
}

/// Shown as its text, as the refusal was before it had kinds, so logs
/// that print an outcome (`Refused("job \"web\" not found")`) read the
/// same.
impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators and tests read these words: each kind says exactly what
    /// the state machine said before refusals had kinds.
    #[test]
    fn every_refusal_reads_as_it_always_has() {
        let job = || "web".to_string();
        let cases = [
            (Refusal::job_not_found("web"), r#"job "web" not found"#),
            (Refusal::node_not_found("n1"), r#"node "n1" not found"#),
            (
                Refusal::EvalNotPending {
                    eval: "00000000000000a1".into(),
                },
                "evaluation 00000000000000a1 is not pending; plan dropped",
            ),
            (
                Refusal::NodeNotDraining { node: "n1".into() },
                r#"node "n1" is not draining"#,
            ),
            (
                Refusal::NodeNotDrained { node: "n1".into() },
                r#"node "n1" is not an empty, draining node"#,
            ),
            (
                Refusal::BatchNotScalable { job: job() },
                r#"job "web" is a batch job: it runs `completions` allocations, `parallelism` at once; change those in its spec"#,
            ),
            (
                Refusal::GangNotResizable { job: job() },
                r#"job "web" is a gang: its ranks share WORLD_SIZE, so its size cannot change while it runs; delete it and apply it with the new replicas"#,
            ),
            (
                Refusal::ReplicasOutOfRange { replicas: 5000 },
                &format!("replicas: 5000 must be a whole number from 0 to {MAX_REPLICAS}"),
            ),
            (
                Refusal::NoRollout { job: job() },
                r#"job "web" has no rollout (batch jobs and gangs are replaced whole)"#,
            ),
            (
                Refusal::NothingTo {
                    action: RolloutAction::Resume,
                    version: 3,
                    status: DeploymentStatus::RolledBack,
                },
                "the rollout of version 3 is rolled_back; there is nothing to resume",
            ),
            (
                Refusal::NoCanariesWaiting { version: 2 },
                "the rollout of version 2 has no canaries waiting for promotion",
            ),
            (
                Refusal::BatchNotUndoable { job: job() },
                r#"job "web" is a batch job: it has no rollouts to undo; apply the spec you want to run"#,
            ),
            (
                Refusal::NoEarlierVersion { job: job() },
                r#"job "web" has no earlier version to return to"#,
            ),
            (
                Refusal::AlreadyRuns {
                    job: job(),
                    version: 2,
                },
                r#"job "web" already runs version 2"#,
            ),
            (
                Refusal::VersionNotKept {
                    job: job(),
                    version: 7,
                    kept: vec![1, 2],
                },
                r#"version 7 of job "web" is not in its history (kept: 1, 2)"#,
            ),
            (
                Refusal::NoRolloutToUpdate { job: job() },
                r#"job "web" has no rollout"#,
            ),
            (
                Refusal::DeploymentNotActive {
                    deployment: "d1".into(),
                },
                "deployment d1 is not the job's active rollout; update dropped",
            ),
        ];
        for (refusal, text) in cases {
            assert_eq!(refusal.to_string(), text);
            assert_eq!(format!("{refusal:?}"), format!("{text:?}"));
            assert_eq!(refusal.is_not_found(), text.ends_with("not found"));
        }
    }

    #[test]
    fn a_refusal_survives_a_round_trip_through_json() {
        let r = Refusal::VersionNotKept {
            job: "web".into(),
            version: 7,
            kept: vec![1, 2],
        };
        let back: Refusal = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
