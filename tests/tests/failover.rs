//! Agents and the CLI given several servers keep working when the one they
//! talk to dies.

use std::time::Duration;

use skiff_model::AllocStatus;
use skiff_tests::cluster::ServerCluster;
use skiff_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_fails_over_and_its_watch_resumes_without_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(&tmp.path().join("servers"), 3, &[]).await;
    let leader = cluster.leader(LIMIT).await;
    // The agent talks to the leader first: losing it loses both the watch
    // and the leader.
    let urls = cluster.urls_with(leader, skiff_agent::servers::first_server("ha-node", 3));
    let agent = AgentProc::start(
        &tmp.path().join("agent"),
        &urls,
        "ha-node",
        &["--stop-grace", "1s"],
    );
    let other = (leader + 1) % 3;
    let mut client = skiff_tests::connect(&cluster.url(other)).await.unwrap();
    client
        .apply_job(&shell_job("ha", 1, "sleep 3600"))
        .await
        .unwrap();
    let first = wait_allocs(&mut client, "ha", 1, AllocStatus::Running, LIMIT).await;
    let before = agent.containers();
    assert_eq!(before.len(), 1);

    cluster.kill9(leader).await;
    // Scale up through a surviving server: the agent must hear of it.
    let mut client = skiff_tests::connect(&cluster.url(other)).await.unwrap();
    let spec = shell_job("ha", 2, "sleep 3600");
    wait_for("the scale-up to be accepted", LIMIT, || {
        let url = cluster.url(other);
        let spec = spec.clone();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            c.apply_job(&spec).await.ok()
        }
    })
    .await;
    let after = wait_allocs(&mut client, "ha", 2, AllocStatus::Running, LIMIT).await;
    assert!(
        after.iter().any(|a| a.id == first[0].id),
        "the first allocation kept running"
    );
    let containers = agent.containers();
    assert_eq!(containers.len(), 2, "{containers:?}");
    // The first container was not restarted by the failover.
    let pid =
        |cs: &[(String, i64, String)], id: &str| cs.iter().find(|c| c.0.ends_with(id)).map(|c| c.1);
    assert_eq!(pid(&before, &first[0].id), pid(&containers, &first[0].id));
    let log = agent.log();
    assert!(
        log.contains("failing over"),
        "the agent switched servers:\n{log}"
    );

    // The CLI fails over too: a dead first address is skipped.
    let dead = cluster.url(leader);
    let out = skiff_tests::skiff_command()
        .args(["get", "allocs", "--job", "ha", "-o", "json", "--server"])
        .arg(format!("{dead},{}", cluster.url(other)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}
