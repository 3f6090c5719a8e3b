//! Simulated nodes against a real server: 40 nodes join with a node token,
//! register and heartbeat through the real node API; a 400-replica job is
//! placed over them, every allocation is reported running exactly once,
//! and no node is declared down. (Issue 21's harness, small.)

use std::time::Duration;

use skiff_bench::simnodes::{self, SimOptions};
use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::cluster::ServerCluster;
use skiff_tests::*;

/// A job for the simulated nodes: `replicas` of their image, each asking
/// `resources` (YAML flow mapping).
fn sim_job(sim: &simnodes::SimNodes, name: &str, replicas: u32, resources: &str) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "name: {name}\nreplicas: {replicas}\ntask:\n  image: '{}'\n  network: none\n  resources: {{{resources}}}\n",
        sim.image
    ))
    .unwrap()
}

/// Waits until the server at `url` lists `n` nodes, all ready.
async fn nodes_ready(url: &str, n: usize, limit: Duration) {
    wait_for(&format!("{n} nodes ready"), limit, || {
        let url = url.to_string();
        async move {
            let mut c = connect(&url).await.ok()?;
            let nodes = c.list_nodes().await.ok()?;
            (nodes.len() == n
                && nodes
                    .iter()
                    .all(|x| x.node.status == skiff_model::NodeStatus::Ready))
            .then_some(())
        }
    })
    .await;
}

/// One server with a /24 for each of up to 256 simulated nodes (the
/// harness's default range has 8; nothing is made on the host for them),
/// and a node join token for it.
fn one_server(root: &std::path::Path) -> (ServerProc, String, String) {
    let server = ServerProc::start_with(
        &root.join("server"),
        "127.0.0.1:0",
        &["--node-subnets", "10.128.0.0/16"],
    );
    let url = server.url();
    let token = join_token(&url, "node");
    (server, url, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_run_every_allocation_once_and_stay_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, url, token) = one_server(tmp.path());
    let names: Vec<String> = (0..40).map(|i| format!("sim-{i:03}")).collect();
    let sim = simnodes::start(
        &tmp.path().join("sim"),
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
    nodes_ready(&url, 40, Duration::from_secs(60)).await;
    let job = sim_job(&sim, "wide", 400, "cpu: 250m, memory: 256Mi");
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
    // The nodes count a start once its report's call returns, a moment
    // after the servers have it.
    wait_for(
        "the nodes' count of starts",
        Duration::from_secs(30),
        || {
            let n = sim.stats.started("wide");
            async move { (n >= 400).then_some(()) }
        },
    )
    .await;
    let starts = sim.stats.starts();
    assert_eq!(starts.len(), 400, "every allocation started");
    assert!(
        starts.values().all(|n| *n == 1),
        "started more than once: {:?}",
        starts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(sim.stats.registered(), 40);
    // Heartbeats keep every node up past its first TTL.
    wait_for("two rounds of heartbeats", Duration::from_secs(60), || {
        let beats = sim.stats.heartbeats();
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

/// Allocations of jobs `scale-*` the simulated nodes reported running.
fn started(sim: &simnodes::SimNodes) -> u64 {
    sim.stats.started("scale-")
}

/// Nodes the given servers declared down, from their counters.
fn declared_down(dirs: &[std::path::PathBuf]) -> f64 {
    dirs.iter()
        .map(|d| {
            let (_, body) = skiff_tests::prom::scrape(&skiff_tests::prom::metrics_addr(d));
            skiff_tests::prom::sample(&body, "skiff_nodes_declared_down_total").unwrap_or(0.0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_and_200_simulated_nodes_survive_a_leader_kill_at_full_size() {
    let tmp = tempfile::tempdir().unwrap();
    // Two planners at once (`--planners 2`), so the plans of both go
    // through the state machine's check here, across the leader kill too.
    let cluster = ServerCluster::start(
        tmp.path(),
        3,
        &["--node-subnets", "10.128.0.0/16", "--planners", "2"],
    )
    .await;
    let dirs: Vec<std::path::PathBuf> = (1..=3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let token = join_token(&cluster.url(leader), "node");
    let names: Vec<String> = (0..200).map(|i| format!("sim-{i:03}")).collect();
    let sim = simnodes::start(
        &tmp.path().join("sim"),
        &cluster.urls(),
        &token,
        &names,
        SimOptions {
            start_delay: Duration::from_millis(20),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let url = cluster.url(leader);
    nodes_ready(&url, 200, Duration::from_secs(120)).await;
    // 5,000 allocations in 50 jobs, applied at once.
    let mut client = connect(&url).await.unwrap();
    let job = |name: &str, replicas: u32| sim_job(&sim, name, replicas, "cpu: 100m, memory: 64Mi");
    for j in 0..50 {
        client
            .apply_job(&job(&format!("scale-{j:02}"), 100))
            .await
            .unwrap();
    }
    wait_for(
        "5,000 allocations running",
        Duration::from_secs(300),
        || {
            let n = started(&sim);
            async move { (n >= 5000).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        declared_down(&dirs),
        0.0,
        "a node was declared down while filling"
    );

    // The leader dies at full size: another takes over, work goes on, and
    // no node is declared down (the new leader gives every node a grace
    // window; the nodes move their calls to the servers left).
    cluster.kill9(leader).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let next = cluster.leader(Duration::from_secs(60)).await;
    assert_ne!(next, leader);
    let url = cluster.url(next);
    let mut client = connect(&url).await.unwrap();
    client.apply_job(&job("scale-after", 50)).await.unwrap();
    wait_for(
        "the job applied after the kill running",
        Duration::from_secs(120),
        || {
            let n = started(&sim);
            async move { (n >= 5050).then_some(()) }
        },
    )
    .await;
    // Past the new leader's grace window and a TTL more.
    let beats = sim.stats.heartbeats();
    wait_for(
        "heartbeats past the grace window",
        Duration::from_secs(120),
        || {
            let now = sim.stats.heartbeats();
            async move { (now >= beats + 3 * 200).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let survivor_dirs: Vec<std::path::PathBuf> =
        survivors.iter().map(|i| dirs[*i].clone()).collect();
    assert_eq!(
        declared_down(&survivor_dirs),
        0.0,
        "a node was declared down after the kill"
    );
    let nodes = client.list_nodes().await.unwrap();
    assert!(nodes
        .iter()
        .all(|n| n.node.status == skiff_model::NodeStatus::Ready));

    // Every allocation ran exactly once, and the servers say so too.
    let starts = sim.stats.starts();
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    assert_eq!(started(&sim), 5050);
    let running = client
        .list_allocs(None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.status == AllocStatus::Running)
        .count();
    assert_eq!(running, 5050);

    // The killed server comes back and all three hold the same state.
    cluster.restart(leader).await;
    cluster
        .converged(&[0, 1, 2], Duration::from_secs(120))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_gpu_nodes_get_each_gpu_once_and_failures_reach_the_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, url, token) = one_server(tmp.path());
    let names: Vec<String> = (0..10).map(|i| format!("gpu-{i:02}")).collect();
    let sim = simnodes::start(
        &tmp.path().join("sim"),
        std::slice::from_ref(&url),
        &token,
        &names,
        SimOptions {
            start_delay: Duration::from_millis(20),
            gpus: 8,
            fail_jobs: Some("crash".into()),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let mut client = server.client().await;
    nodes_ready(&url, 10, Duration::from_secs(60)).await;
    // Every one of the 80 GPUs, four to a replica.
    let train = sim_job(&sim, "train", 20, "cpu: 1, memory: 1Gi, gpus: 4");
    client.apply_job(&train).await.unwrap();
    let running = wait_allocs(
        &mut client,
        "train",
        20,
        AllocStatus::Running,
        Duration::from_secs(120),
    )
    .await;
    let gpus: std::collections::BTreeSet<&str> = running
        .iter()
        .flat_map(|a| a.gpus.iter().map(String::as_str))
        .collect();
    assert_eq!(gpus.len(), 80, "each GPU given once");
    assert_eq!(
        sim.stats.gpu_conflicts(),
        0,
        "no node was told to run on a GPU it lacks or that is taken"
    );
    // A job whose containers fail: the failures reach the servers.
    let crash = sim_job(&sim, "crash", 2, "cpu: 100m, memory: 64Mi");
    client.apply_job(&crash).await.unwrap();
    wait_for("the failures reported", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let mut c = connect(&url).await.ok()?;
            let a = c.list_allocs(Some("crash"), None).await.ok()?;
            let failed = a
                .iter()
                .filter(|a| a.status == AllocStatus::Failed && a.message.contains("simulated"))
                .count();
            (failed >= 2).then_some(())
        }
    })
    .await;
    // The nodes count a report once its call returns, a moment after the
    // servers have it.
    wait_for(
        "the nodes' count of failures",
        Duration::from_secs(30),
        || {
            let n = sim.stats.failed();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    assert_eq!(sim.stats.started("crash"), 0, "none of them ran");
}
