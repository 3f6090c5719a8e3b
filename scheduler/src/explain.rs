//! Why a replica could not be placed, counted by reason over every node:
//! `0/40 nodes: 31 insufficient gpu, 9 constraint zone in (a)`.
//!
//! Each node is counted once, under the first check it fails, in the order
//! the checks run: the node takes work, the job's constraints, the fit rule
//! (GPUs, cpu, memory, ports), `distinct_hosts`, `spread`.

use std::collections::BTreeMap;

use skiff_model::fit::{fits_free, Misfit};

use crate::place::Placer;
use crate::view::NodeIdx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    Misfit(Misfit),
    /// Held back for another queue's overdue head.
    Reserved,
    /// Index into the job's constraints.
    Constraint(usize),
    DistinctHosts,
    SpreadLabelMissing,
    SpreadSkew,
    /// Passed every check (only when a plan cut the search short).
    NotChosen,
}

impl Placer<'_, '_> {
    fn reason(&self, n: NodeIdx) -> Reason {
        let slot = &self.view.nodes[n as usize];
        if let Err(m) = slot.ready {
            return Reason::Misfit(m);
        }
        if self.hidden.is_some_and(|h| h.contains(n as usize)) {
            return Reason::Reserved;
        }
        if let Some(i) = self
            .spec
            .constraints
            .iter()
            .position(|c| !c.matches(&slot.node.labels))
        {
            return Reason::Constraint(i);
        }
        let usage = self.usage(n);
        if let Err(m) = fits_free(
            slot.cap,
            usage.amount,
            self.acceptable_gpus(n) & !usage.gpus,
            &usage.ports,
            slot.node.dynamic_ports,
            &self.ask,
        ) {
            return Reason::Misfit(m);
        }
        if self.spec.distinct_hosts
            && self
                .counts
                .as_ref()
                .is_some_and(|c| c.get(&n).is_some_and(|k| *k > 0))
        {
            return Reason::DistinctHosts;
        }
        if let Some(sp) = &self.spread {
            if sp.value_of[n as usize] == u32::MAX {
                return Reason::SpreadLabelMissing;
            }
            if !sp.admits(n) {
                return Reason::SpreadSkew;
            }
        }
        Reason::NotChosen
    }

    fn reason_text(&self, r: Reason) -> String {
        match r {
            Reason::Misfit(m) => m.to_string(),
            Reason::Reserved => "reserved for a waiting queue head".to_string(),
            Reason::Constraint(i) => format!("constraint {}", self.spec.constraints[i]),
            Reason::DistinctHosts => "distinct_hosts (runs a replica already)".to_string(),
            Reason::SpreadLabelMissing => format!(
                "spread: no {} label",
                self.spread.as_ref().map_or("", |s| s.label)
            ),
            Reason::SpreadSkew => format!(
                "spread over {} (max_skew {})",
                self.spread.as_ref().map_or("", |s| s.label),
                self.spread.as_ref().map_or(0, |s| s.max_skew)
            ),
            Reason::NotChosen => "not chosen".to_string(),
        }
    }

    /// `0/3 nodes: 2 insufficient memory, 1 node not ready`: the most common
    /// reason first, ties in the order of their text.
    pub fn explain(&self) -> String {
        let total = self.view.nodes.len();
        if total == 0 {
            return "0/0 nodes: no nodes are registered".to_string();
        }
        let mut counts: BTreeMap<Reason, usize> = BTreeMap::new();
        for n in 0..total as NodeIdx {
            *counts.entry(self.reason(n)).or_default() += 1;
        }
        let mut parts: Vec<(usize, String)> = counts
            .into_iter()
            .map(|(r, c)| (c, self.reason_text(r)))
            .collect();
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let listed: Vec<String> = parts.iter().map(|(n, r)| format!("{n} {r}")).collect();
        format!("0/{total} nodes: {}", listed.join(", "))
    }
}
