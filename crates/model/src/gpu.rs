//! GPUs: what a node reports about its devices, and what a task may ask of
//! them.
//!
//! A node's GPUs are numbered by their position in [`crate::Node::gpus`]; sets
//! of them are `u64` masks over those positions, which is why a node may
//! report at most [`MAX_GPUS_PER_NODE`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quantity::{format_memory, format_memory_exact, parse_memory};

/// Most GPUs one node may report (and one task may ask for).
pub const MAX_GPUS_PER_NODE: usize = 64;

/// One schedulable GPU of a node, as its agent reports it: a whole GPU, or
/// one MIG instance of a GPU in MIG mode. A GPU in MIG mode is reported
/// too (with `mig_enabled`), so its attributes and health are visible, but
/// only its instances are ever given to allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Stable identifier (NVML's `GPU-...`, or `MIG-...` for an instance);
    /// what allocations record.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA A100-SXM4-80GB` (an instance carries its
    /// GPU's).
    #[serde(default)]
    pub model: String,
    /// Device memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Unhealthy GPUs are never offered to new work.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Why the GPU is unhealthy (`XID 79: ...`); empty while healthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_reason: String,
    /// NVML's index of the GPU (an instance: its GPU's index).
    #[serde(default)]
    pub index: u32,
    /// CUDA compute capability, `major.minor` (`8.0`); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compute_capability: String,
    /// PCI bus id (`00000000:07:00.0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pci_bus_id: String,
    /// Highest PCIe generation and link width the GPU supports (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pcie_generation: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pcie_width: u32,
    /// Power limit in milliwatts (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub power_limit_mw: u32,
    /// Highest SM and memory clocks in MHz (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_sm_clock_mhz: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_memory_clock_mhz: u32,
    /// The NUMA node the GPU is attached to, when the machine has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// The GPU is in MIG mode: only its instances are schedulable.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mig_enabled: bool,
    /// For a MIG instance: its profile (`1g.10gb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
    /// For a MIG instance: the UUID of its GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// GPUs (by UUID) or NVSwitches (by PCI bus id) at the other end of
    /// this GPU's active NVLinks, one entry per peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvlink_peers: Vec<String>,
}

impl Default for Gpu {
    fn default() -> Self {
        Gpu {
            uuid: String::new(),
            model: String::new(),
            memory_bytes: 0,
            healthy: true,
            health_reason: String::new(),
            index: 0,
            compute_capability: String::new(),
            pci_bus_id: String::new(),
            pcie_generation: 0,
            pcie_width: 0,
            power_limit_mw: 0,
            max_sm_clock_mhz: 0,
            max_memory_clock_mhz: 0,
            numa_node: None,
            mig_enabled: false,
            mig_profile: None,
            parent: None,
            nvlink_peers: Vec::new(),
        }
    }
}

impl Gpu {
    /// A whole GPU with these basics and every other attribute unknown.
    pub fn new(uuid: impl Into<String>, model: impl Into<String>, memory_bytes: u64) -> Gpu {
        Gpu {
            uuid: uuid.into(),
            model: model.into(),
            memory_bytes,
            ..Gpu::default()
        }
    }

    /// Whether it can be given to an allocation at all: a GPU in MIG mode
    /// cannot (its instances can).
    pub fn schedulable(&self) -> bool {
        !self.mig_enabled
    }

    /// True for a MIG instance.
    pub fn is_mig(&self) -> bool {
        self.mig_profile.is_some()
    }
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The driver of a node's GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDriver {
    /// Kernel driver version (`550.54.15`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    /// Highest CUDA version the driver supports (`12.4`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cuda_version: String,
}

impl GpuDriver {
    pub fn is_empty(&self) -> bool {
        self.driver_version.is_empty() && self.cuda_version.is_empty()
    }
}

/// A live sample of one GPU, sent with heartbeats and kept in the servers'
/// memory (never in the Raft log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMetrics {
    pub uuid: String,
    /// Percent of time a kernel ran, over the last sample period.
    pub utilization_pct: u32,
    /// Percent of time device memory was read or written.
    #[serde(default)]
    pub memory_utilization_pct: u32,
    pub memory_used_bytes: u64,
    pub temperature_c: u32,
    pub power_mw: u32,
    /// Volatile ECC error counts (since the driver loaded).
    #[serde(default)]
    pub ecc_corrected: u64,
    #[serde(default)]
    pub ecc_uncorrected: u64,
    /// Why the clocks are held down right now (`sw_power_cap`,
    /// `hw_slowdown`, ...); empty when they are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_reasons: Vec<String>,
}

/// How closely two GPUs of one node are connected, closest first. Pairs a
/// node does not describe count as [`LinkLevel::System`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LinkLevel {
    /// A direct NVLink (or NVSwitch) connection.
    #[serde(rename = "nvlink")]
    NvLink,
    /// Behind the same PCIe switch.
    #[serde(rename = "pcie-switch")]
    PcieSwitch,
    /// On the same NUMA node (same CPU socket).
    #[serde(rename = "numa")]
    Numa,
    /// Across sockets, or unknown.
    #[serde(rename = "system")]
    System,
}

impl LinkLevel {
    pub const ALL: [LinkLevel; 4] = [
        LinkLevel::NvLink,
        LinkLevel::PcieSwitch,
        LinkLevel::Numa,
        LinkLevel::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkLevel::NvLink => "nvlink",
            LinkLevel::PcieSwitch => "pcie-switch",
            LinkLevel::Numa => "numa",
            LinkLevel::System => "system",
        }
    }

    pub fn parse(text: &str) -> Option<LinkLevel> {
        LinkLevel::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// 0 for NVLink up to 3 for system.
    pub fn rank(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for LinkLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The link between two GPUs of a node, named by UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLink {
    pub a: String,
    pub b: String,
    pub level: LinkLevel,
}

/// Which GPUs a task accepts. Empty accepts any healthy GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GpuFilter {
    /// Exact product name, as `skiff get nodes -o wide` shows it.
    pub model: Option<String>,
    /// Least device memory, in bytes (0: any).
    pub min_memory_bytes: u64,
    /// Only these GPUs (pinned by UUID).
    pub uuids: Vec<String>,
    /// A MIG instance of this profile (`1g.10gb`) instead of a whole GPU.
    pub mig: Option<String>,
}

impl GpuFilter {
    pub fn is_empty(&self) -> bool {
        self.model.is_none()
            && self.min_memory_bytes == 0
            && self.uuids.is_empty()
            && self.mig.is_none()
    }

    /// True when `gpu` is one this filter accepts (health is checked
    /// separately). Without `mig` only whole GPUs are accepted, unless the
    /// filter pins UUIDs, which may name MIG instances; a GPU in MIG mode
    /// is never accepted itself.
    pub fn matches(&self, gpu: &Gpu) -> bool {
        let kind = match &self.mig {
            Some(p) => gpu.mig_profile.as_ref() == Some(p),
            None => !gpu.is_mig() || !self.uuids.is_empty(),
        };
        gpu.schedulable()
            && kind
            && self.model.as_ref().is_none_or(|m| *m == gpu.model)
            && gpu.memory_bytes >= self.min_memory_bytes
            && (self.uuids.is_empty() || self.uuids.contains(&gpu.uuid))
    }
}

impl fmt::Display for GpuFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.model {
            parts.push(format!("model {m}"));
        }
        if self.min_memory_bytes > 0 {
            parts.push(format!(
                "at least {} memory",
                format_memory(self.min_memory_bytes)
            ));
        }
        if let Some(p) = &self.mig {
            parts.push(format!("MIG {p}"));
        }
        if !self.uuids.is_empty() {
            parts.push(format!("one of {}", self.uuids.join(", ")));
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFilterForm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    uuids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mig: Option<String>,
}

impl Serialize for GpuFilter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        GpuFilterForm {
            model: self.model.clone(),
            min_memory: (self.min_memory_bytes > 0)
                .then(|| format_memory_exact(self.min_memory_bytes)),
            uuids: self.uuids.clone(),
            mig: self.mig.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for GpuFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let form = GpuFilterForm::deserialize(d)?;
        Ok(GpuFilter {
            model: form.model,
            min_memory_bytes: match form.min_memory {
                Some(m) => parse_memory(&m).map_err(serde::de::Error::custom)?,
                None => 0,
            },
            uuids: form.uuids,
            mig: form.mig,
        })
    }
}

/// A node's GPU topology as a dense matrix of link levels, indexed by GPU
/// position. Built once per node by whoever needs to compare GPU sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    n: usize,
    levels: Vec<LinkLevel>,
}

impl Topology {
    /// Every pair the links do not name is [`LinkLevel::System`]; links that
    /// name unknown UUIDs are ignored.
    pub fn new(gpus: &[Gpu], links: &[GpuLink]) -> Topology {
        let n = gpus.len();
        let mut levels = vec![LinkLevel::System; n * n];
        let pos = |uuid: &str| gpus.iter().position(|g| g.uuid == uuid);
        for l in links {
            if let (Some(a), Some(b)) = (pos(&l.a), pos(&l.b)) {
                if a != b {
                    // The closest level wins if a pair is named twice.
                    let cur = levels[a * n + b];
                    let lvl = cur.min(l.level);
                    levels[a * n + b] = lvl;
                    levels[b * n + a] = lvl;
                }
            }
        }
        Topology { n, levels }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn level(&self, a: usize, b: usize) -> LinkLevel {
        self.levels[a * self.n + b]
    }

    /// The farthest link inside the set `mask` (NVLink for sets of one).
    pub fn worst_level(&self, mask: u64) -> LinkLevel {
        let mut worst = LinkLevel::NvLink;
        for a in bits(mask) {
            for b in bits(mask & !((2u64 << a) - 1)) {
                worst = worst.max(self.level(a, b));
            }
        }
        worst
    }
}

/// Positions of the set bits of `mask`, lowest first.
pub fn bits(mask: u64) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(i)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(uuid: &str, model: &str, mem_gi: u64) -> Gpu {
        Gpu::new(uuid, model, mem_gi << 30)
    }

    #[test]
    fn a_filter_matches_on_model_memory_and_uuid() {
        let g = gpu("GPU-1", "A100", 80);
        assert!(GpuFilter::default().matches(&g));
        let by_model = GpuFilter {
            model: Some("A100".into()),
            ..Default::default()
        };
        assert!(by_model.matches(&g));
        assert!(!by_model.matches(&gpu("GPU-2", "T4", 16)));
        let by_mem = GpuFilter {
            min_memory_bytes: 40 << 30,
            ..Default::default()
        };
        assert!(by_mem.matches(&g));
        assert!(!by_mem.matches(&gpu("GPU-2", "T4", 16)));
        let pinned = GpuFilter {
            uuids: vec!["GPU-2".into()],
            ..Default::default()
        };
        assert!(!pinned.matches(&g));
        assert!(pinned.matches(&gpu("GPU-2", "T4", 16)));
    }

    #[test]
    fn topology_defaults_to_system_and_keeps_the_closest_level() {
        let gpus = [gpu("a", "", 0), gpu("b", "", 0), gpu("c", "", 0)];
        let links = [
            GpuLink {
                a: "a".into(),
                b: "b".into(),
                level: LinkLevel::Numa,
            },
            GpuLink {
                a: "b".into(),
                b: "a".into(),
                level: LinkLevel::NvLink,
            },
            GpuLink {
                a: "a".into(),
                b: "zzz".into(),
                level: LinkLevel::NvLink,
            },
        ];
        let t = Topology::new(&gpus, &links);
        assert_eq!(t.level(0, 1), LinkLevel::NvLink);
        assert_eq!(t.level(1, 0), LinkLevel::NvLink);
        assert_eq!(t.level(0, 2), LinkLevel::System);
        assert_eq!(t.worst_level(0b011), LinkLevel::NvLink);
        assert_eq!(t.worst_level(0b111), LinkLevel::System);
        assert_eq!(t.worst_level(0b100), LinkLevel::NvLink);
    }

    #[test]
    fn filters_round_trip_through_serde() {
        let f = GpuFilter {
            model: Some("A100".into()),
            min_memory_bytes: 40 << 30,
            uuids: vec!["GPU-1".into()],
            mig: None,
        };
        let yaml = serde_yaml_ng::to_string(&f).unwrap();
        assert!(yaml.contains("min_memory: 40Gi"), "{yaml}");
        assert_eq!(serde_yaml_ng::from_str::<GpuFilter>(&yaml).unwrap(), f);
    }

    #[test]
    fn mig_instances_are_offered_only_to_tasks_that_ask_for_their_profile() {
        let parent = Gpu {
            mig_enabled: true,
            ..gpu("GPU-p", "A100", 80)
        };
        let small = Gpu {
            mig_profile: Some("1g.10gb".into()),
            parent: Some("GPU-p".into()),
            ..gpu("MIG-1", "A100", 10)
        };
        let whole = gpu("GPU-w", "A100", 80);
        let any = GpuFilter::default();
        assert!(any.matches(&whole));
        assert!(!any.matches(&small), "a plain request gets whole GPUs");
        assert!(
            !any.matches(&parent),
            "a GPU in MIG mode is never given out"
        );
        let mig = GpuFilter {
            mig: Some("1g.10gb".into()),
            ..Default::default()
        };
        assert!(mig.matches(&small));
        assert!(!mig.matches(&whole));
        assert!(!mig.matches(&parent));
        let other = GpuFilter {
            mig: Some("3g.40gb".into()),
            ..Default::default()
        };
        assert!(!other.matches(&small));
        let pinned = GpuFilter {
            uuids: vec!["MIG-1".into()],
            ..Default::default()
        };
        assert!(pinned.matches(&small), "a pinned MIG UUID needs no profile");
    }
}
