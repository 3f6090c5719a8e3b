//! Properties of the scheduler over random clusters and jobs: whatever it
//! plans passes the state machine's own fit rule (no cpu, memory, GPU or
//! port is ever given twice), constraints, distinct_hosts and spread hold,
//! gangs are all-or-nothing, evictions only take work at least 10 priority
//! points lower, and the same input always gives the same plan. For
//! workloads: a rollout never takes availability below `replicas -
//! max_unavailable` nor runs more than `replicas + max_surge`, canaries and
//! frozen rollouts stop no healthy old work, a batch job never runs more
//! than `parallelism` nor reruns a slot that succeeded, and a gang with a
//! failed rank stops whole.
//!
//! Each case is built from a seed by a small PRNG (proptest picks the seeds
//! and the sizes), so a failure prints everything needed to replay it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use skiff_model::fit::{fits_assignment, usage_on, Usage};
use skiff_model::{
    AllocFacts, AllocStatus, Allocation, Amount, Constraint, ConstraintOp, Deployment,
    DeploymentStatus, DesiredStatus, Gpu, GpuFilter, GpuLink, ImageRef, Job, JobSpec, LinkLevel,
    Node, NodeStatus, Plan, Resources, Spread, TaskResources, TaskSpec,
};
use skiff_scheduler::{reconcile, reconcile_job, Algorithm, ClusterView, Config};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const ZONES: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 3] = [80, 443, 8080];
const MODELS: [&str; 2] = ["A100", "T4"];

fn task(resources: TaskResources) -> TaskSpec {
    TaskSpec {
        resources,
        ..TaskSpec::new(ImageRef {
            path: "/i".into(),
            tag: None,
            registry: None,
        })
    }
}

fn job(name: &str, replicas: u32, priority: u8, resources: TaskResources) -> Job {
    Job {
        spec: JobSpec {
            priority,
            ..JobSpec::new(name, replicas, task(resources))
        },
        version: 1,
        create_index: 1,
        modify_index: 1,
        admitted_index: 0,
    }
}

fn random_node(rng: &mut Rng, i: usize) -> Node {
    let cpu = rng.range(2, 32) * 500;
    let mem = rng.range(1, 32) << 30;
    let gpus = if rng.chance(40) {
        rng.range(1, 8) as usize
    } else {
        0
    };
    let name = format!("n{i:02}");
    let model = *rng.pick(&MODELS);
    let gpu_list: Vec<Gpu> = (0..gpus)
        .map(|g| Gpu {
            uuid: format!("{name}-g{g}"),
            model: model.into(),
            memory_bytes: rng.range(16, 80) << 30,
            healthy: !rng.chance(10),
            ..Gpu::default()
        })
        .collect();
    let mut links = Vec::new();
    for a in 0..gpus {
        for b in a + 1..gpus {
            if rng.chance(70) {
                links.push(GpuLink {
                    a: format!("{name}-g{a}"),
                    b: format!("{name}-g{b}"),
                    level: *rng.pick(&LinkLevel::ALL),
                });
            }
        }
    }
    let mut labels = BTreeMap::new();
    if rng.chance(85) {
        labels.insert("zone".to_string(), rng.pick(&ZONES).to_string());
    }
    labels.insert("cores".to_string(), (cpu / 1000).to_string());
    let healthy = gpu_list.iter().filter(|g| g.healthy).count() as u32;
    Node {
        labels,
        allocatable: Resources::new(cpu, mem).with_gpus(healthy),
        gpus: gpu_list,
        gpu_links: links,
        cordoned: rng.chance(8),
        draining: rng.chance(4),
        status: if rng.chance(8) {
            NodeStatus::Down
        } else {
            NodeStatus::Ready
        },
        ..Node::ready(&name, Resources::new(cpu, mem).with_gpus(gpus as u32))
    }
}

fn random_ask(rng: &mut Rng, max_gpus: u64) -> TaskResources {
    let mut r = TaskResources::new(rng.range(1, 16) * 250, rng.range(1, 32) << 28);
    if rng.chance(35) {
        r.gpus = rng.range(1, max_gpus) as u32;
        if rng.chance(30) {
            r.gpu = GpuFilter {
                model: Some(rng.pick(&MODELS).to_string()),
                min_memory_bytes: if rng.chance(50) { 40 << 30 } else { 0 },
                uuids: vec![],
                mig: None,
            };
        }
    }
    if rng.chance(30) {
        r.ports = vec![*rng.pick(&PORTS)];
    }
    r
}

/// A cluster with background work of four jobs at random priorities, each
/// allocation placed only where the fit rule allows it.
struct Scenario {
    nodes: Vec<Node>,
    allocs: Vec<Allocation>,
    jobs: Vec<Job>,
    job: Job,
    cfg: Config,
}

fn scenario(seed: u64, node_count: usize) -> Scenario {
    let mut rng = Rng(seed);
    let nodes: Vec<Node> = (0..node_count).map(|i| random_node(&mut rng, i)).collect();
    let jobs: Vec<Job> = (0..4)
        .map(|k| {
            let ask = random_ask(&mut rng, 4);
            job(&format!("bg{k}"), 1, rng.range(0, 100) as u8, ask)
        })
        .collect();
    let mut allocs: Vec<Allocation> = Vec::new();
    for node in &nodes {
        for slot in 0..rng.range(0, 4) {
            let bg = rng.pick(&jobs).clone();
            let mut usage = usage_on(node, &allocs);
            usage.ports.sort_unstable();
            let ask = &bg.spec.task.resources;
            let free = node.eligible_gpus(&ask.gpu) & !usage.gpus;
            let gpus: Vec<String> = skiff_model::gpu::bits(free)
                .take(ask.gpus as usize)
                .map(|i| node.gpus[i].uuid.clone())
                .collect();
            if fits_assignment(node, &usage, ask, &gpus).is_err() {
                continue;
            }
            allocs.push(Allocation {
                gpus,
                status: AllocStatus::Running,
                create_index: 1,
                modify_index: 1,
                ..Allocation::new(
                    format!("{}-{}-{slot}", bg.spec.name, node.name),
                    bg.spec.name.clone(),
                    1,
                    slot as u32,
                    node.name.clone(),
                    bg.spec.task.clone(),
                )
            });
        }
    }
    let mut j = job(
        "web",
        rng.range(1, 6) as u32,
        rng.range(0, 100) as u8,
        random_ask(&mut rng, 3),
    );
    if rng.chance(40) {
        let zones: Vec<&str> = ZONES.iter().copied().filter(|_| rng.chance(60)).collect();
        if !zones.is_empty() {
            j.spec
                .constraints
                .push(Constraint::new("zone", ConstraintOp::In, &zones));
        }
    }
    if rng.chance(20) {
        let op = *rng.pick(&[ConstraintOp::Lt, ConstraintOp::Gt]);
        j.spec
            .constraints
            .push(Constraint::new("cores", op, &["6"]));
    }
    j.spec.distinct_hosts = rng.chance(30);
    j.spec.gang = rng.chance(30);
    if rng.chance(25) {
        j.spec.spread = Some(Spread {
            label: "zone".into(),
            max_skew: rng.range(1, 2) as u32,
        });
    }
    if rng.chance(20) {
        j.spec.affinities.push(skiff_model::Affinity {
            rule: Constraint::new("zone", ConstraintOp::Eq, &[*rng.pick(&ZONES)]),
            weight: *rng.pick(&[-50, 50, 100]),
        });
    }
    let cfg = Config {
        algorithm: *rng.pick(&[Algorithm::Binpack, Algorithm::Spread]),
        seed: rng.next(),
        preemption: rng.chance(80),
        candidates: rng.range(1, 8) as u32,
        // One of three planners planning at once, now and then.
        stripe: rng.chance(20).then(|| skiff_scheduler::Stripe {
            index: rng.range(0, 2) as u32,
            of: 3,
        }),
    };
    Scenario {
        nodes,
        allocs,
        jobs,
        job: j,
        cfg,
    }
}

fn plan_of(s: &Scenario, nodes: &[Node], allocs: &[Allocation]) -> Plan {
    let priority = |name: &str| {
        s.jobs
            .iter()
            .chain(std::iter::once(&s.job))
            .find(|j| j.spec.name == name)
            .map(|j| j.spec.priority)
    };
    let view = ClusterView::new(nodes, allocs, priority);
    reconcile(&s.job.spec.name, Some(&s.job), &view, &s.cfg)
}

fn run(seed: u64, node_count: usize) -> (Scenario, Plan) {
    let s = scenario(seed, node_count);
    let plan = plan_of(&s, &s.nodes, &s.allocs);
    (s, plan)
}

fn node<'a>(s: &'a Scenario, name: &str) -> &'a Node {
    s.nodes
        .iter()
        .find(|n| n.name == name)
        .expect("planned node exists")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn no_resource_of_any_node_is_ever_overcommitted(seed in any::<u64>(), n in 1usize..14) {
        let (s, plan) = run(seed, n);
        let evicted: BTreeSet<&str> = plan.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        for p in &plan.placements {
            let nd = node(&s, &p.node);
            let u = usage.entry(nd.name.as_str()).or_insert_with(|| {
                usage_on(nd, s.allocs.iter().filter(|a| !evicted.contains(a.id.as_str())))
            });
            let ask = &s.job.spec.task.resources;
            // The state machine's own check: cpu, memory, ports, and the
            // GPUs named (free, healthy, acceptable, as many as asked).
            let mask = fits_assignment(nd, u, ask, &p.gpus);
            prop_assert!(mask.is_ok(), "{:?} on {}: {:?} (seed {seed})", p, nd.name, mask);
            let mask = mask.unwrap();
            u.add(ask.amount().with_gpus(mask.count_ones()), mask, &ask.ports);
            prop_assert!(u.amount.cpu_millis <= nd.allocatable.cpu_millis);
            prop_assert!(u.amount.memory_bytes <= nd.allocatable.memory_bytes);
        }
    }

    #[test]
    fn constraints_distinct_hosts_and_spread_always_hold(seed in any::<u64>(), n in 1usize..14) {
        let (s, plan) = run(seed, n);
        let spec = &s.job.spec;
        let mut seen = BTreeSet::new();
        let mut per_zone: BTreeMap<String, u32> = BTreeMap::new();
        for p in &plan.placements {
            let nd = node(&s, &p.node);
            prop_assert!(nd.schedulable(), "placed on unschedulable {} (seed {seed})", nd.name);
            for c in &spec.constraints {
                prop_assert!(c.matches(&nd.labels), "{} breaks {c} (seed {seed})", nd.name);
            }
            if spec.distinct_hosts {
                prop_assert!(seen.insert(nd.name.clone()), "two replicas on {} (seed {seed})", nd.name);
            }
            if spec.spread.is_some() {
                let zone = nd.labels.get("zone");
                prop_assert!(zone.is_some(), "spread placed on {} without the label", nd.name);
                *per_zone.entry(zone.unwrap().clone()).or_default() += 1;
            }
        }
        if let Some(sp) = &spec.spread {
            // Over the zones the constraints allow on schedulable nodes.
            let domain: BTreeSet<&String> = s.nodes.iter()
                .filter(|nd| nd.schedulable() && spec.constraints.iter().all(|c| c.matches(&nd.labels)))
                .filter_map(|nd| nd.labels.get("zone"))
                .collect();
            let counts: Vec<u32> = domain.iter().map(|z| per_zone.get(*z).copied().unwrap_or(0)).collect();
            if let (Some(max), Some(min)) = (counts.iter().max(), counts.iter().min()) {
                prop_assert!(max - min <= sp.max_skew, "{per_zone:?} over {domain:?} (seed {seed})");
            }
        }
    }

    #[test]
    fn a_gang_is_placed_whole_or_not_at_all(seed in any::<u64>(), n in 1usize..14) {
        let (s, plan) = run(seed, n);
        let placed = plan.placements.len() as u32;
        prop_assert_eq!(placed + plan.unplaced, s.job.spec.replicas);
        if s.job.spec.gang {
            prop_assert!(placed == 0 || placed == s.job.spec.replicas, "gang placed {placed} (seed {seed})");
            if placed == 0 {
                prop_assert!(plan.evictions.is_empty());
            }
        }
        if plan.unplaced > 0 {
            prop_assert!(!plan.explanation.is_empty());
        }
    }

    #[test]
    fn evictions_only_take_other_work_ten_points_lower(seed in any::<u64>(), n in 1usize..14) {
        let (s, plan) = run(seed, n);
        if !s.cfg.preemption {
            prop_assert!(plan.evictions.is_empty());
        }
        for e in &plan.evictions {
            let victim = s.allocs.iter().find(|a| a.id == e.alloc_id).expect("victim exists");
            let vjob = s.jobs.iter().find(|j| j.spec.name == victim.job).expect("victim job");
            prop_assert!(u16::from(vjob.spec.priority) + 10 <= u16::from(s.job.spec.priority),
                "evicted priority {} for {} (seed {seed})", vjob.spec.priority, s.job.spec.priority);
            prop_assert!(plan.placements.iter().any(|p| p.node == victim.node),
                "evicted {} on {} but placed nothing there (seed {seed})", victim.id, victim.node);
        }
    }

    #[test]
    fn the_same_input_gives_the_same_plan_in_any_order(seed in any::<u64>(), n in 1usize..14) {
        let (s, plan) = run(seed, n);
        let mut nodes = s.nodes.clone();
        let mut allocs = s.allocs.clone();
        nodes.reverse();
        allocs.reverse();
        let k = (seed % (nodes.len() as u64).max(1)) as usize;
        nodes.rotate_left(k);
        prop_assert_eq!(&plan_of(&s, &nodes, &allocs), &plan);
        prop_assert_eq!(&plan_of(&s, &s.nodes, &s.allocs), &plan);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same properties on clusters large enough for the indexed search.
    #[test]
    fn large_clusters_never_overcommit_either(seed in any::<u64>(), n in 65usize..160) {
        let (s, plan) = run(seed, n);
        let evicted: BTreeSet<&str> = plan.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
        let mut usage: BTreeMap<&str, Usage> = BTreeMap::new();
        for p in &plan.placements {
            let nd = node(&s, &p.node);
            let u = usage.entry(nd.name.as_str()).or_insert_with(|| {
                usage_on(nd, s.allocs.iter().filter(|a| !evicted.contains(a.id.as_str())))
            });
            let ask = &s.job.spec.task.resources;
            let mask = fits_assignment(nd, u, ask, &p.gpus);
            prop_assert!(mask.is_ok(), "{:?}: {:?} (seed {seed})", p, mask);
            let mask = mask.unwrap();
            u.add(ask.amount().with_gpus(mask.count_ones()), mask, &ask.ports);
            for c in &s.job.spec.constraints {
                prop_assert!(c.matches(&nd.labels));
            }
        }
        let mut nodes = s.nodes.clone();
        nodes.reverse();
        prop_assert_eq!(&plan_of(&s, &nodes, &s.allocs), &plan);
    }
}

// ---- rollouts and batch jobs --------------------------------------------------

/// A service at version 3 in the middle of a rollout: allocations of
/// versions 1 and 2 and of version 3 in random states, a random update
/// policy, and a random rollout record.
struct RolloutCase {
    nodes: Vec<Node>,
    allocs: Vec<Allocation>,
    job: Job,
    deployment: Option<Deployment>,
}

const STATES: [(AllocStatus, Option<bool>); 5] = [
    (AllocStatus::Running, Some(true)),
    (AllocStatus::Running, Some(true)),
    (AllocStatus::Running, Some(false)),
    (AllocStatus::Pending, None),
    (AllocStatus::Complete, None),
];

fn rollout_case(seed: u64) -> RolloutCase {
    let mut rng = Rng(seed);
    let replicas = rng.range(0, 8) as u32;
    let mut job = job("web", replicas, 50, TaskResources::new(250, 64 << 20));
    job.version = 3;
    let amounts = [
        Amount::Count(0),
        Amount::Count(1),
        Amount::Count(2),
        Amount::Percent(25),
        Amount::Percent(50),
        Amount::Percent(100),
    ];
    loop {
        job.spec.update.max_unavailable = *rng.pick(&amounts);
        job.spec.update.max_surge = *rng.pick(&amounts);
        if !(job.spec.update.max_unavailable.is_zero() && job.spec.update.max_surge.is_zero()) {
            break;
        }
    }
    // Roomy nodes, or tight ones where not everything fits.
    let nodes: Vec<Node> = (0..rng.range(1, 4))
        .map(|i| {
            let cpu = if rng.chance(70) { 16_000 } else { 1_000 };
            Node::ready(&format!("n{i}"), Resources::new(cpu, 64 << 30))
        })
        .collect();
    let mut allocs = Vec::new();
    let mut push = |rng: &mut Rng, version: u64, slot: u32, id: String| {
        let (status, healthy) = *rng.pick(&STATES);
        let mut a = Allocation::new(
            id,
            "web",
            version,
            slot,
            rng.pick(&nodes).name.clone(),
            job.spec.task.clone(),
        );
        a.status = status;
        a.healthy = healthy;
        a.create_index = 1;
        if rng.chance(10) {
            a.desired = DesiredStatus::Stop;
        }
        if version == 3 {
            a.deploy_health = *rng.pick(&[None, Some(true), Some(true), Some(false)]);
        }
        allocs.push(a);
    };
    for slot in 0..rng.range(0, u64::from(replicas) + 2) as u32 {
        let version = rng.range(1, 2);
        push(&mut rng, version, slot, format!("old-{version}-{slot}"));
    }
    for slot in 0..replicas + 1 {
        if rng.chance(40) {
            push(&mut rng, 3, slot, format!("new-{slot}"));
        }
    }
    let deployment = rng.chance(85).then(|| Deployment {
        id: "web-9".into(),
        job: "web".into(),
        version: 3,
        from_version: 2,
        status: *rng.pick(&[
            DeploymentStatus::Running,
            DeploymentStatus::Running,
            DeploymentStatus::Running,
            DeploymentStatus::Paused,
            DeploymentStatus::Failed,
            DeploymentStatus::Successful,
        ]),
        reason: String::new(),
        canary: if rng.chance(30) {
            rng.range(1, 3) as u32
        } else {
            0
        },
        promoted: rng.chance(50),
        rollback: false,
        started_ms: 0,
        progress_ms: 0,
        ended_ms: 0,
        create_index: 1,
        modify_index: 1,
        slot: 0,
    });
    RolloutCase {
        nodes,
        allocs,
        job,
        deployment,
    }
}

fn plan_case(nodes: &[Node], allocs: &[Allocation], job: &Job, d: Option<&Deployment>) -> Plan {
    let view = ClusterView::new(nodes, allocs, |_| Some(50));
    reconcile_job(&job.spec.name, Some(job), d, &view, &Config::default())
}

fn is_live(a: &Allocation) -> bool {
    a.desired == DesiredStatus::Run && !a.status.is_terminal()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Available: old allocations healthy now, new ones (below `replicas`)
    /// healthy now and proved for an active rollout. A plan never stops
    /// available ones below `replicas - max_unavailable` (nor below what
    /// was available, when that was less already).
    #[test]
    fn a_rollout_never_takes_availability_below_replicas_minus_max_unavailable(seed in any::<u64>()) {
        let c = rollout_case(seed);
        let plan = plan_case(&c.nodes, &c.allocs, &c.job, c.deployment.as_ref());
        let active = c.deployment.as_ref().is_some_and(|d| d.status.is_active());
        let r = c.job.spec.replicas;
        let mut first_of_slot = BTreeSet::new();
        let available: Vec<&Allocation> = c.allocs.iter().filter(|a| {
            is_live(a) && a.healthy_now() && if a.job_version == 3 {
                a.replica < r && first_of_slot.insert(a.replica)
                    && (!active || a.deploy_health == Some(true))
            } else {
                true
            }
        }).collect();
        let stopped: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        let before = available.len() as u32;
        let after = available.iter().filter(|a| !stopped.contains(a.id.as_str())).count() as u32;
        let floor = r - c.job.spec.max_unavailable();
        prop_assert!(after >= before.min(floor),
            "available {before} -> {after}, floor {floor} (seed {seed}): {plan:?}");
    }

    /// Live allocations (wanted to run, not finished) never grow past
    /// `replicas + max_surge`; canaries waiting for promotion add at most
    /// their number and stop nothing old; a paused or failed rollout moves
    /// nothing.
    #[test]
    fn a_rollout_never_runs_more_than_replicas_plus_max_surge(seed in any::<u64>()) {
        let c = rollout_case(seed);
        let plan = plan_case(&c.nodes, &c.allocs, &c.job, c.deployment.as_ref());
        let spec = &c.job.spec;
        let r = spec.replicas;
        let stopped: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        let live_before = c.allocs.iter().filter(|a| is_live(a)).count() as u32;
        let live_after = c.allocs.iter()
            .filter(|a| is_live(a) && !stopped.contains(a.id.as_str()))
            .count() as u32 + plan.placements.len() as u32;
        let old_live = c.allocs.iter().any(|a| is_live(a) && a.job_version != 3);
        let d = c.deployment.as_ref();
        if old_live && d.is_some_and(|d| d.status == DeploymentStatus::Failed) {
            // Scaling down still works; nothing of the rollout moves.
            prop_assert!(plan.placements.is_empty() && plan.stops.iter().all(|s| s.reason == "job scaled down"),
                "a frozen rollout moved (seed {seed}): {plan:?}");
        } else if old_live && d.is_some_and(|d| d.status == DeploymentStatus::Paused) {
            // Paused: nothing stops but scaled-down slots; only slots with no
            // live allocation of any version are filled, up to replicas.
            prop_assert!(plan.stops.iter().all(|s| s.reason == "job scaled down"),
                "a paused rollout stopped work (seed {seed}): {plan:?}");
            for p in &plan.placements {
                prop_assert!(!c.allocs.iter().any(|a| is_live(a) && a.replica == p.replica),
                    "a paused rollout filled an occupied slot (seed {seed}): {plan:?}");
            }
            prop_assert!(live_after <= live_before.max(r), "seed {seed}: {plan:?}");
        } else if old_live && d.is_some_and(|d| d.status.is_active() && d.awaiting_promotion()) {
            let canary = d.unwrap().canary;
            prop_assert!(plan.placements.len() as u32 <= canary, "seed {seed}");
            prop_assert!(plan.stops.iter().all(|s| s.alloc_id.starts_with("new-")
                || c.allocs.iter().any(|a| a.id == s.alloc_id && !a.healthy_now())),
                "canaries stopped healthy old work (seed {seed}): {plan:?}");
        } else {
            prop_assert!(live_after <= live_before.max(r + spec.max_surge()),
                "live {live_before} -> {live_after}, replicas {r} + surge {} (seed {seed}): {plan:?}",
                spec.max_surge());
        }
        // New allocations fill free slots below replicas only.
        let filled: BTreeSet<u32> = c.allocs.iter()
            .filter(|a| a.job_version == 3 && a.desired == DesiredStatus::Run && a.status != AllocStatus::Lost)
            .map(|a| a.replica)
            .collect();
        for p in &plan.placements {
            prop_assert!(p.replica < r && !filled.contains(&p.replica), "slot {} (seed {seed})", p.replica);
        }
    }
}

/// A batch job (or a gang of one) with runs in random states.
fn batch_case(seed: u64) -> (Vec<Node>, Vec<Allocation>, Job) {
    let mut rng = Rng(seed);
    let gang = rng.chance(30);
    let yaml = if gang {
        format!(
            "name: b\ntype: batch\ngang: true\nreplicas: {}\nbackoff_limit: {}\ngang_failure: {}\ntask: {{image: 'oci:/i', resources: {{cpu: 250m, memory: 64Mi}}}}",
            rng.range(1, 5),
            rng.range(0, 3),
            rng.pick(&["restart_gang", "fail"]),
        )
    } else {
        format!(
            "name: b\ntype: batch\ncompletions: {}\nparallelism: {}\nbackoff_limit: {}\ntask: {{image: 'oci:/i', resources: {{cpu: 250m, memory: 64Mi}}}}",
            rng.range(1, 8),
            rng.range(1, 5),
            rng.range(0, 4),
        )
    };
    let job = Job {
        spec: JobSpec::from_yaml(&yaml).unwrap(),
        version: 1,
        create_index: 1,
        modify_index: 1,
        admitted_index: 0,
    };
    let nodes = vec![Node::ready("n0", Resources::new(64_000, 64 << 30))];
    let runs = [
        (AllocStatus::Running, ""),
        (AllocStatus::Pending, ""),
        (AllocStatus::Complete, "completed"),
        (AllocStatus::Complete, "completed"),
        (AllocStatus::Failed, "error"),
        (AllocStatus::Running, "back_off"),
        (AllocStatus::Complete, "stopped"),
    ];
    let mut allocs = Vec::new();
    for slot in 0..job.spec.completions() {
        let mut busy = false;
        for k in 0..rng.range(0, 2) {
            // Runs of a slot follow each other: another one only after the
            // last ended without success (or was stopped).
            if busy {
                break;
            }
            let (status, reason) = *rng.pick(&runs);
            let mut a = Allocation::new(
                format!("b-{slot}-{k}"),
                "b",
                1,
                slot,
                "n0",
                job.spec.task.clone(),
            );
            a.status = status;
            a.reason = reason.into();
            a.restart_count = if rng.chance(20) { 1 } else { 0 };
            a.create_index = 1;
            if rng.chance(15) {
                a.desired = DesiredStatus::Stop;
            }
            busy |= a.desired == DesiredStatus::Run && (is_live(&a) || a.succeeded());
            allocs.push(a);
        }
    }
    (nodes, allocs, job)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_batch_job_never_runs_more_than_parallelism_nor_reruns_a_success(seed in any::<u64>()) {
        let (nodes, allocs, job) = batch_case(seed);
        let plan = plan_case(&nodes, &allocs, &job, None);
        let spec = &job.spec;
        let progress = skiff_model::workload::batch_progress(&job, allocs.iter());
        let stopped: BTreeSet<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
        let live_before = allocs.iter().filter(|a| is_live(a)).count() as u32;
        let live_after = allocs.iter()
            .filter(|a| is_live(a) && !stopped.contains(a.id.as_str()))
            .count() as u32 + plan.placements.len() as u32;
        prop_assert!(live_after <= live_before.max(spec.parallelism()),
            "live {live_before} -> {live_after}, parallelism {} (seed {seed})", spec.parallelism());
        if progress.failed > spec.backoff_limit() || progress.succeeded >= spec.completions() {
            prop_assert!(plan.placements.is_empty(), "a finished job placed work (seed {seed})");
        }
        for p in &plan.placements {
            prop_assert!(p.replica < spec.completions());
            let busy = allocs.iter().any(|a| a.replica == p.replica && a.desired == DesiredStatus::Run
                && (is_live(a) || a.succeeded()));
            prop_assert!(!busy, "slot {} placed twice (seed {seed}): {plan:?}", p.replica);
        }
        prop_assert!(progress.succeeded + live_after <= spec.completions().max(progress.succeeded + live_before),
            "more runs than completions (seed {seed})");
    }

    #[test]
    fn a_gang_with_a_failed_rank_stops_whole_and_places_nothing(seed in any::<u64>()) {
        let (nodes, allocs, job) = batch_case(seed);
        prop_assume!(job.spec.gang);
        let plan = plan_case(&nodes, &allocs, &job, None);
        let members: Vec<&Allocation> = allocs.iter().filter(|a| a.desired == DesiredStatus::Run).collect();
        if members.iter().any(|a| a.failures() > 0) {
            prop_assert!(plan.placements.is_empty(), "seed {seed}: {plan:?}");
            for a in members.iter().filter(|a| is_live(a)) {
                prop_assert!(plan.stops.iter().any(|s| s.alloc_id == a.id), "{} kept (seed {seed})", a.id);
            }
        } else if !plan.placements.is_empty() {
            let taken: BTreeSet<u32> = members.iter().map(|a| a.replica).collect();
            let missing = (0..job.spec.replicas).filter(|r| !taken.contains(r)).count();
            prop_assert_eq!(plan.placements.len(), missing, "gang placed in part (seed {})", seed);
        }
    }
}
