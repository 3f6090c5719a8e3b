//! Scheduling as a user sees it, with a real server, a real agent and runc:
//! `skiff describe job` says why a replica waits (GPUs, constraints, host
//! ports, cordoned nodes), `skiff get nodes` shows cordons and GPUs.

use std::time::Duration;

use skiff_model::{AllocStatus, Constraint, ConstraintOp};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// Runs the `skiff` binary against `url`; returns stdout, failing the test
/// when the command fails.
fn skiff(url: &str, args: &[&str]) -> String {
    let out = skiff_tests::skiff_command()
        .args(args)
        .args(["--server", url])
        .output()
        .expect("run skiff");
    assert!(
        out.status.success(),
        "skiff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the job's latest evaluation is blocked; returns its message.
async fn blocked_reason(url: &str, job: &str) -> String {
    wait_for(&format!("{job} to be blocked"), START, || {
        let (url, job) = (url.to_string(), job.to_string());
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let d = c.get_job(&job).await.ok()?;
            d.latest_eval
                .filter(|e| e.status == "blocked")
                .map(|e| e.message)
        }
    })
    .await
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SLEEPER: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_job_says_why_gpu_constraint_and_port_requests_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &url,
        "zone-a-node",
        &["--label", "zone=a"],
    );
    let mut client = server.client().await;

    // This machine has no GPUs (and no NVIDIA driver): the agent reports none.
    let mut gpu = shell_job("needs-gpu", 1, SLEEPER);
    gpu.task.resources.gpus = 1;
    client.apply_job(&gpu).await.unwrap();
    let mut elsewhere = shell_job("elsewhere", 1, SLEEPER);
    elsewhere.constraints = vec![Constraint::new("zone", ConstraintOp::In, &["b", "c"])];
    client.apply_job(&elsewhere).await.unwrap();
    let port = free_port();
    let mut ported = shell_job("ported", 2, SLEEPER);
    ported.task.resources.ports = vec![port];
    client.apply_job(&ported).await.unwrap();

    assert_eq!(
        blocked_reason(&url, "needs-gpu").await,
        "1 replica(s) not placed: 0/1 nodes: 1 insufficient gpu"
    );
    assert_eq!(
        blocked_reason(&url, "elsewhere").await,
        "1 replica(s) not placed: 0/1 nodes: 1 constraint zone in (b, c)"
    );
    // One replica of `ported` runs and holds the port; the other waits.
    let running = wait_allocs(&mut client, "ported", 1, AllocStatus::Running, START).await;
    assert_eq!(running[0].ports, [port]);
    assert_eq!(
        blocked_reason(&url, "ported").await,
        format!("1 replica(s) not placed: 0/1 nodes: 1 port {port} in use")
    );

    // `skiff describe job` shows the same reasons, and the request.
    let d = skiff(&url, &["describe", "job", "needs-gpu"]);
    assert!(
        d.contains("Resources:  cpu 100m, memory 32Mi, 1 gpu\n"),
        "{d}"
    );
    assert!(
        d.contains("Placement:  1 replica(s) not placed: 0/1 nodes: 1 insufficient gpu\n"),
        "{d}"
    );
    let d = skiff(&url, &["describe", "job", "elsewhere"]);
    assert!(d.contains("Constraints: zone in (b, c)\n"), "{d}");
    assert!(d.contains("1 constraint zone in (b, c)"), "{d}");
    let d = skiff(&url, &["describe", "job", "ported"]);
    assert!(d.contains(&format!("port {port} in use")), "{d}");
    let wide = skiff(&url, &["get", "allocs", "--job", "ported", "-o", "wide"]);
    assert!(
        wide.contains("PORTS") && wide.contains(&port.to_string()),
        "{wide}"
    );
    let nodes = skiff(&url, &["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.contains("GPUS") && nodes.contains("zone=a"),
        "{nodes}"
    );

    for job in ["needs-gpu", "elsewhere", "ported"] {
        client.delete_job(job).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_node_takes_no_new_work_until_uncordoned() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let _agent = AgentProc::start(&tmp.path().join("agent"), &url, "cordon-node", &[]);
    let mut client = server.client().await;
    wait_for("the node to register", START, || {
        let url = url.clone();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let n = c.list_nodes().await.ok()?;
            (!n.is_empty()).then_some(())
        }
    })
    .await;

    assert_eq!(
        skiff(&url, &["cordon", "cordon-node"]),
        "node/cordon-node cordoned\n"
    );
    assert!(skiff(&url, &["get", "nodes"]).contains("ready,cordoned"));
    client
        .apply_job(&shell_job("waits", 1, SLEEPER))
        .await
        .unwrap();
    assert_eq!(
        blocked_reason(&url, "waits").await,
        "1 replica(s) not placed: 0/1 nodes: 1 node cordoned"
    );
    assert_eq!(
        skiff(&url, &["uncordon", "cordon-node"]),
        "node/cordon-node uncordoned\n"
    );
    wait_allocs(&mut client, "waits", 1, AllocStatus::Running, START).await;

    // Draining moves what runs there; with nowhere else to go it waits.
    let out = skiff(&url, &["node", "drain", "cordon-node", "--deadline", "10m"]);
    assert_eq!(
        out,
        "node/cordon-node draining (whatever is left stops in 10m)\n"
    );
    assert_eq!(
        blocked_reason(&url, "waits").await,
        "1 replica(s) not placed: 0/1 nodes: 1 node draining"
    );
    // The agent stops the container: the allocation completes.
    wait_for("the drained allocation to stop", START, || {
        let url = url.clone();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let a = c.list_allocs(Some("waits"), None).await.ok()?;
            (a.len() == 1 && a[0].status == AllocStatus::Complete).then_some(())
        }
    })
    .await;
    // Empty now: the drain finishes and says so.
    wait_for("the node to be marked drained", START, || {
        let url = url.clone();
        async move {
            skiff(&url, &["get", "nodes"])
                .contains("ready,drained")
                .then_some(())
        }
    })
    .await;
    client.delete_job("waits").await.unwrap();
}
