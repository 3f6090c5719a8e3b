//! Stored objects across the wire: jobs, nodes, allocations, rollouts and
//! job versions, evaluations.

use skiff_model as m;
use skiff_model::FieldError;

use super::enums::{
    alloc_status_from_wire, deployment_status_from_wire, deployment_status_to_wire,
    desired_from_wire, desired_to_wire, eval_status_from_wire, eval_status_to_wire,
    eval_trigger_from_wire, eval_trigger_to_wire, reason_from_wire, reason_to_wire,
};
use super::resources::{gpu_link_from_wire, ports_from_wire};
use super::spec::task_tree;
use super::{required, WireError};
use crate::pb;

impl From<&m::Job> for pb::Job {
    fn from(j: &m::Job) -> Self {
        pb::Job {
            spec: Some((&j.spec).into()),
            version: j.version,
            create_index: j.create_index,
            modify_index: j.modify_index,
            admitted_index: j.admitted_index,
        }
    }
}

impl TryFrom<pb::Job> for m::Job {
    type Error = WireError;
    fn try_from(j: pb::Job) -> Result<Self, WireError> {
        Ok(m::Job {
            spec: m::JobSpec::try_from(required(j.spec, "spec")?)?,
            version: j.version,
            create_index: j.create_index,
            modify_index: j.modify_index,
            admitted_index: j.admitted_index,
        })
    }
}

// ---- nodes -----------------------------------------------------------------

impl From<m::NodeStatus> for pb::NodeStatus {
    fn from(s: m::NodeStatus) -> Self {
        match s {
            m::NodeStatus::Ready => pb::NodeStatus::Ready,
            m::NodeStatus::Down => pb::NodeStatus::Down,
        }
    }
}

impl From<&m::Node> for pb::Node {
    fn from(n: &m::Node) -> Self {
        pb::Node {
            name: n.name.clone(),
            labels: n.labels.clone(),
            capacity: Some(n.capacity.into()),
            allocatable: Some(n.allocatable.into()),
            address: n.address.clone(),
            image_roots: n.image_roots.clone(),
            subnet: n.subnet.clone(),
            metrics_address: n.metrics_address.clone(),
            dynamic_ports: n.dynamic_ports.to_string(),
            status: pb::NodeStatus::from(n.status) as i32,
            agent_version: n.agent_version.clone(),
            create_index: n.create_index,
            modify_index: n.modify_index,
            gpus: n.gpus.iter().map(Into::into).collect(),
            gpu_links: n.gpu_links.iter().map(Into::into).collect(),
            cordoned: n.cordoned,
            draining: n.draining,
            drained: n.drained,
            drain_deadline_ms: n.drain_deadline_ms,
            gpu_driver_version: n.gpu_driver.driver_version.clone(),
            cuda_version: n.gpu_driver.cuda_version.clone(),
        }
    }
}

impl TryFrom<pb::Node> for m::Node {
    type Error = WireError;
    fn try_from(n: pb::Node) -> Result<Self, WireError> {
        let status = match pb::NodeStatus::try_from(n.status) {
            Ok(pb::NodeStatus::Ready) => m::NodeStatus::Ready,
            Ok(pb::NodeStatus::Down) => m::NodeStatus::Down,
            _ => {
                return Err(WireError::one(
                    "status",
                    format!("{} is not a node status", n.status),
                ))
            }
        };
        let gpu_links = n
            .gpu_links
            .into_iter()
            .enumerate()
            .map(|(i, l)| gpu_link_from_wire(l, &format!("gpu_links[{i}]")))
            .collect::<Result<_, _>>()?;
        let dynamic_ports = skiff_model::ports::PortRange::parse(&n.dynamic_ports)
            .map_err(|rule| WireError::one("dynamic_ports", rule))?;
        Ok(m::Node {
            dynamic_ports,
            image_roots: n.image_roots,
            subnet: n.subnet,
            metrics_address: n.metrics_address,
            name: n.name,
            labels: n.labels,
            capacity: required(n.capacity, "capacity")?.into(),
            allocatable: required(n.allocatable, "allocatable")?.into(),
            gpus: n.gpus.into_iter().map(Into::into).collect(),
            gpu_links,
            gpu_driver: m::GpuDriver {
                driver_version: n.gpu_driver_version,
                cuda_version: n.cuda_version,
            },
            cordoned: n.cordoned,
            draining: n.draining,
            drained: n.drained,
            drain_deadline_ms: n.drain_deadline_ms,
            address: n.address,
            status,
            agent_version: n.agent_version,
            create_index: n.create_index,
            modify_index: n.modify_index,
        })
    }
}

// ---- allocations -----------------------------------------------------------

impl From<&m::Allocation> for pb::Allocation {
    fn from(a: &m::Allocation) -> Self {
        pb::Allocation {
            id: a.id.clone(),
            job: a.job.clone(),
            job_version: a.job_version,
            replica: a.replica,
            node: a.node.clone(),
            task: Some((&a.task).into()),
            desired: desired_to_wire(a.desired) as i32,
            status: pb::AllocStatus::from(a.status) as i32,
            exit_code: a.exit_code,
            message: a.message.clone(),
            create_index: a.create_index,
            modify_index: a.modify_index,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: reason_to_wire(&a.reason) as i32,
            gpus: a.gpus.clone(),
            ports: a.ports.iter().map(|&p| u32::from(p)).collect(),
            unhealthy_gpus: a.unhealthy_gpus.clone(),
            deploy_health: a.deploy_health,
            healthy_since_ms: a.healthy_since_ms,
            create_time_ms: a.create_time_ms,
            address: a.address.clone(),
            gang: a.gang.as_ref().map(|g| pb::GangRank {
                rank: g.rank,
                world_size: g.world_size,
                master_addr: g.master_addr.clone(),
                master_port: u32::from(g.master_port),
            }),
        }
    }
}

impl TryFrom<pb::Allocation> for m::Allocation {
    type Error = WireError;
    fn try_from(a: pb::Allocation) -> Result<Self, WireError> {
        let desired = desired_from_wire(a.desired, "desired")?;
        let mut errors = Vec::new();
        let ports = ports_from_wire(a.ports, "ports", &mut errors);
        let gang = match a.gang {
            None => None,
            Some(g) => match u16::try_from(g.master_port) {
                Ok(master_port) => Some(m::GangRank {
                    rank: g.rank,
                    world_size: g.world_size,
                    master_addr: g.master_addr,
                    master_port,
                }),
                Err(_) => {
                    errors.push(FieldError::new(
                        "gang.master_port",
                        format!("{} must be a port number from 1 to 65535", g.master_port),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(WireError(errors));
        }
        Ok(m::Allocation {
            address: a.address,
            deploy_health: a.deploy_health,
            healthy_since_ms: a.healthy_since_ms,
            create_time_ms: a.create_time_ms,
            gang,
            gpus: a.gpus,
            ports,
            unhealthy_gpus: a.unhealthy_gpus,
            status: alloc_status_from_wire(a.status, "status")?,
            task: m::TaskSpec::from_value(&task_tree(&required(a.task, "task")?))?,
            id: a.id,
            job: a.job,
            job_version: a.job_version,
            replica: a.replica,
            node: a.node,
            desired,
            exit_code: a.exit_code,
            message: a.message,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: reason_from_wire(a.reason, "reason")?,
            create_index: a.create_index,
            modify_index: a.modify_index,
        })
    }
}

// ---- rollouts --------------------------------------------------------------

impl From<&m::Deployment> for pb::Deployment {
    fn from(d: &m::Deployment) -> Self {
        pb::Deployment {
            id: d.id.clone(),
            job: d.job.clone(),
            version: d.version,
            from_version: d.from_version,
            status: deployment_status_to_wire(d.status) as i32,
            reason: d.reason.clone(),
            canary: d.canary,
            promoted: d.promoted,
            rollback: d.rollback,
            started_ms: d.started_ms,
            progress_ms: d.progress_ms,
            ended_ms: d.ended_ms,
            create_index: d.create_index,
            modify_index: d.modify_index,
        }
    }
}

impl TryFrom<pb::Deployment> for m::Deployment {
    type Error = WireError;
    fn try_from(d: pb::Deployment) -> Result<Self, WireError> {
        let status = deployment_status_from_wire(d.status, "status")?;
        Ok(m::Deployment {
            id: d.id,
            job: d.job,
            version: d.version,
            from_version: d.from_version,
            status,
            reason: d.reason,
            canary: d.canary,
            promoted: d.promoted,
            rollback: d.rollback,
            started_ms: d.started_ms,
            progress_ms: d.progress_ms,
            ended_ms: d.ended_ms,
            create_index: d.create_index,
            modify_index: d.modify_index,
            slot: 0,
        })
    }
}

impl From<&m::JobVersion> for pb::JobVersion {
    fn from(v: &m::JobVersion) -> Self {
        pb::JobVersion {
            version: v.version,
            spec: Some(v.spec.as_ref().into()),
            create_index: v.create_index,
            stable: v.stable,
            note: v.note.clone(),
        }
    }
}

impl TryFrom<pb::JobVersion> for m::JobVersion {
    type Error = WireError;
    fn try_from(v: pb::JobVersion) -> Result<Self, WireError> {
        Ok(m::JobVersion {
            version: v.version,
            spec: Box::new(m::JobSpec::try_from(required(v.spec, "spec")?)?),
            create_index: v.create_index,
            stable: v.stable,
            note: v.note,
            slot: 0,
            fingerprint: 0,
        })
    }
}

impl From<m::RolloutCounts> for pb::RolloutCounts {
    fn from(c: m::RolloutCounts) -> Self {
        pb::RolloutCounts {
            desired: c.desired,
            updated: c.updated,
            healthy: c.healthy,
            unhealthy: c.unhealthy,
            old: c.old,
            old_healthy: c.old_healthy,
        }
    }
}

impl From<pb::RolloutCounts> for m::RolloutCounts {
    fn from(c: pb::RolloutCounts) -> Self {
        m::RolloutCounts {
            desired: c.desired,
            updated: c.updated,
            healthy: c.healthy,
            unhealthy: c.unhealthy,
            old: c.old,
            old_healthy: c.old_healthy,
        }
    }
}

// ---- evaluations -----------------------------------------------------------

impl From<&m::Evaluation> for pb::Evaluation {
    fn from(e: &m::Evaluation) -> Self {
        pb::Evaluation {
            id: e.id.clone(),
            job: e.job.clone(),
            trigger: eval_trigger_to_wire(e.trigger) as i32,
            status: eval_status_to_wire(e.status) as i32,
            message: e.message.clone(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

impl TryFrom<pb::Evaluation> for m::Evaluation {
    type Error = WireError;
    fn try_from(e: pb::Evaluation) -> Result<Self, WireError> {
        Ok(m::Evaluation {
            id: e.id,
            job: e.job,
            trigger: eval_trigger_from_wire(e.trigger, "trigger")?,
            status: eval_status_from_wire(e.status, "status")?,
            message: e.message,
            create_index: e.create_index,
            modify_index: e.modify_index,
        })
    }
}
