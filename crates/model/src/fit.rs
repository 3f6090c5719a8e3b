//! Resource arithmetic shared by the scheduler and the state machine's plan
//! check. Keeping one definition of "fits" means a plan the scheduler made
//! is judged at commit time by exactly the rule it was made with.

use crate::alloc::Allocation;
use crate::job::Resources;
use crate::node::Node;

/// Sum of the resources held by `allocs` that are on `node`.
pub fn used_on<'a>(node: &str, allocs: impl IntoIterator<Item = &'a Allocation>) -> Resources {
    allocs
        .into_iter()
        .filter(|a| a.node == node && a.holds_resources())
        .fold(Resources::ZERO, |acc, a| acc.saturating_add(a.resources()))
}

/// Why something does not fit on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfit {
    NodeNotReady,
    Cpu,
    Memory,
}

impl Misfit {
    /// Short reason, as counted in placement explanations.
    pub fn reason(self) -> &'static str {
        match self {
            Misfit::NodeNotReady => "node not ready",
            Misfit::Cpu => "insufficient cpu",
            Misfit::Memory => "insufficient memory",
        }
    }
}

/// Checks whether `extra` fits on `node` given what is already `used` there.
pub fn fits(node: &Node, used: Resources, extra: Resources) -> Result<(), Misfit> {
    if !node.schedulable() {
        return Err(Misfit::NodeNotReady);
    }
    let free = node.allocatable.saturating_sub(used);
    if extra.cpu_millis > free.cpu_millis {
        return Err(Misfit::Cpu);
    }
    if extra.memory_bytes > free.memory_bytes {
        return Err(Misfit::Memory);
    }
    Ok(())
}

/// Best-fit score in `[0, 1]`: how full the node would be after placing
/// `extra`, averaged over cpu and memory. Higher is tighter packing.
pub fn binpack_score(node: &Node, used: Resources, extra: Resources) -> f64 {
    let after = used.saturating_add(extra);
    let ratio = |used: u64, cap: u64| {
        if cap == 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    (ratio(after.cpu_millis, node.allocatable.cpu_millis)
        + ratio(after.memory_bytes, node.allocatable.memory_bytes))
        / 2.0
}
