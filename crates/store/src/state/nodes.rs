//! Nodes in the state machine: what an agent registers, the leader's
//! liveness verdict (ready or down), and an operator's cordon and drain
//! with the drainer's steps.

use std::collections::BTreeSet;

use skiff_model::{AllocStatus, DesiredStatus, EvalTrigger, Node, NodeStatus};

use super::{Outcome, Refusal, State, Table};
use crate::command::NodeRegistration;

impl State {
    pub(super) fn register_node(&mut self, index: u64, reg: &NodeRegistration) -> Outcome {
        // GPUs count as schedulable units: whole GPUs and MIG instances,
        // not the GPUs in MIG mode that hold the instances.
        let units = Node::gpu_units(&reg.gpus);
        let healthy = reg
            .gpus
            .iter()
            .filter(|g| g.healthy && g.schedulable())
            .count() as u32;
        let capacity = reg.capacity.with_gpus(units);
        let allocatable = reg.capacity.saturating_sub(reg.reserved).with_gpus(healthy);
        let old = self.nodes.get(&reg.name);
        // Its subnet: the one registered, else the one it holds; never
        // one that overlaps another node's.
        let subnet = if reg.subnet.is_empty() {
            old.map(|n| n.subnet.clone()).unwrap_or_default()
        } else {
            reg.subnet.clone()
        };
        if let Ok(mine) = skiff_model::subnet::Subnet::parse(&subnet) {
            let clash = self.nodes.values().find(|n| {
                n.name != reg.name
                    && skiff_model::subnet::Subnet::parse(&n.subnet)
                        .is_ok_and(|s| s.overlaps(&mine))
            });
            if let Some(other) = clash {
                return Outcome::Refused(Refusal::SubnetTaken {
                    subnet,
                    node: other.name.clone(),
                });
            }
        }
        let create_index = old.map(|n| n.create_index).unwrap_or(index);
        // Cordon and drain are the operator's, not the agent's: they
        // survive a re-registration.
        let (cordoned, draining, drain_deadline_ms, drained) = old
            .map_or((false, false, None, false), |n| {
                (n.cordoned, n.draining, n.drain_deadline_ms, n.drained)
            });
        let node = Node {
            name: reg.name.clone(),
            labels: reg.labels.clone(),
            capacity,
            allocatable,
            gpus: reg.gpus.clone(),
            gpu_links: reg.gpu_links.clone(),
            gpu_driver: reg.gpu_driver.clone(),
            cordoned,
            draining,
            drain_deadline_ms,
            drained,
            image_roots: reg.image_roots.clone(),
            dynamic_ports: reg.dynamic_ports,
            subnet,
            metrics_address: reg.metrics_address.clone(),
            address: reg.address.clone(),
            status: NodeStatus::Ready,
            agent_version: reg.agent_version.clone(),
            create_index,
            modify_index: index,
        };
        let changed = self.nodes.get(&reg.name).is_none_or(|old| {
            let mut same = old.clone();
            same.modify_index = index;
            same != node
        });
        if changed {
            self.nodes.insert(reg.name.clone(), node);
            self.touch(Table::Node, &reg.name);
            self.flag_unhealthy_gpus(index, &reg.name);
            self.unblock(index);
        }
        Outcome::NodeRegistered
    }

    /// Marks the allocations on `node` that hold a GPU the node reports
    /// unhealthy (or no longer reports at all), and clears the mark of
    /// those whose GPUs are healthy again.
    fn flag_unhealthy_gpus(&mut self, index: u64, node: &str) {
        let ids = self.alloc_ids_on(node);
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let mut changed = Vec::new();
        for id in &ids {
            let Some(a) = self.allocs.get_mut(id) else {
                continue;
            };
            if a.node != node || a.gpus.is_empty() || !a.holds_resources() {
                continue;
            }
            let flags: Vec<String> = a
                .gpus
                .iter()
                .filter_map(|uuid| match n.gpus.iter().find(|g| g.uuid == *uuid) {
                    None => Some(format!("{uuid}: no longer reported by the node")),
                    Some(g) if !g.healthy => Some(if g.health_reason.is_empty() {
                        format!("{uuid}: unhealthy")
                    } else {
                        format!("{uuid}: {}", g.health_reason)
                    }),
                    Some(_) => None,
                })
                .collect();
            if flags != a.unhealthy_gpus {
                a.unhealthy_gpus = flags;
                a.modify_index = index;
                changed.push(a.id.clone());
            }
        }
        for id in changed {
            self.touch(Table::Alloc, &id);
        }
    }

    /// A node went down (its allocations are lost: stopped wherever they
    /// may still run, and replaced by their jobs' evaluations) or came back.
    pub(super) fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
        reason: &str,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(Refusal::node_not_found(name));
        };
        if node.status == status {
            return Outcome::NodeStatusSet { lost: 0 };
        }
        node.status = status;
        node.modify_index = index;
        self.touch(Table::Node, name);
        let mut lost = 0;
        match status {
            NodeStatus::Down => {
                let message = if reason.is_empty() {
                    format!("node {name} is down")
                } else {
                    format!("node {name} is down: {reason}")
                };
                let mut jobs = BTreeSet::new();
                let mut ids = Vec::new();
                let on = self.alloc_ids_on(name);
                for id in &on {
                    let Some(a) = self.allocs.get_mut(id) else {
                        continue;
                    };
                    if a.node == name && !a.status.is_terminal() {
                        // Lost, and replaced by the job's evaluation. The
                        // desired status stays (run, unless it was being
                        // stopped): should the node come back with it still
                        // running, its report decides whether it is kept or
                        // stopped (`State::reconnect`).
                        a.status = AllocStatus::Lost;
                        a.message = message.clone();
                        a.modify_index = index;
                        jobs.insert(a.job.clone());
                        ids.push(a.id.clone());
                    }
                }
                lost = ids.len() as u32;
                for id in ids {
                    self.touch(Table::Alloc, &id);
                }
                for job in jobs {
                    if self.jobs.contains_key(&job) {
                        self.create_eval(index, &job, EvalTrigger::NodeUpdate);
                    }
                }
                // Resources held there are free again for the plan check.
                self.unblock(index);
            }
            NodeStatus::Ready => self.unblock(index),
        }
        Outcome::NodeStatusSet { lost }
    }

    pub(super) fn set_node_eligibility(
        &mut self,
        index: u64,
        name: &str,
        cordoned: bool,
        draining: bool,
        drain_deadline_ms: Option<u64>,
    ) -> Outcome {
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(Refusal::node_not_found(name));
        };
        let was_schedulable = node.schedulable();
        // Draining implies cordoned. The drain itself (moving allocations a
        // few at a time) is the leader's drainer's work.
        let cordoned = cordoned || draining;
        let deadline = if draining { drain_deadline_ms } else { None };
        let drained = node.drained && cordoned && !draining;
        if node.cordoned == cordoned
            && node.draining == draining
            && node.drain_deadline_ms == deadline
            && node.drained == drained
        {
            return Outcome::NodeEligibilitySet { stopped: 0 };
        }
        node.cordoned = cordoned;
        node.draining = draining;
        node.drain_deadline_ms = deadline;
        node.drained = drained;
        node.modify_index = index;
        let now_schedulable = node.schedulable();
        self.touch(Table::Node, name);
        if now_schedulable && !was_schedulable {
            self.unblock(index);
        }
        Outcome::NodeEligibilitySet { stopped: 0 }
    }

    /// The drainer moves allocations off a draining node: each is asked to
    /// stop, and its job is evaluated to place it elsewhere.
    pub(super) fn migrate_allocs(
        &mut self,
        index: u64,
        node: &str,
        ids: &[String],
        reason: &str,
    ) -> Outcome {
        if !self.nodes.get(node).is_some_and(|n| n.draining) {
            return Outcome::Refused(Refusal::NodeNotDraining {
                node: node.to_string(),
            });
        }
        let mut jobs = BTreeSet::new();
        let mut moved = Vec::new();
        for id in ids {
            if let Some(a) = self.allocs.get_mut(id) {
                if a.node == node && a.is_live() {
                    a.desired = DesiredStatus::Stop;
                    a.message = reason.to_string();
                    a.modify_index = index;
                    jobs.insert(a.job.clone());
                    moved.push(id.clone());
                }
            }
        }
        for id in &moved {
            self.touch(Table::Alloc, id);
        }
        for job in jobs {
            if self.jobs.contains_key(&job) {
                self.create_eval(index, &job, EvalTrigger::NodeUpdate);
            }
        }
        Outcome::AllocsMigrated {
            moved: moved.len() as u32,
        }
    }

    /// A drain is over: nothing runs on the node any more.
    pub(super) fn finish_drain(&mut self, index: u64, name: &str) -> Outcome {
        let busy = self
            .allocs_on_node(name)
            .iter()
            .any(|a| a.holds_resources());
        let Some(node) = self.nodes.get_mut(name) else {
            return Outcome::Refused(Refusal::node_not_found(name));
        };
        if !node.draining || busy {
            return Outcome::Refused(Refusal::NodeNotDrained {
                node: name.to_string(),
            });
        }
        node.draining = false;
        node.drain_deadline_ms = None;
        node.drained = true;
        node.cordoned = true;
        node.modify_index = index;
        self.touch(Table::Node, name);
        Outcome::NodeEligibilitySet { stopped: 0 }
    }
}
