//! How containers live on their node: restart policies and back-off,
//! stop signals and grace periods, and exec, http and tcp probes. Real
//! agents, real runc; short back-offs and periods keep it quick.

use std::time::{Duration, Instant};

use skiff_model::AllocStatus;
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// Seconds since the epoch of an RFC 3339 UTC timestamp (as the log has).
fn epoch_secs(ts: &str) -> f64 {
    // 2026-11-28T21:14:14.515206123Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (the inverse of the agent's conversion).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

/// Times (from `skiff logs --timestamps`) of the log lines that equal `text`.
fn times_of(server: &str, alloc: &str, text: &str) -> Vec<f64> {
    let out = skiff(server, &["logs", "--timestamps", alloc]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, msg)| *msg == text)
        .map(|(ts, _)| epoch_secs(ts))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_restart_with_exponential_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "restarts", &[]);
    let mut client = server.client().await;
    let url = server.url();

    // Back-off 300ms doubling to a 600ms cap: uncapped, the fifth wait
    // would be 4.8s.
    client
        .apply_job(&job_yaml(
            "crasher",
            1,
            "echo start; exit 1",
            "  restart: {policy: on-failure, backoff: {initial: 300ms, max: 600ms}}\n",
        ))
        .await
        .unwrap();
    // A long back-off, to see the waiting state.
    client
        .apply_job(&job_yaml(
            "waiter",
            1,
            "exit 2",
            "  restart: {policy: always, backoff: {initial: 1h, max: 1h}}\n",
        ))
        .await
        .unwrap();
    // Each run outlasts reset_after, so the back-off never grows.
    client
        .apply_job(&job_yaml(
            "steady",
            1,
            "echo start; sleep 1.5; exit 1",
            "  restart: {policy: always, backoff: {initial: 1s, max: 1h, reset_after: 1s}}\n",
        ))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml(
            "done-ok",
            1,
            "exit 0",
            "  restart: {policy: on-failure}\n",
        ))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml(
            "never",
            1,
            "exit 3",
            "  restart: {policy: never}\n",
        ))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml(
            "again",
            1,
            "echo start; exit 0",
            "  restart: {policy: always, backoff: {initial: 300ms, max: 300ms}}\n",
        ))
        .await
        .unwrap();

    let w = wait_alloc(
        &mut client,
        "waiter",
        "waiting out its back-off",
        START,
        |a| a.reason == "back_off",
    )
    .await;
    assert_eq!(
        w.status,
        AllocStatus::Running,
        "a restarting allocation is not terminal"
    );
    assert_eq!(w.exit_code, Some(2));
    assert_eq!(w.healthy, Some(false));
    assert_eq!(w.restart_count, 0);
    assert_eq!(w.message, "exited with code 2; starting again in 1h");
    let table = String::from_utf8_lossy(&skiff(&url, &["get", "allocs", "--job", "waiter"]).stdout)
        .into_owned();
    assert!(table.contains("back-off"), "{table}");

    let c = wait_alloc(&mut client, "crasher", "5 restarts", START, |a| {
        a.restart_count >= 5
    })
    .await;
    assert_eq!(c.status, AllocStatus::Running);
    assert_eq!(c.exit_code, Some(1));
    let starts = wait_for("six runs in the log", START, || {
        let t = times_of(&url, &c.id, "start");
        async move { (t.len() >= 6).then_some(t) }
    })
    .await;
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Each wait is at least its back-off: 0.3, 0.6, then capped at 0.6.
    for (i, want) in [0.3, 0.6, 0.6, 0.6, 0.6].iter().enumerate() {
        assert!(
            gaps[i] >= want - 0.05,
            "wait {i} was {:.3}s, below {want}s: {gaps:?}",
            gaps[i]
        );
    }
    // ...and the cap holds: nowhere near the uncapped 2.4s and 4.8s.
    assert!(gaps[3] < 2.4 && gaps[4] < 2.4, "{gaps:?}");

    let s = wait_alloc(&mut client, "steady", "3 restarts", START, |a| {
        a.restart_count >= 3
    })
    .await;
    let starts = wait_for("four runs in the log", START, || {
        let t = times_of(&url, &s.id, "start");
        async move { (t.len() >= 4).then_some(t) }
    })
    .await;
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // A run of 1.5s, then a 1s back-off each time. Without the reset the
    // back-offs would be 1, 2, 4s: the third gap would be 5.5s or more.
    assert!(gaps.iter().all(|g| *g >= 2.45), "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g < 4.5),
        "the back-off was reset after long runs: {gaps:?}"
    );

    let ok = wait_allocs(&mut client, "done-ok", 1, AllocStatus::Complete, START).await;
    assert_eq!(
        (ok[0].restart_count, ok[0].reason.as_str()),
        (0, "completed")
    );
    let never = wait_allocs(&mut client, "never", 1, AllocStatus::Failed, START).await;
    assert_eq!((never[0].restart_count, never[0].exit_code), (0, Some(3)));
    assert_eq!(never[0].reason, "error");
    let again = wait_alloc(&mut client, "again", "restarts after exit 0", START, |a| {
        a.restart_count >= 2
    })
    .await;
    assert_eq!(again.status, AllocStatus::Running);

    // The count shows in `skiff get allocs`.
    let table =
        String::from_utf8_lossy(&skiff(&url, &["get", "allocs", "--job", "crasher"]).stdout)
            .into_owned();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let col = header.iter().position(|h| *h == "RESTARTS").unwrap();
    assert!(row[col].parse::<u32>().unwrap() >= 5, "{table}");

    // Deleting a job stops it while it waits to restart; its last run
    // failed, and it says so.
    client.delete_job("waiter").await.unwrap();
    let w = wait_alloc(&mut client, "waiter", "stopped", START, |a| {
        a.status.is_terminal()
    })
    .await;
    assert_eq!(
        (w.status, w.reason.as_str()),
        (AllocStatus::Failed, "error")
    );
    assert!(
        w.message.ends_with("stopped while waiting to restart"),
        "{}",
        w.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_sends_the_stop_signal_then_sigkill_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let agent = AgentProc::start(&agent_dir, &server.url(), "stops", &[]);
    let mut client = server.client().await;

    // Handles SIGUSR1, its configured stop signal, and exits cleanly.
    client
        .apply_job(&job_yaml(
            "polite",
            1,
            "trap 'echo got USR1; exit 0' USR1; echo ready; while true; do sleep 0.1; done",
            "  stop_signal: SIGUSR1\n  stop_grace: 20s\n",
        ))
        .await
        .unwrap();
    // Ignores SIGTERM (a shell as PID 1 does): killed after its 1s grace.
    client
        .apply_job(&job_yaml(
            "stubborn",
            1,
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            "  stop_grace: 1s\n",
        ))
        .await
        .unwrap();
    for job in ["polite", "stubborn"] {
        let a = wait_allocs(&mut client, job, 1, AllocStatus::Running, START).await;
        let id = a[0].id.clone();
        wait_for("the container to be ready", START, || {
            let url = server.url();
            let id = id.clone();
            async move {
                let mut c = skiff_tests::connect(&url).await.ok()?;
                stdout_of(&mut c, &id).await.contains("ready").then_some(())
            }
        })
        .await;
    }

    let t = Instant::now();
    client.delete_job("polite").await.unwrap();
    let p = wait_alloc(&mut client, "polite", "stopped", START, |a| {
        a.status.is_terminal()
    })
    .await;
    let polite_took = t.elapsed();
    assert_eq!(p.status, AllocStatus::Complete);
    assert_eq!(
        p.exit_code,
        Some(0),
        "it exited by itself on SIGUSR1: {p:?}"
    );
    assert_eq!(p.message, "job deleted; stopped (exited with code 0)");
    assert!(stdout_of(&mut client, &p.id).await.contains("got USR1"));
    assert!(
        polite_took < Duration::from_secs(15),
        "no grace wait: {polite_took:?}"
    );

    let t = Instant::now();
    client.delete_job("stubborn").await.unwrap();
    let s = wait_alloc(&mut client, "stubborn", "stopped", START, |a| {
        a.status.is_terminal()
    })
    .await;
    let stubborn_took = t.elapsed();
    assert_eq!(
        s.exit_code,
        Some(137),
        "SIGKILL after the grace period: {s:?}"
    );
    assert_eq!(s.message, "job deleted; stopped (killed by signal 9)");
    assert!(stubborn_took >= Duration::from_secs(1), "{stubborn_took:?}");

    // Then runc delete, and the bundle and its rootfs are gone.
    wait_for("the containers and bundles to be gone", START, || {
        let gone = agent.containers().is_empty()
            && mounts_under(&agent_dir).is_empty()
            && std::fs::read_dir(agent_dir.join("containers"))
                .map(|d| d.count() == 0)
                .unwrap_or(true);
        async move { gone.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_check_health_restart_on_liveness_and_gate_on_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "probes", &[]);
    let mut client = server.client().await;
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    // http readiness, in the container's own network namespace.
    client
        .apply_job(&job_yaml(
            "web",
            1,
            "mkdir -p /tmp/www && echo ok > /tmp/www/healthz && exec httpd -f -p 8080 -h /tmp/www",
            "  network: none\n  probes:\n    readiness: {http: {path: /healthz, port: 8080}, period: 200ms, failure_threshold: 1}\n",
        ))
        .await
        .unwrap();
    // exec liveness: healthy for a second, then the file goes and the
    // container is killed and started again.
    client
        .apply_job(&job_yaml(
            "forgetful",
            1,
            "touch /tmp/alive; sleep 1; rm /tmp/alive; echo forgot; sleep 3600",
            "  stop_grace: 500ms\n  restart: {backoff: {initial: 200ms}}\n  probes:\n    liveness: {exec: {command: [cat, /tmp/alive]}, period: 200ms, failure_threshold: 2}\n",
        ))
        .await
        .unwrap();
    // tcp startup probe on the host network: not ready until it listens.
    client
        .apply_job(&job_yaml(
            "slow",
            1,
            &format!("sleep 2; echo listening; exec nc -ll -p {host_port} -e true"),
            "  probes:\n    startup: {tcp: {port: PORT}, period: 200ms, failure_threshold: 100}\n"
                .replace("PORT", &host_port.to_string())
                .as_str(),
        ))
        .await
        .unwrap();
    // A startup probe that never passes fails the container.
    client
        .apply_job(&job_yaml(
            "deaf",
            1,
            "sleep 3600",
            "  restart: {policy: never}\n  stop_grace: 500ms\n  network: none\n  probes:\n    startup: {tcp: {port: 9}, period: 200ms, failure_threshold: 3}\n",
        ))
        .await
        .unwrap();

    // http readiness follows the endpoint.
    let web = wait_alloc(&mut client, "web", "ready", START, |a| {
        a.healthy == Some(true)
    })
    .await;
    let table =
        String::from_utf8_lossy(&skiff(&server.url(), &["get", "allocs", "--job", "web"]).stdout)
            .into_owned();
    assert!(
        table.lines().nth(1).unwrap().contains(" yes "),
        "READY column: {table}"
    );
    let rm = client
        .exec(&web.id, &["rm".into(), "/tmp/www/healthz".into()], None)
        .await
        .unwrap();
    assert_eq!(rm.exit_code, 0);
    let web = wait_alloc(&mut client, "web", "not ready after a 404", START, |a| {
        a.healthy == Some(false)
    })
    .await;
    assert_eq!(
        web.status,
        AllocStatus::Running,
        "readiness does not restart"
    );
    assert_eq!(web.restart_count, 0);
    client
        .exec(
            &web.id,
            &[
                "sh".into(),
                "-c".into(),
                "echo ok > /tmp/www/healthz".into(),
            ],
            None,
        )
        .await
        .unwrap();
    wait_alloc(&mut client, "web", "ready again", START, |a| {
        a.healthy == Some(true)
    })
    .await;

    // exec liveness restarts.
    let f = wait_alloc(&mut client, "forgetful", "a liveness restart", START, |a| {
        a.restart_count >= 1
    })
    .await;
    assert!(f.message.contains("liveness probe failed"), "{f:?}");
    assert!(f.message.contains("/tmp/alive"), "says what failed: {f:?}");
    assert_ne!(f.exit_code, Some(0), "it was killed");
    // The new run starts with a fresh root filesystem and a new file.
    let f = wait_alloc(&mut client, "forgetful", "running again", START, |a| {
        a.restart_count >= 1 && a.reason.is_empty() && a.healthy == Some(true)
    })
    .await;
    let log = stdout_of(&mut client, &f.id).await;
    assert!(log.matches("forgot").count() >= 1, "{log}");

    // tcp startup: not ready while it sleeps, ready once it listens.
    let slow = wait_alloc(&mut client, "slow", "running, not yet ready", START, |a| {
        a.status == AllocStatus::Running && a.healthy.is_some()
    })
    .await;
    let log = stdout_of(&mut client, &slow.id).await;
    assert!(
        slow.healthy == Some(false) || log.contains("listening"),
        "ready before it listened: {slow:?} {log:?}"
    );
    let slow = wait_alloc(&mut client, "slow", "started", START, |a| {
        a.healthy == Some(true)
    })
    .await;
    assert!(stdout_of(&mut client, &slow.id).await.contains("listening"));
    assert_eq!(slow.restart_count, 0);

    let deaf = wait_alloc(
        &mut client,
        "deaf",
        "failed its startup probe",
        START,
        |a| a.status.is_terminal(),
    )
    .await;
    assert_eq!(deaf.status, AllocStatus::Failed);
    assert_eq!(deaf.reason, "probe_failed");
    assert!(
        deaf.message.starts_with("startup probe failed: tcp :9"),
        "{}",
        deaf.message
    );
}

/// The spare shims of the agent whose runc root is `root` (the agent keeps
/// one started ahead of the next container): `skiff shim --spare ROOT`
/// processes that are not yet a container's monitor (named by its
/// `state/shim.pid`).
fn spares_of(root: &std::path::Path) -> Vec<i32> {
    let monitors: Vec<i32> = std::fs::read_dir(root.parent().unwrap().join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| {
            let text = std::fs::read_to_string(c.path().join("state/shim.pid")).ok()?;
            text.split_whitespace().next()?.parse().ok()
        })
        .collect();
    let root = root.to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(pid, words)| {
            let spare = words
                .windows(3)
                .any(|w| w[0] == "shim" && w[1] == "--spare" && w[2] == root);
            spare && !monitors.contains(pid)
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_go_through_a_spare_shim_that_is_replaced_when_lost_and_ends_with_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let mut agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "spares", &[]);
    let mut client = server.client().await;
    let root = agent.runc_root();

    // One spare waits from the agent's start.
    let first = wait_for("a spare shim", START, || {
        let s = spares_of(&root);
        async move { (s.len() == 1).then(|| s[0]) }
    })
    .await;

    // A container that cannot start: runc's reason reaches the user
    // through the spare's report.
    let missing = skiff_model::JobSpec::from_yaml(&format!(
        "name: missing\ntask:\n  image: {}\n  command: [/no/such/program]\n  restart: {{policy: never}}\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        busybox_image()
    ))
    .unwrap();
    client.apply_job(&missing).await.unwrap();
    let failed = wait_allocs(&mut client, "missing", 1, AllocStatus::Failed, START).await;
    assert!(
        failed[0].message.contains("/no/such/program"),
        "{:?}",
        failed[0].message
    );

    // The spare taken by that start was replaced by another.
    let second = wait_for("a new spare shim", START, || {
        let s = spares_of(&root);
        async move { (s.len() == 1 && s[0] != first).then(|| s[0]) }
    })
    .await;
    // A spare lost while waiting (killed here): the next start still runs
    // its container, through a fresh shim.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &second.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    client
        .apply_job(&shell_job("after-loss", 1, "echo started; sleep 3600"))
        .await
        .unwrap();
    let running = wait_allocs(&mut client, "after-loss", 1, AllocStatus::Running, START).await;
    wait_for("the container's output", START, || {
        let (url, id) = (server.url(), running[0].id.clone());
        async move {
            let out = skiff(&url, &["logs", &id]);
            String::from_utf8_lossy(&out.stdout)
                .contains("started")
                .then_some(())
        }
    })
    .await;
    wait_for("a spare again", START, || {
        let s = spares_of(&root);
        async move { (s.len() == 1 && s[0] != second).then_some(()) }
    })
    .await;

    // The agent gone, its spare ends by itself (its stdin closed); the
    // running container's shim stays.
    agent.kill9();
    wait_for("the spare to end with the agent", START, || {
        let s = spares_of(&root);
        async move { s.is_empty().then_some(()) }
    })
    .await;
    assert_eq!(agent.containers().len(), 1, "{:?}", agent.containers());
    agent.kill_machine();
}

/// A stand-in for runc that needs no root: it starts `sleep` as the
/// container's init, writes its pid where `--pid-file` says, and exits.
fn fake_runtime(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-runc");
    std::fs::write(
        &path,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --pid-file ] && pidfile=$2; shift; done\nsleep 30 &\necho $! > \"$pidfile\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The shim's flags for container `id` under `dir`.
fn shim_flags(dir: &std::path::Path, id: &str, runtime: &std::path::Path) -> Vec<String> {
    let d = |x: &str| dir.join(id).join(x).display().to_string();
    [
        ("--id", id.to_string()),
        ("--bundle", d("bundle")),
        ("--state-dir", d("state")),
        ("--runtime", runtime.display().to_string()),
        ("--runtime-root", d("root")),
        ("--log-dir", d("logs")),
        ("--log-max-size", "100000".into()),
        ("--log-max-files", "2".into()),
        ("--cgroup", format!("/skiff-test/{id}")),
    ]
    .into_iter()
    .flat_map(|(f, v)| [f.to_string(), v])
    .collect()
}

/// Kills the container's init and waits for the shim's exit record.
async fn init_killed_and_recorded(state: std::path::PathBuf) {
    let pid = std::fs::read_to_string(state.join("init.pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = wait_for("the exit record", START, || {
        let text = std::fs::read_to_string(state.join("exit.json")).ok();
        async move { text }
    })
    .await;
    assert!(exit.contains("\"signal\":15"), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_monitors_a_container_as_a_spare_and_in_its_direct_form() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let runtime = fake_runtime(tmp.path());

    // Direct: `skiff shim FLAGS` exits 0 once the container runs.
    let direct = std::process::Command::new(skiff_bin())
        .arg("shim")
        .args(shim_flags(tmp.path(), "direct", &runtime))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(direct.status.success(), "{direct:?}");
    init_killed_and_recorded(tmp.path().join("direct/state")).await;

    // Spare: waits for its flags on stdin, reports `ok PID` on stdout.
    // Its report for the NUL-separated `flags`, once it exits.
    let spare = |flags: &[u8]| {
        let mut child = std::process::Command::new(skiff_bin())
            .args(["shim", "--spare", "label"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(flags).unwrap();
        let mut report = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut report)
            .unwrap();
        assert!(child.wait().unwrap().success());
        report
    };
    let mut flags = Vec::new();
    for f in shim_flags(tmp.path(), "spare", &runtime) {
        flags.extend_from_slice(f.as_bytes());
        flags.push(0);
    }
    let report = spare(&flags);
    let init = std::fs::read_to_string(tmp.path().join("spare/state/init.pid")).unwrap();
    assert_eq!(report.trim(), format!("ok {}", init.trim()));
    init_killed_and_recorded(tmp.path().join("spare/state")).await;

    // A spare given broken flags says so, and starts nothing.
    let report = spare(b"--colour\0red\0");
    assert!(report.contains("unknown flag \"--colour\""), "{report}");
}
