//! Jobs: what an operator asks for ([`JobSpec`]) and what the cluster stores
//! ([`Job`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SpecError;
use crate::lifecycle::{Probes, RestartSpec, Security};
use crate::quantity::{format_cpu, format_memory, parse_cpu, parse_memory};

/// Default CPU for a task that names none: a tenth of a core.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Default memory for a task that names none.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Smallest memory limit accepted: below this runc itself cannot start.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Largest replica count one job may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// A job as the operator wrote it, after validation. Its serialized form is
/// valid input again, so `skiff get job -o yaml` output can be re-applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// DNS-1123 label, unique in the cluster.
    pub name: String,
    /// How many copies of the task to keep running.
    pub replicas: u32,
    pub task: TaskSpec,
}

/// The one task a job runs, `replicas` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub resources: Resources,
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
            resources: Resources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES),
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

/// CPU in millicores and memory in bytes. Serialized as quantities
/// (`{cpu: 250m, memory: 64Mi}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
    };

    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
        }
    }

    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// True when every dimension of `self` is at most that of `other`.
    pub fn fits_in(self, other: Resources) -> bool {
        self.cpu_millis <= other.cpu_millis && self.memory_bytes <= other.memory_bytes
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} memory={}",
            format_cpu(self.cpu_millis),
            format_memory(self.memory_bytes)
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesForm {
    cpu: String,
    memory: String,
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResourcesForm {
            cpu: format_cpu(self.cpu_millis),
            memory: format_memory_exact(self.memory_bytes),
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
        })
    }
}

/// Like [`format_memory`], but never rounds: falls back to plain bytes.
fn format_memory_exact(bytes: u64) -> String {
    let shown = format_memory(bytes);
    if shown.contains('.') {
        bytes.to_string()
    } else {
        shown
    }
}

/// Which network namespace a container gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
