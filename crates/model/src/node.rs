//! Nodes: machines that run an agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::Resources;

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
    /// What the machine has.
    pub capacity: Resources,
    /// What the scheduler may hand out: capacity minus what is reserved.
    pub allocatable: Resources,
    /// Where the agent answers log and exec requests (`host:port`).
    pub address: String,
    pub status: NodeStatus,
    /// Version of the agent binary.
    #[serde(default)]
    pub agent_version: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Node {
    /// True when the scheduler may place new work here.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready
    }
}
