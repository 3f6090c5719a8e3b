//! The shim owns each container's output: timestamped, size-rotated logs
//! that keep growing while the agent is down; `skiff logs` reads them
//! back; `skiff exec` runs commands in a container. Real agents, real runc.

use std::time::Duration;

use skiff_model::AllocStatus;
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// Lines `PREFIX N` in `text`, as numbers, in order.
fn numbers(text: &str, prefix: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

fn consecutive(v: &[u32]) -> bool {
    v.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_rotated_by_size_and_read_back_across_files() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "rotating",
        &["--log-max-size", "4Ki", "--log-max-files", "3"],
    );
    let mut client = server.client().await;
    let url = server.url();

    // 400 lines at once: far more than three 4 KiB files hold.
    client
        .apply_job(&shell_job(
            "chatty",
            1,
            "i=0; while [ $i -lt 400 ]; do echo \"line $i\"; i=$((i+1)); done; echo finished >&2",
        ))
        .await
        .unwrap();
    // 300 lines over about three seconds, read with -f as they come.
    client
        .apply_job(&shell_job(
            "steady",
            1,
            "sleep 1; i=1; while [ $i -le 300 ]; do echo \"f $i\"; i=$((i+1)); usleep 10000; done",
        ))
        .await
        .unwrap();
    let steady = wait_allocs(&mut client, "steady", 1, AllocStatus::Running, START).await;
    let follow = tokio::task::spawn_blocking({
        let (url, id) = (url.clone(), steady[0].short_id().to_string());
        move || skiff(&url, &["logs", "-f", &id])
    });

    let a = wait_allocs(&mut client, "chatty", 1, AllocStatus::Complete, START).await;
    let dir = agent_dir.join("logs").join(&a[0].id);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["container.log", "container.log.1", "container.log.2"]
    );
    for f in &files {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 4096, "{f} is {len} bytes");
    }
    // On disk: CRI lines, timestamp, stream, F.
    let raw = std::fs::read_to_string(dir.join("container.log")).unwrap();
    let last = raw.lines().last().unwrap();
    assert!(last.ends_with("Z stderr F finished"), "{last}");

    // `skiff logs` reads the kept files in order: the newest lines, no gaps.
    let out = skiff(&url, &["logs", &a[0].id]);
    let text = String::from_utf8_lossy(&out.stdout);
    let n = numbers(&text, "line ");
    assert_eq!(*n.last().unwrap(), 399, "{text}");
    assert!(n[0] > 0, "the oldest lines were rotated away");
    assert!(consecutive(&n), "{n:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "finished\n");
    let tail = skiff(&url, &["logs", "--tail", "3", &a[0].id]);
    assert_eq!(
        String::from_utf8_lossy(&tail.stdout),
        "line 397\nline 398\nline 399\n"
    );
    let only_err = skiff(&url, &["logs", "--stderr", &a[0].id]);
    assert!(only_err.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&only_err.stderr), "finished\n");
    let stamped = skiff(&url, &["logs", "--timestamps", "--tail", "1", &a[0].id]);
    let line = String::from_utf8_lossy(&stamped.stdout).into_owned();
    let (ts, msg) = line.trim_end().split_once(' ').unwrap();
    assert_eq!(msg, "line 399");
    assert!(
        ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    // Following across about ten rotations lost nothing, and ended with
    // the container.
    let out = follow.await.unwrap();
    assert!(out.status.success());
    let n = numbers(&String::from_utf8_lossy(&out.stdout), "f ");
    assert_eq!(n, (1..=300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_the_output_and_exit_code_of_a_command_in_the_container() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "exec", &[]);
    let mut client = server.client().await;
    let url = server.url();
    client
        .apply_job(&job_yaml(
            "box",
            1,
            "echo inside > /tmp/note; sleep 3600",
            "",
        ))
        .await
        .unwrap();
    client
        .apply_job(&shell_job("gone", 1, "true"))
        .await
        .unwrap();
    let a = wait_allocs(&mut client, "box", 1, AllocStatus::Running, START).await;
    let id = a[0].short_id().to_string();

    let out = skiff(
        &url,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "cat /tmp/note; hostname; echo oops >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "the command's exit code");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\nbox-0\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // An exec'd process is as locked down as the container.
    let caps = skiff(
        &url,
        &[
            "exec",
            &id,
            "--",
            "grep",
            "-E",
            "CapEff|Seccomp:",
            "/proc/self/status",
        ],
    );
    let text = String::from_utf8_lossy(&caps.stdout);
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");

    // A timeout kills the command itself, not only the client.
    let t = std::time::Instant::now();
    let slow = skiff(
        &url,
        &["exec", "--timeout", "500ms", &id, "--", "sleep", "30"],
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(slow.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&slow.stderr).contains("--timeout"));
    let ps = skiff(&url, &["exec", &id, "--", "ps", "-o", "args"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("sleep 30"),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // A program that is not there, and a container that is not running.
    let missing = skiff(&url, &["exec", &id, "--", "/no/such/program"]);
    assert_ne!(missing.status.code(), Some(0));
    let g = wait_allocs(&mut client, "gone", 1, AllocStatus::Complete, START).await;
    let dead = skiff(&url, &["exec", g[0].short_id(), "--", "true"]);
    assert_eq!(dead.status.code(), Some(1));
    let err = String::from_utf8_lossy(&dead.stderr);
    assert!(err.contains("has no running container"), "{err}");
    let usage = skiff(&url, &["exec", &id]);
    assert_eq!(usage.status.code(), Some(2), "a command is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_agent_is_down_logs_grow_restart_counts_hold_and_exits_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    // The agent stays down longer than the default heartbeat TTL, after
    // which the node would (rightly) be declared down and its work replaced.
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &["--heartbeat-ttl", "60s"],
    );
    let mut agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "phoenix", &[]);
    let mut client = server.client().await;
    let url = server.url();
    client
        .apply_job(&job_yaml(
            "ticker",
            1,
            "i=0; while true; do echo \"tick $i\"; i=$((i+1)); usleep 100000; done",
            "",
        ))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml(
            "crashy",
            1,
            "exit 5",
            "  restart: {backoff: {initial: 200ms, max: 200ms}}\n",
        ))
        .await
        .unwrap();
    client
        .apply_job(&shell_job("late", 1, "sleep 2; exit 9"))
        .await
        .unwrap();
    let t = wait_allocs(&mut client, "ticker", 1, AllocStatus::Running, START).await;
    wait_alloc(&mut client, "crashy", "a few restarts", START, |a| {
        a.restart_count >= 3
    })
    .await;
    let late = wait_allocs(&mut client, "late", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    let pid_before = agent
        .containers()
        .into_iter()
        .find(|(id, _, _)| id.ends_with(&t[0].id))
        .map(|c| c.1);

    let out = skiff(&url, &["logs", &t[0].id]);
    let last_tick = numbers(&String::from_utf8_lossy(&out.stdout), "tick ")
        .last()
        .copied()
        .unwrap_or(0);

    agent.kill9();
    // Down until `late` has exited (its shim records the exit) and the
    // ticker's shim has written ten more ticks to its log file.
    let exit_record = agent
        .data_dir
        .join("containers")
        .join(&late.id)
        .join("state/exit.json");
    let ticker_log = agent
        .data_dir
        .join("logs")
        .join(&t[0].id)
        .join("container.log");
    let wanted = format!("tick {}\n", last_tick + 10);
    wait_for(
        "late's exit record and ten more ticks while the agent is down",
        START,
        || {
            let log = std::fs::read_to_string(&ticker_log).unwrap_or_default();
            let done = exit_record.exists() && log.contains(&wanted);
            async move { done.then_some(()) }
        },
    )
    .await;
    let before_restart = client.list_allocs(Some("crashy"), None).await.unwrap()[0].restart_count;
    agent.restart();

    let late = wait_allocs(&mut client, "late", 1, AllocStatus::Failed, START).await;
    assert_eq!(late[0].exit_code, Some(9), "the exit it missed");
    let crashy = wait_alloc(&mut client, "crashy", "restarting again", START, |a| {
        a.restart_count > before_restart
    })
    .await;
    assert!(
        crashy.restart_count > before_restart,
        "the count went on, not from 0"
    );
    let pid_after = agent
        .containers()
        .into_iter()
        .find(|(id, _, _)| id.ends_with(&t[0].id))
        .map(|c| c.1);
    assert!(pid_before.is_some());
    assert_eq!(pid_before, pid_after, "the ticker kept its pid");

    // The shim kept writing the ticker's log while the agent was down.
    let out = skiff(&url, &["logs", &t[0].id]);
    let n = numbers(&String::from_utf8_lossy(&out.stdout), "tick ");
    assert!(n.len() as u32 > last_tick + 10, "{n:?}");
    assert!(consecutive(&n), "no gap in the log: {n:?}");
    let ticker = wait_allocs(&mut client, "ticker", 1, AllocStatus::Running, START).await;
    assert_eq!(ticker[0].restart_count, 0);
}
