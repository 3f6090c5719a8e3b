//! Harness for Skiff's end-to-end tests: starts real `skiff server` and
//! `skiff agent` processes on loopback with temporary data directories,
//! builds a real busybox OCI image with umoci, and cleans up the runc
//! containers an agent leaves behind.
//!
//! The tests need root, runc, umoci and busybox-static (`make test`
//! installs them). They fail, rather than skip, when something is missing.
#![allow(unsafe_code)]

pub mod cluster;
pub mod dev;
pub mod gpus;
pub mod host;
pub mod linearizability;
pub mod net;
pub mod pki;
pub mod prom;
pub mod registry;
pub mod structure;

pub use host::{mounts_under, processes};
pub use net::{allow_host_network, remove_bridge};
pub use pki::{connect, join_token, skiff_command, test_pki};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use skiff_client::Client;
use skiff_model::{AllocStatus, Allocation, JobSpec};

/// The `skiff` binary built next to this test (`make test` builds it first).
pub fn skiff_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/skiff
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("skiff");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p skiff` (`make test` does)",
        bin.display()
    );
    bin
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails the test early, with the reason, when the machine cannot run containers.
pub fn require_container_host() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests need root (runc does)"
    );
    for tool in ["runc", "umoci", "busybox"] {
        assert!(
            which(tool).is_some(),
            "{tool} is not installed: run `make deps` (apt-get install runc umoci busybox-static)"
        );
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A busybox OCI layout built once per test process with umoci.
/// `--image-roots` for a test agent that names none itself: the system's
/// temporary directory, where the tests build and copy their layouts.
pub fn test_image_roots<S: AsRef<std::ffi::OsStr>>(extra: &[S]) -> Vec<String> {
    if extra.iter().any(|a| a.as_ref() == "--image-roots") {
        return Vec::new();
    }
    vec![
        "--image-roots".to_string(),
        std::env::temp_dir().display().to_string(),
    ]
}

pub fn busybox_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        require_container_host();
        remove_stale_dirs("skiff-test-images-");
        let dir = std::env::temp_dir().join(format!("skiff-test-images-{}", std::process::id()));
        let layout = dir.join("busybox");
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/build-busybox-image.sh"))
            .arg(&layout)
            .arg("latest")
            .stdout(Stdio::null())
            .status()
            .expect("run build-busybox-image.sh");
        assert!(status.success(), "building the busybox image failed");
        layout
    })
}

/// Removes the temporary directories named `PREFIX<pid>` that test
/// processes which have ended left.
pub(crate) fn remove_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// `oci:LAYOUT:latest` for the test busybox image.
pub fn busybox_image() -> String {
    format!("oci:{}:latest", busybox_layout().display())
}

/// A one-shot job running `script` under `sh -c` in busybox: restart
/// policy `never`, so its allocations end when the script does.
pub fn shell_job(name: &str, replicas: u32, script: &str) -> JobSpec {
    job_yaml(name, replicas, script, "  restart: {policy: never}\n")
}

/// A job running `script` under `sh -c` in busybox, with `extra` (YAML
/// lines indented under `task:`) added to its task.
pub fn job_yaml(name: &str, replicas: u32, script: &str, extra: &str) -> JobSpec {
    let yaml = format!(
        "name: {name}\nreplicas: {replicas}\ntask:\n  image: {}\n  command: [sh, -c, {}]\n  resources: {{cpu: 100m, memory: 32Mi}}\n{extra}",
        busybox_image(),
        serde_json::to_string(script).unwrap()
    );
    JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("test spec is invalid: {e}\n{yaml}"))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`
/// with `what` and the last value seen.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The wall clock as the servers read it for the timestamps they record
/// (`healthy_since_ms`, ...): milliseconds since the Unix epoch. The test
/// and its servers share the machine, so they share the clock.
pub fn skiff_server_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits until `ready` holds for the job's allocations *and* the scheduler
/// has seen them as they are: the job's latest evaluation is no longer
/// pending and is at least as new as every allocation of the job. (A change
/// that asks for the job to be planned again raises its pending
/// evaluation's index, and a plan made before it leaves the evaluation
/// pending; see the state machine's `create_eval`.) Whatever the scheduler
/// would do about the present state has then been done, so a test can
/// assert that nothing more happens without sleeping. Only for jobs whose
/// allocation changes ask for an evaluation: a rollout in progress (or
/// paused), a batch job, a gang.
pub async fn wait_scheduler_saw(
    client: &mut Client,
    job: &str,
    what: &str,
    ready: impl Fn(&[Allocation]) -> bool,
) -> Vec<Allocation> {
    let limit = Duration::from_secs(60);
    wait_for(&format!("{what}, seen by the scheduler"), limit, || {
        let mut c = client.clone();
        let ready = &ready;
        async move {
            let d = c.get_job(job).await.ok()?;
            let eval = d.latest_eval?;
            let newest = d.allocs.iter().map(|a| a.modify_index).max().unwrap_or(0);
            (ready(&d.allocs) && eval.status != "pending" && eval.modify_index >= newest)
                .then_some(d.allocs)
        }
    })
    .await
}

/// A `skiff server` process.
pub struct ServerProc {
    pub data_dir: PathBuf,
    pub addr: String,
    child: Option<Child>,
    log: PathBuf,
    extra: Vec<String>,
    insecure: bool,
}

impl ServerProc {
    /// Starts a server on a free loopback port.
    pub fn start(data_dir: &Path) -> ServerProc {
        Self::start_on(data_dir, "127.0.0.1:0")
    }

    /// Starts a server on `addr` (port 0 for a free one) and waits until it
    /// reports the address it listens on.
    pub fn start_on(data_dir: &Path, addr: &str) -> ServerProc {
        Self::start_with(data_dir, addr, &[])
    }

    /// Like [`ServerProc::start_on`], with extra arguments (`--id`,
    /// `--peers`, `--join`, ...) that a restart repeats. The server is a
    /// founding server of the test CA ([`test_pki`]); with `--join URL` it
    /// joins with a server token from that server instead; with
    /// `--insecure`, neither.
    pub fn start_with(data_dir: &Path, addr: &str, extra: &[&str]) -> ServerProc {
        Self::start_with_env(data_dir, addr, extra, &[])
    }

    /// Like [`ServerProc::start_with`], with environment variables for
    /// the process (`SSL_CERT_FILE`: the roots its HTTPS clients trust);
    /// a restart does not repeat them.
    pub fn start_with_env(
        data_dir: &Path,
        addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let has = |flag: &str| extra.contains(&flag);
        let insecure = has("--insecure");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(i) = extra.iter().position(|a| a == "--join") {
            if !has("--token") {
                let token = join_token(&extra[i + 1], "server");
                extra.extend(["--token".to_string(), token]);
            }
        }
        if !has("--node-subnets") {
            extra.extend([
                "--node-subnets".to_string(),
                net::slot_subnets(net::net_slot()).0,
            ]);
        }
        // Tests run side by side: a free port each.
        if !has("--metrics-addr") {
            extra.extend(["--metrics-addr".to_string(), "127.0.0.1:0".to_string()]);
        }
        if !has("--join") && !has("--insecure") && !has("--ca-cert") {
            let pki = test_pki();
            extra.extend([
                "--ca-cert".to_string(),
                pki.ca_cert.display().to_string(),
                "--ca-key".to_string(),
                pki.ca_key.display().to_string(),
            ]);
        }
        std::fs::create_dir_all(data_dir).unwrap();
        let addr_file = data_dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = data_dir.join("server.log");
        let child = Command::new(skiff_bin())
            .args([
                "server",
                "--api",
                addr,
                "--peer-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(&extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .spawn()
            .expect("spawn skiff server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let bound = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        ServerProc {
            data_dir: data_dir.to_path_buf(),
            addr: bound.trim().to_string(),
            child: Some(child),
            log,
            extra,
            insecure,
        }
    }

    /// `https://ADDR` (`http://` for an `--insecure` server).
    pub fn url(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client with the administrator's credentials, once the server
    /// takes connections.
    pub async fn client(&self) -> Client {
        let url = self.url();
        wait_for(
            "the server to accept connections",
            Duration::from_secs(20),
            || {
                let url = url.clone();
                async move { connect(&url).await.ok() }
            },
        )
        .await
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let again = ServerProc::start_with(&self.data_dir, &self.addr, &extra);
        self.child = again.child_take();
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file")
}

/// A `skiff agent` process and the containers it started.
pub struct AgentProc {
    pub name: String,
    pub data_dir: PathBuf,
    server_url: String,
    extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// Run inside this network namespace (`ip netns add`), listening on
    /// `listen`.
    netns: Option<String>,
    listen: String,
    /// The bridge the harness gave it, removed when it is dropped.
    own_bridge: Option<String>,
}

impl AgentProc {
    /// [`AgentProc::start`] inside network namespace `netns` (a simulated
    /// host the test made), its API on `listen` (`IP:0`).
    pub fn start_in(
        netns: &str,
        listen: &str,
        data_dir: &Path,
        server_url: &str,
        name: &str,
        extra: &[&str],
    ) -> AgentProc {
        let mut a = Self::prepare(data_dir, server_url, name, extra);
        a.netns = Some(netns.to_string());
        a.listen = listen.to_string();
        a.spawn();
        a
    }

    /// Starts `skiff agent` for node `name`. Unless `extra` says
    /// `--insecure` or brings a `--token`, the node joins with a node token
    /// from the first of the servers in `server_url` (once: a restart finds
    /// its credentials in DATA_DIR/tls).
    pub fn start(data_dir: &Path, server_url: &str, name: &str, extra: &[&str]) -> AgentProc {
        let mut a = Self::prepare(data_dir, server_url, name, extra);
        a.spawn();
        a
    }

    fn prepare(data_dir: &Path, server_url: &str, name: &str, extra: &[&str]) -> AgentProc {
        require_container_host();
        let has = |flag: &str| extra.contains(&flag);
        let needs_token = !has("--insecure") && !has("--token") && !data_dir.join("tls").exists();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A bridge of its own (removed when dropped), unless the test
        // names one.
        let own_bridge = (!has("--bridge")).then(|| net::slot_bridge('a', net::net_slot()));
        if let Some(b) = &own_bridge {
            extra.extend(["--bridge".to_string(), b.clone()]);
        }
        // Tests reach no resolver outside the machine.
        if !has("--dns-upstream") {
            extra.extend(["--dns-upstream".to_string(), "none".to_string()]);
        }
        // Metrics on a free port (DATA_DIR/metrics.addr names it).
        if !has("--metrics-addr") {
            extra.extend(["--metrics-addr".to_string(), "127.0.0.1:0".to_string()]);
        }
        if needs_token {
            let first = server_url.split(',').next().unwrap_or(server_url);
            let token = join_token(first, "node");
            extra.extend(["--token".to_string(), token]);
        }
        AgentProc {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            server_url: server_url.to_string(),
            extra,
            child: None,
            log: data_dir.join("agent.log"),
            netns: None,
            listen: "127.0.0.1:0".into(),
            own_bridge,
        }
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let mut cmd = match &self.netns {
            // nsenter, not `ip netns exec`: that mounts a /sys of the
            // namespace's own, hiding the cgroup file system from runc.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(skiff_bin());
                c
            }
            None => Command::new(skiff_bin()),
        };
        let child = cmd
            .args(["agent", "--listen", &self.listen, "--name", &self.name])
            .arg("--server")
            .arg(&self.server_url)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(test_image_roots(&self.extra))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log_file(&self.log))
            .spawn()
            .expect("spawn skiff agent");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The machine is lost: SIGKILL for the agent, every container's
    /// monitor and every process in its containers.
    pub fn kill_machine(&mut self) {
        self.kill9();
        let dir = self.data_dir.to_string_lossy().into_owned();
        for (pid, words) in processes() {
            let shim = words.iter().skip(1).any(|w| w == "shim");
            if shim && words.iter().any(|w| w.contains(&dir)) {
                // SAFETY: kill only sends a signal.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        for (id, _, _) in self.containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["kill", "--all", &id, "KILL"])
                .output();
        }
    }

    /// Freezes the agent (SIGSTOP): it stops heartbeating; its containers
    /// keep running, as with a network partition.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused agent (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn runc_root(&self) -> PathBuf {
        self.data_dir.join("runc")
    }

    /// Containers runc knows under this agent's root: (id, pid, status).
    pub fn containers(&self) -> Vec<(String, i64, String)> {
        // `runc list` skips, with a line on stderr, a container it cannot
        // read at that moment (one being made or removed beside it, a
        // state it could not load under load): ask again, a bounded
        // number of times, rather than read a partial list as the truth.
        let list = || {
            Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["list", "--format", "json"])
                .output()
                .expect("runc list")
        };
        let mut out = list();
        for _ in 0..40 {
            if out.status.success() && out.stderr.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            out = list();
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["id"].as_str().unwrap_or_default().to_string(),
                            c["pid"].as_i64().unwrap_or(0),
                            c["status"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the agent process to exit by itself (it refused to
    /// start, say) and returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProc {
    /// Kills the agent, then every container it left (their shims then
    /// exit), and unmounts the containers' overlay root filesystems.
    fn drop(&mut self) {
        self.kill9();
        remove_containers(&self.data_dir);
        if let (Some(b), None) = (&self.own_bridge, &self.netns) {
            net::remove_bridge(b);
        }
    }
}

/// Removes every runc container an agent whose data directory is
/// `agent_dir` left (their shims then exit), unmounts their overlay
/// root filesystems, and undoes their port mappings. The agent must be
/// gone.
pub fn remove_containers(agent_dir: &Path) {
    net::remove_port_mappings(agent_dir);
    let runc_root = agent_dir.join("runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .args(["list", "-q"])
        .output();
    let ids = out.map(|o| o.stdout).unwrap_or_default();
    for id in String::from_utf8_lossy(&ids).split_whitespace() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", id])
            .output();
    }
    for (point, _, _) in mounts_under(agent_dir) {
        let _ = Command::new("umount").arg("-l").arg(&point).output();
    }
    // An agent killed (not stopped) leaves its namespaces' directory
    // mounted; a stopped one unmounts it itself.
    let ns_dir = agent_dir.join("network").join("netns");
    if ns_dir.exists() {
        let _ = Command::new("umount").arg("-l").arg(&ns_dir).output();
    }
}

/// The allocations of `job`, from the server.
pub async fn allocs_of(client: &mut Client, job: &str) -> Vec<Allocation> {
    client
        .list_allocs(Some(job), None)
        .await
        .unwrap_or_default()
}

/// Waits until `job` has `n` allocations wanted to run, all in `status`.
pub async fn wait_allocs(
    client: &mut Client,
    job: &str,
    n: usize,
    status: AllocStatus,
    limit: Duration,
) -> Vec<Allocation> {
    let what = format!("{n} allocation(s) of {job} to be {}", status.as_str());
    let deadline = Instant::now() + limit;
    loop {
        let allocs: Vec<Allocation> = allocs_of(client, job)
            .await
            .into_iter()
            .filter(|a| a.desired == skiff_model::DesiredStatus::Run)
            .collect();
        if allocs.len() == n && allocs.iter().all(|a| a.status == status) {
            return allocs;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen: {:#?}",
            allocs
                .iter()
                .map(|a| (
                    a.short_id().to_string(),
                    a.status,
                    a.exit_code,
                    a.message.clone()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The full stdout of an allocation, through the server's log relay.
pub async fn stdout_of(client: &mut Client, alloc_id: &str) -> String {
    match client.logs(alloc_id, false, 0, false).await {
        Ok(r) => match r.collect().await {
            Ok((out, _)) => String::from_utf8_lossy(&out).into_owned(),
            Err(_) => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// Waits until `job`'s single allocation that is wanted to run matches
/// `pred`; panics after `limit` with `what` and the last one seen.
pub async fn wait_alloc(
    client: &mut Client,
    job: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Allocation) -> bool,
) -> Allocation {
    let deadline = Instant::now() + limit;
    loop {
        let allocs: Vec<Allocation> = allocs_of(client, job).await;
        let last = allocs.iter().max_by_key(|a| a.create_index).cloned();
        if let Some(a) = last.as_ref().filter(|a| pred(a)) {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {job}: {what}; last seen: {:#?}",
            last.map(|a| (
                a.status,
                a.exit_code,
                a.restart_count,
                a.healthy,
                a.reason,
                a.message
            ))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `skiff` CLI against `server_url`, as the administrator, and
/// returns what it did.
pub fn skiff(server_url: &str, args: &[&str]) -> std::process::Output {
    skiff_command()
        .args(args)
        .env("SKIFF_SERVER", server_url)
        .output()
        .expect("run skiff")
}

/// A user made with `skiff user create` as the administrator, granted
/// `namespaces` (comma-separated; "" for the role's default): its
/// configuration file.
pub fn make_user(url: &str, dir: &Path, name: &str, role: &str, namespaces: &str) -> PathBuf {
    let out = dir.join(format!("{name}.conf"));
    let mut cmd = skiff_command();
    cmd.args(["user", "create", name, "--role", role, "--server", url]);
    if !namespaces.is_empty() {
        cmd.args(["--namespace", namespaces]);
    }
    let run = cmd.arg("--out").arg(&out).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// A client with the credentials of a user's configuration file.
pub async fn as_user(conf: &Path) -> Client {
    let config = skiff_client::config::ClientConfig::load(conf).unwrap();
    Client::connect_config(&config).await.unwrap()
}
