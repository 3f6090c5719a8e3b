//! Jobs: what an operator asks for ([`JobSpec`]) and what the cluster stores
//! ([`Job`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SpecError;
use crate::gpu::GpuFilter;
use crate::lifecycle::{Probes, RestartSpec, Security};
use crate::placement::{Affinity, Constraint, Spread};
use crate::quantity::{format_cpu, format_memory, parse_cpu, parse_memory};
use crate::workload::{GangFailure, JobType, UpdateSpec, DEFAULT_VERSIONS_KEPT};

/// Default CPU for a task that names none: a tenth of a core.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Default memory for a task that names none.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Smallest memory limit accepted: below this runc itself cannot start.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Largest replica count one job may ask for.
pub const MAX_REPLICAS: u32 = 1000;
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

/// A job as the operator wrote it, after validation. Its serialized form is
/// valid input again, so `skiff get job -o yaml` output can be re-applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// DNS-1123 label, unique in the cluster.
    pub name: String,
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
    /// Most processes the container may run at once (4096 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
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
            pids_limit: None,
        }
    }
}

/// Amounts of CPU (millicores), memory (bytes) and GPUs (whole devices):
/// what a node offers and what allocations hold, added and subtracted
/// exactly. Serialized as quantities (`{cpu: 250m, memory: 64Mi, gpus: 1}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: 0,
    };

    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            gpus: 0,
        }
    }

    pub fn with_gpus(self, gpus: u32) -> Self {
        Self { gpus, ..self }
    }

    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }

    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// True when every dimension of `self` is at most that of `other`.
    pub fn fits_in(self, other: Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.gpus <= other.gpus
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} memory={}",
            format_cpu(self.cpu_millis),
            format_memory(self.memory_bytes)
        )?;
        if self.gpus > 0 {
            write!(f, " gpus={}", self.gpus)?;
        }
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesForm {
    cpu: String,
    memory: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    gpus: u32,
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResourcesForm {
            cpu: format_cpu(self.cpu_millis),
            memory: format_memory_exact(self.memory_bytes),
            gpus: self.gpus,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = ResourcesForm::deserialize(d)?;
        Ok(Resources {
            cpu_millis: parse_cpu(&form.cpu).map_err(serde::de::Error::custom)?,
            memory_bytes: parse_memory(&form.memory).map_err(serde::de::Error::custom)?,
            gpus: form.gpus,
        })
    }
}

/// What one replica of a task asks for: amounts of CPU, memory and GPUs,
/// which GPUs it accepts, and the host ports it needs to itself.
/// Serialized as `{cpu: 2, memory: 8Gi, gpus: 1, gpu: {model: ...}, ports: [8080]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TaskResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Whole GPUs, each given to this replica alone.
    pub gpus: u32,
    /// Which GPUs are acceptable (any healthy one when empty).
    pub gpu: GpuFilter,
    /// Host ports no other allocation on the node may hold.
    pub ports: Vec<u16>,
}

impl TaskResources {
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        TaskResources {
            cpu_millis,
            memory_bytes,
            ..Default::default()
        }
    }

    /// The amounts, for resource arithmetic.
    pub fn amount(&self) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            gpus: self.gpus,
        }
    }
}

fn no_filter(f: &GpuFilter) -> bool {
    f.is_empty()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskResourcesForm {
    cpu: String,
    memory: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    gpus: u32,
    #[serde(default, skip_serializing_if = "no_filter")]
    gpu: GpuFilter,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<u16>,
}

impl Serialize for TaskResources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TaskResourcesForm {
            cpu: format_cpu(self.cpu_millis),
            memory: format_memory_exact(self.memory_bytes),
            gpus: self.gpus,
            gpu: self.gpu.clone(),
            ports: self.ports.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskResources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = TaskResourcesForm::deserialize(d)?;
        Ok(TaskResources {
            cpu_millis: parse_cpu(&form.cpu).map_err(serde::de::Error::custom)?,
            memory_bytes: parse_memory(&form.memory).map_err(serde::de::Error::custom)?,
            gpus: form.gpus,
            gpu: form.gpu,
            ports: form.ports,
        })
    }
}

/// Like [`format_memory`], but never rounds: falls back to plain bytes.
pub(crate) fn format_memory_exact(bytes: u64) -> String {
    let shown = format_memory(bytes);
    if shown.contains('.') {
        bytes.to_string()
    } else {
        shown
    }
}

/// Which network namespace a container gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Hash, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Share the host's network namespace (Nomad's exec driver default).
    #[default]
    Host,
    /// A fresh namespace with only loopback.
    None,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }
}

/// A reference to an image: for now an OCI image layout on the agent's disk,
/// written as skopeo does, `oci:PATH[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Directory holding `oci-layout` and `index.json`.
    pub path: String,
    /// The `org.opencontainers.image.ref.name` annotation to select; `None`
    /// selects the only manifest, or `latest` when there are several.
    pub tag: Option<String>,
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]`. The tag is whatever follows the last `:`
    /// when that part holds no `/`.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let rest = text.strip_prefix("oci:").ok_or_else(|| {
            format!("{text:?} must be oci:PATH[:TAG] (an OCI image layout on the node; registries are not supported yet)")
        })?;
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
        })
    }

    /// True when the layout path is relative (resolved by the client against
    /// its working directory before the job is sent).
    pub fn is_relative(&self) -> bool {
        !self.path.starts_with('/')
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

    /// Parses and validates a job written in YAML (JSON is YAML too).
    /// Every broken rule is reported, each naming its field.
    pub fn from_yaml(text: &str) -> Result<JobSpec, SpecError> {
        if text.len() > crate::MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge {
                size: text.len(),
                limit: crate::MAX_SPEC_BYTES,
            });
        }
        let value: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
        crate::spec_parse::parse_job(&value)
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

    /// Checks the rules that hold for a spec however it was built (from YAML,
    /// or from a gRPC message). Returns every broken rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        let errors = crate::spec_parse::validate_job(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(errors))
        }
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
}

impl Job {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}
