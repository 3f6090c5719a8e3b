//! A busy node's steady pass, for bench/'s pass benchmark (feature
//! `sim`): many containers running, the servers holding them as running,
//! nothing new. Most passes of a full node are this one.

use std::collections::HashMap;
use std::time::Instant;

use skiff_model::{Allocation, JobSpec};

use super::decide::Containers;
use super::desired::Desired;
use super::event::StartedRun;
use crate::clock::{self, Now};

/// `n` running containers and the set the servers list for them.
pub struct SteadyNode {
    containers: Containers,
    desired: Desired,
    now: Now,
}

impl SteadyNode {
    /// Starts `n` containers through the reconciler's own decisions and
    /// feeds each report back as the servers would record it, until a
    /// pass has nothing to do.
    pub fn new(n: usize) -> SteadyNode {
        let task = JobSpec::from_yaml("name: t\ntask: {image: 'oci:/i'}")
            .expect("a valid spec")
            .task;
        let mut allocs: Vec<Allocation> = (0..n)
            .map(|i| {
                let id = format!("{:032x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15);
                Allocation::new(&id, "default/j", 1, 0, "n", task.clone())
            })
            .collect();
        let mut node = SteadyNode {
            containers: Containers::new(std::time::Duration::from_secs(10), Default::default()),
            desired: Desired::new(allocs.clone()),
            now: Now {
                wall: clock::from_ms(1_000_000),
                mono: Instant::now(),
            },
        };
        // Start, run, report: a few passes; bounded so a rule that never
        // settles shows as a pass with work left, not as a hang.
        for _ in 0..8 {
            let d = node
                .containers
                .decide(&node.desired, &HashMap::new(), node.now);
            if d.actions.is_empty() && d.report.is_empty() {
                break;
            }
            for action in &d.actions {
                if let super::decide::Action::Start { alloc, run } = action {
                    let started = Ok(StartedRun {
                        pulled: None,
                        address: None,
                    });
                    node.containers
                        .started(&alloc.id, *run, started, Default::default());
                }
            }
            node.containers.sent(&d.report, node.now.mono);
            for o in &d.report {
                if let Some(a) = allocs.iter_mut().find(|a| a.id == o.alloc_id) {
                    a.status = o.status;
                    a.healthy = o.healthy;
                    a.restart_count = o.restart_count;
                    a.reason = o.reason.clone();
                    a.message = o.message.clone();
                }
            }
            node.desired = Desired::new(allocs.clone());
        }
        node
    }

    /// One pass; answers the actions and reports it made (0 once steady).
    pub fn pass(&mut self) -> usize {
        let d = self
            .containers
            .decide(&self.desired, &HashMap::new(), self.now);
        d.actions.len() + d.report.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_steady_node_runs_everything_and_has_nothing_to_do() {
        let mut node = super::SteadyNode::new(50);
        assert_eq!(node.containers.tracked(), 50);
        assert!(node
            .desired
            .iter()
            .all(|a| a.status == skiff_model::AllocStatus::Running));
        assert_eq!(node.pass(), 0);
    }
}
