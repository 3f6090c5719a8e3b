//! Nodes: machines that run an agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gpu::{Gpu, GpuDriver, GpuFilter, GpuLink};
use crate::resources::Resources;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeating and accepting work.
    #[default]
    Ready,
    /// Missed its heartbeats; its allocations are not trusted.
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// A registered node, as stored by the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (the agent's `--name`, the host name by default).
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the machine has (`gpus`: every GPU it reports).
    pub capacity: Resources,
    /// What the scheduler may hand out: capacity minus what is reserved
    /// (`gpus`: the healthy ones).
    pub allocatable: Resources,
    /// The node's GPUs; allocations name them by UUID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// How the GPUs are connected, pair by pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_links: Vec<GpuLink>,
    /// Driver and CUDA versions of the node's GPUs.
    #[serde(default, skip_serializing_if = "GpuDriver::is_empty")]
    pub gpu_driver: GpuDriver,
    /// An operator marked the node unschedulable: no new work, what runs stays.
    #[serde(default)]
    pub cordoned: bool,
    /// The node is being emptied: no new work, and its allocations are moved
    /// elsewhere, a few at a time.
    #[serde(default)]
    pub draining: bool,
    /// When a drain stops waiting for batch work and stops everything left,
    /// milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline_ms: Option<u64>,
    /// A drain finished: the node is empty (and stays cordoned).
    #[serde(default)]
    pub drained: bool,
    /// Where the agent answers log and exec requests (`host:port`).
    /// Directories under which its agent runs `oci:` layouts
    /// (`--image-roots`), as it registered them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_roots: Vec<String>,
    /// Where the scheduler picks its `host: 0` ports from (its agent's
    /// `--dynamic-ports`).
    #[serde(default, skip_serializing_if = "crate::ports::PortRange::is_default")]
    pub dynamic_ports: crate::ports::PortRange,
    /// Its IPv4 subnet for `network: bridge` (assigned by the servers or
    /// given by its agent); no two nodes' overlap.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Where its agent serves Prometheus metrics (`host:port`, its
    /// `--metrics-addr`); empty when it serves none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    pub address: String,
    pub status: NodeStatus,
    /// Version of the agent binary.
    #[serde(default)]
    pub agent_version: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Node {
    /// A ready node offering all of `capacity`, with nothing else known
    /// (no GPUs, labels or address; the default port range): what tests,
    /// simulations and benchmarks start from and then adjust.
    pub fn ready(name: &str, capacity: Resources) -> Node {
        Node {
            name: name.into(),
            labels: BTreeMap::new(),
            capacity,
            allocatable: capacity,
            gpus: Vec::new(),
            gpu_links: Vec::new(),
            gpu_driver: GpuDriver::default(),
            cordoned: false,
            draining: false,
            drain_deadline_ms: None,
            drained: false,
            image_roots: Vec::new(),
            dynamic_ports: crate::ports::PortRange::default(),
            subnet: String::new(),
            metrics_address: String::new(),
            address: String::new(),
            status: NodeStatus::Ready,
            agent_version: String::new(),
            create_index: 1,
            modify_index: 1,
        }
    }

    /// True when the scheduler may place new work here.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && !self.cordoned && !self.draining
    }

    /// `ready`, `ready,cordoned`, `down,draining`...
    pub fn status_text(&self) -> String {
        let mut s = self.status.as_str().to_string();
        if self.draining {
            s.push_str(",draining");
        } else if self.drained {
            s.push_str(",drained");
        } else if self.cordoned {
            s.push_str(",cordoned");
        }
        s
    }

    /// Position of the GPU with this UUID in [`Node::gpus`].
    pub fn gpu_index(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|g| g.uuid == uuid)
    }

    /// Mask of the healthy GPUs (and MIG instances) that can be given out
    /// at all, whatever a task asks.
    pub fn schedulable_gpus(&self) -> u64 {
        let mut mask = 0u64;
        for (i, g) in self
            .gpus
            .iter()
            .enumerate()
            .take(crate::gpu::MAX_GPUS_PER_NODE)
        {
            if g.healthy && g.schedulable() {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// How many GPUs (and MIG instances) the node could give out when all
    /// are healthy.
    pub fn gpu_units(gpus: &[Gpu]) -> u32 {
        gpus.iter().filter(|g| g.schedulable()).count() as u32
    }

    /// Mask of the healthy GPUs that `filter` accepts.
    pub fn eligible_gpus(&self, filter: &GpuFilter) -> u64 {
        let mut mask = 0u64;
        for (i, g) in self
            .gpus
            .iter()
            .enumerate()
            .take(crate::gpu::MAX_GPUS_PER_NODE)
        {
            if g.healthy && filter.matches(g) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// UUIDs of the GPUs in `mask`.
    pub fn gpu_uuids(&self, mask: u64) -> Vec<String> {
        crate::gpu::bits(mask)
            .filter_map(|i| self.gpus.get(i).map(|g| g.uuid.clone()))
            .collect()
    }

    /// Mask of the GPUs named by `uuids` (unknown UUIDs are left out).
    pub fn gpu_mask(&self, uuids: &[String]) -> u64 {
        uuids
            .iter()
            .filter_map(|u| self.gpu_index(u))
            .filter(|&i| i < crate::gpu::MAX_GPUS_PER_NODE)
            .fold(0, |m, i| m | 1 << i)
    }
}
