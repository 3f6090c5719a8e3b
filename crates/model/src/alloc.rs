//! Allocations: one replica of a job bound to one node.

use serde::{Deserialize, Serialize};

use crate::job::{NetworkMode, TaskSpec};
use crate::resources::Resources;

/// What the servers want to happen to an allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredStatus {
    #[default]
    Run,
    Stop,
}

/// What the agent last reported (or `lost`, decided by the servers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocStatus {
    /// Placed, not yet running (image unpacking, container starting).
    #[default]
    Pending,
    Running,
    /// Exited with code 0, or stopped on request.
    Complete,
    /// Exited non-zero, killed, or could not start.
    Failed,
    /// The node it ran on is gone.
    Lost,
}

impl AllocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocStatus::Pending => "pending",
            AllocStatus::Running => "running",
            AllocStatus::Complete => "complete",
            AllocStatus::Failed => "failed",
            AllocStatus::Lost => "lost",
        }
    }

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AllocStatus::Complete | AllocStatus::Failed | AllocStatus::Lost
        )
    }

    pub fn parse(text: &str) -> Option<AllocStatus> {
        Some(match text {
            "pending" => AllocStatus::Pending,
            "running" => AllocStatus::Running,
            "complete" => AllocStatus::Complete,
            "failed" => AllocStatus::Failed,
            "lost" => AllocStatus::Lost,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Unique id (32 hex digits), chosen by the leader when it plans.
    pub id: String,
    pub job: String,
    pub job_version: u64,
    /// Which replica slot of the job this fills (0-based).
    pub replica: u32,
    pub node: String,
    /// The task as it was when the allocation was placed.
    pub task: TaskSpec,
    /// UUIDs of the node's GPUs given to this allocation alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    /// Host ports held by this allocation on its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Its GPUs that are unhealthy now, each as `UUID: reason`. Set by the
    /// servers when the node reports a GPU unhealthy, cleared when it is
    /// healthy again; the allocation itself keeps running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy_gpus: Vec<String>,
    pub desired: DesiredStatus,
    pub status: AllocStatus,
    /// Exit code once the task exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A human-readable reason for the current status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How many times the agent started the container again (restart
    /// policy or a failed liveness probe).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restart_count: u32,
    /// The readiness probe's verdict (`true` while running when the task
    /// has no readiness probe); `None` while not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// A machine-readable reason for the status, one of [`reason`]'s
    /// constants; empty when there is nothing to add.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The deployment controller's verdict for the rollout that placed it:
    /// `true` once it stayed healthy for `min_healthy`, `false` when it
    /// crashed or missed `healthy_deadline`; `None` while undecided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_health: Option<bool>,
    /// Wall-clock ms (as the server that took the agent's report saw it)
    /// since which `healthy` has been true; 0 while it is not.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub healthy_since_ms: u64,
    /// Wall-clock ms at which the leader planned it (0: not recorded).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub create_time_ms: u64,
    /// For a replica of a gang: its rank and where rank 0 runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangRank>,
    /// `network: bridge`: the container's address on its node's bridge,
    /// as the agent reported it for its latest run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a replica of a gang learns about its gang, as environment
/// variables (`SKIFF_RANK`, `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GangRank {
    /// The replica's rank, 0 to `world_size - 1`.
    pub rank: u32,
    pub world_size: u32,
    /// Where the ranks reach rank 0: the host part of its node's address
    /// (host network), or its DNS name, `ALLOC-ID.JOB.NAMESPACE.skiff`
    /// (bridge).
    pub master_addr: String,
    pub master_port: u16,
}

impl GangRank {
    /// The variables the container gets, PyTorch's included.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SKIFF_RANK", self.rank.to_string()),
            ("SKIFF_WORLD_SIZE", self.world_size.to_string()),
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

/// Values of [`Allocation::reason`].
pub mod reason {
    /// The kernel's OOM killer ended the container (its memory limit).
    pub const OOM_KILLED: &str = "oom_killed";
    /// Exited non-zero or was killed by a signal.
    pub const ERROR: &str = "error";
    /// Exited with code 0.
    pub const COMPLETED: &str = "completed";
    /// Stopped because the servers asked.
    pub const STOPPED: &str = "stopped";
    /// Waiting for its back-off to pass before starting again.
    pub const BACK_OFF: &str = "back_off";
    /// Killed because its liveness or startup probe failed.
    pub const PROBE_FAILED: &str = "probe_failed";
    /// The container could not be started.
    pub const START_FAILED: &str = "start_failed";
    /// Pending while its image is pulled; the message says how far.
    pub const PULLING: &str = "pulling";
}

impl Allocation {
    /// The amounts it holds (cpu, memory, GPU count).
    pub fn resources(&self) -> Resources {
        Resources {
            gpus: self.gpus.len() as u32,
            ..self.task.resources.amount()
        }
    }

    /// An allocation holds node resources until it is terminal *and* the
    /// servers no longer want it to run.
    pub fn holds_resources(&self) -> bool {
        !self.status.is_terminal()
    }

    /// Desired to run and not finished: what counts towards a job's replicas.
    pub fn is_live(&self) -> bool {
        self.desired == DesiredStatus::Run && !self.status.is_terminal()
    }

    /// First 8 characters of the id, as tables show it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(8)]
    }

    /// An allocation placed with every optional field empty: pending,
    /// wanted to run.
    pub fn new(
        id: impl Into<String>,
        job: impl Into<String>,
        job_version: u64,
        replica: u32,
        node: impl Into<String>,
        task: TaskSpec,
    ) -> Allocation {
        let ports = task.held_ports(&[]);
        Allocation {
            id: id.into(),
            job: job.into(),
            job_version,
            replica,
            node: node.into(),
            task,
            gpus: Vec::new(),
            ports,
            unhealthy_gpus: Vec::new(),
            desired: DesiredStatus::Run,
            status: AllocStatus::Pending,
            exit_code: None,
            message: String::new(),
            restart_count: 0,
            healthy: None,
            reason: String::new(),
            deploy_health: None,
            healthy_since_ms: 0,
            create_time_ms: 0,
            gang: None,
            address: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// Failures: restarts, plus one for an end in failure or a back-off after
/// an exit (the restart that follows is not counted twice: the count
/// grows only when the container starts again).
pub fn failures_of(status: AllocStatus, restart_count: u32, reason: &str) -> u32 {
    let now =
        status == AllocStatus::Failed || (reason == reason::BACK_OFF && !status.is_terminal());
    restart_count.saturating_add(u32::from(now))
}

impl Allocation {
    /// One of its job's endpoints: wanted, running and ready. A replica
    /// being stopped leaves them at once (before its shutdown delay).
    pub fn is_endpoint(&self) -> bool {
        self.desired == DesiredStatus::Run
            && self.status == AllocStatus::Running
            && self.healthy == Some(true)
    }

    /// Its named ports with the host port each got.
    pub fn published(&self) -> Vec<crate::ports::Published<'_>> {
        let mut held = self
            .ports
            .iter()
            .skip(self.task.resources.ports.len())
            .copied();
        self.task
            .ports
            .iter()
            .map(|p| {
                let host = p.host.and_then(|_| held.next());
                let container = match (p.container, self.task.network) {
                    (0, NetworkMode::Host) => host.unwrap_or(0),
                    (c, _) => c,
                };
                crate::ports::Published {
                    name: &p.name,
                    container,
                    host,
                    protocol: p.protocol,
                }
            })
            .collect()
    }

    /// The `SKIFF_PORT_*`, `SKIFF_HOST_PORT_*` and `SKIFF_ADDR_*` variables of
    /// the allocation, given the node's address (host part) and the
    /// container's own (bridge), if any. `SKIFF_ADDR_*` is where a client
    /// reaches the port: the node's address and host port when published,
    /// the container's address and port otherwise.
    pub fn port_env(&self, node_host: &str, container_ip: Option<&str>) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for p in self.published() {
            let suffix = crate::ports::env_suffix(p.name);
            env.push((format!("SKIFF_PORT_{suffix}"), p.container.to_string()));
            let addr = match p.host {
                Some(h) => {
                    env.push((format!("SKIFF_HOST_PORT_{suffix}"), h.to_string()));
                    Some(crate::ports::join_host_port(node_host, h))
                }
                None => container_ip.map(|ip| crate::ports::join_host_port(ip, p.container)),
            };
            if let Some(addr) = addr {
                env.push((format!("SKIFF_ADDR_{suffix}"), addr));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_name_each_port() {
        let spec = crate::JobSpec::from_yaml(
            "name: web\ntask:\n  image: 'oci:/i'\n  network: bridge\n  ports:\n  - {name: http-alt, container: 8080, host: 0}\n  - {name: admin, container: 9000}\n  - {name: fixed, container: 70, host: 7070}\n",
        )
        .unwrap();
        assert_eq!(spec.task.dynamic_ports(), 1);
        assert_eq!(spec.task.ask().ports, [7070]);
        assert_eq!(spec.task.ask().dynamic_ports, 1);
        let mut a = Allocation::new("a1", "web", 1, 0, "n1", spec.task.clone());
        a.ports = spec.task.held_ports(&[20005]);
        assert_eq!(a.ports, [20005, 7070]);
        let env = a.port_env("192.0.2.1", Some("10.88.0.5"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SKIFF_PORT_HTTP_ALT"), Some("8080"));
        assert_eq!(get("SKIFF_HOST_PORT_HTTP_ALT"), Some("20005"));
        assert_eq!(get("SKIFF_ADDR_HTTP_ALT"), Some("192.0.2.1:20005"));
        assert_eq!(get("SKIFF_PORT_ADMIN"), Some("9000"));
        assert_eq!(get("SKIFF_HOST_PORT_ADMIN"), None);
        assert_eq!(get("SKIFF_ADDR_ADMIN"), Some("10.88.0.5:9000"));
        assert_eq!(get("SKIFF_ADDR_FIXED"), Some("192.0.2.1:7070"));
    }
}
