//! The scheduler's indexed, read-only picture of the cluster.
//!
//! [`ClusterView::new`] does the per-snapshot work once: nodes sorted by
//! name, each node's free resources (cpu, memory, a mask of free GPUs, the
//! ports held), allocations grouped by job and by node, and one ordered
//! index per *node class* (nodes offering the same amounts), keyed by how
//! much of the node is free. Placing a replica then looks at a handful of
//! index entries instead of every node.
//!
//! [`ClusterView::commit`] applies a committed plan to the view in place, so
//! a caller that schedules many evaluations in a row (a load generator, a
//! leader keeping a cache) does not rebuild it each time.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use skiff_model::fit::{node_ready, Misfit, Usage};
use skiff_model::gpu::Topology;
use skiff_model::{AllocFacts, AllocStatus, Allocation, DesiredStatus, Job, Node, Plan, Resources};

/// Position of a node in the view (nodes are sorted by name).
pub(crate) type NodeIdx = u32;
/// No node: the allocation's node is not registered.
pub(crate) const NO_NODE: NodeIdx = NodeIdx::MAX;

/// Fixed-point scale of index keys: a fully free resource adds this much.
const KEY_SCALE: u128 = 1 << 20;

pub(crate) struct NodeSlot<'a> {
    /// Borrowed from a snapshot, or owned by a view a leader keeps.
    pub node: Cow<'a, Node>,
    /// What the node offers; `gpus` is the number of healthy GPUs.
    pub cap: Resources,
    /// Mask of its healthy GPUs.
    pub healthy: u64,
    /// What its allocations hold.
    pub used: Usage,
    /// Whether it takes new work, and why not.
    pub ready: Result<(), Misfit>,
    pub class: u32,
    /// Its current entry in its class's index.
    pub entry: IndexEntry,
    /// The bucket of its class's index it is filed in: its free GPUs.
    pub bucket: u32,
    /// A fixed hash of the name: orders nodes with equal keys.
    pub tie: u64,
    /// The allocations holding resources on it, by id.
    pub allocs: Vec<u32>,
    /// GPU links, for nodes with two or more GPUs.
    pub topo: Option<Topology>,
}

/// The scheduler's copy of one allocation: what reconciling and
/// preemption read, with the node and GPUs resolved to positions. The id is
/// borrowed from the snapshot (owned only for allocations committed later).
#[derive(Debug, Clone)]
pub(crate) struct AllocRec<'a> {
    pub id: Cow<'a, str>,
    pub job: u32,
    pub replica: u32,
    pub version: u64,
    pub create_index: u64,
    pub desired: DesiredStatus,
    pub status: AllocStatus,
    pub node: NodeIdx,
    pub amount: Resources,
    pub gpus: u64,
    pub ports: Vec<u16>,
    /// Failures so far (see `skiff_model::AllocFacts::failures`).
    pub failures: u32,
    /// Exited 0 on its own.
    pub succeeded: bool,
    /// Running with its readiness passing.
    pub healthy_now: bool,
    /// The rollout's verdict on it.
    pub deploy_health: Option<bool>,
}

impl AllocRec<'_> {
    pub fn holds_resources(&self) -> bool {
        !self.status.is_terminal()
    }
}

impl AllocFacts for AllocRec<'_> {
    fn replica(&self) -> u32 {
        self.replica
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn create_index(&self) -> u64 {
        self.create_index
    }
    fn desired(&self) -> DesiredStatus {
        self.desired
    }
    fn status(&self) -> AllocStatus {
        self.status
    }
    fn failures(&self) -> u32 {
        self.failures
    }
    fn succeeded(&self) -> bool {
        self.succeeded
    }
    fn healthy_now(&self) -> bool {
        self.healthy_now
    }
    fn deploy_health(&self) -> Option<bool> {
        self.deploy_health
    }
}

pub(crate) struct JobEntry {
    /// The job's current priority (0 for a deleted job).
    pub priority: u8,
    pub allocs: Vec<u32>,
    /// The team queue the job is in, if any: priority preemption stays
    /// within one queue (or among jobs in none).
    pub queue: Option<String>,
}

/// An index entry: `(key, tie, node, free cpu, free memory)`. Entries
/// sort by key, so more free resources sort later; the free amounts let a
/// walk turn a node away without reading it.
pub(crate) type IndexEntry = (u64, u64, NodeIdx, u64, u64);
pub(crate) type IndexSet = BTreeSet<IndexEntry>;

/// Nodes that offer the same amounts share an index.
pub(crate) struct Class {
    pub cap: Resources,
    /// Every node of the class.
    pub all: IndexSet,
    /// For classes with GPUs, the same nodes by number of free GPUs: a
    /// replica asking `k` GPUs walks buckets `k..` only.
    pub buckets: Vec<IndexSet>,
    /// The same nodes by free cpu, and by free memory (the entry's first
    /// field is that amount, not the key): a walk for a replica without
    /// GPUs starts at the nodes with enough of the scarcer resource and
    /// never passes the many nodes that lack it.
    pub by_cpu: IndexSet,
    pub by_mem: IndexSet,
    /// The buckets again, by free cpu and by free memory.
    pub buckets_cpu: Vec<IndexSet>,
    pub buckets_mem: Vec<IndexSet>,
}

/// A node's entries in the by-cpu and by-memory indexes, from its entry.
pub(crate) fn dim_entries(e: IndexEntry) -> (IndexEntry, IndexEntry) {
    let (_, tie, n, cpu, mem) = e;
    ((cpu, tie, n, cpu, mem), (mem, tie, n, cpu, mem))
}

impl Class {
    fn new(cap: Resources) -> Class {
        let buckets = if cap.gpus > 0 {
            cap.gpus as usize + 1
        } else {
            0
        };
        Class {
            cap,
            all: BTreeSet::new(),
            buckets: vec![BTreeSet::new(); buckets],
            by_cpu: BTreeSet::new(),
            by_mem: BTreeSet::new(),
            buckets_cpu: vec![BTreeSet::new(); buckets],
            buckets_mem: vec![BTreeSet::new(); buckets],
        }
    }

    /// Files a node's entry, in GPU bucket `bucket`.
    fn insert(&mut self, e: IndexEntry, bucket: u32) {
        let (c, m) = dim_entries(e);
        self.all.insert(e);
        self.by_cpu.insert(c);
        self.by_mem.insert(m);
        let b = bucket as usize;
        if b < self.buckets.len() {
            self.buckets[b].insert(e);
            self.buckets_cpu[b].insert(c);
            self.buckets_mem[b].insert(m);
        }
    }

    fn remove(&mut self, e: &IndexEntry, bucket: u32) {
        let (c, m) = dim_entries(*e);
        self.all.remove(e);
        self.by_cpu.remove(&c);
        self.by_mem.remove(&m);
        let b = bucket as usize;
        if b < self.buckets.len() {
            self.buckets[b].remove(e);
            self.buckets_cpu[b].remove(&c);
            self.buckets_mem[b].remove(&m);
        }
    }
}

/// An indexed, read-only view of the nodes and allocations the scheduler
/// plans against. Build it from any snapshot of the state; the order of
/// the input never changes the result.
///
/// The name-to-position maps are hash maps used for lookups only: nothing
/// ever iterates them, so their order cannot reach a plan.
pub struct ClusterView<'a> {
    pub(crate) nodes: Vec<NodeSlot<'a>>,
    by_name: HashMap<Cow<'a, str>, NodeIdx>,
    pub(crate) allocs: Vec<AllocRec<'a>>,
    pub(crate) jobs: Vec<JobEntry>,
    pub(crate) job_by_name: HashMap<Cow<'a, str>, u32>,
    pub(crate) classes: Vec<Class>,
    /// Number of nodes that take new work.
    pub(crate) ready_count: usize,
    /// What the nodes that take work offer, and what is used on them.
    pub(crate) total_cap: Resources,
    pub(crate) total_used: Resources,
    /// What a view kept from one batch to the next needs besides
    /// (`view_live.rs`); `None` for a view built from a snapshot.
    pub(crate) live: Option<Box<Live>>,
}

/// The bookkeeping of a view kept from batch to batch (`view_live.rs`).
#[derive(Default)]
pub(crate) struct Live {
    /// Position of every allocation the view holds (guesses too), by id.
    pub by_id: HashMap<String, u32>,
    /// Allocations at and after this position were committed by the
    /// planner since the last refresh, not read from the state.
    pub guesses_from: Option<u32>,
    /// Allocations a guess marked to stop, with what they were before.
    pub stopped: Vec<(u32, DesiredStatus)>,
    /// Positions left empty by allocations that went.
    pub dead: usize,
}

/// FNV-1a: small, stable across builds and platforms.
pub(crate) fn fnv(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64 ^ seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Mixes a seed into a node's tie hash (splitmix64's finaliser).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn index_entry(slot: &NodeSlot<'_>, key: u64, n: NodeIdx) -> IndexEntry {
    (
        key,
        slot.tie,
        n,
        slot.cap
            .cpu_millis
            .saturating_sub(slot.used.amount.cpu_millis),
        slot.cap
            .memory_bytes
            .saturating_sub(slot.used.amount.memory_bytes),
    )
}

/// Free healthy GPUs of a node (its index bucket), at most its class's
/// GPU count.
fn free_gpus(slot: &NodeSlot<'_>) -> u32 {
    (slot.healthy & !slot.used.gpus)
        .count_ones()
        .min(slot.cap.gpus)
}

/// How much of a node is free, as one number: the sum over the resources
/// it offers of free / offered, in fixed point. Among nodes of one class,
/// a lower key is a fuller node.
pub(crate) fn free_key(cap: Resources, used: &Usage, healthy: u64) -> u64 {
    let part = |free: u64, cap: u64| -> u64 {
        if cap == 0 {
            0
        } else {
            (u128::from(free.min(cap)) * KEY_SCALE / u128::from(cap)) as u64
        }
    };
    part(
        cap.cpu_millis.saturating_sub(used.amount.cpu_millis),
        cap.cpu_millis,
    ) + part(
        cap.memory_bytes.saturating_sub(used.amount.memory_bytes),
        cap.memory_bytes,
    ) + part(
        u64::from((healthy & !used.gpus).count_ones()),
        u64::from(cap.gpus),
    )
}

/// The smallest key a node of a class with `cap` can have and still fit
/// `ask`; `None` when no node of the class can ever fit it.
pub(crate) fn least_key(cap: Resources, ask: Resources) -> Option<u64> {
    if !ask.fits_in(cap) {
        return None;
    }
    let part = |need: u64, cap: u64| -> u64 {
        if cap == 0 {
            0
        } else {
            (u128::from(need) * KEY_SCALE / u128::from(cap)) as u64
        }
    };
    Some(
        part(ask.cpu_millis, cap.cpu_millis)
            + part(ask.memory_bytes, cap.memory_bytes)
            + part(u64::from(ask.gpus), u64::from(cap.gpus)),
    )
}

/// What the view reads of an allocation: the planning facts, where it runs
/// and what it holds. [`Allocation`] has it, and so has [`AllocSummary`],
/// the small owned copy a leader keeps to plan without holding the state.
pub trait ViewInput: AllocFacts {
    fn id(&self) -> &str;
    fn job(&self) -> &str;
    fn node(&self) -> &str;
    /// The UUIDs of the GPUs it holds.
    fn gpus(&self) -> &[String];
    fn ports(&self) -> &[u16];
    fn resources(&self) -> Resources;
}

impl ViewInput for Allocation {
    fn id(&self) -> &str {
        &self.id
    }
    fn job(&self) -> &str {
        &self.job
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn gpus(&self) -> &[String] {
        &self.gpus
    }
    fn ports(&self) -> &[u16] {
        &self.ports
    }
    fn resources(&self) -> Resources {
        Allocation::resources(self)
    }
}

/// An allocation as the scheduler reads it: owned, and without its task
/// (a few hundred bytes instead of the task's environment and mounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocSummary {
    pub id: String,
    pub job: String,
    pub node: String,
    pub gpus: Vec<String>,
    pub ports: Vec<u16>,
    pub resources: Resources,
    pub replica: u32,
    pub version: u64,
    pub create_index: u64,
    pub desired: DesiredStatus,
    pub status: AllocStatus,
    pub failures: u32,
    pub succeeded: bool,
    pub healthy_now: bool,
    pub deploy_health: Option<bool>,
    /// The allocation's modify index when copied.
    pub modify_index: u64,
}

impl From<&Allocation> for AllocSummary {
    fn from(a: &Allocation) -> AllocSummary {
        AllocSummary {
            id: a.id.clone(),
            job: a.job.clone(),
            node: a.node.clone(),
            gpus: a.gpus.clone(),
            ports: a.ports.clone(),
            resources: a.resources(),
            replica: a.replica,
            version: a.job_version,
            create_index: a.create_index,
            desired: a.desired,
            status: a.status,
            failures: a.failures(),
            succeeded: a.succeeded(),
            healthy_now: a.healthy_now(),
            deploy_health: a.deploy_health,
            modify_index: a.modify_index,
        }
    }
}

impl AllocFacts for AllocSummary {
    fn replica(&self) -> u32 {
        self.replica
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn create_index(&self) -> u64 {
        self.create_index
    }
    fn desired(&self) -> DesiredStatus {
        self.desired
    }
    fn status(&self) -> AllocStatus {
        self.status
    }
    fn failures(&self) -> u32 {
        self.failures
    }
    fn succeeded(&self) -> bool {
        self.succeeded
    }
    fn healthy_now(&self) -> bool {
        self.healthy_now
    }
    fn deploy_health(&self) -> Option<bool> {
        self.deploy_health
    }
}

impl ViewInput for AllocSummary {
    fn id(&self) -> &str {
        &self.id
    }
    fn job(&self) -> &str {
        &self.job
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn gpus(&self) -> &[String] {
        &self.gpus
    }
    fn ports(&self) -> &[u16] {
        &self.ports
    }
    fn resources(&self) -> Resources {
        self.resources
    }
}

impl<'a> ClusterView<'a> {
    /// Builds the view. `priority_of` gives a job's current priority by
    /// name (allocations of jobs it does not know count as priority 0).
    pub fn new<A: ViewInput + 'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        allocs: impl IntoIterator<Item = &'a A>,
        priority_of: impl Fn(&str) -> Option<u8>,
    ) -> ClusterView<'a> {
        ClusterView::build(
            nodes.into_iter().map(Cow::Borrowed),
            allocs,
            |a| Cow::Borrowed(a.id()),
            priority_of,
        )
    }

    /// [`Self::new`], with how a node and an allocation id are held (borrowed
    /// or owned) left to the caller.
    pub(crate) fn build<'b, A: ViewInput + 'b>(
        nodes: impl IntoIterator<Item = Cow<'a, Node>>,
        allocs: impl IntoIterator<Item = &'b A>,
        id_of: impl Fn(&'b A) -> Cow<'a, str>,
        priority_of: impl Fn(&str) -> Option<u8>,
    ) -> ClusterView<'a> {
        let mut sorted: Vec<Cow<'a, Node>> = nodes.into_iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        let mut by_name = HashMap::with_capacity(sorted.len());
        let mut slots = Vec::with_capacity(sorted.len());
        for (i, node) in sorted.into_iter().enumerate() {
            let name = match &node {
                Cow::Borrowed(n) => Cow::Borrowed(n.name.as_str()),
                Cow::Owned(n) => Cow::Owned(n.name.clone()),
            };
            by_name.insert(name, i as NodeIdx);
            let healthy = node.schedulable_gpus();
            let topo = (node.gpus.len() >= 2 && !node.gpu_links.is_empty())
                .then(|| Topology::new(&node.gpus, &node.gpu_links));
            slots.push(NodeSlot {
                cap: Resources {
                    gpus: healthy.count_ones(),
                    ..node.allocatable
                },
                healthy,
                used: Usage::default(),
                ready: node_ready(&node),
                class: 0,
                entry: (0, 0, 0, 0, 0),
                bucket: 0,
                tie: fnv(node.name.as_bytes(), 0),
                allocs: Vec::new(),
                topo,
                node,
            });
        }
        let mut view = ClusterView {
            nodes: slots,
            by_name,
            allocs: Vec::new(),
            jobs: Vec::new(),
            job_by_name: HashMap::new(),
            classes: Vec::new(),
            ready_count: 0,
            total_cap: Resources::ZERO,
            total_used: Resources::ZERO,
            live: None,
        };

        // Positions follow the ids, so the input's order does not matter.
        // A snapshot's allocations usually come sorted already.
        let mut input: Vec<&'b A> = allocs.into_iter().collect();
        if !input.is_sorted_by(|a, b| a.id() < b.id()) {
            input.sort_by(|a, b| a.id().cmp(b.id()));
            input.dedup_by(|a, b| a.id() == b.id());
        }
        view.allocs.reserve(input.len());
        for a in input {
            let rec = view.rec_of(a, id_of(a), &priority_of);
            view.push_alloc(rec);
        }

        // Classes and their indexes, over the nodes that take work.
        let mut class_of: BTreeMap<(u64, u64, u32), u32> = BTreeMap::new();
        for i in 0..view.nodes.len() {
            let slot = &view.nodes[i];
            if slot.ready.is_err() {
                continue;
            }
            let c = slot.cap;
            let next = view.classes.len() as u32;
            let class = *class_of
                .entry((c.cpu_millis, c.memory_bytes, c.gpus))
                .or_insert(next);
            if class == next {
                view.classes.push(Class::new(c));
            }
            let key = free_key(c, &slot.used, slot.healthy);
            let bucket = free_gpus(slot);
            let entry = index_entry(slot, key, i as NodeIdx);
            view.classes[class as usize].insert(entry, bucket);
            view.total_cap = view.total_cap.saturating_add(c);
            view.total_used = view.total_used.saturating_add(slot.used.amount);
            let slot = &mut view.nodes[i];
            slot.class = class;
            slot.entry = entry;
            slot.bucket = bucket;
            view.ready_count += 1;
        }
        view
    }

    pub(crate) fn job_entry(
        &mut self,
        name: &str,
        priority_of: &impl Fn(&str) -> Option<u8>,
    ) -> u32 {
        if let Some(&j) = self.job_by_name.get(name) {
            return j;
        }
        let j = self.jobs.len() as u32;
        self.jobs.push(JobEntry {
            priority: priority_of(name).unwrap_or(0),
            allocs: Vec::new(),
            queue: None,
        });
        self.job_by_name.insert(Cow::Owned(name.to_owned()), j);
        j
    }

    /// The view's record of allocation `a`, under id `id` (its job entry
    /// made if new, its node and GPUs resolved to positions).
    pub(crate) fn rec_of<A: ViewInput>(
        &mut self,
        a: &A,
        id: Cow<'a, str>,
        priority_of: &impl Fn(&str) -> Option<u8>,
    ) -> AllocRec<'a> {
        let job = self.job_entry(a.job(), priority_of);
        let node = self.node_index(a.node()).unwrap_or(NO_NODE);
        AllocRec {
            id,
            job,
            replica: a.replica(),
            version: a.version(),
            create_index: a.create_index(),
            desired: a.desired(),
            status: a.status(),
            node,
            amount: a.resources(),
            gpus: match node {
                NO_NODE => 0,
                n => self.nodes[n as usize].node.gpu_mask(a.gpus()),
            },
            ports: a.ports().to_vec(),
            failures: a.failures(),
            succeeded: a.succeeded(),
            healthy_now: a.healthy_now(),
            deploy_health: a.deploy_health(),
        }
    }

    pub(crate) fn push_alloc(&mut self, rec: AllocRec<'a>) -> u32 {
        let id = self.allocs.len() as u32;
        self.jobs[rec.job as usize].allocs.push(id);
        if rec.node != NO_NODE && rec.holds_resources() {
            let slot = &mut self.nodes[rec.node as usize];
            slot.used.add(rec.amount, rec.gpus, &rec.ports);
            slot.allocs.push(id);
        }
        self.allocs.push(rec);
        id
    }

    /// Tells the view which team queue each job is in (`queue_of` by job
    /// key; `None`: in none). Jobs default to none.
    pub fn set_queues(&mut self, queue_of: impl Fn(&str) -> Option<String>) {
        for (name, &j) in &self.job_by_name {
            self.jobs[j as usize].queue = queue_of(name);
        }
    }

    /// The queue the view has for job `name`.
    pub(crate) fn queue_of_index(&self, j: u32) -> Option<&str> {
        self.jobs[j as usize].queue.as_deref()
    }

    /// Job `name`'s allocations that still run or are about to (desired
    /// to run, not ended).
    fn live_of<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s AllocRec<'a>> + 's {
        let allocs = self
            .job_index(name)
            .map_or(&[][..], |j| &self.jobs[j as usize].allocs[..]);
        allocs
            .iter()
            .map(|&a| &self.allocs[a as usize])
            .filter(|a| a.desired == DesiredStatus::Run && !a.status.is_terminal())
    }

    /// The ids of job `name`'s live allocations ([`Self::live_of`]).
    pub(crate) fn live_allocs_of(&self, name: &str) -> Vec<String> {
        self.live_of(name).map(|a| a.id.to_string()).collect()
    }

    /// Where job `name`'s live allocations are: each one's node and the
    /// number of GPUs it holds there.
    pub(crate) fn live_gpus_of(&self, name: &str) -> Vec<(NodeIdx, u32)> {
        self.live_of(name)
            .map(|a| (a.node, a.gpus.count_ones()))
            .collect()
    }

    /// How many of node `n`'s GPUs are healthy and free.
    pub(crate) fn free_gpus_on(&self, n: NodeIdx) -> u32 {
        free_gpus(&self.nodes[n as usize])
    }

    /// Number of nodes in the view.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn job_index(&self, name: &str) -> Option<u32> {
        self.job_by_name.get(name).copied()
    }

    /// What the allocations on a node hold, and how much it offers.
    pub fn node_usage(&self, name: &str) -> Option<(Resources, &Usage)> {
        let i = *self.by_name.get(name)?;
        let slot = &self.nodes[i as usize];
        Some((slot.cap, &slot.used))
    }

    pub(crate) fn node_index(&self, name: &str) -> Option<NodeIdx> {
        self.by_name.get(name).copied()
    }

    /// Re-files a node in its class's index after its usage changed.
    pub(crate) fn reindex(&mut self, n: NodeIdx, before: Resources) {
        let slot = &self.nodes[n as usize];
        if slot.ready.is_err() {
            return;
        }
        self.total_used = self
            .total_used
            .saturating_sub(before)
            .saturating_add(slot.used.amount);
        let key = free_key(slot.cap, &slot.used, slot.healthy);
        let bucket = free_gpus(slot);
        let old = slot.entry;
        let entry = index_entry(slot, key, n);
        if entry == old && bucket == slot.bucket {
            return;
        }
        let (class, old_bucket) = (slot.class, slot.bucket);
        let cl = &mut self.classes[class as usize];
        cl.remove(&old, old_bucket);
        cl.insert(entry, bucket);
        let slot = &mut self.nodes[n as usize];
        slot.entry = entry;
        slot.bucket = bucket;
    }

    /// Applies a plan made from this view for `job`, as if it had been
    /// committed at raft index `index`: new allocations (with `ids`, one per
    /// placement) hold their resources; stopped and evicted ones are marked
    /// to stop (they hold their resources until they finish, as in the
    /// state). Placements on nodes the view does not know are skipped.
    pub fn commit(&mut self, job: &Job, plan: &Plan, ids: &[String], index: u64) {
        let priority = job.spec.priority;
        let j = self.job_entry(&job.key(), &|_| Some(priority));
        self.jobs[j as usize].priority = priority;
        self.jobs[j as usize].queue = job.spec.queue.clone();
        let mut touched: BTreeMap<NodeIdx, Resources> = BTreeMap::new();
        self.begin_guesses();
        for (p, id) in plan.placements.iter().zip(ids) {
            let Some(n) = self.node_index(&p.node) else {
                continue;
            };
            touched
                .entry(n)
                .or_insert(self.nodes[n as usize].used.amount);
            let gpus = self.nodes[n as usize].node.gpu_mask(&p.gpus);
            let at = self.push_alloc(AllocRec {
                id: Cow::Owned(id.clone()),
                job: j,
                replica: p.replica,
                version: job.version,
                create_index: index,
                desired: DesiredStatus::Run,
                status: AllocStatus::Pending,
                node: n,
                amount: job
                    .spec
                    .task
                    .resources
                    .amount()
                    .with_gpus(p.gpus.len() as u32),
                gpus,
                ports: job.spec.task.held_ports(&p.ports),
                failures: 0,
                succeeded: false,
                healthy_now: false,
                deploy_health: None,
            });
            self.note_guess(id, at);
        }
        // A kept view finds the plan's stops by id; a snapshot's view makes
        // one pass over the allocations for all of them.
        if !self.stop_by_id(plan.stops.iter().chain(&plan.evictions)) {
            let stopped: std::collections::HashSet<&str> = plan
                .stops
                .iter()
                .chain(&plan.evictions)
                .map(|s| s.alloc_id.as_str())
                .collect();
            if !stopped.is_empty() {
                for a in self
                    .allocs
                    .iter_mut()
                    .filter(|a| stopped.contains(a.id.as_ref()))
                {
                    a.desired = DesiredStatus::Stop;
                }
            }
        }
        for (n, before) in touched {
            self.reindex(n, before);
        }
    }
}
