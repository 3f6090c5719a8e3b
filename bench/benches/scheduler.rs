//! Criterion benches for the scheduler's hot paths: building the view,
//! placing one replica (plain, multi-GPU, with constraints), preemption,
//! explaining a failure, the shared fit rule, and team queues' admission
//! round.
//!
//! `cargo bench -p skiff-bench --bench scheduler`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use skiff_bench::{job, nodes, workload, Shape};
use skiff_model::fit::fits_free;
use skiff_model::{
    AllocStatus, Allocation, Constraint, ConstraintOp, Node, Resources, TaskResources,
};
use skiff_scheduler::{reconcile, ClusterView, Config};

/// A cluster of the shape with `tasks` of its workload already placed, as
/// allocations (placed by the scheduler itself).
fn filled(shape: Shape, node_count: usize, tasks: usize) -> (Vec<Node>, Vec<Allocation>) {
    let mut cluster = nodes(shape, node_count);
    for (i, n) in cluster.iter_mut().enumerate() {
        n.labels
            .insert("zone".into(), ["a", "b", "c"][i % 3].into());
    }
    let jobs = workload(shape, tasks, 7);
    let cfg = Config::default();
    let mut allocs = Vec::new();
    {
        let no_allocs: &[Allocation] = &[];
        let mut view = ClusterView::new(&cluster, no_allocs, |_| Some(50));
        for (i, j) in jobs.iter().enumerate() {
            let plan = reconcile(&j.spec.name, Some(j), &view, &cfg);
            let ids: Vec<String> = (0..plan.placements.len())
                .map(|r| format!("{i:06}-{r}"))
                .collect();
            view.commit(j, &plan, &ids, 2);
            for (p, id) in plan.placements.iter().zip(&ids) {
                allocs.push(Allocation {
                    gpus: p.gpus.clone(),
                    ports: vec![],
                    status: AllocStatus::Running,
                    create_index: 2,
                    modify_index: 2,
                    ..Allocation::new(
                        id.clone(),
                        j.spec.name.clone(),
                        1,
                        p.replica,
                        p.node.clone(),
                        j.spec.task.clone(),
                    )
                });
            }
        }
    }
    (cluster, allocs)
}

fn view_build(c: &mut Criterion) {
    let (cluster, allocs) = filled(Shape::Basic, 5_000, 10_000);
    c.bench_function("view_build/5000_nodes_10000_allocs", |b| {
        b.iter(|| ClusterView::new(black_box(&cluster), black_box(&allocs), |_| Some(50)))
    });
}

fn place(c: &mut Criterion) {
    let cfg = Config::default();
    let mut group = c.benchmark_group("place_one_replica");
    let (basic, basic_allocs) = filled(Shape::Basic, 5_000, 5_000);
    let view = ClusterView::new(&basic, &basic_allocs, |_| Some(50));
    let web = job("new".into(), 1, TaskResources::new(100, 500 << 20));
    group.bench_function(BenchmarkId::new("basic", "5000_nodes"), |b| {
        b.iter(|| reconcile("new", Some(black_box(&web)), &view, &cfg))
    });
    let mut zoned = web.clone();
    zoned.spec.constraints = vec![Constraint::new("zone", ConstraintOp::In, &["a", "b"])];
    group.bench_function(BenchmarkId::new("constraint_zone_in", "5000_nodes"), |b| {
        b.iter(|| reconcile("new", Some(black_box(&zoned)), &view, &cfg))
    });

    let (mixed, mixed_allocs) = filled(Shape::Mixed, 2_000, 10_000);
    let view = ClusterView::new(&mixed, &mixed_allocs, |_| Some(50));
    for gpus in [1u32, 4] {
        let ask = TaskResources {
            gpus,
            ..TaskResources::new(8_000, 64 << 30)
        };
        let train = job("new".into(), 1, ask);
        group.bench_function(
            BenchmarkId::new(format!("gpus_{gpus}"), "2000_gpu_nodes"),
            |b| b.iter(|| reconcile("new", Some(black_box(&train)), &view, &cfg)),
        );
    }
    group.finish();
}

fn preempt_and_explain(c: &mut Criterion) {
    // 1000 full nodes of priority-20 work: a priority-90 replica must evict;
    // an impossible one must be explained.
    let cluster = nodes(Shape::Basic, 1_000);
    let low = job("low".into(), 1, TaskResources::new(1_000, 8 << 30));
    let allocs: Vec<Allocation> = cluster
        .iter()
        .flat_map(|n| {
            let low = &low;
            (0..4).map(move |k| Allocation {
                status: AllocStatus::Running,
                create_index: 2,
                modify_index: 2,
                ..Allocation::new(
                    format!("{}-{k}", n.name),
                    "low",
                    1,
                    k,
                    n.name.clone(),
                    low.spec.task.clone(),
                )
            })
        })
        .collect();
    let view = ClusterView::new(&cluster, &allocs, |j| {
        Some(if j == "low" { 20 } else { 90 })
    });
    let cfg = Config::default();
    let mut high = job("high".into(), 1, TaskResources::new(2_000, 1 << 30));
    high.spec.priority = 90;
    c.bench_function("preempt/1000_full_nodes", |b| {
        b.iter(|| reconcile("high", Some(black_box(&high)), &view, &cfg))
    });
    let huge = job("huge".into(), 1, TaskResources::new(64_000, 1 << 30));
    c.bench_function("explain/1000_nodes", |b| {
        b.iter(|| reconcile("huge", Some(black_box(&huge)), &view, &cfg))
    });
}

fn fit_rule(c: &mut Criterion) {
    let cap = Resources::new(64_000, 512 << 30).with_gpus(8);
    let used = Resources::new(30_000, 200 << 30).with_gpus(3);
    let ask = TaskResources {
        gpus: 2,
        ports: vec![8080],
        ..TaskResources::new(4_000, 32 << 30)
    };
    let ports = [80u16, 443, 9090];
    c.bench_function("fits_free", |b| {
        b.iter(|| {
            fits_free(
                black_box(cap),
                black_box(used),
                black_box(0b1111_0000),
                &ports,
                black_box(Default::default()),
                &ask,
            )
        })
    });
}

/// One admission round of team queues (`QueueBook::round` through
/// `QueueSim`) in two shapes a big lab meets, neither admitting anything
/// (so every iteration is the same round): 3,000 jobs waiting in 200
/// queues of one cohort with nothing to lend, and 200 jobs no node can
/// hold (more cores than any has) owed their quota while 512 borrowed
/// 1-GPU jobs run on 128 nodes.
fn queue_round(c: &mut Criterion) {
    use skiff_model::JobSpec;
    use skiff_scheduler::queues::sim::{gpu_node, gpu_queue, QueueSim};
    let spec = |name: &str, queue: &str, cpu: u32| {
        JobSpec::from_yaml(&format!(
            "name: {name}\ntype: batch\nqueue: {queue}\ntask: {{image: 'oci:/i', resources: {{cpu: {cpu}, memory: 1Gi, gpus: 1}}}}\n"
        ))
        .expect("a valid job")
    };
    let mut g = c.benchmark_group("queue_round");
    let nodes = (0..4).map(|i| gpu_node(&format!("n{i}"), 8)).collect();
    let queues = (0..200)
        .map(|i| gpu_queue(&format!("q{i:03}"), Some("lab"), 0))
        .collect();
    let mut sim = QueueSim::new(nodes, queues);
    for i in 0..3000 {
        sim.submit(spec(&format!("j{i:04}"), &format!("q{:03}", i % 200), 1));
    }
    g.bench_function("3000_waiting_200_queues", |b| b.iter(|| sim.round()));
    let nodes = (0..128).map(|i| gpu_node(&format!("n{i:03}"), 8)).collect();
    let queues = vec![
        gpu_queue("team-a", Some("lab"), 512),
        gpu_queue("team-b", Some("lab"), 512),
    ];
    let mut sim = QueueSim::new(nodes, queues);
    for i in 0..1024 {
        sim.submit(spec(&format!("b{i:04}"), "team-b", 1));
    }
    sim.round();
    for i in 0..200 {
        sim.submit(spec(&format!("a{i:03}"), "team-a", 100));
    }
    g.bench_function("200_unplaceable_512_borrowed", |b| b.iter(|| sim.round()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = view_build, place, preempt_and_explain, fit_rule
}
criterion_group! {
    name = queue_benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = queue_round
}
criterion_main!(benches, queue_benches);
