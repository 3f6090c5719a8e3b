//! `skiff events`: what happened, in words, from a server-side stream:
//! `-f` shows an OOM kill and an automatic rollback with their reasons as
//! they happen; filters by job and type; repeats counted on one event.

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use skiff_model::JobSpec;
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

fn spec(name: &str, extra: &str, script: &str, task_extra: &str) -> JobSpec {
    let yaml = format!(
        "name: {name}\n{extra}task:\n  image: {}\n  command: [sh, -c, {}]\n  resources: {{cpu: 50m, memory: 16Mi}}\n  stop_grace: 1s\n{task_extra}",
        busybox_image(),
        serde_json::to_string(script).unwrap()
    );
    JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("test spec is invalid: {e}\n{yaml}"))
}

/// A service whose readiness passes once `/tmp/ready` exists, made after
/// `tail` runs.
fn web(version: &str, tail: &str) -> JobSpec {
    spec(
        "web",
        "replicas: 2\nupdate: {max_unavailable: 1, max_surge: 1, min_healthy: 1s, healthy_deadline: 10s}\n",
        &format!("echo VERSION={version}; {tail}; touch /tmp/ready; trap 'exit 0' TERM; sleep 3600 & wait"),
        "  restart: {policy: always, backoff: {initial: 200ms, max: 1s}}\n  probes:\n    readiness: {exec: {command: [test, -f, /tmp/ready]}, period: 200ms}\n",
    )
}

/// A `skiff` child printing to a file; killed when dropped.
struct Follower {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Follower {
    fn text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.out) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The line of `text` with all of `words`, if any.
fn line_with<'a>(text: &'a str, words: &[&str]) -> Option<&'a str> {
    text.lines().find(|l| words.iter().all(|w| l.contains(w)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_an_oom_kill_and_a_rollback_with_their_reasons() {
    require_container_host();
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;

    let out = tmp.path().join("events.out");
    let follower = Follower {
        child: skiff_command()
            .args(["events", "-f", "--server", &server.url()])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        out,
    };
    // The follower prints its header once connected.
    wait_for("skiff events -f to start", START, || {
        let t = follower.text();
        async move { t.contains("REASON").then_some(()) }
    })
    .await;

    // OOM kills, over and over (restarted a second after each).
    client
        .apply_job(&spec(
            "hog",
            "",
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            "  restart: {policy: on-failure, backoff: {initial: 1s, max: 1s}}\n",
        ))
        .await
        .unwrap();
    let line = wait_for("the OOM kill in skiff events -f", START, || {
        let t = follower.text();
        async move { line_with(&t, &["OOMKilled", "hog"]).map(str::to_string) }
    })
    .await;
    assert!(line.contains("warning"), "{line}");
    assert!(line.contains("killed by the OOM killer"), "{line}");

    // A rollout that fails and rolls back by itself.
    client.apply_job(&web("1", "true")).await.unwrap();
    wait_for("version 1's rollout to succeed", START, || {
        let t = follower.text();
        async move { line_with(&t, &["RolloutSucceeded", "web", "version 1"]).map(|_| ()) }
    })
    .await;
    client.apply_job(&web("2", "exit 1")).await.unwrap();
    let line = wait_for(
        "the rollback in skiff events -f",
        Duration::from_secs(90),
        || {
            let t = follower.text();
            async move { line_with(&t, &["RolledBack", "web"]).map(str::to_string) }
        },
    )
    .await;
    assert!(line.contains("warning"), "{line}");
    assert!(line.contains("rolled back to version 1"), "{line}");
    let all = follower.text();
    for reason in [
        "Applied",
        "Placed",
        "Started",
        "RolloutStarted",
        "RollbackStarted",
    ] {
        assert!(
            line_with(&all, &[reason, "web"]).is_some(),
            "no {reason} for web in:\n{all}"
        );
    }
    let backoff = line_with(&all, &["BackOff", "web"]);
    assert!(backoff.is_some(), "{all}");

    // Without -f: the kept events, filtered.
    let listed = skiff(
        &server.url(),
        &["events", "--job", "web", "--type", "warning", "-o", "json"],
    );
    assert!(listed.status.success(), "{listed:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .all(|e| e["job"] == "web" && e["type"] == "warning"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|e| e["reason"] == "RolledBack"),
        "{lines:?}"
    );
    // The hog's OOM kills: one event, counted.
    wait_for("the OOM kills counted on one event", START, || {
        let listed = skiff(
            &server.url(),
            &[
                "events",
                "--job",
                "hog",
                "--reason",
                "OOMKilled",
                "-o",
                "json",
            ],
        );
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        async move {
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (lines.len() == 1 && lines[0]["count"].as_u64().unwrap_or(0) >= 2).then_some(())
        }
    })
    .await;
    // A bad filter names the flag's rule.
    let bad = skiff(&server.url(), &["events", "--type", "error"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--type"),
        "{bad:?}"
    );
    drop(follower);
    client.delete_job("web").await.unwrap();
    client.delete_job("hog").await.unwrap();
}
