//! Simulated nodes against a real server: 40 nodes join with a node token,
//! register and heartbeat through the real node API; a 400-replica job is
//! placed over them, every allocation is reported running exactly once,
//! and no node is declared down. (Issue 21's harness, small.)

use std::time::Duration;

use skiff_bench::simnodes::{self, SimOptions};
use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_run_every_allocation_once_and_stay_up() {
    let tmp = tempfile::tempdir().unwrap();
    // A /24 for each of the 40 nodes (the harness's default range has 8);
    // nothing is made on the host for them.
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &["--node-subnets", "10.128.0.0/16"],
    );
    let url = server.url();
    let token = join_token(&url, "node");
    let names: Vec<String> = (0..40).map(|i| format!("sim-{i:03}")).collect();
    let sim = simnodes::start(
        std::slice::from_ref(&url),
        &token,
        &names,
        SimOptions {
            start_delay: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let mut client = server.client().await;
    wait_for("40 nodes ready", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let mut c = connect(&url).await.ok()?;
            let nodes = c.list_nodes().await.ok()?;
            (nodes.len() == 40
                && nodes
                    .iter()
                    .all(|n| n.node.status == skiff_model::NodeStatus::Ready))
            .then_some(())
        }
    })
    .await;
    let job = JobSpec::from_yaml(&format!(
        "name: wide\nreplicas: 400\ntask:\n  image: 'oci:{}/app'\n  resources: {{cpu: 250m, memory: 256Mi}}\n",
        simnodes::IMAGE_ROOT
    ))
    .unwrap();
    client.apply_job(&job).await.unwrap();
    let running = wait_allocs(
        &mut client,
        "wide",
        400,
        AllocStatus::Running,
        Duration::from_secs(120),
    )
    .await;
    // Spread over the nodes (32 cores each: at most 128 of these per node).
    let nodes: std::collections::BTreeSet<&str> = running.iter().map(|a| a.node.as_str()).collect();
    assert!(nodes.len() >= 4, "{nodes:?}");
    let starts = sim.stats.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 400, "every allocation started");
    assert!(
        starts.values().all(|n| *n == 1),
        "started more than once: {:?}",
        starts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(
        sim.stats
            .registered
            .load(std::sync::atomic::Ordering::Relaxed),
        40
    );
    // Heartbeats keep every node up past its first TTL.
    wait_for("two rounds of heartbeats", Duration::from_secs(60), || {
        let beats = sim
            .stats
            .heartbeats
            .load(std::sync::atomic::Ordering::Relaxed);
        async move { (beats >= 80).then_some(()) }
    })
    .await;
    let nodes = client.list_nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .all(|n| n.node.status == skiff_model::NodeStatus::Ready),
        "a node was declared down"
    );
    // Deleted: every allocation is reported complete and none runs.
    client.delete_job("wide").await.unwrap();
    wait_for("the allocations stopped", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let mut c = connect(&url).await.ok()?;
            let a = c.list_allocs(Some("wide"), None).await.ok()?;
            a.iter().all(|a| a.status.is_terminal()).then_some(())
        }
    })
    .await;
}
