use std::collections::BTreeMap;

use super::*;
use skiff_model::{
    AllocStatus, Allocation, DeploymentStatus, Gpu, GpuLink, JobSpec, LinkLevel, Node, NodeStatus,
    Placement, Resources,
};

fn node(name: &str, cpu: u64, mem_mi: u64) -> Node {
    Node::ready(name, Resources::new(cpu, mem_mi << 20))
}

fn labelled(mut n: Node, labels: &[(&str, &str)]) -> Node {
    for (k, v) in labels {
        n.labels.insert(k.to_string(), v.to_string());
    }
    n
}

/// A node with `count` GPUs of `model`: NVLink inside groups of four,
/// nothing reported between groups.
fn gpu_node(name: &str, count: usize, model: &str) -> Node {
    let mut n = node(name, 64_000, 512 << 10);
    n.gpus = (0..count)
        .map(|i| Gpu {
            uuid: format!("{name}-gpu{i}"),
            model: model.into(),
            memory_bytes: 80 << 30,
            healthy: true,
            ..Gpu::default()
        })
        .collect();
    for a in 0..count {
        for b in a + 1..count {
            if a / 4 == b / 4 {
                n.gpu_links.push(GpuLink {
                    a: format!("{name}-gpu{a}"),
                    b: format!("{name}-gpu{b}"),
                    level: LinkLevel::NvLink,
                });
            }
        }
    }
    n.capacity.gpus = count as u32;
    n.allocatable.gpus = count as u32;
    n
}

fn job_yaml(name: &str, extra: &str, task_resources: &str) -> Job {
    let spec = JobSpec::from_yaml(&format!(
        "name: {name}\n{extra}\ntask: {{image: 'oci:/i', resources: {task_resources}}}"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    first_version(spec)
}

/// `spec` as a job's first version, created and modified at index 1.
fn first_version(spec: JobSpec) -> Job {
    Job {
        spec,
        version: 1,
        create_index: 1,
        modify_index: 1,
        admitted_index: 0,
    }
}

fn job(replicas: u32, cpu: &str, mem: &str) -> Job {
    job_yaml(
        "web",
        &format!("replicas: {replicas}"),
        &format!("{{cpu: {cpu}, memory: {mem}}}"),
    )
}

fn alloc(id: &str, job: &Job, replica: u32, node: &str) -> Allocation {
    Allocation {
        status: AllocStatus::Running,
        create_index: 1,
        modify_index: 1,
        ..Allocation::new(
            id,
            job.spec.name.clone(),
            job.version,
            replica,
            node,
            job.spec.task.clone(),
        )
    }
}

/// Plans `job` against `nodes` and `allocs`, with the priorities of the
/// jobs in `jobs` (the planned job included).
fn plan_with(
    job: &Job,
    nodes: &[Node],
    allocs: &[Allocation],
    jobs: &[&Job],
    cfg: &Config,
) -> Plan {
    let view = ClusterView::new(nodes, allocs, |name| {
        jobs.iter()
            .chain(std::iter::once(&job))
            .find(|j| j.spec.name == name)
            .map(|j| j.spec.priority)
    });
    reconcile(&job.spec.name, Some(job), &view, cfg)
}

fn plan(job: &Job, nodes: &[Node], allocs: &[Allocation]) -> Plan {
    plan_with(job, nodes, allocs, &[], &Config::default())
}

fn nodes_of(plan: &Plan) -> Vec<&str> {
    plan.placements.iter().map(|p| p.node.as_str()).collect()
}

// ---- reconciling ------------------------------------------------------------

#[test]
fn places_every_replica_when_capacity_allows() {
    let nodes = [node("a", 1000, 1024), node("b", 1000, 1024)];
    let p = plan(&job(3, "250m", "64Mi"), &nodes, &[]);
    assert_eq!(p.unplaced, 0);
    let replicas: Vec<u32> = p.placements.iter().map(|p| p.replica).collect();
    assert_eq!(replicas, [0, 1, 2]);
}

#[test]
fn running_replicas_are_left_alone() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(2, "1", "64Mi");
    let allocs = [alloc("a0", &j, 0, "a"), alloc("a1", &j, 1, "a")];
    assert!(plan(&j, &nodes, &allocs).is_empty());
}

#[test]
fn scaling_down_stops_the_highest_replicas() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(1, "1", "64Mi");
    let allocs = [
        alloc("a2", &j, 2, "a"),
        alloc("a0", &j, 0, "a"),
        alloc("a1", &j, 1, "a"),
    ];
    let p = plan(&j, &nodes, &allocs);
    let stopped: Vec<&str> = p.stops.iter().map(|s| s.alloc_id.as_str()).collect();
    assert_eq!(stopped, ["a2", "a1"]);
    assert!(p.placements.is_empty());
}

#[test]
fn a_deleted_job_has_everything_stopped() {
    let j = job(2, "1", "64Mi");
    let mut done = alloc("a1", &j, 1, "a");
    done.status = AllocStatus::Complete;
    let allocs = [alloc("a0", &j, 0, "a"), done];
    let view = ClusterView::new(&[], &allocs, |_| None);
    let p = reconcile("web", None, &view, &Config::default());
    assert_eq!(p.stops.len(), 1);
    assert_eq!(p.stops[0].alloc_id, "a0");
    assert_eq!(p.stops[0].reason, "job deleted");
}

#[test]
fn a_new_task_version_replaces_old_allocations() {
    let nodes = [node("a", 4000, 4096)];
    let mut j = job(1, "1", "64Mi");
    let old = alloc("old", &j, 0, "a");
    j.version = 2;
    let p = plan(&j, &nodes, &[old]);
    assert_eq!(p.stops[0].alloc_id, "old");
    // The old allocation still holds its resources until it has stopped.
    assert_eq!(nodes_of(&p), ["a"]);
}

#[test]
fn finished_replicas_are_not_replaced_but_lost_ones_are() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(2, "1", "64Mi");
    let mut failed = alloc("f", &j, 0, "a");
    failed.status = AllocStatus::Failed;
    let mut lost = alloc("l", &j, 1, "a");
    lost.status = AllocStatus::Lost;
    let p = plan(&j, &nodes, &[failed, lost]);
    assert_eq!(
        p.placements,
        vec![Placement {
            replica: 1,
            node: "a".into(),
            gpus: vec![],
            ports: vec![],
        }]
    );
}

#[test]
fn allocations_of_an_earlier_job_with_the_same_name_are_replaced() {
    let nodes = [node("a", 4000, 4096)];
    let mut j = job(1, "1", "64Mi");
    let old = alloc("old", &j, 0, "a");
    j.create_index = 10; // deleted and created again after `old` was placed
    let p = plan(&j, &nodes, &[old]);
    assert_eq!(p.stops[0].alloc_id, "old");
    assert_eq!(p.placements.len(), 1);
}

// ---- scoring ----------------------------------------------------------------

#[test]
fn best_fit_prefers_the_fuller_node() {
    let nodes = [node("a", 2000, 2048), node("b", 2000, 2048)];
    let other = job_yaml("other", "", "{cpu: 1, memory: 1Gi}");
    let busy = alloc("x", &other, 0, "b");
    let p = plan(&job(1, "500m", "256Mi"), &nodes, &[busy]);
    assert_eq!(nodes_of(&p), ["b"]);
}

#[test]
fn binpack_fills_one_node_before_starting_the_next() {
    let nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), 4000, 4096)).collect();
    let p = plan(&job(4, "1", "1Gi"), &nodes, &[]);
    let first = p.placements[0].node.clone();
    assert!(p.placements.iter().all(|x| x.node == first), "{p:?}");
}

#[test]
fn the_spread_algorithm_puts_each_replica_on_the_emptiest_node() {
    let nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), 4000, 4096)).collect();
    let cfg = Config {
        algorithm: Algorithm::Spread,
        ..Config::default()
    };
    let p = plan_with(&job(4, "1", "1Gi"), &nodes, &[], &[], &cfg);
    let mut used = nodes_of(&p);
    used.sort();
    assert_eq!(used, ["n0", "n1", "n2", "n3"]);
}

#[test]
fn planners_keep_to_their_stripes_while_the_work_fits_there() {
    let nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), 4000, 4096)).collect();
    let on = |index: u32, job: &Job, allocs: &[Allocation], jobs: &[&Job]| {
        let cfg = Config {
            stripe: Some(Stripe { index, of: 2 }),
            ..Config::default()
        };
        plan_with(job, &nodes, allocs, jobs, &cfg)
    };
    // Two planners from one empty view: without stripes both would fill
    // the same node (the same best fit); with them they keep apart.
    let web = job(4, "1", "1Gi");
    assert_eq!(
        nodes_of(&plan(&web, &nodes, &[])),
        nodes_of(&plan(&web, &nodes, &[]))
    );
    let (a, b) = (on(0, &web, &[], &[]), on(1, &web, &[], &[]));
    assert!(
        nodes_of(&a).iter().all(|n| ["n0", "n2"].contains(n)),
        "{a:?}"
    );
    assert!(
        nodes_of(&b).iter().all(|n| ["n1", "n3"].contains(n)),
        "{b:?}"
    );
    assert_eq!((a.placements.len(), b.placements.len()), (4, 4));
    // More than the stripe holds: placed on every node, nothing left over.
    let big = on(0, &job(12, "1", "1Gi"), &[], &[]);
    assert_eq!(big.unplaced, 0, "{big:?}");
    assert!(nodes_of(&big).iter().any(|n| ["n1", "n3"].contains(n)));
    // Fitting in the stripe only by evicting lower priority work, while
    // room waits outside it: nothing is evicted.
    let low = job_yaml(
        "batch",
        "replicas: 2\npriority: 20",
        "{cpu: 4, memory: 1Gi}",
    );
    let busy = [alloc("l0", &low, 0, "n0"), alloc("l1", &low, 1, "n2")];
    let high = job_yaml("web", "priority: 30", "{cpu: 2, memory: 1Gi}");
    let p = on(0, &high, &busy, &[&low]);
    assert!(p.evictions.is_empty(), "{p:?}");
    assert!(nodes_of(&p) == ["n1"] || nodes_of(&p) == ["n3"], "{p:?}");
}

#[test]
fn work_that_needs_no_gpu_stays_off_gpu_nodes() {
    let nodes = [gpu_node("gpu", 4, "A100"), node("cpu", 64_000, 512 << 10)];
    let p = plan(&job(2, "1", "1Gi"), &nodes, &[]);
    assert_eq!(nodes_of(&p), ["cpu", "cpu"]);
}

#[test]
fn affinities_steer_placement_by_weight() {
    let nodes = [
        labelled(node("a", 4000, 4096), &[("zone", "a")]),
        labelled(node("b", 4000, 4096), &[("zone", "b")]),
        labelled(node("c", 4000, 4096), &[("zone", "c"), ("spot", "true")]),
    ];
    let j = job_yaml(
        "web",
        "replicas: 3\naffinities:\n  - {label: zone, op: in, values: [b, c], weight: 50}\n  - {label: spot, op: exists, weight: -100}",
        "{cpu: 1, memory: 64Mi}",
    );
    let p = plan(&j, &nodes, &[]);
    assert_eq!(nodes_of(&p), ["b", "b", "b"]);
}

// ---- feasibility ------------------------------------------------------------

#[test]
fn never_overcommits_and_explains_what_does_not_fit() {
    let mut down = node("c", 8000, 8192);
    down.status = NodeStatus::Down;
    let nodes = [node("a", 1000, 128), node("b", 1000, 1024), down];
    let p = plan(&job(4, "500m", "256Mi"), &nodes, &[]);
    assert_eq!(nodes_of(&p), ["b", "b"]);
    assert_eq!(p.unplaced, 2);
    assert_eq!(
        p.explanation,
        "0/3 nodes: 1 insufficient cpu, 1 insufficient memory, 1 node not ready"
    );
}

#[test]
fn no_nodes_is_explained() {
    let p = plan(&job(1, "1", "64Mi"), &[], &[]);
    assert_eq!(p.unplaced, 1);
    assert_eq!(p.explanation, "0/0 nodes: no nodes are registered");
}

#[test]
fn each_constraint_operator_filters_nodes() {
    let nodes = [
        labelled(node("a", 4000, 4096), &[("zone", "a"), ("cores", "8")]),
        labelled(
            node("b", 4000, 4096),
            &[("zone", "b"), ("cores", "32"), ("ssd", "")],
        ),
        labelled(node("c", 4000, 4096), &[("cores", "many")]),
    ];
    let cases = [
        ("{label: zone, op: '=', value: b}", vec!["b"]),
        ("{label: zone, op: '!=', value: a}", vec!["b", "c"]),
        ("{label: zone, op: in, values: [a, b]}", vec!["a", "b"]),
        ("{label: zone, op: not_in, values: [a]}", vec!["b", "c"]),
        ("{label: ssd, op: exists}", vec!["b"]),
        ("{label: cores, op: '<', value: 16}", vec!["a"]),
        ("{label: cores, op: '>', value: 16}", vec!["b"]),
    ];
    for (rule, want) in cases {
        // distinct_hosts + one replica per node shows every allowed node.
        let j = job_yaml(
            "web",
            &format!("replicas: 3\ndistinct_hosts: true\nconstraints: [{rule}]"),
            "{cpu: 100m, memory: 64Mi}",
        );
        let mut got = nodes_of(&plan(&j, &nodes, &[]))
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, want, "{rule}");
    }
}

#[test]
fn cordoned_and_draining_nodes_get_no_new_work() {
    let mut cordoned = node("a", 4000, 4096);
    cordoned.cordoned = true;
    let mut draining = node("b", 4000, 4096);
    draining.draining = true;
    let p = plan(&job(1, "1", "64Mi"), &[cordoned, draining], &[]);
    assert_eq!(p.unplaced, 1);
    assert_eq!(p.explanation, "0/2 nodes: 1 node cordoned, 1 node draining");
}

#[test]
fn the_explanation_counts_gpu_and_constraint_reasons() {
    // The example: 31 nodes without a free GPU, 9 in another zone.
    let mut nodes: Vec<Node> = (0..31)
        .map(|i| labelled(node(&format!("cpu{i:02}"), 8000, 8192), &[("zone", "a")]))
        .collect();
    nodes.extend(
        (0..9).map(|i| labelled(gpu_node(&format!("gpu{i}"), 4, "A100"), &[("zone", "b")])),
    );
    let j = job_yaml(
        "train",
        "constraints: [{label: zone, op: in, values: [a]}]",
        "{cpu: 1, memory: 1Gi, gpus: 1}",
    );
    let p = plan(&j, &nodes, &[]);
    assert_eq!(
        p.explanation,
        "0/40 nodes: 31 insufficient gpu, 9 constraint zone in (a)"
    );
}

#[test]
fn unhealthy_gpus_are_never_offered() {
    let mut n = gpu_node("g", 2, "A100");
    n.gpus[0].healthy = false;
    let j = job_yaml("t", "", "{cpu: 1, memory: 1Gi, gpus: 1}");
    let p = plan(&j, std::slice::from_ref(&n), &[]);
    assert_eq!(p.placements[0].gpus, ["g-gpu1"]);
    let two = job_yaml("t", "", "{cpu: 1, memory: 1Gi, gpus: 2}");
    let p = plan(&two, &[n], &[]);
    assert_eq!(p.explanation, "0/1 nodes: 1 insufficient gpu");
}

#[test]
fn a_gpu_filter_selects_by_model_memory_and_uuid() {
    let mut t4 = gpu_node("t4", 4, "T4");
    for g in &mut t4.gpus {
        g.memory_bytes = 16 << 30;
    }
    let nodes = [t4, gpu_node("a100", 4, "A100")];
    let by_model = job_yaml(
        "t",
        "",
        "{cpu: 1, memory: 1Gi, gpus: 1, gpu: {model: A100}}",
    );
    assert_eq!(nodes_of(&plan(&by_model, &nodes, &[])), ["a100"]);
    let by_memory = job_yaml(
        "t",
        "",
        "{cpu: 1, memory: 1Gi, gpus: 1, gpu: {min_memory: 40Gi}}",
    );
    assert_eq!(nodes_of(&plan(&by_memory, &nodes, &[])), ["a100"]);
    let pinned = job_yaml("t", "", "{cpu: 1, memory: 1Gi, gpu: {uuids: [t4-gpu2]}}");
    let p = plan(&pinned, &nodes, &[]);
    assert_eq!(nodes_of(&p), ["t4"]);
    assert_eq!(p.placements[0].gpus, ["t4-gpu2"]);
}

/// A node whose first GPU is in MIG mode with `instances` 1g.10gb
/// instances, and a second whole GPU.
fn mig_node(name: &str, instances: usize) -> Node {
    let mut n = node(name, 64_000, 512 << 10);
    n.gpus.push(Gpu {
        mig_enabled: true,
        ..Gpu::new(format!("{name}-gpu0"), "A100", 80 << 30)
    });
    for i in 0..instances {
        n.gpus.push(Gpu {
            mig_profile: Some("1g.10gb".into()),
            parent: Some(format!("{name}-gpu0")),
            ..Gpu::new(format!("{name}-mig{i}"), "A100", 10 << 30)
        });
    }
    n.gpus
        .push(Gpu::new(format!("{name}-gpu1"), "A100", 80 << 30));
    let units = Node::gpu_units(&n.gpus);
    n.capacity.gpus = units;
    n.allocatable.gpus = units;
    n
}

#[test]
fn a_mig_request_gets_an_instance_and_a_plain_one_a_whole_gpu() {
    let n = mig_node("m", 3);
    let small = job_yaml(
        "s",
        "replicas: 3",
        "{cpu: 1, memory: 1Gi, gpus: 1, gpu: {mig: 1g.10gb}}",
    );
    let p = plan(&small, std::slice::from_ref(&n), &[]);
    let mut got: Vec<&str> = p
        .placements
        .iter()
        .flat_map(|pl| pl.gpus.iter().map(String::as_str))
        .collect();
    got.sort();
    assert_eq!(got, ["m-mig0", "m-mig1", "m-mig2"]);
    let whole = job_yaml("w", "replicas: 2", "{cpu: 1, memory: 1Gi, gpus: 1}");
    let p = plan(&whole, std::slice::from_ref(&n), &[]);
    // Only one whole GPU: the GPU in MIG mode and its instances are not
    // offered to a plain request.
    assert_eq!(p.placements.len(), 1);
    assert_eq!(p.placements[0].gpus, ["m-gpu1"]);
    let other = job_yaml(
        "o",
        "",
        "{cpu: 1, memory: 1Gi, gpus: 1, gpu: {mig: 3g.40gb}}",
    );
    assert!(plan(&other, &[n], &[]).placements.is_empty());
}

#[test]
fn a_multi_gpu_replica_gets_nvlink_connected_gpus() {
    let n = gpu_node("g", 8, "A100");
    // One GPU of each NVLink group is taken by another job.
    let other = job_yaml("other", "", "{cpu: 1, memory: 1Gi, gpus: 2}");
    let mut held = alloc("x", &other, 0, "g");
    held.gpus = vec!["g-gpu0".into(), "g-gpu4".into()];
    let j = job_yaml("t", "", "{cpu: 1, memory: 1Gi, gpus: 3}");
    let p = plan(&j, &[n], &[held]);
    let got = &p.placements[0].gpus;
    let same_group = got
        .iter()
        .all(|g| ["g-gpu1", "g-gpu2", "g-gpu3"].contains(&g.as_str()))
        || got
            .iter()
            .all(|g| ["g-gpu5", "g-gpu6", "g-gpu7"].contains(&g.as_str()));
    assert!(same_group, "{got:?}");
}

#[test]
fn a_multi_gpu_replica_prefers_the_node_with_a_tight_gpu_set() {
    // On `scattered` the four free GPUs straddle both NVLink groups; on
    // `tight` a whole group is free. `scattered` is fuller, yet loses.
    let scattered = gpu_node("scattered", 8, "A100");
    let tight = gpu_node("tight", 8, "A100");
    let other = job_yaml("other", "", "{cpu: 1, memory: 1Gi, gpus: 4}");
    let mut a = alloc("x", &other, 0, "scattered");
    a.gpus = ["g0", "g1", "g4", "g5"]
        .map(|g| format!("scattered-{}", g.replace('g', "gpu")))
        .to_vec();
    let j = job_yaml("t", "", "{cpu: 1, memory: 1Gi, gpus: 4}");
    let p = plan(&j, &[scattered, tight], &[a]);
    assert_eq!(nodes_of(&p), ["tight"]);
}

#[test]
fn a_host_port_is_never_given_twice_on_a_node() {
    let nodes = [node("a", 8000, 8192), node("b", 8000, 8192)];
    let j = job_yaml(
        "web",
        "replicas: 3",
        "{cpu: 1, memory: 64Mi, ports: [8080]}",
    );
    let p = plan(&j, &nodes, &[]);
    let mut used = nodes_of(&p);
    used.sort();
    assert_eq!(used, ["a", "b"]);
    assert_eq!(p.explanation, "0/2 nodes: 2 port 8080 in use");
}

#[test]
fn dynamic_ports_are_picked_once_per_node_from_the_range() {
    let nodes = [node("a", 8000, 8192)];
    let spec = JobSpec::from_yaml(
        "name: web\nreplicas: 3\ntask:\n  image: 'oci:/i'\n  network: bridge\n  resources: {cpu: 1, memory: 64Mi}\n  ports: [{name: http, container: 8080, host: 0}, {name: admin, container: 9, host: 0}]\n",
    )
    .unwrap();
    let j = first_version(spec);
    // A port already held on the node is never picked.
    let other = job_yaml("other", "", "{cpu: 1, memory: 64Mi}");
    let mut held = alloc("h", &other, 0, "a");
    held.ports = skiff_model::ports::DYNAMIC_PORTS.step_by(2).collect();
    let p = plan(&j, &nodes, &[held.clone()]);
    assert_eq!(p.unplaced, 0, "{}", p.explanation);
    let mut picked: Vec<u16> = p.placements.iter().flat_map(|p| p.ports.clone()).collect();
    assert!(p.placements.iter().all(|p| p.ports.len() == 2));
    assert!(picked
        .iter()
        .all(|x| skiff_model::ports::DYNAMIC_PORTS.contains(x) && !held.ports.contains(x)));
    picked.sort();
    picked.dedup();
    assert_eq!(picked.len(), 6, "six distinct ports");
    // A node whose range is full takes none, and says why.
    held.ports = skiff_model::ports::DYNAMIC_PORTS.collect();
    let p = plan_with(&j, &nodes, &[held], &[&other], &Config::default());
    assert_eq!(p.unplaced, 3, "{:?}", p.evictions);
    assert_eq!(p.explanation, "0/1 nodes: 1 no free port in 20000-32000");
}

#[test]
fn each_node_picks_from_its_own_range() {
    let range = skiff_model::ports::PortRange::parse("30000-30002").unwrap();
    let mut narrow = node("a", 8000, 8192);
    narrow.dynamic_ports = range;
    let spec = JobSpec::from_yaml(
        "name: web\nreplicas: 4\ntask:\n  image: 'oci:/i'\n  network: bridge\n  resources: {cpu: 1, memory: 64Mi}\n  ports: [{name: http, container: 8080, host: 0}]\n",
    )
    .unwrap();
    let j = first_version(spec);
    // Three ports: three replicas, each its own port of the range.
    let p = plan(&j, &[narrow.clone()], &[]);
    let mut picked: Vec<u16> = p.placements.iter().flat_map(|p| p.ports.clone()).collect();
    picked.sort();
    assert_eq!(picked, [30000, 30001, 30002]);
    assert_eq!(p.unplaced, 1);
    assert_eq!(p.explanation, "0/1 nodes: 1 no free port in 30000-30002");
    // Beside a node of the default range, the fourth goes there.
    let p = plan(&j, &[narrow, node("b", 8000, 8192)], &[]);
    assert_eq!(p.unplaced, 0, "{}", p.explanation);
    for pl in &p.placements {
        let want = if pl.node == "a" {
            range
        } else {
            skiff_model::ports::PortRange::default()
        };
        assert!(pl.ports.iter().all(|x| want.contains(*x)), "{pl:?}");
    }
}

#[test]
fn distinct_hosts_puts_replicas_on_different_nodes() {
    let nodes: Vec<Node> = (0..3).map(|i| node(&format!("n{i}"), 8000, 8192)).collect();
    let j = job_yaml(
        "web",
        "replicas: 4\ndistinct_hosts: true",
        "{cpu: 1, memory: 64Mi}",
    );
    let p = plan(&j, &nodes, &[]);
    let mut used = nodes_of(&p);
    used.sort();
    assert_eq!(used, ["n0", "n1", "n2"]);
    assert_eq!(p.unplaced, 1);
    assert_eq!(
        p.explanation,
        "0/3 nodes: 3 distinct_hosts (runs a replica already)"
    );
}

#[test]
fn spread_keeps_label_values_within_the_max_skew() {
    let mut nodes = Vec::new();
    for (zone, count) in [("a", 3), ("b", 1), ("c", 1)] {
        for i in 0..count {
            nodes.push(labelled(
                node(&format!("{zone}{i}"), 64_000, 65536),
                &[("zone", zone)],
            ));
        }
    }
    nodes.push(node("nolabel", 64_000, 65536));
    let j = job_yaml(
        "web",
        "replicas: 6\nspread: {label: zone, max_skew: 1}",
        "{cpu: 1, memory: 64Mi}",
    );
    let p = plan(&j, &nodes, &[]);
    assert_eq!(p.unplaced, 0);
    let mut per_zone = BTreeMap::new();
    for n in nodes_of(&p) {
        *per_zone.entry(&n[..1]).or_insert(0) += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([("a", 2), ("b", 2), ("c", 2)]));
}

#[test]
fn spread_blocks_a_replica_that_would_exceed_the_skew() {
    // Zone b has no room: with max_skew 1, zone a takes one replica only.
    let nodes = [
        labelled(node("a0", 64_000, 65536), &[("zone", "a")]),
        labelled(node("b0", 100, 65536), &[("zone", "b")]),
    ];
    let j = job_yaml(
        "web",
        "replicas: 2\nspread: {label: zone}",
        "{cpu: 1, memory: 64Mi}",
    );
    let p = plan(&j, &nodes, &[]);
    assert_eq!(nodes_of(&p), ["a0"]);
    assert_eq!(
        p.explanation,
        "0/2 nodes: 1 insufficient cpu, 1 spread over zone (max_skew 1)"
    );
}

// ---- gangs ------------------------------------------------------------------

#[test]
fn a_gang_is_placed_all_together_or_not_at_all() {
    let nodes = [gpu_node("g0", 4, "A100"), gpu_node("g1", 4, "A100")];
    let fits = job_yaml(
        "train",
        "replicas: 2\ngang: true",
        "{cpu: 1, memory: 1Gi, gpus: 4}",
    );
    assert_eq!(plan(&fits, &nodes, &[]).placements.len(), 2);
    let too_big = job_yaml(
        "train",
        "replicas: 3\ngang: true",
        "{cpu: 1, memory: 1Gi, gpus: 4}",
    );
    let p = plan(&too_big, &nodes, &[]);
    assert!(p.placements.is_empty());
    assert_eq!(p.unplaced, 3);
    assert_eq!(
        p.explanation,
        "gang needs all 3 replicas placed together; only 2 fit: 0/2 nodes: 2 insufficient gpu"
    );
    // Without gang the two that fit are placed.
    let loose = job_yaml("train", "replicas: 3", "{cpu: 1, memory: 1Gi, gpus: 4}");
    assert_eq!(plan(&loose, &nodes, &[]).placements.len(), 2);
}

// ---- preemption -------------------------------------------------------------

fn full_node_with(victims: &[(&Job, &str)]) -> (Vec<Node>, Vec<Allocation>) {
    let nodes = vec![node("n", 4000, 4096)];
    let allocs = victims.iter().map(|(j, id)| alloc(id, j, 0, "n")).collect();
    (nodes, allocs)
}

#[test]
fn a_job_evicts_lower_priority_work_to_fit() {
    let low = job_yaml("batch", "priority: 20", "{cpu: 4, memory: 1Gi}");
    let (nodes, allocs) = full_node_with(&[(&low, "victim")]);
    let high = job_yaml("web", "priority: 30", "{cpu: 2, memory: 1Gi}");
    let p = plan_with(&high, &nodes, &allocs, &[&low], &Config::default());
    assert_eq!(nodes_of(&p), ["n"]);
    assert_eq!(p.evictions.len(), 1);
    assert_eq!(p.evictions[0].alloc_id, "victim");
    assert_eq!(p.evictions[0].reason, "preempted by job web (priority 30)");
}

#[test]
fn preemption_never_touches_work_less_than_ten_points_lower() {
    let low = job_yaml("batch", "priority: 21", "{cpu: 4, memory: 1Gi}");
    let (nodes, allocs) = full_node_with(&[(&low, "victim")]);
    let high = job_yaml("web", "priority: 30", "{cpu: 2, memory: 1Gi}");
    let p = plan_with(&high, &nodes, &allocs, &[&low], &Config::default());
    assert!(p.evictions.is_empty() && p.placements.is_empty());
    assert_eq!(p.explanation, "0/1 nodes: 1 insufficient cpu");
    let off = Config {
        preemption: false,
        ..Config::default()
    };
    let lower = job_yaml("batch", "priority: 0", "{cpu: 4, memory: 1Gi}");
    let (nodes, allocs) = full_node_with(&[(&lower, "victim")]);
    let p = plan_with(&high, &nodes, &allocs, &[&lower], &off);
    assert!(p.evictions.is_empty(), "preemption can be turned off");
}

#[test]
fn preemption_chooses_the_cheapest_victims() {
    // Needs 2 cores on a full 4-core node. Candidates: one priority-10
    // 2-core alloc, two priority-0 1-core allocs. Lowest priority wins,
    // even though it takes two victims.
    let mid = job_yaml("mid", "priority: 10", "{cpu: 2, memory: 64Mi}");
    let low_a = job_yaml("low-a", "priority: 0", "{cpu: 1, memory: 64Mi}");
    let low_b = job_yaml("low-b", "priority: 0", "{cpu: 1, memory: 64Mi}");
    let (nodes, allocs) = full_node_with(&[(&mid, "m"), (&low_a, "la"), (&low_b, "lb")]);
    let high = job_yaml("web", "priority: 50", "{cpu: 2, memory: 64Mi}");
    let p = plan_with(
        &high,
        &nodes,
        &allocs,
        &[&mid, &low_a, &low_b],
        &Config::default(),
    );
    let mut victims: Vec<&str> = p.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
    victims.sort();
    assert_eq!(victims, ["la", "lb"]);
    // Among equal priorities, the fewest victims: one 2-core alloc beats
    // two 1-core ones.
    let big = job_yaml("big", "priority: 0", "{cpu: 2, memory: 64Mi}");
    let (nodes, allocs) = full_node_with(&[(&big, "big"), (&low_a, "la"), (&low_b, "lb")]);
    let p = plan_with(
        &high,
        &nodes,
        &allocs,
        &[&big, &low_a, &low_b],
        &Config::default(),
    );
    let victims: Vec<&str> = p.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
    assert_eq!(victims, ["big"]);
}

#[test]
fn preempting_a_multi_gpu_victim_frees_exactly_its_gpus() {
    let n = gpu_node("g", 4, "A100");
    let low = job_yaml("low", "priority: 0", "{cpu: 1, memory: 1Gi, gpus: 2}");
    let mut v1 = alloc("v1", &low, 0, "g");
    v1.gpus = vec!["g-gpu0".into(), "g-gpu1".into()];
    let mut v2 = alloc("v2", &low, 1, "g");
    v2.gpus = vec!["g-gpu2".into(), "g-gpu3".into()];
    let high = job_yaml("train", "priority: 90", "{cpu: 1, memory: 1Gi, gpus: 2}");
    let p = plan_with(&high, &[n], &[v1, v2], &[&low], &Config::default());
    assert_eq!(p.evictions.len(), 1);
    let freed: &[&str] = if p.evictions[0].alloc_id == "v1" {
        &["g-gpu0", "g-gpu1"]
    } else {
        &["g-gpu2", "g-gpu3"]
    };
    assert_eq!(p.placements[0].gpus, freed);
}

#[test]
fn a_victim_holding_a_needed_port_is_always_evicted() {
    let low = job_yaml(
        "low",
        "priority: 0",
        "{cpu: 100m, memory: 64Mi, ports: [80]}",
    );
    let (nodes, allocs) = full_node_with(&[(&low, "holder")]);
    let high = job_yaml(
        "web",
        "priority: 50",
        "{cpu: 100m, memory: 64Mi, ports: [80]}",
    );
    let p = plan_with(&high, &nodes, &allocs, &[&low], &Config::default());
    assert_eq!(p.evictions[0].alloc_id, "holder");
    // A higher-priority holder of the port makes the node unusable.
    let top = job_yaml(
        "top",
        "priority: 100",
        "{cpu: 100m, memory: 64Mi, ports: [80]}",
    );
    let (nodes, allocs) = full_node_with(&[(&top, "holder")]);
    let p = plan_with(&high, &nodes, &allocs, &[&top], &Config::default());
    assert!(p.evictions.is_empty());
    assert_eq!(p.explanation, "0/1 nodes: 1 port 80 in use");
}

#[test]
fn a_gang_that_cannot_fit_evicts_nothing() {
    let low = job_yaml("low", "priority: 0", "{cpu: 4, memory: 1Gi}");
    let (nodes, allocs) = full_node_with(&[(&low, "victim")]);
    let gang = job_yaml(
        "train",
        "priority: 90\nreplicas: 3\ngang: true",
        "{cpu: 2, memory: 1Gi}",
    );
    let p = plan_with(&gang, &nodes, &allocs, &[&low], &Config::default());
    assert!(p.evictions.is_empty() && p.placements.is_empty());
    assert_eq!(p.unplaced, 3);
}

// ---- determinism and the index ----------------------------------------------

#[test]
fn the_same_input_gives_the_same_plan_whatever_its_order() {
    let nodes: Vec<Node> = (0..200)
        .map(|i| node(&format!("n{i:03}"), 2000 + (i % 3) * 1000, 2048))
        .collect();
    let other = job_yaml("other", "replicas: 50", "{cpu: 700m, memory: 300Mi}");
    let allocs: Vec<Allocation> = (0..50)
        .map(|i| alloc(&format!("o{i}"), &other, i, &format!("n{:03}", i * 3)))
        .collect();
    let j = job(30, "300m", "200Mi");
    let cfg = Config {
        seed: 7,
        ..Config::default()
    };
    let forward = plan_with(&j, &nodes, &allocs, &[&other], &cfg);
    let rev_nodes: Vec<Node> = nodes.iter().rev().cloned().collect();
    let rev_allocs: Vec<Allocation> = allocs.iter().rev().cloned().collect();
    let backward = plan_with(&j, &rev_nodes, &rev_allocs, &[&other], &cfg);
    assert_eq!(forward, backward);
    assert_eq!(forward.placements.len(), 30);
}

#[test]
fn the_seed_breaks_ties_between_equal_nodes() {
    let nodes: Vec<Node> = (0..100)
        .map(|i| node(&format!("n{i:03}"), 4000, 4096))
        .collect();
    let j = job(1, "1", "64Mi");
    let chosen: std::collections::BTreeSet<String> = (0..20)
        .map(|seed| {
            let cfg = Config {
                seed,
                ..Config::default()
            };
            plan_with(&j, &nodes, &[], &[], &cfg).placements[0]
                .node
                .clone()
        })
        .collect();
    assert!(chosen.len() > 1, "every seed chose {chosen:?}");
}

#[test]
fn the_index_finds_the_same_best_fit_as_a_full_scan() {
    // 300 nodes (index mode) with varied usage: the chosen node must be one
    // of the fullest that fit, as a scan over every node finds them.
    let nodes: Vec<Node> = (0..300)
        .map(|i| node(&format!("n{i:03}"), 8000, 8192))
        .collect();
    let other = job_yaml("other", "", "{cpu: 1, memory: 1Gi}");
    let mut allocs = Vec::new();
    for i in 0..300u32 {
        for k in 0..(i * 7 % 9) {
            allocs.push(alloc(&format!("o{i}-{k}"), &other, k, &format!("n{i:03}")));
        }
    }
    let j = job(1, "2", "2Gi");
    let cfg = Config {
        candidates: 1,
        ..Config::default()
    };
    let p = plan_with(&j, &nodes, &allocs, &[&other], &cfg);
    let view = ClusterView::new(&nodes, &allocs, |_| Some(50));
    let ask = j.spec.task.resources.amount();
    let best = nodes
        .iter()
        .filter_map(|n| {
            let (cap, used) = view.node_usage(&n.name).unwrap();
            ask.saturating_add(used.amount)
                .fits_in(cap)
                .then(|| skiff_model::fit::binpack_score(cap, used.amount.saturating_add(ask)))
        })
        .fold(f64::MIN, f64::max);
    let (cap, used) = view.node_usage(&p.placements[0].node).unwrap();
    let got = skiff_model::fit::binpack_score(cap, used.amount.saturating_add(ask));
    assert_eq!(got, best);
}

#[test]
fn committing_a_plan_to_the_view_matches_rebuilding_it() {
    let nodes: Vec<Node> = (0..100)
        .map(|i| node(&format!("n{i:03}"), 4000, 4096))
        .collect();
    let cfg = Config::default();
    let mut allocs: Vec<Allocation> = Vec::new();
    let none: &[Allocation] = &[];
    let mut view = ClusterView::new(&nodes, none, |_| Some(50));
    for k in 0..40 {
        let j = job_yaml(
            &format!("j{k}"),
            "replicas: 3",
            "{cpu: 700m, memory: 500Mi}",
        );
        let incremental = reconcile(j.name(), Some(&j), &view, &cfg);
        let rebuilt = {
            let fresh = ClusterView::new(&nodes, &allocs, |_| Some(50));
            reconcile(j.name(), Some(&j), &fresh, &cfg)
        };
        assert_eq!(incremental, rebuilt, "job {k}");
        let ids: Vec<String> = (0..incremental.placements.len())
            .map(|r| format!("{k:03}-{r}"))
            .collect();
        view.commit(&j, &incremental, &ids, 1);
        for (p, id) in incremental.placements.iter().zip(&ids) {
            let mut a = alloc(id, &j, p.replica, &p.node);
            a.status = AllocStatus::Pending;
            allocs.push(a);
        }
    }
}

// ---- rollouts, batch jobs, gangs ----------------------------------------------

/// `job` (replicas 4 unless changed) at version 2; `old` allocations of
/// version 1, `new` ones of version 2, each `(slot, healthy now, proved)`.
fn rollout_state(
    j: &Job,
    old: &[(u32, bool)],
    new: &[(u32, bool, Option<bool>)],
) -> Vec<Allocation> {
    let mut v1 = j.clone();
    v1.version = 1;
    let mut allocs = Vec::new();
    for &(slot, healthy) in old {
        let mut a = alloc(&format!("old{slot}"), &v1, slot, "a");
        a.healthy = Some(healthy);
        allocs.push(a);
    }
    for &(slot, healthy, proved) in new {
        let mut a = alloc(&format!("new{slot}"), j, slot, "a");
        a.healthy = Some(healthy);
        a.deploy_health = proved;
        allocs.push(a);
    }
    allocs
}

fn deployment(version: u64, status: DeploymentStatus, canary: u32, promoted: bool) -> Deployment {
    Deployment {
        id: "web-1".into(),
        job: "web".into(),
        version,
        from_version: version - 1,
        status,
        reason: String::new(),
        canary,
        promoted,
        rollback: false,
        started_ms: 0,
        progress_ms: 0,
        ended_ms: 0,
        create_index: 1,
        modify_index: 1,
        slot: 0,
    }
}

fn plan_rollout(j: &Job, allocs: &[Allocation], d: Option<&Deployment>) -> Plan {
    let nodes = [node("a", 64_000, 64 << 10)];
    let view = ClusterView::new(&nodes, allocs, |_| Some(50));
    reconcile_job("web", Some(j), d, &view, &Config::default())
}

fn stopped(p: &Plan) -> Vec<&str> {
    p.stops.iter().map(|s| s.alloc_id.as_str()).collect()
}

fn slots(p: &Plan) -> Vec<u32> {
    p.placements.iter().map(|p| p.replica).collect()
}

#[test]
fn a_rolling_update_adds_max_surge_and_stops_down_to_max_unavailable() {
    // 4 replicas: 25% is 1 unavailable (rounded down), 1 surge (up).
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    let d = deployment(2, DeploymentStatus::Running, 0, false);
    let all_old = rollout_state(&j, &[(0, true), (1, true), (2, true), (3, true)], &[]);
    let p = plan_rollout(&j, &all_old, Some(&d));
    assert_eq!(stopped(&p), ["old3"], "one old replica may go: 3 of 4 stay");
    assert_eq!(slots(&p), [0, 1], "3 old + 2 new = replicas + max_surge");
    assert!(p.stops.iter().all(|s| s.reason == "replaced by version 2"));
}

#[test]
fn new_allocations_count_as_available_only_once_proved_healthy() {
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    let d = deployment(2, DeploymentStatus::Running, 0, false);
    // Healthy now, but not yet for min_healthy: nothing more moves.
    let waiting = rollout_state(
        &j,
        &[(0, true), (1, true), (2, true)],
        &[(0, true, None), (1, true, None)],
    );
    assert!(plan_rollout(&j, &waiting, Some(&d)).is_empty());
    // Proved: two old ones stop, two more new ones start.
    let proved = rollout_state(
        &j,
        &[(0, true), (1, true), (2, true)],
        &[(0, true, Some(true)), (1, true, Some(true))],
    );
    let p = plan_rollout(&j, &proved, Some(&d));
    assert_eq!(stopped(&p), ["old2", "old1"]);
    assert_eq!(slots(&p), [2, 3]);
    // Without a rollout to prove them, healthy now is enough.
    let p = plan_rollout(&j, &waiting, None);
    assert_eq!(stopped(&p), ["old2", "old1"]);
}

#[test]
fn old_allocations_that_are_not_healthy_stop_at_once() {
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    let d = deployment(2, DeploymentStatus::Running, 0, false);
    let allocs = rollout_state(&j, &[(0, true), (1, true), (2, true), (3, false)], &[]);
    let p = plan_rollout(&j, &allocs, Some(&d));
    // old3 serves nobody; 3 healthy stay (replicas - max_unavailable), and
    // 3 old + 2 new run.
    assert_eq!(stopped(&p), ["old3"]);
    assert_eq!(slots(&p), [0, 1]);
}

#[test]
fn canaries_start_beside_the_old_version_and_wait_for_promotion() {
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    let old = [(0, true), (1, true), (2, true), (3, true)];
    let waiting = deployment(2, DeploymentStatus::Running, 1, false);
    let p = plan_rollout(&j, &rollout_state(&j, &old, &[]), Some(&waiting));
    assert!(p.stops.is_empty());
    assert_eq!(slots(&p), [0]);
    // The canary is healthy: still nothing until promoted.
    let with_canary = rollout_state(&j, &old, &[(0, true, Some(true))]);
    assert!(plan_rollout(&j, &with_canary, Some(&waiting)).is_empty());
    let promoted = deployment(2, DeploymentStatus::Running, 1, true);
    let p = plan_rollout(&j, &with_canary, Some(&promoted));
    // 5 available (4 old, the canary): two old ones may go, and two more
    // new ones start (2 old + 3 new = replicas + max_surge).
    assert_eq!(stopped(&p), ["old3", "old2"]);
    assert_eq!(slots(&p), [1, 2]);
}

#[test]
fn a_paused_or_failed_rollout_moves_nothing() {
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    let allocs = rollout_state(&j, &[(0, true), (1, true), (2, true), (3, true)], &[]);
    for status in [DeploymentStatus::Paused, DeploymentStatus::Failed] {
        let d = deployment(2, status, 0, false);
        assert!(plan_rollout(&j, &allocs, Some(&d)).is_empty(), "{status:?}");
    }
}

#[test]
fn a_paused_rollout_fills_only_a_slot_left_empty() {
    let mut j = job(4, "100m", "16Mi");
    j.version = 2;
    // Slot 0 runs the new version, 1 and 2 the old one; slot 3's old
    // allocation was lost with its node.
    let allocs = rollout_state(&j, &[(1, true), (2, true)], &[(0, true, Some(true))]);
    let d = deployment(2, DeploymentStatus::Paused, 0, false);
    let p = plan_rollout(&j, &allocs, Some(&d));
    assert!(p.stops.is_empty(), "nothing old stops while paused");
    assert_eq!(slots(&p), [3], "only the empty slot, with the new version");
    // Failed: nothing at all.
    let d = deployment(2, DeploymentStatus::Failed, 0, false);
    assert!(plan_rollout(&j, &allocs, Some(&d)).is_empty());
}

#[test]
fn a_gang_is_replaced_whole_not_rolled() {
    let mut j = job_yaml(
        "web",
        "replicas: 2\ngang: true",
        "{cpu: 100m, memory: 16Mi}",
    );
    j.version = 2;
    let allocs = rollout_state(&j, &[(0, true), (1, true)], &[]);
    let p = plan_rollout(&j, &allocs, None);
    assert_eq!(stopped(&p), ["old0", "old1"]);
    assert!(p.stops.iter().all(|s| s.reason == "job updated"));
    assert_eq!(slots(&p), [0, 1]);
}

fn batch_job(extra: &str) -> Job {
    job_yaml(
        "web",
        &format!("type: batch\n{extra}"),
        "{cpu: 100m, memory: 16Mi}",
    )
}

/// An allocation of `j` in slot `slot` with the given end (or running).
fn run(j: &Job, id: &str, slot: u32, status: AllocStatus, reason: &str) -> Allocation {
    let mut a = alloc(id, j, slot, "a");
    a.status = status;
    a.reason = reason.into();
    a
}

#[test]
fn a_batch_job_runs_at_most_parallelism_slots_until_completions_succeed() {
    let j = batch_job("completions: 5\nparallelism: 2");
    assert_eq!(slots(&plan_rollout(&j, &[], None)), [0, 1]);
    let allocs = [
        run(&j, "s0", 0, AllocStatus::Complete, "completed"),
        run(&j, "r1", 1, AllocStatus::Running, ""),
    ];
    assert_eq!(slots(&plan_rollout(&j, &allocs, None)), [2]);
    // A failed run's slot is placed again.
    let allocs = [
        run(&j, "f0", 0, AllocStatus::Failed, "error"),
        run(&j, "r1", 1, AllocStatus::Running, ""),
    ];
    assert_eq!(slots(&plan_rollout(&j, &allocs, None)), [0]);
    // Four succeeded, one runs: nothing more.
    let mut allocs: Vec<Allocation> = (0..4)
        .map(|s| run(&j, &format!("s{s}"), s, AllocStatus::Complete, "completed"))
        .collect();
    allocs.push(run(&j, "r4", 4, AllocStatus::Running, ""));
    assert!(plan_rollout(&j, &allocs, None).is_empty());
}

#[test]
fn a_batch_job_past_its_backoff_limit_stops_and_places_nothing() {
    let j = batch_job("completions: 3\nparallelism: 2\nbackoff_limit: 1");
    let mut restarted = run(&j, "r0", 0, AllocStatus::Running, "");
    restarted.restart_count = 1;
    let allocs = [
        restarted.clone(),
        run(&j, "f1", 1, AllocStatus::Failed, "error"),
    ];
    let p = plan_rollout(&j, &allocs, None);
    assert!(p.placements.is_empty());
    assert_eq!(stopped(&p), ["r0"]);
    assert_eq!(
        p.stops[0].reason,
        "job failed: 2 failed runs, more than backoff_limit 1"
    );
    // At the limit it goes on.
    let p = plan_rollout(&j, &[restarted], None);
    assert_eq!(slots(&p), [1]);
}

#[test]
fn a_failed_rank_restarts_the_whole_gang() {
    let j = batch_job("gang: true\nreplicas: 3");
    let allocs = [
        run(&j, "g0", 0, AllocStatus::Complete, "completed"),
        run(&j, "g1", 1, AllocStatus::Failed, "error"),
        run(&j, "g2", 2, AllocStatus::Running, ""),
    ];
    let p = plan_rollout(&j, &allocs, None);
    assert!(p.placements.is_empty(), "the old ranks stop first");
    assert_eq!(stopped(&p), ["g0", "g1", "g2"]);
    assert!(p
        .stops
        .iter()
        .all(|s| s.reason == "gang restart: replica 1 failed"));
    // Once they are asked to stop, the next evaluation places a new gang.
    let stopped_gang: Vec<Allocation> = allocs
        .iter()
        .cloned()
        .map(|mut a| {
            a.desired = DesiredStatus::Stop;
            a
        })
        .collect();
    assert_eq!(slots(&plan_rollout(&j, &stopped_gang, None)), [0, 1, 2]);
    // With gang_failure: fail, the job fails instead.
    let j = batch_job("gang: true\nreplicas: 3\ngang_failure: fail");
    let p = plan_rollout(&j, &allocs, None);
    assert!(p.placements.is_empty());
    assert_eq!(stopped(&p), ["g2"]);
}

#[test]
fn a_retry_of_a_failed_batch_run_is_kept_whichever_id_sorts_first() {
    let j = batch_job("completions: 1\nbackoff_limit: 3");
    for (failed, retry) in [("a-failed", "z-retry"), ("z-failed", "a-retry")] {
        let allocs = [
            run(&j, failed, 0, AllocStatus::Failed, "error"),
            run(&j, retry, 0, AllocStatus::Running, ""),
        ];
        let p = plan_rollout(&j, &allocs, None);
        assert!(p.stops.is_empty(), "{failed}/{retry}: {:?}", p.stops);
        assert!(p.placements.is_empty(), "{failed}/{retry}");
    }
    // Two live runs of one slot: the second is stopped.
    let allocs = [
        run(&j, "a", 0, AllocStatus::Running, ""),
        run(&j, "b", 0, AllocStatus::Running, ""),
    ];
    assert_eq!(stopped(&plan_rollout(&j, &allocs, None)), ["b"]);
}

#[test]
fn a_gang_rank_lost_with_its_node_restarts_the_whole_gang() {
    let j = batch_job("gang: true\nreplicas: 3");
    // The node of rank 1 went down: its allocation is lost and desired
    // stopped, so it is no longer one of the gang's.
    let mut lost = run(&j, "g1", 1, AllocStatus::Lost, "");
    lost.desired = DesiredStatus::Stop;
    let allocs = [
        run(&j, "g0", 0, AllocStatus::Running, ""),
        lost,
        run(&j, "g2", 2, AllocStatus::Running, ""),
    ];
    let p = plan_rollout(&j, &allocs, None);
    assert!(p.placements.is_empty(), "no rank is placed alone");
    assert_eq!(stopped(&p), ["g0", "g2"]);
    assert!(p
        .stops
        .iter()
        .all(|s| s.reason == "gang restart: replica 1 is gone"));
}
