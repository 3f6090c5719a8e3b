//! Workloads end to end, with real runc containers: rolling updates gated
//! on health (and their automatic rollback), canaries, scaling, batch jobs
//! with completions and parallelism, and gangs for distributed training.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_client::Client;
use skiff_model::{AllocStatus, Allocation, DeploymentStatus, DesiredStatus, JobSpec};
use skiff_tests::*;

const LIMIT: Duration = Duration::from_secs(90);

/// A busybox job with top-level `extra` (YAML lines) and task lines
/// `task_extra` (indented under `task:`).
fn spec(name: &str, replicas: u32, extra: &str, script: &str, task_extra: &str) -> JobSpec {
    let yaml = format!(
        "name: {name}\nreplicas: {replicas}\n{extra}task:\n  image: {}\n  command: [sh, -c, {}]\n  resources: {{cpu: 50m, memory: 16Mi}}\n  stop_grace: 1s\n{task_extra}",
        busybox_image(),
        serde_json::to_string(script).unwrap()
    );
    JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("test spec is invalid: {e}\n{yaml}"))
}

/// A service whose readiness probe passes once `/tmp/ready` exists; the
/// script creates it after printing `VERSION`. `update` is the `update:`
/// block (flow YAML).
fn service(replicas: u32, version: &str, script_tail: &str, update: &str) -> JobSpec {
    spec(
        "web",
        replicas,
        &format!("update: {update}\n"),
        &format!(
            "echo VERSION={version}; {script_tail}; touch /tmp/ready; trap 'exit 0' TERM; sleep 3600 & wait"
        ),
        "  restart: {policy: always, backoff: {initial: 200ms, max: 1s}}\n  probes:\n    readiness: {exec: {command: [test, -f, /tmp/ready]}, period: 200ms}\n",
    )
}

/// A server and one agent (`node-a`) in a temporary directory, and a
/// client. Bind them in this order: the directory goes last.
async fn one_node() -> (tempfile::TempDir, ServerProc, AgentProc, Client) {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent = AgentProc::start(&tmp.path().join("a"), &server.url(), "node-a", &[]);
    let client = server.client().await;
    (tmp, server, agent, client)
}

/// Healthy: running with its readiness probe passing.
fn healthy(a: &Allocation) -> bool {
    a.desired == DesiredStatus::Run && a.status == AllocStatus::Running && a.healthy == Some(true)
}

/// Samples a job's allocations every 50 ms until stopped: returns the
/// fewest healthy and the most running ever seen at one moment.
fn sampler(
    url: String,
    job: &'static str,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(usize, usize, usize)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let (mut fewest_healthy, mut most_running, mut samples) = (usize::MAX, 0, 0);
        let mut client = None;
        while !flag.load(Ordering::Relaxed) {
            if client.is_none() {
                client = skiff_tests::connect(&url).await.ok();
            }
            if let Some(c) = client.as_mut() {
                if let Ok(allocs) = c.list_allocs(Some(job), None).await {
                    samples += 1;
                    fewest_healthy =
                        fewest_healthy.min(allocs.iter().filter(|a| healthy(a)).count());
                    most_running = most_running.max(
                        allocs
                            .iter()
                            .filter(|a| a.status == AllocStatus::Running)
                            .count(),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (fewest_healthy, most_running, samples)
    });
    (stop, task)
}

/// Runs `skiff ARGS` and asserts it exits 0; returns its stdout.
fn skiff_ok(url: &str, args: &[&str]) -> String {
    let out = skiff(url, args);
    assert!(
        out.status.success(),
        "skiff {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until every allocation of `web` that is wanted runs version `v`,
/// healthy, `n` of them, with nothing else left running.
async fn wait_all_on(client: &mut Client, n: usize, v: u64) -> Vec<Allocation> {
    wait_for(
        &format!("{n} healthy allocations of version {v}"),
        LIMIT,
        || {
            let mut c = client.clone();
            async move {
                let allocs = c.list_allocs(Some("web"), None).await.ok()?;
                let live: Vec<_> = allocs
                    .iter()
                    .filter(|a| a.desired == DesiredStatus::Run || a.status == AllocStatus::Running)
                    .cloned()
                    .collect();
                (live.len() == n && live.iter().all(|a| a.job_version == v && healthy(a)))
                    .then_some(live)
            }
        },
    )
    .await
}

async fn rollout_status(client: &mut Client) -> (u64, DeploymentStatus, String) {
    let info = client.get_rollout("web").await.unwrap();
    let d = info.deployments.last().cloned().expect("a rollout");
    (d.version, d.status, d.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_update_rolls_back_by_itself_without_dropping_below_the_floor() {
    require_container_host();
    let (_tmp, server, _agent, mut client) = one_node().await;
    let update = "{max_unavailable: 1, max_surge: 1, min_healthy: 1s, healthy_deadline: 10s}";
    client
        .apply_job(&service(3, "1", "true", update))
        .await
        .unwrap();
    // `rollout status` follows the first rollout and exits 0.
    let out = skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );
    assert!(out.contains("successful"), "{out}");
    wait_all_on(&mut client, 3, 1).await;

    let (stop, sampling) = sampler(server.url(), "web");
    // Version 2 crashes at once, for ever.
    let applied = client
        .apply_job(&service(3, "2", "exit 1", update))
        .await
        .unwrap();
    assert_eq!(applied.job.version, 2);
    let status = skiff(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );
    let said = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "rollout status must fail: {said}");
    // The rollback runs back to version 1, healthy, and nothing of version
    // 2 is left.
    let back = wait_all_on(&mut client, 3, 1).await;
    stop.store(true, Ordering::Relaxed);
    let (fewest, _, samples) = sampling.await.unwrap();
    assert!(samples >= 5, "only {samples} samples");
    assert!(
        fewest >= 2,
        "only {fewest} healthy allocations at one moment; the floor is replicas - max_unavailable = 2"
    );
    assert_eq!(back.len(), 3);
    let info = client.get_rollout("web").await.unwrap();
    assert_eq!(info.job.version, 1, "the job is back on version 1");
    let failed = info
        .deployments
        .iter()
        .find(|d| d.version == 2)
        .expect("the rollout of version 2");
    assert_eq!(failed.status, DeploymentStatus::RolledBack, "{failed:?}");
    assert!(
        failed.reason.contains("version 2") && failed.reason.contains("rolled back to version 1"),
        "{}",
        failed.reason
    );
    // The rollback itself ends successful.
    let out = skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );
    assert!(out.contains("rollout of version 1 successful"), "{out}");
    let (v, st, _) = rollout_status(&mut client).await;
    assert_eq!((v, st), (1, DeploymentStatus::Successful));
    // The history lists both versions.
    let history = skiff_ok(&server.url(), &["rollout", "history", "web"]);
    assert!(history.lines().count() >= 3, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_update_completes_on_the_new_version_and_scale_moves_both_ways() {
    require_container_host();
    let (_tmp, server, _agent, mut client) = one_node().await;
    let update = "{max_unavailable: 1, max_surge: 1, min_healthy: 500ms}";
    client
        .apply_job(&service(3, "1", "true", update))
        .await
        .unwrap();
    skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );

    let (stop, sampling) = sampler(server.url(), "web");
    client
        .apply_job(&service(3, "2", "true", update))
        .await
        .unwrap();
    let out = skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );
    assert!(out.contains("successful"), "{out}");
    let on_v2 = wait_all_on(&mut client, 3, 2).await;
    stop.store(true, Ordering::Relaxed);
    let (fewest, most_running, _) = sampling.await.unwrap();
    assert!(fewest >= 2, "only {fewest} healthy at one moment");
    assert!(
        most_running <= 4,
        "{most_running} running at one moment; replicas + max_surge = 4"
    );
    for a in &on_v2 {
        let out = stdout_of(&mut client, &a.id).await;
        assert!(out.contains("VERSION=2"), "{out}");
    }

    // Scale up, then down: the version stays.
    let out = skiff_ok(&server.url(), &["scale", "web", "5"]);
    assert!(out.contains('5'), "{out}");
    wait_all_on(&mut client, 5, 2).await;
    skiff_ok(&server.url(), &["scale", "web", "2"]);
    let two = wait_all_on(&mut client, 2, 2).await;
    let mut replicas: Vec<u32> = two.iter().map(|a| a.replica).collect();
    replicas.sort();
    assert_eq!(replicas, vec![0, 1], "the highest replicas stop first");
    assert_eq!(client.get_rollout("web").await.unwrap().job.version, 2);
    let jobs = skiff_ok(&server.url(), &["get", "jobs"]);
    assert!(jobs.contains("2/2"), "{jobs}");

    // A paused rollout changes nothing until it is resumed, not even when
    // its new allocation becomes healthy (which would move it on). The new
    // version waits for a file the test creates after the pause.
    client
        .apply_job(&service(
            2,
            "3",
            "until [ -f /tmp/go ]; do sleep 0.1; done",
            update,
        ))
        .await
        .unwrap();
    let gated = wait_for("a version 3 allocation running", LIMIT, || {
        let mut c = client.clone();
        async move {
            let allocs = c.list_allocs(Some("web"), None).await.ok()?;
            let ids: Vec<String> = allocs
                .into_iter()
                .filter(|a| a.job_version == 3 && a.status == AllocStatus::Running)
                .map(|a| a.id)
                .collect();
            (!ids.is_empty()).then_some(ids)
        }
    })
    .await;
    skiff_ok(&server.url(), &["rollout", "pause", "web"]);
    let (v, st, _) = rollout_status(&mut client).await;
    assert_eq!((v, st), (3, DeploymentStatus::Paused));
    let frozen = |list: &[Allocation]| {
        let mut ids: Vec<(String, u64)> = list
            .iter()
            .filter(|a| a.desired == DesiredStatus::Run)
            .map(|a| (a.id.clone(), a.job_version))
            .collect();
        ids.sort();
        ids
    };
    let before = frozen(&wait_scheduler_saw(&mut client, "web", "the pause", |_| true).await);
    for id in &gated {
        let go = ["touch".to_string(), "/tmp/go".to_string()];
        let out = client.exec(id, &go, None).await.unwrap();
        assert_eq!(out.exit_code, 0, "{out:?}");
    }
    // Unpaused, the deployment controller would judge version 3 healthy
    // once min_healthy (500 ms) has passed since the server recorded it
    // healthy, at its next look (it looks on every applied entry and at
    // least every 300 ms), and the scheduler would then move the rollout
    // on. Wait for that moment by the server's own timestamps, then for the
    // scheduler to have seen everything.
    let during = wait_scheduler_saw(&mut client, "web", "version 3 healthy", |allocs| {
        let now = skiff_server_time_ms();
        allocs
            .iter()
            .filter(|a| gated.contains(&a.id))
            .all(|a| healthy(a) && now.saturating_sub(a.healthy_since_ms) >= 500 + 2 * 300)
    })
    .await;
    assert_eq!(before, frozen(&during), "allocations changed while paused");
    skiff_ok(&server.url(), &["rollout", "resume", "web"]);
    // Every version 3 allocation waits for its file.
    wait_for("2 healthy allocations of version 3", LIMIT, || {
        let mut c = client.clone();
        async move {
            let allocs = c.list_allocs(Some("web"), None).await.ok()?;
            for a in allocs
                .iter()
                .filter(|a| a.job_version == 3 && a.status == AllocStatus::Running && !healthy(a))
            {
                let go = ["touch".to_string(), "/tmp/go".to_string()];
                let _ = c.exec(&a.id, &go, None).await;
            }
            let live: Vec<_> = allocs
                .iter()
                .filter(|a| a.desired == DesiredStatus::Run || a.status == AllocStatus::Running)
                .collect();
            (live.len() == 2 && live.iter().all(|a| a.job_version == 3 && healthy(a))).then_some(())
        }
    })
    .await;
    skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );

    // Undo to a named version.
    let out = skiff_ok(
        &server.url(),
        &["rollout", "undo", "web", "--to-version", "1"],
    );
    assert!(out.contains("version 1"), "{out}");
    wait_all_on(&mut client, 2, 1).await;
    let history = skiff_ok(&server.url(), &["rollout", "history", "web"]);
    let current: Vec<&str> = history.lines().filter(|l| l.contains('*')).collect();
    assert_eq!(current.len(), 1, "{history}");
    assert!(current[0].trim_start().starts_with('1'), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_wait_for_promote_or_are_abandoned_by_undo() {
    require_container_host();
    let (_tmp, server, _agent, mut client) = one_node().await;
    let update = "{max_unavailable: 1, max_surge: 1, min_healthy: 500ms, canary: 1}";
    client
        .apply_job(&service(3, "1", "true", update))
        .await
        .unwrap();
    skiff_ok(
        &server.url(),
        &["rollout", "status", "web", "--timeout", "60s"],
    );
    wait_all_on(&mut client, 3, 1).await;

    // Version 2: one canary starts beside the three old replicas and the
    // rollout waits.
    for (v, finish) in [(2u64, "promote"), (3, "undo")] {
        client
            .apply_job(&service(3, &v.to_string(), "true", update))
            .await
            .unwrap();
        let allocs = wait_for(
            "one healthy canary beside three old replicas",
            LIMIT,
            || {
                let mut c = client.clone();
                async move {
                    let allocs = c.list_allocs(Some("web"), None).await.ok()?;
                    let new = allocs
                        .iter()
                        .filter(|a| a.job_version == v && healthy(a))
                        .count();
                    let old = allocs
                        .iter()
                        .filter(|a| a.job_version == v - 1 && healthy(a))
                        .count();
                    let info = c.get_rollout("web").await.ok()?;
                    let d = info.deployments.last()?;
                    (new == 1 && old == 3 && d.version == v && d.awaiting_promotion())
                        .then_some(allocs)
                }
            },
        )
        .await;
        // Nothing more happens while it waits: once the scheduler has seen
        // the healthy canary, the replicas are as they were.
        let still = wait_scheduler_saw(&mut client, "web", "the healthy canary", |_| true).await;
        let count = |list: &[Allocation], ver: u64| {
            list.iter()
                .filter(|a| a.job_version == ver && healthy(a))
                .count()
        };
        assert_eq!(
            (count(&still, v), count(&still, v - 1)),
            (1, 3),
            "{allocs:#?}"
        );
        let status = skiff_ok(&server.url(), &["describe", "job", "web"]);
        assert!(
            status.contains("canaries awaiting promotion"),
            "describe should say the canaries wait: {status}"
        );

        skiff_ok(&server.url(), &["rollout", finish, "web"]);
        let want = if finish == "promote" { v } else { v - 1 };
        let out = skiff(
            &server.url(),
            &["rollout", "status", "web", "--timeout", "60s"],
        );
        assert!(out.status.success(), "{out:?}");
        wait_all_on(&mut client, 3, want).await;
        let info = client.get_rollout("web").await.unwrap();
        assert_eq!(info.job.version, want);
        if finish == "undo" {
            let abandoned = info.deployments.iter().find(|d| d.version == 3).unwrap();
            assert_eq!(
                abandoned.status,
                DeploymentStatus::RolledBack,
                "{abandoned:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_runs_exactly_its_completions_never_more_than_parallelism_at_once() {
    require_container_host();
    let (_tmp, server, _agent, mut client) = one_node().await;
    let (stop, sampling) = sampler(server.url(), "work");
    client
        .apply_job(&spec(
            "work",
            1,
            "type: batch\ncompletions: 5\nparallelism: 2\n",
            "echo item $SKIFF_ALLOC_ID; sleep 1",
            "",
        ))
        .await
        .unwrap();
    let detail = wait_for("the batch job to complete", LIMIT, || {
        let mut c = client.clone();
        async move {
            let d = c.get_job("work").await.ok()?;
            (d.summary.state == "complete").then_some(d)
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (_, most_running, _) = sampling.await.unwrap();
    assert!(
        (1..=2).contains(&most_running),
        "{most_running} ran at once"
    );
    let complete: Vec<_> = detail
        .allocs
        .iter()
        .filter(|a| a.status == AllocStatus::Complete && a.exit_code == Some(0))
        .collect();
    assert_eq!(complete.len(), 5, "{:#?}", detail.allocs);
    assert_eq!(
        detail.allocs.len(),
        5,
        "exactly five ran: {:#?}",
        detail.allocs
    );
    assert_eq!(
        (detail.summary.succeeded, detail.summary.completions),
        (5, 5)
    );
    let jobs = skiff_ok(&server.url(), &["get", "jobs"]);
    let line = jobs.lines().find(|l| l.starts_with("work")).unwrap();
    assert!(line.contains("complete") && line.contains('5'), "{jobs}");

    // A job that always fails stops after its backoff_limit and says so.
    client
        .apply_job(&spec(
            "flaky",
            1,
            "type: batch\nbackoff_limit: 1\n",
            "exit 3",
            "  restart: {policy: on-failure, backoff: {initial: 100ms, max: 200ms}}\n",
        ))
        .await
        .unwrap();
    let detail = wait_for("the failing batch job to fail", LIMIT, || {
        let mut c = client.clone();
        async move {
            let d = c.get_job("flaky").await.ok()?;
            (d.summary.state == "failed").then_some(d)
        }
    })
    .await;
    assert_eq!(detail.summary.succeeded, 0);
    assert!(detail.summary.failed_runs >= 2, "{:?}", detail.summary);
    // Nothing of it keeps running.
    wait_for("the failed job's containers to stop", LIMIT, || {
        let mut c = client.clone();
        async move {
            let allocs = c.list_allocs(Some("flaky"), None).await.ok()?;
            allocs.iter().all(|a| a.status.is_terminal()).then_some(())
        }
    })
    .await;
    // Failed stays failed: nothing new is placed once its runs stopped.
    let after = client.get_job("flaky").await.unwrap();
    assert_eq!(after.summary.state, "failed", "{:?}", after.summary);
    assert_eq!(
        after.allocs.len(),
        detail.allocs.len(),
        "{:#?}",
        after.allocs
    );
    let jobs = skiff_ok(&server.url(), &["get", "jobs"]);
    let line = jobs.lines().find(|l| l.starts_with("flaky")).unwrap();
    assert!(line.contains("failed"), "{jobs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_gets_consecutive_ranks_and_one_master_and_an_infeasible_gang_places_nothing() {
    require_container_host();
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _a = AgentProc::start(&tmp.path().join("a"), &server.url(), "node-a", &[]);
    let _b = AgentProc::start(&tmp.path().join("b"), &server.url(), "node-b", &[]);
    let mut client = server.client().await;
    let nodes = wait_for("two nodes", LIMIT, || {
        let mut c = client.clone();
        async move {
            let n = c.list_nodes().await.ok()?;
            (n.len() == 2).then_some(n)
        }
    })
    .await;
    client
        .apply_job(&spec(
            "train",
            3,
            "type: batch\ngang: true\nmaster_port: 29600\n",
            "echo R=$RANK W=$WORLD_SIZE M=$MASTER_ADDR P=$MASTER_PORT SR=$SKIFF_RANK SW=$SKIFF_WORLD_SIZE",
            "",
        ))
        .await
        .unwrap();
    let detail = wait_for("the gang to complete", LIMIT, || {
        let mut c = client.clone();
        async move {
            let d = c.get_job("train").await.ok()?;
            (d.summary.state == "complete").then_some(d)
        }
    })
    .await;
    let mut seen = Vec::new();
    for a in &detail.allocs {
        let out = stdout_of(&mut client, &a.id).await;
        let line = out
            .lines()
            .find(|l| l.starts_with("R="))
            .unwrap_or_else(|| panic!("{out}"));
        seen.push((a.replica, line.to_string(), a.node.clone()));
    }
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let rank0_node = nodes
        .iter()
        .find(|n| n.node.name == seen[0].2)
        .expect("rank 0's node");
    let master = skiff_model::workload::host_of(&rank0_node.node.address);
    for (i, (replica, line, _)) in seen.iter().enumerate() {
        assert_eq!(*replica, i as u32);
        assert_eq!(
            line,
            &format!("R={i} W=3 M={master} P=29600 SR={i} SW=3"),
            "rank {i}"
        );
    }

    // Each node holds one of these replicas by memory, so a gang of 3
    // cannot be placed: nothing starts and the job says why.
    let least = nodes
        .iter()
        .map(|n| n.node.allocatable.memory_bytes)
        .min()
        .unwrap();
    let mem = least / 2 + (64 << 20);
    let mut huge = spec("huge", 3, "type: batch\ngang: true\n", "sleep 60", "");
    huge.task.resources.memory_bytes = mem;
    client.apply_job(&huge).await.unwrap();
    let why = wait_for("the gang to say why it waits", LIMIT, || {
        let mut c = client.clone();
        async move {
            let d = c.get_job("huge").await.ok()?;
            let msg = d.latest_eval?.message;
            msg.contains("gang").then_some(msg)
        }
    })
    .await;
    assert!(why.contains("only 2 fit"), "{why}");
    assert!(why.contains("insufficient memory"), "{why}");
    let placed: Vec<_> = client
        .list_allocs(Some("huge"), None)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(placed.is_empty(), "a partial gang was placed: {placed:#?}");
    let described = skiff_ok(&server.url(), &["describe", "job", "huge"]);
    assert!(described.contains("only 2 fit"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rank_restarts_the_whole_gang_or_fails_the_job() {
    require_container_host();
    let (_tmp, _server, _agent, mut client) = one_node().await;
    // Rank 1 always fails; rank 0 would run for an hour.
    let script =
        "if [ \"$RANK\" = 1 ]; then sleep 1; exit 1; fi; trap 'exit 0' TERM; sleep 3600 & wait";
    client
        .apply_job(&spec(
            "restarts",
            2,
            "type: batch\ngang: true\nbackoff_limit: 1\n",
            script,
            "",
        ))
        .await
        .unwrap();
    client
        .apply_job(&spec(
            "fails",
            2,
            "type: batch\ngang: true\ngang_failure: fail\n",
            script,
            "",
        ))
        .await
        .unwrap();
    for job in ["restarts", "fails"] {
        let d = wait_for(&format!("{job} to fail"), LIMIT, || {
            let mut c = client.clone();
            async move {
                let d = c.get_job(job).await.ok()?;
                (d.summary.state == "failed" && d.allocs.iter().all(|a| a.status.is_terminal()))
                    .then_some(d)
            }
        })
        .await;
        let runs_of = |rank: u32| d.allocs.iter().filter(|a| a.replica == rank).count();
        if job == "restarts" {
            // The first failure restarted both ranks (rank 0 too); the
            // second passed backoff_limit 1.
            assert_eq!((runs_of(0), runs_of(1)), (2, 2), "{:#?}", d.allocs);
            let first_rank0 = d
                .allocs
                .iter()
                .filter(|a| a.replica == 0)
                .min_by_key(|a| a.create_index)
                .unwrap();
            assert_eq!(
                (first_rank0.status, first_rank0.reason.as_str()),
                (AllocStatus::Complete, "stopped"),
                "rank 0 was stopped for the restart: {first_rank0:?}"
            );
            assert!(
                first_rank0
                    .message
                    .starts_with("gang restart: replica 1 failed; stopped"),
                "{}",
                first_rank0.message
            );
        } else {
            // gang_failure: fail: the first failure ends the job.
            assert_eq!((runs_of(0), runs_of(1)), (1, 1), "{:#?}", d.allocs);
        }
    }
}
