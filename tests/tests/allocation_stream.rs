//! How a node's allocations reach its agent, and how finished ones are
//! collected: a node whose allocations together exceed one message keeps
//! working, and finished allocations (and their logs) go after the
//! configured number and age. Real server, real agent, real runc.

use std::time::Duration;

use skiff_model::{AllocStatus, DesiredStatus};
use skiff_tests::*;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_allocations_exceed_one_message_runs_them_and_stops_a_deleted_job() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "busy",
        &["--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    // Each replica carries ~224 KiB of environment (every value within the
    // per-string limit, the job within the whole-job limit); 80 of them on
    // one node make ~18 MB, past the agent's 16 MiB message limit.
    let env: Vec<String> = (0..7)
        .map(|i| format!("V{i}: {}", "x".repeat(32 * 1024)))
        .collect();
    let mut spec = job_yaml(
        "big",
        80,
        "trap 'exit 0' TERM; sleep 3600 & wait",
        &format!("  env: {{{}}}\n", env.join(", ")),
    );
    spec.task.resources.cpu_millis = 10;
    spec.task.resources.memory_bytes = 8 << 20;
    client.apply_job(&spec).await.unwrap();
    let running = wait_allocs(&mut client, "big", 80, AllocStatus::Running, LIMIT).await;
    assert!(running.iter().all(|a| a.node == "busy"));
    // A check inside one: its environment arrived whole.
    let out = client
        .exec(
            &running[0].id,
            &["sh".into(), "-c".into(), "printf %s \"$V6\" | wc -c".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "32768");
    // The node still takes new work...
    client
        .apply_job(&shell_job("small", 1, "sleep 3600"))
        .await
        .unwrap();
    wait_allocs(&mut client, "small", 1, AllocStatus::Running, LIMIT).await;
    // ...and deleting the big job stops its containers.
    client.delete_job("big").await.unwrap();
    wait_for("the big job's containers to stop", LIMIT, || {
        let running = agent
            .containers()
            .iter()
            .filter(|c| c.2 == "running")
            .count();
        async move { (running == 1).then_some(()) }
    })
    .await;
    wait_for(
        "the big job's allocations to be reported stopped",
        LIMIT,
        || {
            let url = server.url();
            async move {
                let mut c = skiff_tests::connect(&url).await.ok()?;
                let allocs = c.list_allocs(Some("big"), None).await.ok()?;
                allocs
                    .iter()
                    .all(|a| a.desired == DesiredStatus::Stop && a.status.is_terminal())
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_allocations_and_their_logs_are_collected_past_the_kept_number_and_age() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &[
            "--gc-keep-finished",
            "1",
            "--gc-keep-for",
            "0s",
            "--gc-every",
            "200ms",
        ],
    );
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(&agent_dir, &server.url(), "gc", &["--stop-grace", "1s"]);
    let mut client = server.client().await;
    // Four versions one after the other: three finished allocations.
    let mut ids = Vec::new();
    for v in 1..=4 {
        let spec = shell_job(
            "web",
            1,
            &format!("echo version {v}; trap 'exit 0' TERM; sleep 3600 & wait"),
        );
        client.apply_job(&spec).await.unwrap();
        let now = wait_alloc(&mut client, "web", "the new version running", LIMIT, |a| {
            a.status == AllocStatus::Running && a.job_version == v && !ids.contains(&a.id)
        })
        .await;
        ids.push(now.id);
    }
    let logs = |id: &str| agent_dir.join("logs").join(id);
    // Kept: the running one and the newest finished; the two before go,
    // and their logs with them.
    let kept = wait_for("the collection", LIMIT, || {
        let (url, ids, logs) = (server.url(), ids.clone(), logs);
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let allocs = c.list_allocs(Some("web"), None).await.ok()?;
            let listed: Vec<String> = allocs.iter().map(|a| a.id.clone()).collect();
            (listed.len() == 2 && !logs(&ids[0]).exists() && !logs(&ids[1]).exists())
                .then_some(listed)
        }
    })
    .await;
    assert!(
        kept.contains(&ids[2]) && kept.contains(&ids[3]),
        "{kept:?} of {ids:?}"
    );
    assert!(
        logs(&ids[2]).exists(),
        "the kept finished one keeps its logs"
    );
}
