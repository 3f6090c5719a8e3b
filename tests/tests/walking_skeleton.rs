//! The walking skeleton end to end: real `skiff server` and `skiff agent`
//! processes on loopback, real raft-rs and sled, real runc containers.

use std::time::Duration;

use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_survives_a_server_kill9_and_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&tmp.path().join("server"));
    let agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "skeleton-node",
        &["--stop-grace", "2s"],
    );
    let mut client = server.client().await;

    let spec = JobSpec::from_yaml(&format!(
        r#"
name: hello
replicas: 2
task:
  image: {}
  command: ["sh", "-c", "echo hello from $SKIFF_ALLOC_ID on $SKIFF_NODE as $SKIFF_JOB; sleep 3600"]
  env: {{GREETING: hi}}
  resources: {{cpu: 250m, memory: 64Mi}}
"#,
        busybox_image()
    ))
    .unwrap();
    let applied = client.apply_job(&spec).await.unwrap();
    assert!(applied.changed);
    assert_eq!(applied.job.version, 1);

    let allocs = wait_allocs(&mut client, "hello", 2, AllocStatus::Running, START).await;
    assert!(allocs.iter().all(|a| a.node == "skeleton-node"));
    for a in &allocs {
        let want = format!("hello from {} on skeleton-node as hello", a.id);
        let id = a.id.clone();
        let log = wait_for("the echoed line in the log", START, || {
            let id = id.clone();
            let url = server.url();
            async move {
                let mut c = skiff_tests::connect(&url).await.ok()?;
                let out = stdout_of(&mut c, &id).await;
                out.contains("hello from").then_some(out)
            }
        })
        .await;
        assert!(log.contains(&want), "log {log:?} lacks {want:?}");
    }
    let running = agent.containers();
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|(_, _, s)| s == "running"));

    // SIGKILL the server: the job it acknowledged must still be there.
    server.restart();
    let mut client = server.client().await;
    let detail = client.get_job("hello").await.unwrap();
    assert_eq!(detail.job.spec, applied.job.spec);
    assert_eq!(detail.allocs.len(), 2);
    // The containers kept running through the server's death.
    let after: Vec<_> = agent.containers();
    assert_eq!(
        after
            .iter()
            .map(|(id, pid, _)| (id.clone(), *pid))
            .collect::<Vec<_>>(),
        running
            .iter()
            .map(|(id, pid, _)| (id.clone(), *pid))
            .collect::<Vec<_>>()
    );
    wait_allocs(&mut client, "hello", 2, AllocStatus::Running, START).await;

    client.delete_job("hello").await.unwrap();
    wait_for("the containers to be gone", START, || {
        let left = agent.containers();
        async move { left.is_empty().then_some(()) }
    })
    .await;
    let allocs = allocs_of(&mut client, "hello").await;
    assert_eq!(allocs.len(), 2);
    assert!(
        allocs.iter().all(|a| a.status == AllocStatus::Complete),
        "{allocs:#?}"
    );
    let gone = client.get_job("hello").await.unwrap_err();
    assert_eq!(gone.code(), Some(skiff_client::Code::NotFound), "{gone}");
    // The delete's evaluation is done, not planned again and again (it
    // once was, for ever, about 20 times a second).
    let addr = prom::metrics_addr(&tmp.path().join("server"));
    let pending = || {
        let (_, body) = prom::scrape(&addr);
        prom::sample_with(&body, "skiff_evaluations", &[("status", "pending")])
    };
    wait_for("no evaluation pending", START, || {
        let n = pending();
        async move { (n == Some(0.0)).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_survives_kill9_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(tmp.path());
    let mut client = server.client().await;
    let mut acked = Vec::new();
    for i in 0..100 {
        let spec = JobSpec::from_yaml(&format!(
            "name: durable-{i}\nreplicas: 0\ntask: {{image: 'oci:/tmp/nowhere'}}"
        ))
        .unwrap();
        client.apply_job(&spec).await.unwrap();
        acked.push(spec);
    }
    server.restart();
    let mut client = server.client().await;
    let jobs = client.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), acked.len());
    for spec in acked {
        assert!(
            jobs.iter().any(|(j, _)| j.spec == spec),
            "lost {}",
            spec.name
        );
    }
    // And it keeps accepting writes after the restart.
    let spec =
        JobSpec::from_yaml("name: after\nreplicas: 0\ntask: {image: 'oci:/tmp/nowhere'}").unwrap();
    assert!(client.apply_job(&spec).await.unwrap().changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_env_limits_and_network_modes_reach_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "probe-node", &[]);
    let mut client = server.client().await;

    client
        .apply_job(&shell_job("ok", 1, "echo done"))
        .await
        .unwrap();
    client
        .apply_job(&shell_job("bad", 1, "exit 3"))
        .await
        .unwrap();
    let ok = wait_allocs(&mut client, "ok", 1, AllocStatus::Complete, START).await;
    assert_eq!(ok[0].exit_code, Some(0));
    let bad = wait_allocs(&mut client, "bad", 1, AllocStatus::Failed, START).await;
    assert_eq!(bad[0].exit_code, Some(3));
    assert_eq!(bad[0].message, "exited with code 3");

    // What the container sees: its limits, its network, Skiff's variables.
    let probe = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                 cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
                 echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,); \
                 echo job=$SKIFF_JOB greeting=$GREETING";
    let mut none = shell_job("isolated", 1, probe);
    none.task.network = skiff_model::NetworkMode::None;
    none.task.env.insert("GREETING".into(), "hi".into());
    let mut host = shell_job("shared", 1, probe);
    host.task.network = skiff_model::NetworkMode::Host;
    client.apply_job(&none).await.unwrap();
    allow_host_network(&mut client).await;
    client.apply_job(&host).await.unwrap();
    let iso = wait_allocs(&mut client, "isolated", 1, AllocStatus::Complete, START).await;
    let shared = wait_allocs(&mut client, "shared", 1, AllocStatus::Complete, START).await;
    let iso_out = stdout_of(&mut client, &iso[0].id).await;
    let shared_out = stdout_of(&mut client, &shared[0].id).await;
    let lines: Vec<&str> = iso_out.lines().collect();
    assert_eq!(
        lines[0],
        (32u64 << 20).to_string(),
        "memory limit: {iso_out}"
    );
    assert_eq!(lines[1], "10000", "cpu quota for 100m: {iso_out}");
    assert_eq!(
        lines[2], "ifaces=lo,",
        "network none has only loopback: {iso_out}"
    );
    assert_eq!(lines[3], "job=isolated greeting=hi");
    let host_ifaces = shared_out.lines().nth(2).unwrap_or_default();
    assert_ne!(
        host_ifaces, "ifaces=lo,",
        "network host shares the host's interfaces: {shared_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_copied_by_skopeo_runs_too() {
    if which("skopeo").is_none() {
        panic!("skopeo is not installed: run `make deps`");
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copied");
    let status = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:latest", busybox_layout().display()))
        .arg(format!("oci:{}:v2", copy.display()))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "skopeo-node", &[]);
    let mut client = server.client().await;
    let mut spec = shell_job("copied", 1, "echo from the copy");
    spec.task.image = skiff_model::ImageRef::parse(&format!("oci:{}:v2", copy.display())).unwrap();
    client.apply_job(&spec).await.unwrap();
    let a = wait_allocs(&mut client, "copied", 1, AllocStatus::Complete, START).await;
    assert_eq!(stdout_of(&mut client, &a[0].id).await, "from the copy\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fits_nowhere_waits_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "small-node", &[]);
    let mut client = server.client().await;
    let mut spec = shell_job("huge", 1, "true");
    spec.task.resources.memory_bytes = 1 << 50; // a petabyte
    client.apply_job(&spec).await.unwrap();
    let why = wait_for("an explanation", START, || {
        let url = server.url();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let d = c.get_job("huge").await.ok()?;
            d.latest_eval
                .filter(|e| e.status == "blocked")
                .map(|e| e.message)
        }
    })
    .await;
    assert_eq!(
        why,
        "1 replica(s) not placed: 0/1 nodes: 1 insufficient memory"
    );
    assert!(allocs_of(&mut client, "huge").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_restarts_without_touching_its_containers() {
    let tmp = tempfile::tempdir().unwrap();
    // The agent stays down for several seconds here: longer than the default
    // heartbeat TTL, after which the node would (rightly) be declared down.
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &["--heartbeat-ttl", "60s"],
    );
    let mut agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "restart-node",
        &[],
    );
    let mut client = server.client().await;
    client
        .apply_job(&shell_job("steady", 1, "sleep 3600"))
        .await
        .unwrap();
    // This one exits while the agent is down; its code must still arrive.
    client
        .apply_job(&shell_job(
            "finisher",
            1,
            "read -t 4 x < /dev/zero; sleep 4; exit 7",
        ))
        .await
        .unwrap();
    wait_allocs(&mut client, "steady", 1, AllocStatus::Running, START).await;
    wait_allocs(&mut client, "finisher", 1, AllocStatus::Running, START).await;
    let before = agent.containers();
    agent.kill9();
    // Wait, with the agent down, for the finisher to exit.
    wait_for(
        "the finisher to exit while the agent is down",
        START,
        || {
            let stopped = agent
                .containers()
                .iter()
                .any(|(id, _, s)| s == "stopped" && !id.is_empty());
            async move { stopped.then_some(()) }
        },
    )
    .await;
    agent.restart();
    let f = wait_allocs(&mut client, "finisher", 1, AllocStatus::Failed, START).await;
    assert_eq!(f[0].exit_code, Some(7));
    let steady = wait_allocs(&mut client, "steady", 1, AllocStatus::Running, START).await;
    let pid_before = before
        .iter()
        .find(|(id, _, _)| id.ends_with(&steady[0].id))
        .map(|c| c.1);
    let pid_after = agent
        .containers()
        .iter()
        .find(|(id, _, _)| id.ends_with(&steady[0].id))
        .map(|c| c.1);
    assert!(pid_before.is_some());
    assert_eq!(pid_before, pid_after, "the running container kept its pid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_until_the_container_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "follow-node", &[]);
    let mut client = server.client().await;
    let script = "for i in 1 2 3 4 5; do echo tick $i; echo warn $i >&2; sleep 0.3; done";
    client
        .apply_job(&shell_job("ticker", 1, script))
        .await
        .unwrap();
    let a = wait_allocs(&mut client, "ticker", 1, AllocStatus::Running, START).await;
    // `skiff logs -f` as a user runs it: it must print every line and end
    // by itself when the container exits.
    let out = tokio::task::spawn_blocking({
        let (url, id) = (server.url(), a[0].short_id().to_string());
        move || {
            skiff_tests::skiff_command()
                .args(["logs", "-f", &id, "--server", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n");
    assert_eq!(stderr, "warn 1\nwarn 2\nwarn 3\nwarn 4\nwarn 5\n");
    // --tail and --stderr pick what is shown.
    let (out, err) = client
        .logs(&a[0].id, false, 2, false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "tick 4\ntick 5\n");
    assert_eq!(String::from_utf8_lossy(&err), "warn 4\nwarn 5\n");
    let (out, err) = client
        .logs(&a[0].id, false, 0, true)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(err.len(), 35);
}
