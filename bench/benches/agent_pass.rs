//! Criterion bench for the agent's reconciler: one pass of a busy node
//! with nothing new (every container running, the servers holding them as
//! running), at the sizes scalebench's bin-packing makes (up to 320
//! replicas a node).
//!
//! `cargo bench -p skiff-bench --bench agent_pass`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use skiff_agent::reconcile::SteadyNode;

fn steady_pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("agent_steady_pass");
    for n in [32, 320] {
        let mut node = SteadyNode::new(n);
        assert_eq!(node.pass(), 0, "a steady node has nothing to do");
        group.bench_function(BenchmarkId::from_parameter(n), |b| b.iter(|| node.pass()));
    }
    group.finish();
}

criterion_group!(benches, steady_pass);
criterion_main!(benches);
