//! What one evaluation shares while it plans (the view, the settings, the
//! job), and the step every workload kind ends in: placing replicas, with
//! preemption and gangs' all-or-nothing rule.

use skiff_model::{Job, Placement, Plan, Stop};

use crate::config::Config;
use crate::place::Placer;
use crate::view::{AllocRec, ClusterView, NodeIdx};

/// What every part of one evaluation reads.
pub(crate) struct Ctx<'v, 'a> {
    pub view: &'v ClusterView<'a>,
    pub cfg: &'v Config,
    pub job: &'v Job,
    pub job_idx: Option<u32>,
    /// Jobs whose allocations a queue admission may evict to make room
    /// (see `Placer::reclaim`); `None` outside admission.
    pub reclaim: Option<&'v std::collections::BTreeSet<u32>>,
    /// Nodes held back for a queue's overdue head (see `Placer::hidden`).
    pub hidden: Option<&'v crate::bitset::Bitset>,
}

impl Ctx<'_, '_> {
    /// Places one replica in each of `slots`, in order, evicting
    /// lower-priority work where nothing fits. `kept` are the nodes where
    /// the job's replicas that stay run (for distinct_hosts and spread). A
    /// gang is placed whole or not at all.
    pub(crate) fn place(&self, plan: &mut Plan, slots: &[u32], kept: &[NodeIdx]) {
        if slots.is_empty() {
            return;
        }
        let (view, job) = (self.view, self.job);
        let mut placer = Placer::new(
            view,
            self.cfg,
            &job.spec,
            self.job_idx,
            kept.iter().copied(),
        );
        placer.reclaim = self.reclaim;
        placer.hidden = self.hidden;
        let reason = format!(
            "preempted by job {} (priority {})",
            job.key(),
            job.spec.priority
        );
        let placed_before = plan.placements.len();
        let evicted_before = plan.evictions.len();
        let mut unplaced = 0;
        let mut explanation = None;
        for &replica in slots {
            if explanation.is_some() {
                // Nothing fit, even by preemption: nor will the next replica.
                unplaced += 1;
                continue;
            }
            let choice = match placer.place_one() {
                Some(c) => Some(c),
                None => placer.preempt_one().map(|(c, victims)| {
                    for v in victims {
                        plan.evictions.push(Stop {
                            alloc_id: view.allocs[v as usize].id.to_string(),
                            reason: reason.clone(),
                        });
                    }
                    c
                }),
            };
            match choice {
                Some(c) => {
                    let node = &view.nodes[c.node as usize].node;
                    plan.placements.push(Placement {
                        replica,
                        node: node.name.clone(),
                        gpus: node.gpu_uuids(c.gpus),
                        ports: c.ports,
                    });
                }
                None => {
                    unplaced += 1;
                    explanation = Some(placer.explain());
                }
            }
        }
        if let Some(why) = explanation {
            if job.spec.gang {
                // All or nothing: the replicas that fit are not placed either,
                // and nothing is evicted for them.
                let fit = plan.placements.len() - placed_before;
                plan.placements.truncate(placed_before);
                plan.evictions.truncate(evicted_before);
                unplaced = slots.len() as u32;
                plan.explanation = format!(
                    "gang needs all {} replicas placed together; only {fit} fit: {why}",
                    slots.len()
                );
            } else {
                plan.explanation = why;
            }
        }
        plan.unplaced += unplaced;
    }
}

pub(crate) fn stop(a: &AllocRec<'_>, reason: &str) -> Stop {
    Stop {
        alloc_id: a.id.to_string(),
        reason: reason.to_string(),
    }
}
