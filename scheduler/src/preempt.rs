//! Preemption: when a replica fits nowhere, evict allocations of jobs at
//! least [`PREEMPTION_GAP`] priority points lower to make room.
//!
//! On every node where the replica could fit if some of those allocations
//! were gone, the cheapest sufficient set of victims is found; the node
//! whose set is cheapest wins. A set's cost is, in order: the highest
//! priority it evicts (lower is cheaper), how many allocations it evicts,
//! and how much it frees beyond what is needed. Per node the search tries
//! each priority level from the lowest up, taking the largest victims at or
//! below it first, then drops every victim the replica does not need.
//! Victims holding a port the replica needs are always in the set. GPUs are
//! counted by UUID: a multi-GPU victim frees exactly the GPUs it holds.
//!
//! Priority preemption stays within one team queue (or among jobs in
//! none). Across queues only the queue admission's reclaim evicts: it
//! names the jobs whose allocations may go whatever their priority
//! (`Placer::reclaim`).

use skiff_model::fit::{fits_free, Usage};
use skiff_model::job::PREEMPTION_GAP;
use skiff_model::Resources;

use crate::gpus::choose;
use crate::place::{Choice, Placer};
use crate::view::{mix, NodeIdx};

/// Lower is cheaper.
type Cost = (u8, usize, u64);

impl Placer<'_, '_> {
    /// What node `n` would hold if `removed` were evicted too.
    fn usage_without(&self, n: NodeIdx, removed: &[u32]) -> Usage {
        let slot = &self.view.nodes[n as usize];
        let mut u = Usage::default();
        for &a in &slot.allocs {
            if !self.evicted.contains(&a) && !removed.contains(&a) {
                let r = &self.view.allocs[a as usize];
                u.add(r.amount, r.gpus, &r.ports);
            }
        }
        if self.is_touched(n) {
            if let Some(o) = self.overlay.iter().find(|o| o.node == n) {
                for &g in &o.placed {
                    u.add(self.amount, g, &self.ask.ports);
                }
                u.add(Resources::ZERO, 0, &o.picked);
            }
        }
        u
    }

    fn fits_without(&self, n: NodeIdx, removed: &[u32]) -> bool {
        let u = self.usage_without(n, removed);
        let slot = &self.view.nodes[n as usize];
        fits_free(
            slot.cap,
            u.amount,
            self.acceptable_gpus(n) & !u.gpus,
            &u.ports,
            slot.node.dynamic_ports,
            &self.ask,
        )
        .is_ok()
    }

    /// How big an allocation is on its node, as a fraction summed over
    /// the resources the node offers (scaled to an integer).
    fn size_on(&self, n: NodeIdx, a: u32) -> u64 {
        let cap = self.view.nodes[n as usize].cap;
        let r = &self.view.allocs[a as usize];
        let part = |x: u64, c: u64| if c == 0 { 0 } else { x * 1_000_000 / c.max(1) };
        part(r.amount.cpu_millis.min(cap.cpu_millis), cap.cpu_millis)
            + part(
                r.amount.memory_bytes.min(cap.memory_bytes) >> 10,
                cap.memory_bytes >> 10,
            )
            + part(u64::from(r.gpus.count_ones()), u64::from(cap.gpus))
    }

    /// The cheapest set of victims on node `n`, if any set makes room.
    fn victims_on(&self, n: NodeIdx, limit: Option<u8>) -> Option<(Cost, Vec<u32>)> {
        let view = self.view;
        let slot = &view.nodes[n as usize];
        let priority = |a: u32| view.jobs[view.allocs[a as usize].job as usize].priority;
        let mut mandatory = Vec::new();
        let mut pool = Vec::new();
        for &a in &slot.allocs {
            if self.evicted.contains(&a) {
                continue;
            }
            let r = &view.allocs[a as usize];
            let holds_our_port = r.ports.iter().any(|p| self.ask.ports.contains(p));
            let same_queue = view.queue_of_index(r.job) == self.spec.queue.as_deref();
            let reclaimable = self.reclaim.is_some_and(|set| set.contains(&r.job));
            let evictable = Some(r.job) != self.job
                && r.desired == skiff_model::DesiredStatus::Run
                && ((same_queue && limit.is_some_and(|l| priority(a) <= l)) || reclaimable);
            match (holds_our_port, evictable) {
                (true, true) => mandatory.push(a),
                (true, false) => return None,
                (false, true) => pool.push(a),
                (false, false) => {}
            }
        }
        if mandatory.is_empty() && pool.is_empty() {
            return None;
        }
        if mandatory.is_empty() && self.fits_without(n, &[]) {
            // Room already (what this evaluation evicted made it).
            return Some(((0, 0, 0), Vec::new()));
        }
        let floor = mandatory.iter().map(|&a| priority(a)).max().unwrap_or(0);
        let mut levels: Vec<u8> = pool.iter().map(|&a| priority(a)).collect();
        levels.push(floor);
        levels.retain(|&p| p >= floor);
        levels.sort_unstable();
        levels.dedup();
        for level in levels {
            let mut set = mandatory.clone();
            let mut extra: Vec<u32> = pool
                .iter()
                .copied()
                .filter(|&a| priority(a) <= level)
                .collect();
            // Largest first: fewest victims.
            extra.sort_by_key(|&a| (std::cmp::Reverse(self.size_on(n, a)), a));
            let mut fits = self.fits_without(n, &set);
            for &a in &extra {
                if fits {
                    break;
                }
                set.push(a);
                fits = self.fits_without(n, &set);
            }
            if !fits {
                continue;
            }
            // Drop every victim that is not needed, smallest first.
            let mut optional: Vec<u32> = set[mandatory.len()..].to_vec();
            optional.sort_by_key(|&a| (self.size_on(n, a), a));
            for a in optional {
                let without: Vec<u32> = set.iter().copied().filter(|&b| b != a).collect();
                if self.fits_without(n, &without) {
                    set = without;
                }
            }
            let top = set.iter().map(|&a| priority(a)).max().unwrap_or(0);
            let freed: u64 = set.iter().map(|&a| self.size_on(n, a)).sum();
            set.sort_unstable();
            return Some(((top, set.len(), freed), set));
        }
        None
    }

    /// Places one replica by evicting lower-priority work, if the job's
    /// priority allows and some node can make room. Returns the choice and
    /// the evicted allocations.
    pub fn preempt_one(&mut self) -> Option<(Choice, Vec<u32>)> {
        // A job in a queue evicts by priority only through its admission
        // (the victims chosen and named, whole, so that they wait in their
        // queues again), never single allocations in a plain plan.
        let by_priority = self.spec.priority >= PREEMPTION_GAP && self.spec.queue.is_none();
        if !self.cfg.preemption || (!by_priority && self.reclaim.is_none()) {
            return None;
        }
        // None: only the chosen victims (`reclaim`) may go.
        let limit = match self.reclaim {
            Some(_) => None,
            None => self.spec.priority.checked_sub(PREEMPTION_GAP),
        };
        let view = self.view;
        let mut best: Option<(Cost, u64, NodeIdx, Vec<u32>)> = None;
        for n in 0..view.nodes.len() as NodeIdx {
            let slot = &view.nodes[n as usize];
            if slot.ready.is_err()
                || !self.allowed(n)
                || !self.shape_allows(n)
                || !self.amount.fits_in(slot.cap)
                || self.acceptable_gpus(n).count_ones() < self.ask.gpus
                || slot.allocs.is_empty()
            {
                continue;
            }
            let Some((cost, set)) = self.victims_on(n, limit) else {
                continue;
            };
            let tie = mix(slot.tie, self.cfg.seed);
            if best
                .as_ref()
                .is_none_or(|(c, t, _, _)| (cost, tie) < (*c, *t))
            {
                best = Some((cost, tie, n, set));
            }
        }
        let (_, _, n, victims) = best?;
        self.evicted.extend(victims.iter().copied());
        self.recompute(n);
        let usage = self.usage(n).clone();
        let free = self.acceptable_gpus(n) & !usage.gpus;
        let gpus = choose(view.nodes[n as usize].topo.as_ref(), free, self.ask.gpus);
        let choice = self.take(Choice {
            node: n,
            gpus: gpus.mask,
            ports: Vec::new(),
        });
        Some((choice, victims))
    }
}
