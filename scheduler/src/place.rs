//! Placing the replicas of one evaluation.
//!
//! A [`Placer`] holds what one evaluation learns about the cluster on top of
//! the [`ClusterView`]: which nodes the job's constraints allow, the GPUs
//! its filter accepts, where its replicas already run, and an *overlay* of
//! the nodes its own placements (and evictions) have changed so far. The
//! view itself is never changed.
//!
//! For each replica it gathers candidates, scores them and takes the best:
//!
//! - **index mode** (many nodes, few node classes, no affinities): per node
//!   class, walk the class's index from the fullest node that could still
//!   fit (`binpack`) or from the emptiest (`spread`), and keep the first few
//!   nodes that pass every check; plus every node the overlay changed;
//! - **scan mode** (small clusters, many classes, or soft affinities): every
//!   node is checked.
//!
//! Checks, in order: the job's constraints, the node takes work, the fit
//! rule (`skiff_model::fit::fits_free`: GPUs, cpu, memory, ports),
//! `distinct_hosts`, `spread`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use skiff_model::fit::{binpack_score, fits_free, Usage};
use skiff_model::{JobSpec, Resources, TaskResources};

use crate::bitset::Bitset;
use crate::config::{Algorithm, Config};
use crate::gpus::{choose, GpuChoice};
use crate::view::{least_key, mix, ClusterView, IndexEntry, IndexSet, NodeIdx, NO_NODE};

/// Weight of GPU closeness (1 for an all-NVLink set, 0 across the system)
/// against fullness (0 to 1) for multi-GPU replicas.
const W_TOPOLOGY: f64 = 0.5;
/// Penalty for putting a replica that needs no GPU on a node that has them.
const W_GPU_SPARE: f64 = 0.25;
/// Weight of soft affinities (their weights summed and scaled to -1..1).
const W_AFFINITY: f64 = 1.0;
/// Weight of preferring the spread label value with fewest replicas.
const W_SPREAD: f64 = 0.5;
/// Weight of the resources a placement would leave stranded (see
/// `Placer::stranded`) against fullness. Measured with `schedbench
/// --shape mixed`: 0 packs like first fit (1.033 of the lower bound), 3
/// gives 1.014 walking the index and 1.011 scanning every node; much
/// larger weights pull replicas onto empty nodes when every node is
/// scanned.
const W_STRANDED: f64 = 3.0;
/// Clusters this small are always scanned in full.
const SCAN_NODES: usize = 64;
/// Beyond this many node classes the indexes are not worth walking.
const MAX_CLASSES: usize = 64;
/// Once a class gave one candidate, stop walking it after this many entries.
const WALK_AFTER_FIRST: usize = 256;

/// What an evaluation placed or evicted on one node.
pub(crate) struct Overlay {
    pub node: NodeIdx,
    pub usage: Usage,
    /// GPU masks of this evaluation's replicas on the node.
    pub placed: Vec<u64>,
    /// Host ports picked for them.
    pub picked: Vec<u16>,
}

/// Per-label-value replica counts for a `spread` rule.
pub(crate) struct SpreadState<'a> {
    pub label: &'a str,
    pub max_skew: u32,
    /// Value id of each node's label (`u32::MAX`: not set).
    pub value_of: Vec<u32>,
    pub counts: Vec<u32>,
    /// Values that feasible nodes carry: the ones the skew is measured over.
    pub in_domain: Vec<bool>,
}

impl SpreadState<'_> {
    fn min_count(&self) -> u32 {
        self.counts
            .iter()
            .zip(&self.in_domain)
            .filter(|(_, d)| **d)
            .map(|(c, _)| *c)
            .min()
            .unwrap_or(0)
    }

    pub fn admits(&self, n: NodeIdx) -> bool {
        let v = self.value_of[n as usize];
        v != u32::MAX && self.counts[v as usize] < self.min_count() + self.max_skew
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    node: NodeIdx,
    score: f64,
    tie: u64,
    gpus: GpuChoice,
}

/// The result of placing one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub node: NodeIdx,
    pub gpus: u64,
    /// Host ports picked for the task's `host: 0` ports.
    pub ports: Vec<u16>,
}

pub(crate) struct Placer<'v, 'a> {
    pub view: &'v ClusterView<'a>,
    pub cfg: &'v Config,
    pub spec: &'v JobSpec,
    /// The job's position in the view, if it has allocations there.
    pub job: Option<u32>,
    /// `spec.task.ask()`: its resources with its fixed host ports and how
    /// many it needs picked.
    pub ask: Cow<'v, TaskResources>,
    pub amount: Resources,
    /// Nodes the job's constraints allow; `None`: all of them.
    pub feasible: Option<Bitset>,
    pub overlay: Vec<Overlay>,
    touched: Option<Bitset>,
    /// Replicas of the job per node (kept for distinct_hosts and spread).
    pub counts: Option<BTreeMap<NodeIdx, u32>>,
    pub spread: Option<SpreadState<'v>>,
    /// Allocations this evaluation evicts.
    pub evicted: Vec<u32>,
    /// Jobs (view indexes) whose allocations may be evicted whatever
    /// their priority or queue: borrowed capacity a queue admission
    /// reclaims.
    pub reclaim: Option<&'v BTreeSet<u32>>,
    /// Nodes held back for another queue's overdue head: nothing of this
    /// evaluation goes there.
    pub hidden: Option<&'v Bitset>,
    scan: bool,
    buf: Vec<Candidate>,
    /// Cluster-wide use of cpu, memory and GPUs relative to the most used
    /// of them (1.0): the mix the work asks for, which packing keeps nodes
    /// in step with. `None` while nothing is used.
    shares: Option<[f64; 3]>,
}

impl<'v, 'a> Placer<'v, 'a> {
    /// `placed` are the nodes where the job's kept replicas run.
    pub fn new(
        view: &'v ClusterView<'a>,
        cfg: &'v Config,
        spec: &'v JobSpec,
        job: Option<u32>,
        placed: impl IntoIterator<Item = NodeIdx>,
    ) -> Self {
        let ask = spec.task.ask();
        let n = view.nodes.len();
        let feasible = (!spec.constraints.is_empty()).then(|| {
            let mut b = Bitset::new(n);
            for (i, slot) in view.nodes.iter().enumerate() {
                if spec
                    .constraints
                    .iter()
                    .all(|c| c.matches(&slot.node.labels))
                {
                    b.insert(i);
                }
            }
            b
        });
        let track = spec.distinct_hosts || spec.spread.is_some();
        let mut counts: Option<BTreeMap<NodeIdx, u32>> = track.then(BTreeMap::new);
        if let Some(c) = counts.as_mut() {
            for node in placed {
                if node != NO_NODE {
                    *c.entry(node).or_default() += 1;
                }
            }
        }
        let spread = spec.spread.as_ref().map(|s| {
            let mut names: BTreeMap<&'v str, u32> = BTreeMap::new();
            for slot in &view.nodes {
                if let Some(v) = slot.node.labels.get(&s.label) {
                    let next = names.len() as u32;
                    names.entry(v.as_str()).or_insert(next);
                }
            }
            let value_of: Vec<u32> = view
                .nodes
                .iter()
                .map(|slot| {
                    slot.node
                        .labels
                        .get(&s.label)
                        .map_or(u32::MAX, |v| names[v.as_str()])
                })
                .collect();
            let mut counts_v = vec![0u32; names.len()];
            let mut in_domain = vec![false; names.len()];
            for (i, &v) in value_of.iter().enumerate() {
                if v == u32::MAX {
                    continue;
                }
                let ok =
                    view.nodes[i].ready.is_ok() && feasible.as_ref().is_none_or(|f| f.contains(i));
                if ok {
                    in_domain[v as usize] = true;
                }
            }
            if let Some(c) = &counts {
                for (&node, &k) in c {
                    let v = value_of[node as usize];
                    if v != u32::MAX {
                        counts_v[v as usize] += k;
                    }
                }
            }
            SpreadState {
                label: s.label.as_str(),
                max_skew: s.max_skew,
                value_of,
                counts: counts_v,
                in_domain,
            }
        });
        let scan =
            n <= SCAN_NODES || view.classes.len() > MAX_CLASSES || !spec.affinities.is_empty();
        let util = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
        let (tu, tc) = (view.total_used, view.total_cap);
        let utils = [
            util(tu.cpu_millis, tc.cpu_millis),
            util(tu.memory_bytes, tc.memory_bytes),
            util(u64::from(tu.gpus), u64::from(tc.gpus)),
        ];
        let top = utils.iter().copied().fold(0.0, f64::max);
        let shares = (top > 0.0).then(|| utils.map(|x| x / top));
        Placer {
            view,
            cfg,
            spec,
            job,
            amount: ask.amount(),
            ask,
            feasible,
            overlay: Vec::new(),
            touched: None,
            counts,
            spread,
            evicted: Vec::new(),
            reclaim: None,
            hidden: None,
            scan,
            buf: Vec::with_capacity(cfg.candidates.max(1) as usize * 2),
            shares,
        }
    }

    pub fn is_touched(&self, n: NodeIdx) -> bool {
        self.touched
            .as_ref()
            .is_some_and(|t| t.contains(n as usize))
    }

    /// The node's usage as this evaluation sees it.
    pub fn usage(&self, n: NodeIdx) -> &Usage {
        if self.is_touched(n) {
            if let Some(o) = self.overlay.iter().find(|o| o.node == n) {
                return &o.usage;
            }
        }
        &self.view.nodes[n as usize].used
    }

    /// Healthy GPUs of the node the job accepts (free or not).
    ///
    /// Read from the node when asked, not computed for every node up
    /// front: a GPU job's evaluation looks at a handful of nodes, and
    /// doing it for all of them made each evaluation O(nodes).
    pub fn acceptable_gpus(&self, n: NodeIdx) -> u64 {
        let slot = &self.view.nodes[n as usize];
        if self.ask.gpus > 0 {
            // Even an empty filter narrows the healthy GPUs down: it
            // accepts whole GPUs only, not MIG instances.
            slot.node.eligible_gpus(&self.ask.gpu)
        } else {
            slot.healthy
        }
    }

    pub fn allowed(&self, n: NodeIdx) -> bool {
        self.feasible
            .as_ref()
            .is_none_or(|f| f.contains(n as usize))
            && self.hidden.is_none_or(|h| !h.contains(n as usize))
    }

    /// distinct_hosts and spread allow one more replica here.
    pub fn shape_allows(&self, n: NodeIdx) -> bool {
        if self.spec.distinct_hosts
            && self
                .counts
                .as_ref()
                .is_some_and(|c| c.get(&n).is_some_and(|k| *k > 0))
        {
            return false;
        }
        self.spread.as_ref().is_none_or(|s| s.admits(n))
    }

    /// Every check for node `n` with `usage`; true when a replica fits.
    fn passes(&self, n: NodeIdx, usage: &Usage) -> bool {
        let slot = &self.view.nodes[n as usize];
        slot.ready.is_ok()
            && self.allowed(n)
            && fits_free(
                slot.cap,
                usage.amount,
                self.acceptable_gpus(n) & !usage.gpus,
                &usage.ports,
                slot.node.dynamic_ports,
                &self.ask,
            )
            .is_ok()
            && self.shape_allows(n)
    }

    /// How much the scheduler likes node `n` for one more replica, given
    /// `usage` there; and the GPUs it would take.
    pub fn score(&self, n: NodeIdx, usage: &Usage) -> (f64, GpuChoice) {
        let slot = &self.view.nodes[n as usize];
        let after = usage.amount.saturating_add(self.amount);
        let full = binpack_score(slot.cap, after);
        let mut s = match self.cfg.algorithm {
            Algorithm::Binpack => full - W_STRANDED * self.stranded(slot.cap, after),
            Algorithm::Spread => 1.0 - full,
        };
        let gpus = if self.ask.gpus > 0 {
            let free = self.acceptable_gpus(n) & !usage.gpus;
            let c = choose(slot.topo.as_ref(), free, self.ask.gpus);
            if self.ask.gpus > 1 {
                s += W_TOPOLOGY * (1.0 - f64::from(c.worst) / 3.0);
            }
            c
        } else {
            if slot.healthy != 0 {
                s -= W_GPU_SPARE;
            }
            GpuChoice { mask: 0, worst: 0 }
        };
        if !self.spec.affinities.is_empty() {
            let total: i32 = self.spec.affinities.iter().map(|a| a.weight.abs()).sum();
            let got: i32 = self
                .spec
                .affinities
                .iter()
                .filter(|a| a.rule.matches(&slot.node.labels))
                .map(|a| a.weight)
                .sum();
            s += W_AFFINITY * f64::from(got) / f64::from(total.max(1));
        }
        if let Some(sp) = &self.spread {
            let v = sp.value_of[n as usize];
            if v != u32::MAX {
                let max = sp.counts.iter().copied().max().unwrap_or(0);
                s -= W_SPREAD * f64::from(sp.counts[v as usize]) / f64::from(max + 1);
            }
        }
        (s, gpus)
    }

    /// How much of the node's scarcest resource would be left stranded if
    /// it went on filling with work in the cluster's current mix: 0 when the
    /// node's resources run out together. `after` is what it would hold.
    fn stranded(&self, cap: Resources, after: Resources) -> f64 {
        let Some(shares) = self.shares else {
            return 0.0;
        };
        let frac = |u: u64, c: u64| (u as f64 / c as f64).min(1.0);
        let dims = [
            (after.cpu_millis, cap.cpu_millis, shares[0]),
            (after.memory_bytes, cap.memory_bytes, shares[1]),
            (u64::from(after.gpus), u64::from(cap.gpus), shares[2]),
        ];
        let mut room = f64::INFINITY;
        let mut scarce_left = None;
        for (u, c, share) in dims {
            if c == 0 || share <= 0.0 {
                continue;
            }
            let left = 1.0 - frac(u, c);
            room = room.min(left / share);
            if share >= 1.0 {
                scarce_left = Some(left);
            }
        }
        match scarce_left {
            Some(left) => (left - room).max(0.0),
            None => 0.0,
        }
    }

    fn offer(&mut self, n: NodeIdx, usage_from_overlay: bool) -> bool {
        let usage = if usage_from_overlay {
            self.usage(n)
        } else {
            &self.view.nodes[n as usize].used
        };
        if !self.passes(n, usage) {
            return false;
        }
        let (score, gpus) = self.score(n, usage);
        let tie = mix(self.view.nodes[n as usize].tie, self.cfg.seed);
        self.buf.push(Candidate {
            node: n,
            score,
            tie,
            gpus,
        });
        true
    }

    /// Finds the best node for one more replica, without evicting anything.
    pub fn place_one(&mut self) -> Option<Choice> {
        self.buf.clear();
        if self.scan {
            crate::work::visited(self.view.nodes.len() as u64);
            for n in 0..self.view.nodes.len() as NodeIdx {
                self.offer(n, true);
            }
        } else {
            for i in 0..self.overlay.len() {
                let n = self.overlay[i].node;
                self.offer(n, true);
            }
            let want = self.cfg.candidates.max(1) as usize;
            let view = self.view;
            let k = self.ask.gpus as usize;
            for class in &view.classes {
                let Some(least) = least_key(class.cap, self.amount) else {
                    continue;
                };
                let Some(buckets) = class.buckets.get(k..) else {
                    continue;
                };
                let range = (least, 0, 0, 0, 0)..;
                // Replicas without GPUs walk the whole class; others only
                // the buckets of nodes with enough free GPUs.
                let sets: &[IndexSet] = if k == 0 {
                    std::slice::from_ref(&class.all)
                } else {
                    buckets
                };
                match self.cfg.algorithm {
                    // Fullest first, but from the nodes that have enough
                    // of the resource the cluster uses most: walking the
                    // combined key from the fullest passed every node
                    // short of it (most of a filling cluster) for every
                    // replica.
                    Algorithm::Binpack => {
                        let mem_scarcer = self.shares.is_some_and(|[c, m, _]| m > c);
                        let (all, buckets, from) = if mem_scarcer {
                            (&class.by_mem, &class.buckets_mem, self.ask.memory_bytes)
                        } else {
                            (&class.by_cpu, &class.buckets_cpu, self.ask.cpu_millis)
                        };
                        let sets: &[IndexSet] = if k == 0 {
                            std::slice::from_ref(all)
                        } else {
                            buckets.get(k..).unwrap_or_default()
                        };
                        let start = (from, 0, 0, 0, 0)..;
                        self.walk(sets.iter().map(|b| b.range(start.clone())), true, want)
                    }
                    Algorithm::Spread => self.walk(
                        sets.iter().map(|b| b.range(range.clone()).rev()),
                        false,
                        want,
                    ),
                }
            }
        }
        let best = self.buf.iter().copied().reduce(|a, b| {
            if b.score > a.score || (b.score == a.score && b.tie < a.tie) {
                b
            } else {
                a
            }
        })?;
        Some(self.take(Choice {
            node: best.node,
            gpus: best.gpus.mask,
            ports: Vec::new(),
        }))
    }

    /// Walks several ordered index sets as one (fullest first when
    /// `ascending`, emptiest first otherwise), offering each node that has
    /// the cpu and memory, until `want` candidates were found, or one was
    /// and the walk went on long enough without finding better.
    fn walk<'i, I>(&mut self, sets: impl Iterator<Item = I>, ascending: bool, want: usize)
    where
        I: Iterator<Item = &'i IndexEntry>,
    {
        let (cpu, mem) = (self.ask.cpu_millis, self.ask.memory_bytes);
        let mut heads: Vec<std::iter::Peekable<I>> = sets.map(Iterator::peekable).collect();
        let (mut found, mut walked) = (0usize, 0usize);
        loop {
            let e = if heads.len() == 1 {
                match heads[0].next() {
                    Some(e) => *e,
                    None => return,
                }
            } else {
                let mut pick: Option<(usize, IndexEntry)> = None;
                for (i, h) in heads.iter_mut().enumerate() {
                    if let Some(&&e) = h.peek() {
                        let better =
                            pick.is_none_or(|(_, p)| if ascending { e < p } else { e > p });
                        if better {
                            pick = Some((i, e));
                        }
                    }
                }
                let Some(p) = pick else {
                    return;
                };
                heads[p.0].next();
                p.1
            };
            walked += 1;
            crate::work::visited(1);
            let (_, _, n, free_cpu, free_mem) = e;
            // Most nodes the walk passes lack cpu or memory: turn them
            // away without reading the node.
            if free_cpu >= cpu && free_mem >= mem && !self.is_touched(n) && self.offer(n, false) {
                found += 1;
            }
            if found >= want || (found > 0 && walked > WALK_AFTER_FIRST) {
                return;
            }
        }
    }

    fn overlay_mut(&mut self, n: NodeIdx) -> &mut Overlay {
        if !self.is_touched(n) {
            let len = self.view.nodes.len();
            self.touched
                .get_or_insert_with(|| Bitset::new(len))
                .insert(n as usize);
            self.overlay.push(Overlay {
                node: n,
                usage: self.view.nodes[n as usize].used.clone(),
                placed: Vec::new(),
                picked: Vec::new(),
            });
        }
        self.overlay
            .iter_mut()
            .find(|o| o.node == n)
            .expect("touched nodes have an overlay")
    }

    /// Records one replica placed on `c.node`, picking its `host: 0`
    /// ports there.
    pub fn take(&mut self, mut c: Choice) -> Choice {
        let (amount, ports, dynamic) =
            (self.amount, self.ask.ports.clone(), self.ask.dynamic_ports);
        let seed = self.cfg.seed;
        let range = self.view.nodes[c.node as usize].node.dynamic_ports;
        let o = self.overlay_mut(c.node);
        o.usage.add(amount, c.gpus, &ports);
        o.placed.push(c.gpus);
        if dynamic > 0 {
            // `passes` saw enough of them free.
            let start = mix(u64::from(c.node), seed);
            c.ports = skiff_model::ports::pick_dynamic(&o.usage.ports, dynamic, start, range)
                .unwrap_or_default();
            o.usage.add(Resources::ZERO, 0, &c.ports);
            o.picked.extend(&c.ports);
        }
        if let Some(counts) = self.counts.as_mut() {
            *counts.entry(c.node).or_default() += 1;
        }
        if let Some(sp) = self.spread.as_mut() {
            let v = sp.value_of[c.node as usize];
            if v != u32::MAX {
                sp.counts[v as usize] += 1;
            }
        }
        c
    }

    /// Recomputes a node's overlay usage from its allocations, leaving out
    /// the evicted ones, plus this evaluation's replicas there.
    pub fn recompute(&mut self, n: NodeIdx) {
        let view = self.view;
        let slot = &view.nodes[n as usize];
        let mut usage = Usage::default();
        for &a in &slot.allocs {
            if !self.evicted.contains(&a) {
                let r = &view.allocs[a as usize];
                usage.add(r.amount, r.gpus, &r.ports);
            }
        }
        let (amount, ports) = (self.amount, self.ask.ports.clone());
        let o = self.overlay_mut(n);
        for &g in &o.placed {
            usage.add(amount, g, &ports);
        }
        usage.add(Resources::ZERO, 0, &o.picked);
        o.usage = usage;
    }
}
