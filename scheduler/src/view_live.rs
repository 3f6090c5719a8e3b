//! A view kept from one batch to the next.
//!
//! A leader plans many small batches a second against a cluster that
//! changes a little between them. Rebuilding the view for each batch costs
//! work in proportion to every allocation; a kept view
//! ([`ClusterView::owned`]) owns its nodes and ids instead of borrowing a
//! snapshot, and is brought up to date with only what changed
//! ([`ClusterView::refresh`]): the allocations that went and those added or
//! changed, each found by id.
//!
//! Plans committed into the view while a batch is planned
//! ([`ClusterView::commit`]) are guesses: the state machine may reject
//! them. They are undone at the next refresh, which then adds what the
//! state really holds. New allocations are always appended, so the guesses
//! are the last entries of every list they are in and undoing them pops
//! those entries.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use skiff_model::fit::Usage;
use skiff_model::{DesiredStatus, Node, Resources, Stop};

use crate::view::{ClusterView, Live, NodeIdx, ViewInput, NO_NODE};

impl ClusterView<'static> {
    /// A view that owns its copy of `nodes` and of the allocations' ids,
    /// to be kept and brought up to date with [`Self::refresh`].
    pub fn owned<'b, A: ViewInput + 'b>(
        nodes: impl IntoIterator<Item = &'b Node>,
        allocs: impl IntoIterator<Item = &'b A>,
        priority_of: impl Fn(&str) -> Option<u8>,
    ) -> ClusterView<'static> {
        let mut view = ClusterView::build(
            nodes.into_iter().map(|n| Cow::Owned(n.clone())),
            allocs,
            |a| Cow::Owned(a.id().to_owned()),
            priority_of,
        );
        let by_id = view
            .allocs
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.to_string(), i as u32))
            .collect();
        view.live = Some(Box::new(Live {
            by_id,
            ..Live::default()
        }));
        view
    }
}

impl<'a> ClusterView<'a> {
    /// Called by `commit` before it adds allocations: remembers where the
    /// guesses begin.
    pub(crate) fn begin_guesses(&mut self) {
        let len = self.allocs.len() as u32;
        if let Some(live) = self.live.as_deref_mut() {
            live.guesses_from.get_or_insert(len);
        }
    }

    /// Called by `commit` for each allocation it added at position `at`.
    pub(crate) fn note_guess(&mut self, id: &str, at: u32) {
        if let Some(live) = self.live.as_deref_mut() {
            live.by_id.insert(id.to_owned(), at);
        }
    }

    /// Marks `stops` to stop, found by id, remembering what they were.
    /// False for a view that does not keep ids (the caller searches).
    pub(crate) fn stop_by_id<'s>(&mut self, stops: impl Iterator<Item = &'s Stop>) -> bool {
        let Some(live) = self.live.as_deref_mut() else {
            return false;
        };
        for s in stops {
            if let Some(&at) = live.by_id.get(&s.alloc_id) {
                let rec = &mut self.allocs[at as usize];
                live.stopped.push((at, rec.desired));
                rec.desired = DesiredStatus::Stop;
            }
        }
        true
    }

    /// Undoes every plan committed since the last refresh.
    fn forget_guesses(&mut self) {
        let Some(live) = self.live.as_deref_mut() else {
            return;
        };
        for (at, desired) in live.stopped.drain(..).rev() {
            self.allocs[at as usize].desired = desired;
        }
        let Some(from) = live.guesses_from.take() else {
            return;
        };
        let mut jobs = BTreeSet::new();
        let mut touched = BTreeMap::new();
        for rec in &self.allocs[from as usize..] {
            live.by_id.remove(rec.id.as_ref());
            jobs.insert(rec.job);
            if rec.node != NO_NODE && rec.holds_resources() {
                touched
                    .entry(rec.node)
                    .or_insert(self.nodes[rec.node as usize].used.amount);
            }
        }
        for j in jobs {
            let list = &mut self.jobs[j as usize].allocs;
            while list.last().is_some_and(|&a| a >= from) {
                list.pop();
            }
        }
        self.allocs.truncate(from as usize);
        for (n, before) in touched {
            let slot = &mut self.nodes[n as usize];
            while slot.allocs.last().is_some_and(|&a| a >= from) {
                slot.allocs.pop();
            }
            self.recount(n);
            self.reindex(n, before);
        }
    }

    /// Brings a kept view up to date: the allocations with ids in `gone`
    /// went, and those in `now` are new or changed; every job's priority
    /// and team queue are read again (a job the functions do not know has
    /// priority 0 and no queue). Undoes the guesses first. Does nothing to
    /// a view built from a snapshot.
    pub fn refresh<'x, A: ViewInput + 'x>(
        &mut self,
        gone: impl IntoIterator<Item = &'x str>,
        now: impl IntoIterator<Item = &'x A>,
        priority_of: impl Fn(&str) -> Option<u8>,
        queue_of: impl Fn(&str) -> Option<String>,
    ) {
        if self.live.is_none() {
            return;
        }
        self.forget_guesses();
        let mut touched: BTreeMap<NodeIdx, Resources> = BTreeMap::new();
        let mut emptied: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for id in gone {
            let live = self.live.as_deref_mut().expect("a kept view");
            let Some(at) = live.by_id.remove(id) else {
                continue;
            };
            live.dead += 1;
            self.unhold(at, &mut touched);
            let rec = &mut self.allocs[at as usize];
            emptied.entry(rec.job).or_default().insert(at);
            rec.id = Cow::Borrowed("");
            rec.status = skiff_model::AllocStatus::Lost;
            rec.desired = DesiredStatus::Stop;
        }
        for (j, went) in emptied {
            self.jobs[j as usize].allocs.retain(|a| !went.contains(a));
        }
        for a in now {
            // A new job's entry takes its priority below, with the rest.
            let rec = self.rec_of(a, Cow::Owned(a.id().to_owned()), &|_| None);
            let node = rec.node;
            if node != NO_NODE && rec.holds_resources() {
                touched
                    .entry(node)
                    .or_insert(self.nodes[node as usize].used.amount);
            }
            let known = self
                .live
                .as_deref()
                .and_then(|l| l.by_id.get(a.id()).copied());
            match known {
                Some(at) => {
                    // An allocation never changes job: its entry's list
                    // keeps the position.
                    debug_assert_eq!(self.allocs[at as usize].job, rec.job);
                    self.unhold(at, &mut touched);
                    self.allocs[at as usize] = rec;
                    self.hold(at);
                }
                None => {
                    let at = self.push_alloc(rec);
                    let live = self.live.as_deref_mut().expect("a kept view");
                    live.by_id.insert(a.id().to_owned(), at);
                }
            }
        }
        for (n, before) in touched {
            self.reindex(n, before);
        }
        for (name, &j) in &self.job_by_name {
            let entry = &mut self.jobs[j as usize];
            entry.priority = priority_of(name).unwrap_or(0);
            entry.queue = queue_of(name);
        }
    }

    /// How many positions are left empty by allocations that went, and
    /// how many there are in all: a kept view with many empty ones is
    /// better built again.
    pub fn garbage(&self) -> (usize, usize) {
        (
            self.live.as_deref().map_or(0, |l| l.dead),
            self.allocs.len(),
        )
    }

    /// Marks an allocation finished (as an agent's report would), releasing
    /// what it held. Returns false when the view does not know it.
    pub fn finish(&mut self, alloc_id: &str, status: skiff_model::AllocStatus) -> bool {
        let found = match self.live.as_deref() {
            Some(live) => live.by_id.get(alloc_id).copied(),
            None => self
                .allocs
                .iter()
                .position(|a| a.id == alloc_id)
                .map(|i| i as u32),
        };
        let Some(at) = found else {
            return false;
        };
        let mut touched = BTreeMap::new();
        self.unhold(at, &mut touched);
        self.allocs[at as usize].status = status;
        self.hold(at);
        for (n, before) in touched {
            self.reindex(n, before);
        }
        true
    }

    /// Takes allocation `at` off its node (its resources are free again).
    fn unhold(&mut self, at: u32, touched: &mut BTreeMap<NodeIdx, Resources>) {
        let rec = &self.allocs[at as usize];
        if rec.node == NO_NODE || !rec.holds_resources() {
            return;
        }
        let n = rec.node;
        touched
            .entry(n)
            .or_insert(self.nodes[n as usize].used.amount);
        self.nodes[n as usize].allocs.retain(|&a| a != at);
        self.recount(n);
    }

    /// Puts allocation `at` on its node, if it holds resources.
    fn hold(&mut self, at: u32) {
        let rec = &self.allocs[at as usize];
        if rec.node == NO_NODE || !rec.holds_resources() {
            return;
        }
        let slot = &mut self.nodes[rec.node as usize];
        slot.used.add(rec.amount, rec.gpus, &rec.ports);
        slot.allocs.push(at);
    }

    /// Sums what node `n`'s allocations hold again.
    fn recount(&mut self, n: NodeIdx) {
        let mut used = Usage::default();
        for &a in &self.nodes[n as usize].allocs {
            let r = &self.allocs[a as usize];
            used.add(r.amount, r.gpus, &r.ports);
        }
        self.nodes[n as usize].used = used;
    }
}

/// What a view holds, in a form that does not depend on how it was built
/// or on the order of its positions: a kept view brought up to date must
/// equal a view built afresh from the same state.
#[derive(Debug, PartialEq, Eq)]
pub struct ViewShape {
    /// Per node: its name, what is used on it and the allocations on it.
    pub nodes: Vec<String>,
    /// Per job with allocations: its priority, queue and allocations.
    pub jobs: BTreeMap<String, String>,
    /// Each class's index entries.
    pub classes: Vec<String>,
    pub totals: String,
}

impl ClusterView<'_> {
    /// The view's [`ViewShape`].
    pub fn shape(&self) -> ViewShape {
        let describe = |a: u32| {
            let r = &self.allocs[a as usize];
            let node = match r.node {
                NO_NODE => "-",
                n => self.nodes[n as usize].node.name.as_str(),
            };
            format!(
                "{} r{} v{} c{} {:?}/{:?} on {node} {:?} g{:#x} p{:?} f{} s{} h{} d{:?}",
                r.id,
                r.replica,
                r.version,
                r.create_index,
                r.desired,
                r.status,
                r.amount,
                r.gpus,
                r.ports,
                r.failures,
                r.succeeded,
                r.healthy_now,
                r.deploy_health
            )
        };
        let sorted = |list: &[u32]| {
            let mut v: Vec<String> = list.iter().map(|&a| describe(a)).collect();
            v.sort();
            v
        };
        let nodes = self
            .nodes
            .iter()
            .map(|s| {
                format!(
                    "{} used {:?} g{:#x} p{:?} entry {:?} bucket {} allocs {:?}",
                    s.node.name,
                    s.used.amount,
                    s.used.gpus,
                    s.used.ports,
                    s.entry,
                    s.bucket,
                    sorted(&s.allocs)
                )
            })
            .collect();
        let jobs = self
            .job_by_name
            .iter()
            .map(|(name, &j)| (name, &self.jobs[j as usize]))
            .filter(|(_, e)| !e.allocs.is_empty())
            .map(|(name, e)| {
                let line = format!("{} {:?} {:?}", e.priority, e.queue, sorted(&e.allocs));
                (name.to_string(), line)
            })
            .collect();
        let classes = self
            .classes
            .iter()
            .map(|c| {
                format!(
                    "{:?} {:?} {:?} {:?} {:?}",
                    c.all, c.buckets, c.by_cpu, c.by_mem, c.buckets_cpu
                )
            })
            .collect();
        ViewShape {
            nodes,
            jobs,
            classes,
            totals: format!(
                "{} {:?} {:?}",
                self.ready_count, self.total_cap, self.total_used
            ),
        }
    }
}
