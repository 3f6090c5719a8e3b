//! Plans: what the scheduler proposes for one evaluation. A plan is a value;
//! the state machine re-checks it against the state at commit time.

use serde::{Deserialize, Serialize};

/// Put replica `replica` of the job on `node`, giving it these GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replica: u32,
    pub node: String,
    /// UUIDs of the node's GPUs the replica gets (as many as it asks for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// Host ports picked for the task's `host: 0` ports, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Stop an allocation, for the reason given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub alloc_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// The job's own allocations to stop (old versions, surplus replicas).
    pub stops: Vec<Stop>,
    /// Allocations of lower-priority jobs to stop so placements fit; the
    /// reason names the preempting job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evictions: Vec<Stop>,
    /// Replicas that could not be placed.
    pub unplaced: u32,
    /// Why they could not be placed, e.g. `0/3 nodes: 2 insufficient memory, 1 node not ready`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub explanation: String,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty() && self.stops.is_empty() && self.evictions.is_empty()
    }
}
