//! Amounts of CPU, memory and GPUs: what a node offers ([`Resources`]),
//! what one replica of a task asks for ([`TaskResources`]), added and
//! subtracted exactly.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::gpu::GpuFilter;
use crate::quantity::{format_cpu, format_memory, format_memory_exact, parse_cpu, parse_memory};

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
    /// How many more host ports the scheduler picks for the replica (the
    /// task's `ports` with `host: 0`); set by [`crate::TaskSpec::ask`],
    /// never stored.
    pub dynamic_ports: u32,
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
            dynamic_ports: 0,
        })
    }
}
