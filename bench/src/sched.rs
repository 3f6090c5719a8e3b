//! What the scheduler's load generator (`schedbench`) and criterion benches
//! share: synthetic clusters and workloads, and the baseline placers the
//! scheduler is compared with.
//!
//! Everything is generated from a seed with a small fixed PRNG, so a run can
//! be repeated exactly.

use skiff_model::fit::fits_free;
use skiff_model::{
    Gpu, GpuLink, ImageRef, Job, JobSpec, LinkLevel, Node, Resources, TaskResources, TaskSpec,
};

/// SplitMix64: tiny, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// The workload shapes the load generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Kubernetes' `SchedulingBasic`: identical nodes (4 cores, 32 GiB)
    /// and identical single-replica tasks (100m, 500Mi).
    Basic,
    /// Identical 8-GPU servers (64 cores, 512 GiB, two NVLink groups of
    /// four) and jobs of 1 to 10 replicas in eight shapes, from small web
    /// services to 8-GPU training; CPU is the scarcest resource overall.
    Mixed,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        match s {
            "basic" => Ok(Shape::Basic),
            "mixed" => Ok(Shape::Mixed),
            other => Err(format!("{other:?} is not a shape; expected basic or mixed")),
        }
    }
}

fn bare_node(name: String, cap: Resources) -> Node {
    Node::ready(&name, cap)
}

/// An 8-GPU server: NVLink inside {0..3} and {4..7}, a PCIe switch per
/// pair, NUMA node per half (so pairs across halves are `system`).
pub fn gpu_server(name: String) -> Node {
    let mut n = bare_node(name, Resources::new(64_000, 512 * GI).with_gpus(8));
    n.gpus = (0..8)
        .map(|i| Gpu {
            uuid: format!("{}-gpu{i}", n.name),
            model: "NVIDIA A100-SXM4-80GB".into(),
            memory_bytes: 80 * GI,
            healthy: true,
            ..Gpu::default()
        })
        .collect();
    for a in 0..8 {
        for b in a + 1..8 {
            let level = if a / 4 == b / 4 {
                LinkLevel::NvLink
            } else {
                LinkLevel::System
            };
            n.gpu_links.push(GpuLink {
                a: format!("{}-gpu{a}", n.name),
                b: format!("{}-gpu{b}", n.name),
                level,
            });
        }
    }
    n
}

/// `count` nodes of the shape, named `node-00000`...
pub fn nodes(shape: Shape, count: usize) -> Vec<Node> {
    (0..count)
        .map(|i| {
            let name = format!("node-{i:05}");
            match shape {
                Shape::Basic => bare_node(name, Resources::new(4_000, 32 * GI)),
                Shape::Mixed => gpu_server(name),
            }
        })
        .collect()
}

/// A job named `name` with `replicas` of a task asking `ask`.
pub fn job(name: String, replicas: u32, ask: TaskResources) -> Job {
    Job {
        spec: JobSpec::new(
            name,
            replicas,
            TaskSpec {
                resources: ask,
                ..TaskSpec::new(ImageRef {
                    path: "/images/bench".into(),
                    tag: None,
                    registry: None,
                })
            },
        ),
        version: 1,
        create_index: 1,
        modify_index: 1,
        admitted_index: 0,
    }
}

fn ask(cpu: u64, mem: u64, gpus: u32) -> TaskResources {
    TaskResources {
        gpus,
        ..TaskResources::new(cpu, mem)
    }
}

/// An inclusive range.
type Span = (u64, u64);

/// One mixed-shape task: (weight in percent, cpu range in millicores,
/// memory range in MiB, GPUs).
const MIXED: [(u64, Span, Span, u32); 8] = [
    (40, (250, 1_000), (512, 2_048), 0),        // web
    (25, (1_000, 4_000), (2_048, 16_384), 0),   // service
    (10, (1_000, 2_000), (16_384, 65_536), 0),  // cache
    (10, (4_000, 16_000), (8_192, 32_768), 0),  // batch
    (8, (4_000, 8_000), (32_768, 65_536), 1),   // 1-GPU inference
    (4, (8_000, 16_000), (65_536, 131_072), 2), // 2-GPU
    (2, (16_000, 24_000), (131_072, 196_608), 4),
    (1, (32_000, 48_000), (262_144, 393_216), 8), // 8-GPU training
];

/// Jobs whose replicas add up to `tasks`, in arrival order.
pub fn workload(shape: Shape, tasks: usize, seed: u64) -> Vec<Job> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut left = tasks;
    while left > 0 {
        let name = format!("job-{:06}", out.len());
        match shape {
            Shape::Basic => {
                out.push(job(name, 1, ask(100, 500 * MI, 0)));
                left -= 1;
            }
            Shape::Mixed => {
                let mut pick = rng.range(0, 99);
                let mut kind = MIXED[0];
                for k in MIXED {
                    if pick < k.0 {
                        kind = k;
                        break;
                    }
                    pick -= k.0;
                }
                let (_, (c0, c1), (m0, m1), gpus) = kind;
                // Round to 250m and 256Mi, as people write requests.
                let cpu = rng.range(c0 / 250, c1 / 250) * 250;
                let mem = rng.range(m0 / 256, m1 / 256) * 256 * MI;
                let replicas = (rng.range(1, 10) as usize).min(left);
                out.push(job(name, replicas as u32, ask(cpu, mem, gpus)));
                left -= replicas;
            }
        }
    }
    out
}

/// The fewest nodes the workload could fit on: for each resource, total
/// demand over one node's capacity, rounded up; the largest of those.
pub fn lower_bound(node: &Node, jobs: &[Job]) -> u64 {
    let (mut cpu, mut mem, mut gpus) = (0u128, 0u128, 0u128);
    for j in jobs {
        let r = &j.spec.task.resources;
        let n = u128::from(j.spec.replicas);
        cpu += u128::from(r.cpu_millis) * n;
        mem += u128::from(r.memory_bytes) * n;
        gpus += u128::from(r.gpus) * n;
    }
    let cap = node.allocatable;
    let need = |demand: u128, cap: u64| -> u64 {
        if cap == 0 {
            0
        } else {
            demand.div_ceil(u128::from(cap)) as u64
        }
    };
    need(cpu, cap.cpu_millis)
        .max(need(mem, cap.memory_bytes))
        .max(need(gpus, u64::from(cap.gpus)))
}

/// Free resources of one node, for the baseline placers.
#[derive(Debug, Clone)]
pub struct Free {
    pub cap: Resources,
    pub used: Resources,
    pub gpus_used: u64,
    pub healthy: u64,
}

impl Free {
    pub fn of(nodes: &[Node]) -> Vec<Free> {
        nodes
            .iter()
            .map(|n| {
                let healthy = n.eligible_gpus(&Default::default());
                Free {
                    cap: Resources {
                        gpus: healthy.count_ones(),
                        ..n.allocatable
                    },
                    used: Resources::ZERO,
                    gpus_used: 0,
                    healthy,
                }
            })
            .collect()
    }

    /// The same fit rule the scheduler and the state machine use.
    pub fn fits(&self, ask: &TaskResources) -> bool {
        fits_free(
            self.cap,
            self.used,
            self.healthy & !self.gpus_used,
            &[],
            Default::default(),
            ask,
        )
        .is_ok()
    }

    /// Takes the lowest free GPUs; returns their mask.
    pub fn take(&mut self, ask: &TaskResources) -> u64 {
        let mut mask = 0u64;
        let mut free = self.healthy & !self.gpus_used;
        for _ in 0..ask.gpus {
            let bit = free & free.wrapping_neg();
            mask |= bit;
            free &= !bit;
        }
        self.gpus_used |= mask;
        self.used = self.used.saturating_add(ask.amount());
        mask
    }
}

/// First fit: every replica goes to the first node, in name order, where
/// it fits.
pub fn first_fit(nodes: &[Node], jobs: &[Job]) -> Placed {
    let mut free = Free::of(nodes);
    let mut placed = Placed::new(nodes.len());
    for j in jobs {
        let ask = &j.spec.task.resources;
        for _ in 0..j.spec.replicas {
            match free.iter().position(|f| f.fits(ask)) {
                Some(i) => {
                    let mask = free[i].take(ask);
                    placed.record(i, mask, ask);
                }
                None => placed.unplaced += 1,
            }
        }
    }
    placed.finish(&free);
    placed
}

/// Power of two choices (Nomad's batch scheduler): walk the nodes in a
/// random order, take the first two where the replica fits, and keep the
/// one with the better best-fit score.
pub fn power_of_two(nodes: &[Node], jobs: &[Job], seed: u64) -> Placed {
    let mut rng = Rng::new(seed);
    let mut free = Free::of(nodes);
    let mut placed = Placed::new(nodes.len());
    let n = nodes.len();
    for j in jobs {
        let ask = &j.spec.task.resources;
        for _ in 0..j.spec.replicas {
            // A random walk over every node: a random start and a stride
            // coprime with n visits each node once.
            let start = rng.below(n.max(1));
            let mut stride = 1 + rng.below(n.max(2) - 1);
            while gcd(stride, n) != 1 {
                stride += 1;
            }
            let mut best: Option<(f64, usize)> = None;
            let mut seen = 0;
            for k in 0..n {
                let i = (start + k * stride) % n;
                if free[i].fits(ask) {
                    let after = free[i].used.saturating_add(ask.amount());
                    let score = skiff_model::fit::binpack_score(free[i].cap, after);
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                    seen += 1;
                    if seen == 2 {
                        break;
                    }
                }
            }
            match best {
                Some((_, i)) => {
                    let mask = free[i].take(ask);
                    placed.record(i, mask, ask);
                }
                None => placed.unplaced += 1,
            }
        }
    }
    placed.finish(&free);
    placed
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What a placer did.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub placed: u64,
    pub unplaced: u64,
    pub per_node: Vec<u32>,
    /// Replicas of 2 to 4 GPUs (which fit one NVLink group of the mixed
    /// shape's servers), and how many got an all-NVLink set.
    pub multi_gpu: u64,
    pub multi_gpu_nvlink: u64,
    /// Fraction of the capacity of the used nodes in use, per resource.
    pub util: (f64, f64, f64),
}

impl Placed {
    pub fn new(nodes: usize) -> Placed {
        Placed {
            per_node: vec![0; nodes],
            ..Placed::default()
        }
    }

    pub fn record(&mut self, node: usize, gpus: u64, ask: &TaskResources) {
        self.placed += 1;
        self.per_node[node] += 1;
        if (2..=4).contains(&ask.gpus) {
            self.multi_gpu += 1;
            // In the mixed shape's servers NVLink joins {0..3} and {4..7}.
            if gpus & 0x0f == gpus || gpus & 0xf0 == gpus {
                self.multi_gpu_nvlink += 1;
            }
        }
    }

    pub fn nodes_used(&self) -> u64 {
        self.per_node.iter().filter(|&&c| c > 0).count() as u64
    }

    pub fn finish(&mut self, free: &[Free]) {
        let (mut cap, mut used) = (Resources::ZERO, Resources::ZERO);
        for (i, f) in free.iter().enumerate() {
            if self.per_node[i] > 0 {
                cap = cap.saturating_add(f.cap);
                used = used.saturating_add(f.used);
            }
        }
        let ratio = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
        self.util = (
            ratio(used.cpu_millis, cap.cpu_millis),
            ratio(used.memory_bytes, cap.memory_bytes),
            ratio(u64::from(used.gpus), u64::from(cap.gpus)),
        );
    }
}
