//! Jobs: what an operator asks for ([`JobSpec`]) and what the cluster stores
//! ([`Job`]), with the words a spec is written in: its [`JobType`], how a
//! service rolls out ([`UpdateSpec`]), what a failure does to a gang
//! ([`GangFailure`]).
//!
//! Parsing a spec from YAML and the rules it must pass live in `spec/`,
//! which depends on this module and never the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::key::{job_key, split_job_key};

use crate::lifecycle::{Probes, RestartSpec, Security};
use crate::placement::{Affinity, Constraint, Spread};
use crate::resources::TaskResources;

/// Default CPU for a task that names none: a tenth of a core.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Default memory for a task that names none.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Smallest memory limit accepted: below this runc itself cannot start.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Largest replica count one job may ask for.
pub const MAX_REPLICAS: u32 = 1000;
/// Largest env value, command word or argument, in bytes. Every
/// allocation carries its task to its node, so a task's size is paid once
/// per replica in each node's allocation stream.
pub const MAX_STRING_BYTES: usize = 32 * 1024;
/// Largest job, in bytes of its stored (JSON) form, whichever way it came.
pub const MAX_JOB_BYTES: usize = 256 * 1024;
/// A job's versions kept in its history when the spec names no number.
pub const DEFAULT_VERSIONS_KEPT: u32 = 10;
/// Most versions a job may keep.
pub const MAX_VERSIONS_KEPT: u32 = 100;
/// A job's priority when it names none (0 to 100).
pub const DEFAULT_PRIORITY: u8 = 50;
/// Highest priority.
pub const MAX_PRIORITY: u8 = 100;
/// A job may preempt allocations of jobs at least this many priority points
/// below its own.
pub const PREEMPTION_GAP: u8 = 10;

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

fn is_default_priority(p: &u8) -> bool {
    *p == DEFAULT_PRIORITY
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_versions_kept() -> u32 {
    DEFAULT_VERSIONS_KEPT
}

fn is_default_versions_kept(n: &u32) -> bool {
    *n == DEFAULT_VERSIONS_KEPT
}

/// What a job's allocations are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Runs forever: `replicas` copies kept running, updated by rollouts.
    #[default]
    Service,
    /// Runs to completion: `completions` successful runs, at most
    /// `parallelism` at once (or, with `gang: true`, `replicas` ranks
    /// together).
    Batch,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
        }
    }

    pub fn parse(text: &str) -> Option<JobType> {
        match text {
            "service" => Some(JobType::Service),
            "batch" => Some(JobType::Batch),
            _ => None,
        }
    }

    pub fn is_service(&self) -> bool {
        *self == JobType::Service
    }
}

/// A number of replicas, or a percentage of `replicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The count this amount stands for out of `total`; a percentage is
    /// rounded up or down as asked.
    pub fn of(self, total: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let x = u64::from(total) * u64::from(p);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                n.min(u64::from(u32::MAX)) as u32
            }
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }

    /// `3`, `25%`; anything else is an error in words.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let t = text.trim();
        let bad = || {
            format!("{text:?} must be a number of replicas (e.g. 1) or a percentage of replicas (e.g. 25%)")
        };
        match t.strip_suffix('%') {
            Some(p) => {
                let n: u32 = p.trim().parse().map_err(|_| bad())?;
                if n > 100 {
                    return Err(format!("{text:?} is more than 100%"));
                }
                Ok(Amount::Percent(n))
            }
            None => t.parse().map(Amount::Count).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            N(u32),
            S(String),
        }
        match Form::deserialize(d)? {
            Form::N(n) => Ok(Amount::Count(n)),
            Form::S(s) => Amount::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// How a service moves to a new version (the `update:` block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// How many replicas may be unavailable during a rollout (default 25%,
    /// rounded down).
    #[serde(default = "default_quarter", skip_serializing_if = "is_quarter")]
    pub max_unavailable: Amount,
    /// How many allocations may run above `replicas` during a rollout
    /// (default 25%, rounded up).
    #[serde(default = "default_quarter", skip_serializing_if = "is_quarter")]
    pub max_surge: Amount,
    /// How long a new allocation must stay healthy to count (default 10s).
    #[serde(
        default = "default_min_healthy",
        skip_serializing_if = "is_default_min_healthy",
        with = "crate::duration::text"
    )]
    pub min_healthy: Duration,
    /// A new allocation not healthy this long after it was placed fails
    /// the rollout (default 5m).
    #[serde(
        default = "default_healthy_deadline",
        skip_serializing_if = "is_default_healthy_deadline",
        with = "crate::duration::text"
    )]
    pub healthy_deadline: Duration,
    /// A rollout with no allocation becoming healthy for this long fails
    /// (default 10m).
    #[serde(
        default = "default_progress_deadline",
        skip_serializing_if = "is_default_progress_deadline",
        with = "crate::duration::text"
    )]
    pub progress_deadline: Duration,
    /// A failed rollout rolls back to the last version that rolled out
    /// successfully (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub auto_rollback: bool,
    /// New allocations started beside the old ones before the rollout
    /// waits for `skiff rollout promote` (default 0: no canaries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canary: u32,
}

fn default_quarter() -> Amount {
    Amount::Percent(25)
}
fn is_quarter(a: &Amount) -> bool {
    *a == Amount::Percent(25)
}
fn default_min_healthy() -> Duration {
    Duration::from_secs(10)
}
fn is_default_min_healthy(d: &Duration) -> bool {
    *d == default_min_healthy()
}
fn default_healthy_deadline() -> Duration {
    Duration::from_secs(300)
}
fn is_default_healthy_deadline(d: &Duration) -> bool {
    *d == default_healthy_deadline()
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}
fn is_default_progress_deadline(d: &Duration) -> bool {
    *d == default_progress_deadline()
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_unavailable: default_quarter(),
            max_surge: default_quarter(),
            min_healthy: default_min_healthy(),
            healthy_deadline: default_healthy_deadline(),
            progress_deadline: default_progress_deadline(),
            auto_rollback: true,
            canary: 0,
        }
    }
}

impl UpdateSpec {
    pub fn is_default(&self) -> bool {
        *self == UpdateSpec::default()
    }
}

/// What happens to a gang when one of its replicas fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GangFailure {
    /// Stop every replica and start the whole gang again (counted against
    /// `backoff_limit`).
    #[default]
    RestartGang,
    /// Stop every replica; the job has failed.
    Fail,
}

impl GangFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            GangFailure::RestartGang => "restart_gang",
            GangFailure::Fail => "fail",
        }
    }

    pub fn parse(text: &str) -> Option<GangFailure> {
        match text {
            "restart_gang" => Some(GangFailure::RestartGang),
            "fail" => Some(GangFailure::Fail),
            _ => None,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == GangFailure::RestartGang
    }
}

/// A job as the operator wrote it, after validation. Its serialized form is
/// valid input again, so `skiff get job -o yaml` output can be re-applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// DNS-1123 label, unique in its namespace.
    pub name: String,
    /// The namespace the job lives in (a DNS-1123 label); `default` when
    /// the spec names none. Who may touch the job, its policy and its
    /// quota follow from it.
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    pub namespace: String,
    /// Metadata to select the job by (`skiff get jobs -l`, `skiff apply
    /// --prune -l`); never part of its version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The team queue the job waits in until its whole request is
    /// admitted (`skiff queue apply`); none: placed as soon as it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// `service` (the default) or `batch`.
    #[serde(rename = "type", default, skip_serializing_if = "JobType::is_service")]
    pub job_type: JobType,
    /// How many copies of the task to keep running (a service), or the
    /// ranks of a gang batch job. 1 for other batch jobs.
    pub replicas: u32,
    /// 0 to 100, default 50. A job may preempt allocations of jobs at least
    /// [`PREEMPTION_GAP`] points lower.
    #[serde(
        default = "default_priority",
        skip_serializing_if = "is_default_priority"
    )]
    pub priority: u8,
    /// Place the missing replicas all together or none of them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gang: bool,
    /// Hard rules on node labels; every one must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Spread the replicas over the values of a node label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// No two replicas on one node.
    #[serde(default, skip_serializing_if = "is_false")]
    pub distinct_hosts: bool,
    /// Soft, weighted preferences for nodes by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<Affinity>,
    /// How a service rolls out a new version.
    #[serde(default, skip_serializing_if = "UpdateSpec::is_default")]
    pub update: UpdateSpec,
    /// How many versions `skiff rollout history` keeps (default 10).
    #[serde(
        default = "default_versions_kept",
        skip_serializing_if = "is_default_versions_kept"
    )]
    pub versions_kept: u32,
    /// Batch: successful runs needed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<u32>,
    /// Batch: most runs at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Batch: failed runs tolerated before the job fails (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<u32>,
    /// Gang: what one failed replica does to the gang.
    #[serde(default, skip_serializing_if = "GangFailure::is_default")]
    pub gang_failure: GangFailure,
    /// Gang: `MASTER_PORT` (default 29500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_port: Option<u16>,
    pub task: TaskSpec,
}

/// The shutdown delay of a task with named ports when it sets none: the
/// node DNS's TTL (5 s), so clients' cached answers expire before the
/// replica stops.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// The one task a job runs, `replicas` times.
#[derive(Debug, Clone, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub image: ImageRef,
    /// Replaces the image's entrypoint; empty keeps the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's cmd; empty keeps the image's (unless `command` is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container; the image's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    pub resources: TaskResources,
    #[serde(default)]
    pub network: NetworkMode,
    /// When the container is started again after it exits (default:
    /// `always`, with Kubernetes' back-off).
    #[serde(default, skip_serializing_if = "RestartSpec::is_default")]
    pub restart: RestartSpec,
    #[serde(default, skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// The signal that asks the container to stop (`SIGTERM` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL; the agent's
    /// `--stop-grace` (10 s by default) when unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::opt_text"
    )]
    pub stop_grace: Option<Duration>,
    /// Time between the servers asking for a stop (the replica has left
    /// its job's endpoints by then) and the stop signal, so clients move
    /// away first; when unset, [`DEFAULT_SHUTDOWN_DELAY`] for a task with
    /// named `ports`, none otherwise (see
    /// [`TaskSpec::effective_shutdown_delay`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::opt_text"
    )]
    pub shutdown_delay: Option<Duration>,
    /// Most processes the container may run at once (4096 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// When a registry image is fetched again (`if-not-present` when
    /// unset).
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// Named ports (`ports: [{name: http, container: 8080, host: 0}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortSpec>,
}

/// When the agent asks the registry for an image it already holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Use what the node holds; ask the registry only for what it lacks
    /// (and for a tag the servers could not pin to a digest).
    #[default]
    IfNotPresent,
    /// Fetch the manifest again at every start, so a start fails when
    /// the node may no longer read the image.
    Always,
}

impl PullPolicy {
    pub fn is_default(&self) -> bool {
        *self == PullPolicy::IfNotPresent
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
        }
    }
}

impl TaskSpec {
    /// A task running `image` with every other field at its default.
    pub fn new(image: ImageRef) -> TaskSpec {
        TaskSpec {
            image,
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            resources: TaskResources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES),
            network: NetworkMode::Host,
            restart: RestartSpec::default(),
            probes: Probes::default(),
            security: Security::default(),
            stop_signal: None,
            stop_grace: None,
            shutdown_delay: None,
            pids_limit: None,
            pull: PullPolicy::IfNotPresent,
            ports: Vec::new(),
        }
    }
}

/// Which network namespace a container gets. A job file that leaves it
/// out gets `bridge` (`host` for a gang); `Host` is the serde default only
/// for records written before the bridge existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Share the host's network namespace (Nomad's exec driver default).
    #[default]
    Host,
    /// A fresh namespace with only loopback.
    None,
    /// Its own namespace on the node's bridge: an address of the node's
    /// subnet, loopback and outbound NAT (set up with CNI).
    Bridge,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
        }
    }
}

/// A reference to an image: an OCI image layout on the agent's disk,
/// written as skopeo does, `oci:PATH[:TAG]`, or an image in a registry
/// (`alpine:3.20`, `registry.lab:5000/team/train:v3`, `...@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// A layout: the directory holding `oci-layout` and `index.json`
    /// (empty for a registry image).
    pub path: String,
    /// A layout: the `org.opencontainers.image.ref.name` annotation to
    /// select; `None` selects the only manifest, or `latest` when there
    /// are several.
    pub tag: Option<String>,
    /// A registry image, normalised (then `path` is empty, `tag` `None`).
    pub registry: Option<crate::registry_ref::RegistryRef>,
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]` (the tag is whatever follows the last `:`
    /// when that part holds no `/`) or a registry reference.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let Some(rest) = text.strip_prefix("oci:") else {
            let r = crate::registry_ref::RegistryRef::parse(text).map_err(|e| {
                format!("{e} (or write oci:PATH[:TAG] for an OCI image layout on the node)")
            })?;
            return Ok(ImageRef {
                path: String::new(),
                tag: None,
                registry: Some(r),
            });
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(format!("{text:?} names no layout directory"));
        }
        if let Some(t) = tag {
            if t.is_empty() {
                return Err(format!("{text:?} has an empty tag after ':'"));
            }
            if t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(format!(
                    "tag {t:?} may hold only letters, digits, '_', '.' and '-' (at most 128)"
                ));
            }
        }
        if path.contains('\0') {
            return Err(format!("{text:?} holds a NUL byte"));
        }
        Ok(ImageRef {
            path: path.to_string(),
            tag: tag.map(str::to_string),
            registry: None,
        })
    }

    /// True when the layout path is relative (resolved by the client against
    /// its working directory before the job is sent).
    pub fn is_relative(&self) -> bool {
        self.registry.is_none() && !self.path.starts_with('/')
    }

    /// An image on the node's disk (`oci:`), not in a registry.
    pub fn is_layout(&self) -> bool {
        self.registry.is_none()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            return write!(f, "{r}");
        }
        match &self.tag {
            Some(tag) => write!(f, "oci:{}:{}", self.path, tag),
            None => write!(f, "oci:{}", self.path),
        }
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ImageRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JobSpec {
    /// A service keeping `replicas` of `task` running, with every other
    /// field at its default.
    pub fn new(name: impl Into<String>, replicas: u32, task: TaskSpec) -> JobSpec {
        JobSpec {
            name: name.into(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            queue: None,
            job_type: JobType::Service,
            replicas,
            priority: DEFAULT_PRIORITY,
            gang: false,
            constraints: Vec::new(),
            spread: None,
            distinct_hosts: false,
            affinities: Vec::new(),
            update: UpdateSpec::default(),
            versions_kept: DEFAULT_VERSIONS_KEPT,
            completions: None,
            parallelism: None,
            backoff_limit: None,
            gang_failure: GangFailure::default(),
            master_port: None,
            task,
        }
    }

    /// How many replicas may be unavailable at once while a node drains:
    /// the job's `update.max_unavailable` as a count (see
    /// [`JobSpec::max_unavailable`]), at least one so a drain always
    /// progresses.
    pub fn drain_budget(&self) -> u32 {
        self.max_unavailable().max(1)
    }

    /// Whether the job's allocations finish by themselves (batch work),
    /// rather than serve until stopped.
    pub fn runs_to_completion(&self) -> bool {
        self.is_batch()
    }

    /// A hash of what [`JobSpec::same_version`] compares: specs of the same
    /// version have the same fingerprint (never 0). Stable within a build.
    pub fn version_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.task.hash(&mut h);
        self.constraints.hash(&mut h);
        self.spread.hash(&mut h);
        self.distinct_hosts.hash(&mut h);
        self.job_type.hash(&mut h);
        self.gang.hash(&mut h);
        if self.gang {
            self.replicas.hash(&mut h);
            self.master_port.hash(&mut h);
        }
        h.finish().max(1)
    }

    /// True when `other` can keep running the allocations of `self`: the task
    /// and the hard placement rules are the same. A change of `replicas`,
    /// `priority`, `gang`, `affinities`, `update` or the batch fields alone
    /// keeps the job's version.
    pub fn same_version(&self, other: &JobSpec) -> bool {
        self.task == other.task
            && self.constraints == other.constraints
            && self.spread == other.spread
            && self.distinct_hosts == other.distinct_hosts
            && self.job_type == other.job_type
            && self.gang == other.gang
            // A gang's ranks all know its size and rank 0's port: a change
            // of either replaces the gang whole.
            && (!self.gang
                || (self.replicas == other.replicas && self.master_port == other.master_port))
    }
}

/// A job as stored by the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// Starts at 1; grows by one each time an apply changes the spec.
    pub version: u64,
    /// Raft index of the command that created the job.
    pub create_index: u64,
    /// Raft index of the command that last changed the job.
    pub modify_index: u64,
    /// For a job in a team queue: the Raft index of the plan that admitted
    /// it; 0 while it waits (and for jobs in no queue).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub admitted_index: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Job {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The key the cluster knows the job by (see [`job_key`]).
    pub fn key(&self) -> String {
        self.spec.key()
    }
}

/// The namespace of a job whose spec names none.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

fn is_default_namespace(ns: &String) -> bool {
    ns == DEFAULT_NAMESPACE
}

impl TaskSpec {
    /// How long a replica waits, once asked to stop, before its stop
    /// signal: `shutdown_delay`, else [`DEFAULT_SHUTDOWN_DELAY`] for a
    /// task that names ports (what clients find by name: the cached
    /// answers naming it expire first), else none.
    pub fn effective_shutdown_delay(&self) -> Duration {
        match self.shutdown_delay {
            Some(d) => d,
            None if !self.ports.is_empty() => DEFAULT_SHUTDOWN_DELAY,
            None => Duration::ZERO,
        }
    }

    /// How many of its ports ask the scheduler for a host port (`host: 0`).
    pub fn dynamic_ports(&self) -> u32 {
        self.ports.iter().filter(|p| p.host == Some(0)).count() as u32
    }

    /// What one replica asks of a node: `resources`, with the fixed host
    /// ports of `ports` added to the ports it holds and the number of
    /// ports it needs picked for it.
    pub fn ask(&self) -> std::borrow::Cow<'_, TaskResources> {
        if self.ports.iter().all(|p| p.host.is_none()) {
            return std::borrow::Cow::Borrowed(&self.resources);
        }
        let mut r = self.resources.clone();
        r.ports
            .extend(self.ports.iter().filter_map(|p| p.host.filter(|&h| h > 0)));
        r.dynamic_ports = self.dynamic_ports();
        std::borrow::Cow::Owned(r)
    }

    /// The host ports an allocation of this task holds, given the ports
    /// picked for its `host: 0` entries (in order).
    pub fn held_ports(&self, picked: &[u16]) -> Vec<u16> {
        let mut picked = picked.iter();
        let mut held = self.resources.ports.clone();
        for p in &self.ports {
            match p.host {
                Some(0) => held.extend(picked.next()),
                Some(h) => held.push(h),
                None => {}
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_with_named_ports_waits_out_the_dns_ttl_before_stopping() {
        let task = |extra: &str| {
            JobSpec::from_yaml(&format!("name: j\ntask: {{image: 'oci:/i'{extra}}}"))
                .unwrap()
                .task
        };
        let named = ", ports: [{name: http, container: 80}]";
        assert_eq!(task("").effective_shutdown_delay(), Duration::ZERO);
        assert_eq!(
            task(named).effective_shutdown_delay(),
            DEFAULT_SHUTDOWN_DELAY
        );
        let set = format!("{named}, shutdown_delay: 0s");
        assert_eq!(task(&set).effective_shutdown_delay(), Duration::ZERO);
        assert_eq!(
            task(", shutdown_delay: 12s").effective_shutdown_delay(),
            Duration::from_secs(12)
        );
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        assert_eq!(Amount::Percent(25).of(10, false), 2);
        assert_eq!(Amount::Percent(25).of(10, true), 3);
        assert_eq!(Amount::Percent(25).of(4, false), 1);
        assert_eq!(Amount::Percent(25).of(1, false), 0);
        assert_eq!(Amount::Percent(25).of(1, true), 1);
        assert_eq!(Amount::Count(3).of(1, true), 3);
    }

    #[test]
    fn amounts_parse_as_counts_or_percentages() {
        assert_eq!(Amount::parse("2"), Ok(Amount::Count(2)));
        assert_eq!(Amount::parse("30%"), Ok(Amount::Percent(30)));
        assert!(Amount::parse("150%")
            .unwrap_err()
            .contains("more than 100%"));
        assert!(Amount::parse("a lot").unwrap_err().contains("percentage"));
    }

    #[test]
    fn image_refs_follow_skopeo_syntax() {
        let r = ImageRef::parse("oci:/var/images/bb:1.36").unwrap();
        assert_eq!(
            (r.path.as_str(), r.tag.as_deref()),
            ("/var/images/bb", Some("1.36"))
        );
        let r = ImageRef::parse("oci:/var/images/bb").unwrap();
        assert_eq!((r.path.as_str(), r.tag), ("/var/images/bb", None));
        let r = ImageRef::parse("oci:rel/dir").unwrap();
        assert!(r.is_relative());
        let r = ImageRef::parse("busybox:latest").unwrap();
        assert!(!r.is_layout() && !r.is_relative());
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let e = ImageRef::parse("Busybox").unwrap_err();
        assert!(e.contains("or write oci:PATH[:TAG]"), "{e}");
        assert!(ImageRef::parse("oci::tag").is_err());
        assert!(ImageRef::parse("oci:/x:bad tag").is_err());
    }
}
