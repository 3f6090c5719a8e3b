//! Resource arithmetic shared by the scheduler and the state machine's plan
//! check. Keeping one definition of "fits" means a plan the scheduler made
//! is judged at commit time by exactly the rule it was made with.
//!
//! The rule itself is [`fits_free`], on plain numbers, so the scheduler can
//! call it on the per-node figures it precomputes; [`fits`] and
//! [`fits_assignment`] derive those figures from a [`Node`] and a [`Usage`]
//! and then call the same rule.

use std::fmt;

use crate::alloc::Allocation;
use crate::gpu::bits;
use crate::node::{Node, NodeStatus};
use crate::resources::{Resources, TaskResources};

/// What the allocations holding resources on one node hold together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub amount: Resources,
    /// Positions (in [`Node::gpus`]) of the GPUs held.
    pub gpus: u64,
    /// Host ports held, sorted.
    pub ports: Vec<u16>,
}

impl Usage {
    /// Counts one more holder of `amount`, `gpus` and `ports`.
    pub fn add(&mut self, amount: Resources, gpus: u64, ports: &[u16]) {
        self.amount = self.amount.saturating_add(amount);
        self.gpus |= gpus;
        for &p in ports {
            let at = self.ports.partition_point(|&q| q < p);
            self.ports.insert(at, p);
        }
    }

    /// Counts allocation `a`, which runs on `node`.
    pub fn add_alloc(&mut self, node: &Node, a: &Allocation) {
        self.add(a.resources(), node.gpu_mask(&a.gpus), &a.ports);
    }

    pub fn holds_port(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }
}

/// What the allocations on `node` that hold resources hold together.
pub fn usage_on<'a>(node: &Node, allocs: impl IntoIterator<Item = &'a Allocation>) -> Usage {
    let mut u = Usage::default();
    for a in allocs {
        if a.node == node.name && a.holds_resources() {
            u.add_alloc(node, a);
        }
    }
    u
}

/// Sum of the amounts held by `allocs` that are on `node`.
pub fn used_on<'a>(node: &str, allocs: impl IntoIterator<Item = &'a Allocation>) -> Resources {
    allocs
        .into_iter()
        .filter(|a| a.node == node && a.holds_resources())
        .fold(Resources::ZERO, |acc, a| acc.saturating_add(a.resources()))
}

/// Why something does not fit on a node. Ordered as the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Misfit {
    NodeNotReady,
    NodeCordoned,
    NodeDraining,
    /// Fewer free GPUs that the task accepts than it asks for.
    Gpu,
    Cpu,
    Memory,
    /// The host port is held by another allocation.
    Port(u16),
    /// Too few ports of the node's dynamic range are free.
    DynamicPorts(crate::ports::PortRange),
    /// The plan names GPUs that are not the node's, not free, not
    /// acceptable to the task, or not as many as it asks for.
    GpuAssignment,
}

impl fmt::Display for Misfit {
    /// Short reason, as counted in placement explanations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::NodeNotReady => f.write_str("node not ready"),
            Misfit::NodeCordoned => f.write_str("node cordoned"),
            Misfit::NodeDraining => f.write_str("node draining"),
            Misfit::Gpu => f.write_str("insufficient gpu"),
            Misfit::Cpu => f.write_str("insufficient cpu"),
            Misfit::Memory => f.write_str("insufficient memory"),
            Misfit::Port(p) => write!(f, "port {p} in use"),
            Misfit::DynamicPorts(range) => write!(f, "no free port in {range}"),
            Misfit::GpuAssignment => f.write_str("gpus not available"),
        }
    }
}

/// Whether the node takes new work at all.
pub fn node_ready(node: &Node) -> Result<(), Misfit> {
    if node.status != NodeStatus::Ready {
        Err(Misfit::NodeNotReady)
    } else if node.draining {
        Err(Misfit::NodeDraining)
    } else if node.cordoned {
        Err(Misfit::NodeCordoned)
    } else {
        Ok(())
    }
}

/// The fit rule. `allocatable` is what the node offers, `used` what its
/// allocations hold, `free_gpus` the mask of its GPUs that are healthy,
/// acceptable to the task and held by nobody, `used_ports` the sorted ports
/// held on it.
pub fn fits_free(
    allocatable: Resources,
    used: Resources,
    free_gpus: u64,
    used_ports: &[u16],
    dynamic: crate::ports::PortRange,
    ask: &TaskResources,
) -> Result<(), Misfit> {
    if ask.gpus > 0 && free_gpus.count_ones() < ask.gpus {
        return Err(Misfit::Gpu);
    }
    if ask.cpu_millis > allocatable.cpu_millis.saturating_sub(used.cpu_millis) {
        return Err(Misfit::Cpu);
    }
    if ask.memory_bytes > allocatable.memory_bytes.saturating_sub(used.memory_bytes) {
        return Err(Misfit::Memory);
    }
    for &p in &ask.ports {
        if used_ports.binary_search(&p).is_ok() {
            return Err(Misfit::Port(p));
        }
    }
    if ask.dynamic_ports > 0 && crate::ports::dynamic_free(used_ports, dynamic) < ask.dynamic_ports
    {
        return Err(Misfit::DynamicPorts(dynamic));
    }
    Ok(())
}

/// Checks whether one replica asking `ask` fits on `node` given `usage`.
pub fn fits(node: &Node, usage: &Usage, ask: &TaskResources) -> Result<(), Misfit> {
    node_ready(node)?;
    let free_gpus = node.eligible_gpus(&ask.gpu) & !usage.gpus;
    fits_free(
        node.allocatable,
        usage.amount,
        free_gpus,
        &usage.ports,
        node.dynamic_ports,
        ask,
    )
}

/// [`fits`], and the plan's choice of GPUs (`uuids`) is right: exactly
/// `ask.gpus` distinct GPUs of this node, each healthy, acceptable to the
/// task and free. Returns their mask.
pub fn fits_assignment(
    node: &Node,
    usage: &Usage,
    ask: &TaskResources,
    uuids: &[String],
) -> Result<u64, Misfit> {
    fits(node, usage, ask)?;
    let free = node.eligible_gpus(&ask.gpu) & !usage.gpus;
    let mut mask = 0u64;
    for u in uuids {
        let bit = match node.gpu_index(u) {
            Some(i) if i < crate::gpu::MAX_GPUS_PER_NODE => 1u64 << i,
            _ => return Err(Misfit::GpuAssignment),
        };
        if mask & bit != 0 || free & bit == 0 {
            return Err(Misfit::GpuAssignment);
        }
        mask |= bit;
    }
    if uuids.len() != ask.gpus as usize {
        return Err(Misfit::GpuAssignment);
    }
    Ok(mask)
}

/// Best-fit score in `[0, 1]`: how full a node offering `allocatable` is
/// when its allocations hold `used_after`, averaged over the resources it
/// offers (cpu, memory, and GPUs when it has any). Higher is fuller.
pub fn binpack_score(allocatable: Resources, used_after: Resources) -> f64 {
    let ratio = |used: u64, cap: u64| (used as f64 / cap as f64).min(1.0);
    let mut sum = 0.0;
    let mut dims = 0.0;
    if allocatable.cpu_millis > 0 {
        sum += ratio(used_after.cpu_millis, allocatable.cpu_millis);
        dims += 1.0;
    }
    if allocatable.memory_bytes > 0 {
        sum += ratio(used_after.memory_bytes, allocatable.memory_bytes);
        dims += 1.0;
    }
    if allocatable.gpus > 0 {
        sum += ratio(u64::from(used_after.gpus), u64::from(allocatable.gpus));
        dims += 1.0;
    }
    if dims == 0.0 {
        1.0
    } else {
        sum / dims
    }
}

/// Number of GPUs in `mask`.
pub fn gpu_count(mask: u64) -> u32 {
    mask.count_ones()
}

/// Positions of the GPUs in `mask`.
pub fn gpu_positions(mask: u64) -> impl Iterator<Item = usize> {
    bits(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Gpu;

    fn node(gpus: usize) -> Node {
        Node {
            gpus: (0..gpus)
                .map(|i| Gpu {
                    uuid: format!("GPU-{i}"),
                    model: if i < 2 { "A100" } else { "T4" }.into(),
                    memory_bytes: 16 << 30,
                    healthy: i != 3,
                    ..Gpu::default()
                })
                .collect(),
            ..Node::ready("n", Resources::new(4000, 8 << 30).with_gpus(gpus as u32))
        }
    }

    fn ask(cpu: u64, gpus: u32, ports: &[u16]) -> TaskResources {
        TaskResources {
            gpus,
            ports: ports.to_vec(),
            ..TaskResources::new(cpu, 1 << 30)
        }
    }

    #[test]
    fn fit_checks_gpus_then_cpu_then_memory_then_ports() {
        let n = node(4);
        let mut used = Usage::default();
        assert_eq!(fits(&n, &used, &ask(1000, 3, &[80])), Ok(()));
        // GPU-3 is unhealthy: only three are offered.
        assert_eq!(fits(&n, &used, &ask(1000, 4, &[])), Err(Misfit::Gpu));
        used.add(Resources::new(3500, 0), 0b1, &[80]);
        assert_eq!(fits(&n, &used, &ask(1000, 3, &[])), Err(Misfit::Gpu));
        assert_eq!(fits(&n, &used, &ask(1000, 2, &[])), Err(Misfit::Cpu));
        assert_eq!(fits(&n, &used, &ask(500, 0, &[80])), Err(Misfit::Port(80)));
        assert_eq!(fits(&n, &used, &ask(500, 0, &[81])), Ok(()));
        let big_mem = TaskResources::new(1, 9 << 30);
        assert_eq!(fits(&n, &Usage::default(), &big_mem), Err(Misfit::Memory));
    }

    #[test]
    fn nodes_that_are_down_cordoned_or_draining_take_nothing() {
        let mut n = node(0);
        n.cordoned = true;
        assert_eq!(
            fits(&n, &Usage::default(), &ask(1, 0, &[])),
            Err(Misfit::NodeCordoned)
        );
        n.draining = true;
        assert_eq!(
            fits(&n, &Usage::default(), &ask(1, 0, &[])),
            Err(Misfit::NodeDraining)
        );
        n.status = NodeStatus::Down;
        assert_eq!(
            fits(&n, &Usage::default(), &ask(1, 0, &[])),
            Err(Misfit::NodeNotReady)
        );
    }

    #[test]
    fn a_gpu_assignment_must_name_free_acceptable_gpus_of_the_node() {
        let n = node(4);
        let mut a = ask(100, 2, &[]);
        a.gpu.model = Some("A100".into());
        let used = Usage::default();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fits_assignment(&n, &used, &a, &ids(&["GPU-0", "GPU-1"])),
            Ok(0b11)
        );
        for bad in [
            ids(&["GPU-0"]),
            ids(&["GPU-0", "GPU-0"]),
            ids(&["GPU-0", "GPU-2"]), // a T4
            ids(&["GPU-0", "GPU-9"]),
        ] {
            assert_eq!(
                fits_assignment(&n, &used, &a, &bad),
                Err(Misfit::GpuAssignment),
                "{bad:?}"
            );
        }
        let mut held = Usage::default();
        held.add(Resources::ZERO.with_gpus(1), 0b10, &[]);
        let one = ask(100, 1, &[]);
        assert_eq!(
            fits_assignment(&n, &held, &one, &ids(&["GPU-1"])),
            Err(Misfit::GpuAssignment)
        );
        // An unhealthy GPU is never handed out.
        assert_eq!(
            fits_assignment(&n, &held, &one, &ids(&["GPU-3"])),
            Err(Misfit::GpuAssignment)
        );
    }

    #[test]
    fn binpack_score_averages_the_offered_resources() {
        let cap = Resources::new(1000, 1000).with_gpus(4);
        let after = Resources::new(500, 1000).with_gpus(0);
        assert!((binpack_score(cap, after) - 0.5).abs() < 1e-9);
        let no_gpu = Resources::new(1000, 1000);
        assert!((binpack_score(no_gpu, after) - 0.75).abs() < 1e-9);
    }
}
