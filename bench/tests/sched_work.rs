//! The scheduler's work per placement, counted (not timed): placing the
//! `mixed` workload (what `schedbench --shape mixed` runs) must look at a
//! handful of nodes per replica, and about as many on a cluster eight times
//! larger. A walk that passed every full node for each replica (what made
//! schedbench's mixed shape ten times slower at 10,000 nodes) looks at
//! thousands, and fails here.

use skiff_bench::sched::{nodes, workload, Shape};
use skiff_model::Allocation;
use skiff_scheduler::{reconcile, ClusterView, Config};

const TASKS_PER_NODE: usize = 10;

/// Nodes looked at per replica placed, for `n` nodes and ten replicas per
/// node of the mixed workload.
fn visited_per_placement(n: usize) -> f64 {
    let cluster = nodes(Shape::Mixed, n);
    let jobs = workload(Shape::Mixed, n * TASKS_PER_NODE, 1);
    let no_allocs: &[Allocation] = &[];
    let mut view = ClusterView::new(&cluster, no_allocs, |_| Some(50));
    let cfg = Config::default();
    skiff_scheduler::work::reset();
    let mut placed = 0usize;
    for (i, job) in jobs.iter().enumerate() {
        let plan = reconcile(&job.spec.name, Some(job), &view, &cfg);
        let ids: Vec<String> = (0..plan.placements.len())
            .map(|r| format!("{i:06}-{r}"))
            .collect();
        view.commit(job, &plan, &ids, 2);
        placed += plan.placements.len();
    }
    assert!(
        placed * 10 > n * TASKS_PER_NODE * 9,
        "placed {placed} of {}",
        n * TASKS_PER_NODE
    );
    skiff_scheduler::work::nodes_visited() as f64 / placed as f64
}

#[test]
fn a_placement_looks_at_a_handful_of_nodes_whatever_the_cluster_size() {
    // Stop 31: 11.6 at 250 nodes, 49 at 2,000 (94 at 4,000). Before its
    // fix the walk passed every node short of the ask: 59, 431 (814).
    let small = visited_per_placement(250);
    let large = visited_per_placement(2000);
    assert!(
        small < 25.0,
        "{small:.1} nodes looked at per placement at 250 nodes"
    );
    assert!(
        large < 100.0,
        "{large:.1} nodes looked at per placement at 2,000 nodes"
    );
}

/// `cargo test -p skiff-bench --test sched_work -- --ignored --nocapture`
/// prints the count for more sizes.
#[test]
#[ignore]
fn print_work() {
    for n in [250, 1000, 2000, 4000] {
        println!(
            "n={n} visited_per_placement={:.1}",
            visited_per_placement(n)
        );
    }
}
