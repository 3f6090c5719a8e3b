//! What a container may do and what it gets: the locked-down defaults,
//! the security options, resource limits and OOM kills, the root
//! filesystem from the image cache, the runtime choice and reserved
//! resources. Real agents, real runc.

use std::time::Duration;

use skiff_model::AllocStatus;
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// `KEY: hex` lines of /proc/self/status as numbers.
fn status_hex(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {out:?}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn value_of<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;
/// Docker's 14 default capabilities.
const DOCKER_DEFAULT_CAPS: u64 = 0xa80425fb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_container_is_locked_down_and_options_loosen_or_tighten_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "locked", &[]);
    let mut client = server.client().await;

    let probe = r#"grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
mount -t tmpfs none /mnt 2>/dev/null && echo mount=yes || echo mount=no
unshare -U true 2>/dev/null && echo unshare=yes || echo unshare=no
unshare -n true 2>/dev/null && echo unshare_net=yes || echo unshare_net=no
(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo procsys=writable || echo procsys=readonly
mknod /tmp/disk b 8 0 2>/dev/null; (head -c1 /tmp/disk >/dev/null) 2>/dev/null && echo device=readable || echo device=denied
touch /written 2>/dev/null && echo rootfs=writable || echo rootfs=readonly
ip link set lo mtu 1300 2>/dev/null && echo netadmin=yes || echo netadmin=no
echo uid=$(id -u) gid=$(id -g)"#;
    let with_none = |name: &str, extra: &str| {
        job_yaml(
            name,
            1,
            probe,
            &format!("  network: none\n  restart: {{policy: never}}\n{extra}"),
        )
    };
    client.apply_job(&with_none("plain", "")).await.unwrap();
    client
        .apply_job(&with_none(
            "hardened",
            "  security: {read_only_rootfs: true, user: '1000:1000', cap_drop: [ALL]}\n",
        ))
        .await
        .unwrap();
    // A capability beyond Docker's defaults needs the namespace's policy.
    let netadmin = with_none("netadmin", "  security: {cap_add: [NET_ADMIN]}\n");
    let err = client.apply_job(&netadmin).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(skiff_client::Code::PermissionDenied),
        "{err}"
    );
    assert!(err.to_string().contains("NET_ADMIN"), "{err}");
    let policy = skiff_model::namespace::Namespace::from_yaml(
        "name: default\npolicy: {capabilities: [NET_ADMIN]}\n",
    )
    .unwrap();
    client.apply_namespace(&policy).await.unwrap();
    client.apply_job(&netadmin).await.unwrap();

    let plain = wait_allocs(&mut client, "plain", 1, AllocStatus::Complete, START).await;
    let out = stdout_of(&mut client, &plain[0].id).await;
    let eff = status_hex(&out, "CapEff");
    assert_eq!(eff, DOCKER_DEFAULT_CAPS, "Docker's default set: {out}");
    assert_eq!(eff & CAP_SYS_ADMIN, 0, "no CAP_SYS_ADMIN: {out}");
    assert_eq!(status_hex(&out, "CapBnd"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_hex(&out, "CapInh"), 0, "no inheritable caps");
    assert_eq!(status_hex(&out, "CapAmb"), 0, "no ambient caps");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "a seccomp filter is on: {out}");
    assert_eq!(value_of(&out, "mount"), "no");
    assert_eq!(
        value_of(&out, "unshare"),
        "no",
        "seccomp refuses new user namespaces"
    );
    assert_eq!(value_of(&out, "unshare_net"), "no");
    assert_eq!(value_of(&out, "procsys"), "readonly");
    assert_eq!(
        value_of(&out, "device"),
        "denied",
        "the device cgroup denies disks"
    );
    assert_eq!(value_of(&out, "rootfs"), "writable");
    assert_eq!(value_of(&out, "netadmin"), "no");
    assert!(out.contains("uid=0 gid=0"), "{out}");

    let hard = wait_allocs(&mut client, "hardened", 1, AllocStatus::Complete, START).await;
    let out = stdout_of(&mut client, &hard[0].id).await;
    assert_eq!(status_hex(&out, "CapEff"), 0, "cap_drop ALL: {out}");
    assert_eq!(status_hex(&out, "CapBnd"), 0, "{out}");
    assert_eq!(value_of(&out, "rootfs"), "readonly");
    assert!(out.contains("uid=1000 gid=1000"), "{out}");

    let net = wait_allocs(&mut client, "netadmin", 1, AllocStatus::Complete, START).await;
    let out = stdout_of(&mut client, &net[0].id).await;
    assert_eq!(
        status_hex(&out, "CapEff"),
        DOCKER_DEFAULT_CAPS | CAP_NET_ADMIN,
        "{out}"
    );
    assert_eq!(value_of(&out, "netadmin"), "yes", "cap_add works: {out}");
    assert_eq!(value_of(&out, "unshare"), "no", "still no namespaces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_show_in_the_cgroup_and_an_oom_kill_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "limits", &[]);
    let mut client = server.client().await;

    let cgroup = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; cat /sys/fs/cgroup/cpu/cpu.cfs_period_us; \
                  cat /sys/fs/cgroup/pids/pids.max";
    client
        .apply_job(&job_yaml(
            "limited",
            1,
            cgroup,
            "  restart: {policy: never}\n  pids_limit: 77\n  resources: {cpu: 250m, memory: 48Mi}\n",
        ))
        .await
        .unwrap();
    // The container's own process is killed: failed, oom_killed.
    client
        .apply_job(&job_yaml(
            "hog",
            1,
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            "  restart: {policy: never}\n  resources: {cpu: 100m, memory: 16Mi}\n",
        ))
        .await
        .unwrap();
    // A child is killed but the container exits 0: complete.
    client
        .apply_job(&job_yaml(
            "survivor",
            1,
            "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?",
            "  restart: {policy: never}\n  resources: {cpu: 100m, memory: 16Mi}\n",
        ))
        .await
        .unwrap();

    let a = wait_allocs(&mut client, "limited", 1, AllocStatus::Complete, START).await;
    let out = stdout_of(&mut client, &a[0].id).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [&(48u64 << 20).to_string(), "25000", "100000", "77"][..]
    );

    let hog = wait_allocs(&mut client, "hog", 1, AllocStatus::Failed, START).await;
    assert_eq!(hog[0].reason, "oom_killed", "{hog:#?}");
    assert_eq!(hog[0].exit_code, Some(137));
    assert!(hog[0].message.contains("OOM killer"), "{}", hog[0].message);
    let table = skiff(&server.url(), &["get", "allocs", "--job", "hog"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("oom-killed"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );

    let s = wait_allocs(&mut client, "survivor", 1, AllocStatus::Complete, START).await;
    assert_eq!(s[0].reason, "completed");
    assert_eq!(stdout_of(&mut client, &s[0].id).await, "dd=137\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_unpacked_image_through_overlays_and_keep_their_writes_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "overlay",
        &["--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    let mut spec = job_yaml("ten", 10, "sleep 3600", "");
    spec.task.resources.memory_bytes = 16 << 20;
    client.apply_job(&spec).await.unwrap();
    let allocs = wait_allocs(&mut client, "ten", 10, AllocStatus::Running, START).await;

    // One unpacked image, unpacked once.
    let cache: Vec<_> = std::fs::read_dir(agent_dir.join("images/rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert_eq!(agent.log().matches("unpacking image").count(), 1);
    // Every container's root is an overlay on it.
    let overlays: Vec<_> = mounts_under(&agent_dir.join("containers"))
        .into_iter()
        .filter(|(_, fstype, _)| fstype == "overlay")
        .collect();
    assert_eq!(overlays.len(), 10, "{overlays:?}");
    for (point, _, options) in &overlays {
        assert!(point.ends_with("bundle/rootfs"), "{point:?}");
        assert!(
            options.contains(&format!("lowerdir={}", cache[0].display())),
            "{options}"
        );
    }
    // A write in one replica is its own.
    let (one, two) = (&allocs[0].id, &allocs[1].id);
    let w = client
        .exec(
            one,
            &["sh".into(), "-c".into(), "echo mine > /bin/marker".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(w.exit_code, 0, "{w:?}");
    let r = client
        .exec(two, &["cat".into(), "/bin/marker".into()], None)
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "the other replica does not see it");
    assert!(!cache[0].join("bin/marker").exists(), "nor does the cache");

    client.delete_job("ten").await.unwrap();
    wait_for("the replicas to stop", START, || {
        let url = server.url();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let a = allocs_of(&mut c, "ten").await;
            a.iter()
                .all(|a| a.status == AllocStatus::Complete)
                .then_some(())
        }
    })
    .await;
    wait_for(
        "the overlays to be unmounted and bundles removed",
        START,
        || {
            let left = mounts_under(&agent_dir.join("containers")).len();
            let bundles = std::fs::read_dir(agent_dir.join("containers"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().join("bundle").exists())
                        .count()
                })
                .unwrap_or(0);
            async move { (left == 0 && bundles == 0).then_some(()) }
        },
    )
    .await;
    assert!(agent.containers().is_empty());
    assert!(cache[0].join("bin/busybox").is_file(), "the cache stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_mode_gives_each_container_a_plain_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(&agent_dir, &server.url(), "copier", &["--rootfs", "copy"]);
    let mut client = server.client().await;
    client
        .apply_job(&shell_job("copied", 1, "echo hi > /hello; cat /hello"))
        .await
        .unwrap();
    let a = wait_allocs(&mut client, "copied", 1, AllocStatus::Complete, START).await;
    assert_eq!(stdout_of(&mut client, &a[0].id).await, "hi\n");
    // No overlay: nothing is mounted for its root filesystem. (Its
    // network namespace, under network/, goes with its cleanup.)
    assert!(mounts_under(&agent_dir.join("containers")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_is_refused_at_startup_on_a_hybrid_cgroup_host() {
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    let hybrid =
        std::path::Path::new("/sys/fs/cgroup/memory").is_dir() && !controllers.trim().is_empty();
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    // A runtime that says it is crun, found by path.
    let fake = tmp.path().join("bin/crun-latest");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(&fake, "#!/bin/sh\necho 'crun version 1.8.1'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (i, runtime) in ["crun", fake.to_str().unwrap()].into_iter().enumerate() {
        let mut agent = AgentProc::start(
            &tmp.path().join(format!("agent{i}")),
            &server.url(),
            &format!("crun{i}"),
            &["--runtime", runtime],
        );
        let status = agent.wait_exit(Duration::from_secs(10));
        if hybrid {
            let status = status.expect("the agent refuses to start");
            assert!(!status.success());
            let log = agent.log();
            assert!(
                log.contains("crun cannot run containers on this host"),
                "{log}"
            );
            assert!(log.contains("hybrid mode"), "{log}");
            assert!(log.contains(controllers.trim()), "{log}");
            assert!(log.contains("--runtime runc"), "names the way out: {log}");
        } else if runtime != "crun" || which("crun").is_some() {
            assert!(status.is_none(), "accepted where cgroups are not hybrid");
        }
    }
    // runc is fine here.
    let _ok = AgentProc::start(
        &tmp.path().join("agent-runc"),
        &server.url(),
        "runc-node",
        &[],
    );
    let mut client = server.client().await;
    wait_for("the runc agent to register", START, || {
        let url = server.url();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let nodes = c.list_nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.node.name == "runc-node")
                .then_some(())
        }
    })
    .await;
    assert!(client
        .list_nodes()
        .await
        .unwrap()
        .iter()
        .all(|n| !n.node.name.starts_with("crun")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_resources_lower_what_the_node_offers() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "reserved",
        &["--reserve", "cpu=500m,memory=256Mi"],
    );
    let mut client = server.client().await;
    let node = wait_for("the node to register", START, || {
        let url = server.url();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            c.list_nodes()
                .await
                .ok()?
                .into_iter()
                .find(|n| n.node.name == "reserved")
        }
    })
    .await
    .node;
    assert_eq!(node.allocatable.cpu_millis, node.capacity.cpu_millis - 500);
    assert_eq!(
        node.allocatable.memory_bytes,
        node.capacity.memory_bytes - (256 << 20)
    );
    // A task that fits the machine but not what it offers waits.
    let mut spec = shell_job("big", 1, "true");
    spec.task.resources.memory_bytes = node.capacity.memory_bytes - (128 << 20);
    client.apply_job(&spec).await.unwrap();
    let why = wait_for("an explanation", START, || {
        let url = server.url();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let d = c.get_job("big").await.ok()?;
            d.latest_eval
                .filter(|e| e.status == "blocked")
                .map(|e| e.message)
        }
    })
    .await;
    assert!(why.contains("insufficient memory"), "{why}");
    // Reserving more than the machine has is refused at startup.
    let mut greedy = AgentProc::start(
        &tmp.path().join("agent2"),
        &server.url(),
        "greedy",
        &["--reserve", "memory=100Ti"],
    );
    let status = greedy.wait_exit(Duration::from_secs(10)).expect("refused");
    assert!(!status.success());
    assert!(
        greedy.log().contains("is more than this node has"),
        "{}",
        greedy.log()
    );
}

/// Runs `sh -c script` as the unprivileged host user `nobody` (uid and gid
/// 65534, no supplementary groups) and returns its stdout.
fn as_nobody(script: &str) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("runs sh as nobody");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_cannot_reach_a_containers_files_its_setuid_binaries_logs_or_the_cluster_state()
{
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // Like /var/lib: anyone may pass through the parent.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "private",
        &["--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    // Root in the container (default capabilities) makes a setuid-root
    // copy of its shell, and prints a secret from its environment.
    let spec = job_yaml(
        "suid",
        1,
        "cp /bin/busybox /tmp/rootshell && chmod 4755 /tmp/rootshell && echo made $SECRET_TOKEN; sleep 3600",
        "  env: {SECRET_TOKEN: hunter2}\n",
    );
    client.apply_job(&spec).await.unwrap();
    let alloc = wait_allocs(&mut client, "suid", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    let bundle = agent_dir.join("containers").join(&alloc.id).join("bundle");
    let made = [
        bundle.join("overlay/upper/tmp/rootshell"),
        bundle.join("rootfs/tmp/rootshell"),
    ];
    // The container made it setuid (cp, then chmod).
    wait_for("the setuid file", START, || async {
        made.iter()
            .all(|p| p.exists() && mode_of(p) & 0o4000 != 0)
            .then_some(())
    })
    .await;

    // What a host user would go after.
    let log = agent_dir.join("logs").join(&alloc.id);
    let mut targets: Vec<std::path::PathBuf> = made.to_vec();
    targets.push(bundle.join("config.json"));
    targets.push(log.clone());
    targets.push(tmp.path().join("server/raft"));
    targets.push(tmp.path().join("server/state"));
    targets.push(agent_dir.join("images"));
    let list = targets
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(" ");
    let reached = as_nobody(&format!(
        "for p in {list}; do if [ -e \"$p\" ] || [ -r \"$p\" ]; then echo \"reached $p\"; fi; done; \
         '{}' id -u 2>/dev/null; cat '{}' 2>/dev/null; echo done",
        made[0].display(),
        bundle.join("config.json").display()
    ));
    assert_eq!(reached.trim(), "done", "a host user reached: {reached}");

    // And the files themselves are their owner's only, should a directory
    // above ever be opened up.
    for dir in [
        agent_dir.clone(),
        tmp.path().join("server"),
        tmp.path().join("server/raft"),
        tmp.path().join("server/state"),
    ] {
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode_of(&bundle.join("config.json")), 0o600);
    let logs: Vec<_> = std::fs::read_dir(&log).unwrap().flatten().collect();
    assert!(!logs.is_empty());
    for f in logs {
        assert_eq!(mode_of(&f.path()) & 0o077, 0, "{}", f.path().display());
    }
    for f in std::fs::read_dir(tmp.path().join("server/raft"))
        .unwrap()
        .flatten()
    {
        assert_eq!(mode_of(&f.path()) & 0o077, 0, "{}", f.path().display());
    }
    // The container itself still works as before.
    let out = client
        .exec(
            &alloc.id,
            &[
                "sh".into(),
                "-c".into(),
                "ls -l /tmp/rootshell && id -u".into(),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
}
