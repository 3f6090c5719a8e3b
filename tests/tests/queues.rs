//! Team queues end to end, with the fake GPU inventory, a real server,
//! two real agents and real runc containers: two teams of a cohort share
//! 8 GPUs; team A borrows team B's idle GPUs with a gang, team B submits
//! within its quota, A's borrowed gang is evicted whole and B's job runs;
//! the gang waits again with a reason naming the quota, in `skiff queue
//! describe`, `skiff queue ls` and `/metrics`.

use std::time::Duration;

use skiff_client::Client;
use skiff_model::namespace::Namespace;
use skiff_model::{AllocStatus, DesiredStatus, JobSpec};
use skiff_tests::gpus::{test_uuid, FakeGpuHost, NVIDIA_MAJOR};
use skiff_tests::prom::{metrics_addr, sample_with, scrape};
use skiff_tests::*;

const START: Duration = Duration::from_secs(90);

/// A node of four fake GPUs (host `n`'s UUIDs).
fn four_gpus(h: &FakeGpuHost, n: u32) -> String {
    let mut yaml = h.common_yaml();
    yaml.push_str("gpus:\n");
    for i in 0..4u32 {
        let dev = h.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
        yaml.push_str(&format!(
            "  - {{uuid: {}, model: Fake GPU, memory: 16Gi, index: {i}, device: {}}}\n",
            test_uuid(n, i),
            dev.display(),
        ));
    }
    yaml
}

/// A batch job of team `team` asking `ranks` x `gpus` GPUs (a gang when
/// more than one rank), sleeping.
fn team_job(team: &str, name: &str, ranks: u32, gpus: u32, priority: u8) -> JobSpec {
    let gang = if ranks > 1 { "gang: true\n" } else { "" };
    let yaml = format!(
        "name: {name}\nnamespace: {team}\nqueue: {team}\ntype: batch\npriority: {priority}\n{gang}replicas: {ranks}\ntask:\n  image: {}\n  command: [sh, -c, 'exec sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi, gpus: {gpus}}}\n",
        busybox_image()
    );
    JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn skiff_ok(url: &str, args: &[&str]) -> String {
    let out = skiff(url, args);
    assert!(
        out.status.success(),
        "skiff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GPUs held by job `name`'s allocations that are wanted to run and running.
async fn running_gpus(client: &mut Client, name: &str) -> usize {
    allocs_of(client, name)
        .await
        .iter()
        .filter(|a| a.desired == DesiredStatus::Run && a.status == AllocStatus::Running)
        .map(|a| a.gpus.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_gang_is_reclaimed_whole_when_its_lender_needs_its_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let (h1, h2) = (FakeGpuHost::new(), FakeGpuHost::new());
    let (f1, f2) = (h1.write(&four_gpus(&h1, 1)), h2.write(&four_gpus(&h2, 2)));
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let (f1, f2) = (f1.display().to_string(), f2.display().to_string());
    let _a1 = AgentProc::start(&tmp.path().join("a1"), &url, "gpu-1", &["--fake-gpus", &f1]);
    let _a2 = AgentProc::start(&tmp.path().join("a2"), &url, "gpu-2", &["--fake-gpus", &f2]);
    let mut client = server.client().await;
    wait_for("both GPU nodes", START, || {
        let mut c = client.clone();
        async move {
            let nodes = c.list_nodes().await.ok()?;
            (nodes.iter().filter(|n| n.node.gpus.len() == 4).count() == 2).then_some(())
        }
    })
    .await;

    for team in ["team-a", "team-b"] {
        client
            .apply_namespace(&Namespace::from_yaml(&format!("name: {team}\n")).unwrap())
            .await
            .unwrap();
    }
    // The queues from YAML files, through the CLI.
    for team in ["team-a", "team-b"] {
        let file = tmp.path().join(format!("{team}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {team}\ncohort: lab\nnamespaces: [{team}]\nnominal: {{gpus: {{any: 4}}}}\n"
            ),
        )
        .unwrap();
        let out = skiff_ok(&url, &["queue", "apply", "-f", &file.display().to_string()]);
        assert_eq!(out, format!("queue/{team} applied\n"));
    }

    // A job may submit only to a queue its namespace may use.
    let mut wrong = team_job("team-b", "sneaky", 1, 1, 50);
    wrong.queue = Some("team-a".into());
    let err = client.apply_job(&wrong).await.unwrap_err().to_string();
    assert!(
        err.contains("namespace \"team-b\" may not submit to queue \"team-a\""),
        "{err}"
    );
    let mut missing = team_job("team-b", "lost", 1, 1, 50);
    missing.queue = Some("nope".into());
    let err = client.apply_job(&missing).await.unwrap_err().to_string();
    assert!(err.contains("queue \"nope\" not found"), "{err}");

    let mut ta = client.clone().namespace("team-a");
    let mut tb = client.clone().namespace("team-b");
    // The plan of a queued job: it would wait for admission, and where
    // the scheduler would put it now.
    let plan_file = tmp.path().join("train.json");
    std::fs::write(
        &plan_file,
        serde_json::to_string(&team_job("team-a", "train", 1, 4, 50)).unwrap(),
    )
    .unwrap();
    let planned = skiff(&url, &["plan", "-f", &plan_file.display().to_string()]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert_eq!(planned.status.code(), Some(2), "{text}");
    assert!(text.contains("job/team-a/train: new, version 1"), "{text}");
    assert!(
        text.contains("queue team-a would admit it whole now"),
        "{text}"
    );
    assert!(text.contains("would place: replica 0 on gpu-"), "{text}");
    assert!(text.contains("(GPUs GPU-0000000"), "{text}");

    // Team A: a job within its quota, then a gang of 2 x 2 GPUs on
    // team B's idle quota (priority 55, above team B's job: reclaim ignores priority).
    client
        .apply_job(&team_job("team-a", "train", 1, 4, 50))
        .await
        .unwrap();
    wait_allocs(&mut ta, "train", 1, AllocStatus::Running, START).await;
    client
        .apply_job(&team_job("team-a", "sweep", 2, 2, 55))
        .await
        .unwrap();
    let gang = wait_allocs(&mut ta, "sweep", 2, AllocStatus::Running, START).await;
    let ls = skiff_ok(&url, &["queue", "ls"]);
    let a_line = ls.lines().find(|l| l.starts_with("team-a")).unwrap();
    assert!(a_line.contains("GPUs (any model)=8/4"), "{ls}");
    let b_line = ls.lines().find(|l| l.starts_with("team-b")).unwrap();
    assert!(
        b_line.contains("GPUs (any model)=4"),
        "team-b lends 4: {ls}"
    );
    // The same for scripts: amounts keyed as the queue's file keys them.
    let json: serde_json::Value =
        serde_json::from_str(&skiff_ok(&url, &["queue", "ls", "-o", "json"])).unwrap();
    let a = json
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "team-a"))
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(a["nominal"]["gpus"]["any"], "4", "{a}");
    assert_eq!(a["usage"]["gpus"]["any"], "8", "{a}");
    assert_eq!(a["borrowed"]["gpus"]["any"], "4", "{a}");
    assert!(a["share"].as_f64().is_some_and(|s| s > 0.0), "{a}");
    assert_eq!(
        (a["admitted"].as_u64(), a["pending"].as_u64()),
        (Some(2), Some(0)),
        "{a}"
    );

    // The plan of team B's job says what its admission would take back.
    let eval_file = tmp.path().join("eval.json");
    std::fs::write(
        &eval_file,
        serde_json::to_string(&team_job("team-b", "eval", 1, 4, 10)).unwrap(),
    )
    .unwrap();
    let planned = skiff(&url, &["plan", "-f", &eval_file.display().to_string()]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert!(
        text.contains("queue team-b would admit it whole now, reclaiming team-a/sweep"),
        "{text}"
    );
    // Where it would go and what would stop for it, as the admission
    // round plans it (the plain planner cannot evict another queue's
    // work, and said it could not place the job).
    assert!(text.contains("would place: replica 0 on gpu-"), "{text}");
    assert!(
        text.contains("(job team-a/sweep): reclaimed for job team-b/eval (queue team-b)"),
        "{text}"
    );
    assert!(!text.contains("cannot place"), "{text}");

    // Team B asks for its 4 GPUs: A's borrowed gang goes, whole, and B's
    // job runs on what it held.
    client
        .apply_job(&team_job("team-b", "eval", 1, 4, 10))
        .await
        .unwrap();
    let b = wait_allocs(&mut tb, "eval", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    let gang_gpus: Vec<&String> = gang.iter().flat_map(|a| &a.gpus).collect();
    assert!(
        b.gpus.iter().all(|g| gang_gpus.contains(&g)),
        "{b:?} {gang:?}"
    );
    for old in &gang {
        let a = allocs_of(&mut ta, "sweep")
            .await
            .into_iter()
            .find(|a| a.id == old.id)
            .unwrap();
        assert_eq!(a.desired, DesiredStatus::Stop);
        assert!(
            a.message.contains("reclaimed for job team-b/eval"),
            "{}",
            a.message
        );
    }
    assert_eq!(
        running_gpus(&mut ta, "train").await,
        4,
        "within quota: kept"
    );

    // The gang waits again, with the reason naming the quota.
    let described = wait_for("the gang waiting in team-a", START, || {
        let url = url.clone();
        async move {
            let out = skiff_ok(&url, &["queue", "describe", "team-a"]);
            out.contains("Waiting:   1").then_some(out)
        }
    })
    .await;
    assert!(
        described.contains(
            "queue team-a uses 4/4 GPUs (any model), job needs 4; cohort lab has 0 to lend"
        ),
        "{described}"
    );
    assert!(described.contains("team-a/train"), "{described}");
    // Its settings as applied.
    assert!(described.contains("Namespaces: team-a\n"), "{described}");
    assert!(
        described.contains("Backfill window: 10m (default)"),
        "{described}"
    );
    // A developer of team-b sees team-a's queue, but not the names of
    // jobs in a namespace it may not read.
    let bea = make_user(&url, tmp.path(), "bea", "developer", "team-b");
    let out = skiff_command()
        .env("SKIFF_CONFIG", &bea)
        .args(["queue", "describe", "team-a", "--server", &url])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.contains("Waiting:   1"), "{seen}");
    assert!(seen.contains("(a job in namespace team-a)"), "{seen}");
    assert!(
        !seen.contains("team-a/sweep") && !seen.contains("team-a/train"),
        "{seen}"
    );
    assert_eq!(running_gpus(&mut ta, "sweep").await, 0);
    // `skiff events` says what happened to it, in words.
    let events = wait_for("the reclaim in skiff events", START, || {
        let url = url.clone();
        async move {
            let out = skiff_ok(&url, &["events", "-n", "team-a", "--job", "sweep"]);
            (out.contains("Reclaimed") && out.contains("Requeued")).then_some(out)
        }
    })
    .await;
    assert!(events.contains("Admitted"), "{events}");
    assert!(
        events.contains("waits in queue team-a to be admitted again"),
        "{events}"
    );
    let job = skiff_ok(&url, &["describe", "job", "-n", "team-a", "sweep"]);
    assert!(
        job.contains("Queue:      team-a, waiting to be admitted whole"),
        "{job}"
    );
    assert!(job.contains("Batch:      queued ("), "{job}");
    // Every day's list says so too, where the job within quota runs.
    let jobs = skiff_ok(&url, &["get", "jobs", "-n", "team-a"]);
    let status = |name: &str| {
        let line = jobs.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(4).unwrap().to_string()
    };
    assert_eq!(status("sweep"), "queued", "{jobs}");
    assert_eq!(status("train"), "running", "{jobs}");

    // The same in /metrics, after Kueue's names.
    let addr = metrics_addr(&tmp.path().join("server"));
    let (_, body) = scrape(&addr);
    let usage = |q: &str| {
        sample_with(
            &body,
            "skiff_queue_resource_usage",
            &[("queue", q), ("resource", "gpu:any")],
        )
    };
    assert_eq!(usage("team-a"), Some(4.0), "{body}");
    assert_eq!(usage("team-b"), Some(4.0), "{body}");
    assert_eq!(
        sample_with(
            &body,
            "skiff_queue_pending_workloads",
            &[("queue", "team-a")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_with(
            &body,
            "skiff_queue_preempted_jobs_total",
            &[("queue", "team-b"), ("reason", "reclaim")]
        ),
        Some(1.0),
        "{body}"
    );

    // When team B is done, the gang is admitted again.
    tb.delete_job("eval").await.unwrap();
    wait_allocs(&mut ta, "sweep", 2, AllocStatus::Running, START).await;
    let job = skiff_ok(&url, &["describe", "job", "-n", "team-a", "sweep"]);
    assert!(
        job.contains("Queue:      team-a, admitted (skiff queue describe team-a)"),
        "{job}"
    );
    // A queue still named by jobs is not deleted.
    let out = skiff(&url, &["queue", "delete", "team-a"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still named by 2 job(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
