//! The agent's footprint and start latency, measured on this machine with
//! real processes and real runc.
//!
//! ```sh
//! cargo build --release -p skiff -p skiff-bench
//! sudo target/release/agentbench [--containers 100] [--skiff target/release/skiff]
//! ```
//!
//! It starts a `skiff server` and a `skiff agent` and measures the agent's
//! memory while idle. Then, `--starts` times, it starts one container
//! through the agent (a new version of a one-replica job, half a core) and
//! right after it a plain `runc run --detach` of a copy of the same bundle,
//! so both run under the same conditions. Last it runs `--containers`
//! small containers at once (10m CPU, 16 MiB) and measures the agent and
//! every shim. Results are `key=value` lines.
//!
//! Start latency is the agent's own measure, logged as `start_ms` with
//! "container started": from the allocation reaching the agent's
//! reconciler to the shim reporting the container running (image
//! preparation from the cache, root filesystem, config.json, shim,
//! `runc run`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_model::{AllocStatus, JobSpec};

struct Opts {
    skiff: PathBuf,
    containers: usize,
    starts: usize,
    work: PathBuf,
    /// Also time `--starts` starts with `network: bridge`.
    bridge: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        skiff: PathBuf::from("target/release/skiff"),
        containers: 100,
        starts: 100,
        work: std::env::temp_dir().join(format!("skiff-agentbench-{}", std::process::id())),
        bridge: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--skiff" => o.skiff = value()?.into(),
            "--containers" => {
                o.containers = value()?
                    .parse()
                    .map_err(|_| "--containers must be a number".to_string())?
            }
            "--starts" => {
                o.starts = value()?
                    .parse()
                    .map_err(|_| "--starts must be a number".to_string())?
            }
            "--work-dir" => o.work = value()?.into(),
            "--network" => {
                o.bridge = match value()?.as_str() {
                    "bridge" => true,
                    "host" => false,
                    _ => return Err("--network is host or bridge".into()),
                }
            }
            "-h" | "--help" => return Err(
                "usage: agentbench [--containers N] [--starts N] [--skiff PATH] [--work-dir DIR] [--network host|bridge]"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !o.skiff.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p skiff`",
            o.skiff.display()
        ));
    }
    Ok(o)
}

/// VmRSS, and Pss and the private part from smaps_rollup, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
}

fn mem_of(pid: u32) -> Option<Mem> {
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(Mem {
        rss: field(&status, "VmRSS:")?,
        pss: field(&rollup, "Pss:")?,
        private: field(&rollup, "Private_Clean:")? + field(&rollup, "Private_Dirty:")?,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    skiff_bench::procs::wait_for(what, limit, f)
        .await
        .map_err(|e| e.to_string())
}

fn start_ms_lines(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("container started"))
        .filter_map(|l| {
            let v = l.split("start_ms=").nth(1)?;
            v.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The median of `key=` over the agent's "start phases" lines.
fn phase_median(log: &str, key: &str) -> f64 {
    let mut v: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("start phases"))
        .filter_map(|l| {
            let x = l.split(&format!("{key}=")).nth(1)?;
            x.split_whitespace().next()?.parse().ok()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// Waits until `job`'s version `version` runs and no older one does;
/// answers the job's allocations. It asks over the one connection every
/// 100 ms: the bench's own questions (a TLS handshake each, as it once
/// asked) would otherwise share the two CPUs with the start it measures,
/// while plain `runc run` is timed with nothing else going on.
async fn running_alone(
    client: &mut skiff_client::Client,
    job: &str,
    version: u64,
) -> Result<Vec<skiff_model::Allocation>, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(a) = client.list_allocs(Some(job), None).await {
            let new_running = a
                .iter()
                .any(|a| a.job_version == version && a.status == AllocStatus::Running);
            let old_done = a
                .iter()
                .all(|a| a.job_version == version || a.status.is_terminal());
            if new_running && old_done {
                return Ok(a);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out waiting for {job} version {version} to run alone"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runc(root: &Path) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(root);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

async fn run(o: &Opts) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work).map_err(|e| e.to_string())?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let layout = o.work.join("busybox");
    let built = Command::new("bash")
        .arg(repo.join("scripts/build-busybox-image.sh"))
        .arg(&layout)
        .arg("latest")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !built.success() {
        return Err("building the busybox image failed".into());
    }

    let server_dir = o.work.join("server");
    let agent_dir = o.work.join("agent");
    std::fs::create_dir_all(&server_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&agent_dir).map_err(|e| e.to_string())?;
    let log = |p: &Path| std::fs::File::create(p).map_err(|e| e.to_string());
    let server = Command::new(&o.skiff)
        .args([
            "server",
            "--metrics-addr",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&server_dir)
        .stderr(log(&server_dir.join("server.log"))?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut procs = Procs(vec![server]);
    let addr = wait_for("the server", Duration::from_secs(20), || {
        let f = server_dir.join("api.addr");
        async move { std::fs::read_to_string(f).ok() }
    })
    .await?;
    set_global(Creds::from_admin_conf(&server_dir).map_err(|e| e.to_string())?);
    let url = creds().url(&addr);
    let join = creds().agent_args(&url).await.map_err(|e| e.to_string())?;
    let agent_log = agent_dir.join("agent.log");
    // The bench's own bridge (removed at the end with its rules).
    let bridge = format!("skb{}", std::process::id() % 10_000);
    let agent = Command::new(&o.skiff)
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--name",
            "bench",
            "--stop-grace",
            "1s",
        ])
        .arg("--server")
        .arg(&url)
        .arg("--data-dir")
        .arg(&agent_dir)
        // The bench's image layout lies in its work directory.
        .arg("--image-roots")
        .arg(&o.work)
        .args(["--bridge", &bridge, "--network-subnet", "10.239.0.0/24"])
        .args(&join)
        .env("SKIFF_LOG", "info,skiff_agent=debug,slog=warn")
        .stderr(log(&agent_log)?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let agent_pid = agent.id();
    procs.0.push(agent);
    let mut client = wait_for("a client connection", Duration::from_secs(20), || {
        let url = url.clone();
        async move { creds().connect(&url).await.ok() }
    })
    .await?;
    wait_for("the agent to register", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let mut c = creds().connect(&url).await.ok()?;
            (!c.list_nodes().await.ok()?.is_empty()).then_some(())
        }
    })
    .await?;
    // The host-network rounds need the namespace's leave.
    let ns = skiff_model::namespace::Namespace::from_yaml(
        "name: default\npolicy: {host_network: true}\n",
    )
    .map_err(|e| e.to_string())?;
    client
        .apply_namespace(&ns)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = mem_of(agent_pid).ok_or("cannot read the agent's memory")?;

    // 1. Start latency: one start at a time (a new version of job `lat`
    // each round, half a core so runc's own start-up is not throttled by
    // the container's CPU quota), and after each one a plain `runc run` of
    // a copy of the same bundle. Each new version replaces the old one at
    // once (max_surge 0), not after a rolling update's min_healthy.
    let lat_spec = |round: usize| {
        JobSpec::from_yaml(&format!(
            "name: lat\nupdate: {{max_unavailable: 1, max_surge: 0}}\ntask:\n  image: oci:{}:latest\n  command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n  env: {{ROUND: '{round}'}}\n  network: host\n  resources: {{cpu: 500m, memory: 32Mi}}\n",
            layout.display()
        ))
        .map_err(|e| e.to_string())
    };
    let plain_root = o.work.join("plain-runc");
    let plain_bundle = o.work.join("plain-bundle");
    let mut plain_ms: Vec<f64> = Vec::new();
    // Round 0 warms up (the agent unpacks the image into its cache, runc's
    // and the kernel's caches fill) and is not counted for either side:
    // plain runc is given an already unpacked root filesystem.
    for round in 0..=o.starts {
        let applied = client
            .apply_job(&lat_spec(round)?)
            .await
            .map_err(|e| e.to_string())?;
        let version = applied.job.version;
        let allocs = running_alone(&mut client, "lat", version).await?;
        if round == 0 {
            // The same bundle for plain runc: the agent's config.json and a
            // plain copy of the same image rootfs.
            let id = &allocs.iter().find(|a| a.job_version == version).unwrap().id;
            let config = agent_dir
                .join("containers")
                .join(id)
                .join("bundle/config.json");
            let cache = std::fs::read_dir(agent_dir.join("images/rootfs"))
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.path())
                .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .ok_or("no cached rootfs")?;
            std::fs::create_dir_all(&plain_bundle).map_err(|e| e.to_string())?;
            std::fs::copy(&config, plain_bundle.join("config.json")).map_err(|e| e.to_string())?;
            let cp = Command::new("cp")
                .arg("-a")
                .arg(&cache)
                .arg(plain_bundle.join("rootfs"))
                .status()
                .map_err(|e| e.to_string())?;
            if !cp.success() {
                return Err("copying the rootfs for plain runc failed".into());
            }
            // Its own cgroup.
            let text = std::fs::read_to_string(plain_bundle.join("config.json"))
                .map_err(|e| e.to_string())?
                .replace("/skiff/skiff-", "/skiff-bench/plain-");
            std::fs::write(plain_bundle.join("config.json"), text).map_err(|e| e.to_string())?;
        }
        let cid = format!("plain-{round}");
        let t = Instant::now();
        let ok = runc(&plain_root)
            .args(["run", "--detach", "--bundle"])
            .arg(&plain_bundle)
            .arg("--pid-file")
            .arg(o.work.join("plain.pid"))
            .arg(&cid)
            .status()
            .map_err(|e| e.to_string())?;
        if round > 0 {
            plain_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        if !ok.success() {
            return Err(format!("plain runc run {cid} failed"));
        }
        let _ = runc(&plain_root).args(["delete", "--force", &cid]).status();
    }
    client.delete_job("lat").await.map_err(|e| e.to_string())?;
    let latency_log = std::fs::read_to_string(&agent_log).unwrap_or_default();

    // 1b. The same starts with `network: bridge` (CNI setup included),
    // in the same run.
    // 1c. And with one published port (portmap chained after the bridge).
    let (mut bridge_log, mut published_log) = (String::new(), String::new());
    if o.bridge {
        let http = skiff_model::PortSpec {
            name: "http".into(),
            container: 8080,
            host: Some(0),
            protocol: skiff_model::ports::Protocol::Tcp,
        };
        let mut seen = latency_log.len();
        for (name, ports, log) in [
            ("latb", vec![], &mut bridge_log),
            ("latp", vec![http], &mut published_log),
        ] {
            for round in 0..=o.starts {
                let mut spec = lat_spec(round)?;
                spec.name = name.into();
                spec.task.network = skiff_model::NetworkMode::Bridge;
                spec.task.ports = ports.clone();
                let applied = client.apply_job(&spec).await.map_err(|e| e.to_string())?;
                running_alone(&mut client, name, applied.job.version).await?;
            }
            client.delete_job(name).await.map_err(|e| e.to_string())?;
            let all = std::fs::read_to_string(&agent_log).unwrap_or_default();
            *log = all.get(seen..).unwrap_or_default().to_string();
            seen = all.len();
        }
    }

    // 2. Footprint: `--containers` small containers at once.
    let rss_spec = JobSpec::from_yaml(&format!(
        "name: bench\nreplicas: {}\ntask:\n  image: oci:{}:latest\n  command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n  network: host\n  resources: {{cpu: 10m, memory: 16Mi}}\n",
        o.containers,
        layout.display()
    ))
    .map_err(|e| e.to_string())?;
    client
        .apply_job(&rss_spec)
        .await
        .map_err(|e| e.to_string())?;
    let n = o.containers;
    wait_for("every replica to run", Duration::from_secs(600), || {
        let url = url.clone();
        async move {
            let mut c = creds().connect(&url).await.ok()?;
            let a = c.list_allocs(Some("bench"), None).await.ok()?;
            (a.iter()
                .filter(|a| a.status == AllocStatus::Running)
                .count()
                == n)
                .then_some(())
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = mem_of(agent_pid).ok_or("cannot read the agent's memory")?;
    // One Prometheus scrape of the agent with every container running.
    let metrics_addr = std::fs::read_to_string(agent_dir.join("metrics.addr"))
        .map_err(|e| format!("the agent's metrics.addr: {e}"))?;
    let (scrape50, scrape99, scrape_bytes) =
        skiff_bench::http::cost(metrics_addr.trim(), "/metrics", 50).map_err(|e| e.to_string())?;
    let mut shims = Vec::new();
    for entry in std::fs::read_dir(agent_dir.join("containers")).map_err(|e| e.to_string())? {
        let pid_file = entry
            .map_err(|e| e.to_string())?
            .path()
            .join("state/shim.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
        {
            if let Some(m) = mem_of(pid) {
                shims.push(m);
            }
        }
    }
    let log_text = latency_log;
    let mut starts = start_ms_lines(&log_text);
    if !starts.is_empty() {
        starts.remove(0); // the warm-up round
    }
    starts.sort_by(f64::total_cmp);
    plain_ms.sort_by(f64::total_cmp);

    println!("containers={}", o.containers);
    println!(
        "load_average={}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("agent_idle_rss_kib={}", idle.rss);
    println!("agent_idle_pss_kib={}", idle.pss);
    println!("agent_idle_private_kib={}", idle.private);
    println!("agent_busy_rss_kib={}", busy.rss);
    println!("agent_busy_pss_kib={}", busy.pss);
    println!("agent_busy_private_kib={}", busy.private);
    println!("shims={}", shims.len());
    println!("agent_scrape_p50_ms={scrape50:.2}");
    println!("agent_scrape_p99_ms={scrape99:.2}");
    println!("agent_scrape_bytes={scrape_bytes}");
    let rss: Vec<u64> = shims.iter().map(|m| m.rss).collect();
    println!(
        "shim_rss_kib_min={}",
        rss.iter().min().copied().unwrap_or(0)
    );
    println!("shim_rss_kib_median={}", median_u64(rss.clone()));
    println!(
        "shim_rss_kib_max={}",
        rss.iter().max().copied().unwrap_or(0)
    );
    println!(
        "shim_pss_kib_median={}",
        median_u64(shims.iter().map(|m| m.pss).collect())
    );
    println!(
        "shim_private_kib_median={}",
        median_u64(shims.iter().map(|m| m.private).collect())
    );
    println!("starts={}", starts.len());
    let (p50, p99) = (percentile(&starts, 50.0), percentile(&starts, 99.0));
    let (r50, r99) = (percentile(&plain_ms, 50.0), percentile(&plain_ms, 99.0));
    println!("agent_start_p50_ms={p50:.1}");
    println!("agent_start_p99_ms={p99:.1}");
    println!("runc_run_p50_ms={r50:.1}");
    println!("runc_run_p99_ms={r99:.1}");
    println!("overhead_p50_pct={:.1}", (p50 / r50 - 1.0) * 100.0);
    println!("overhead_p99_pct={:.1}", (p99 / r99 - 1.0) * 100.0);
    for key in ["image_and_rootfs_ms", "spec_ms", "shim_ms"] {
        println!("agent_{key}_p50={:.1}", phase_median(&log_text, key));
    }
    if o.bridge {
        // Each against the host-network starts (p50) and plain runc (r50).
        for (name, log) in [("bridge", &bridge_log), ("published", &published_log)] {
            let mut b = start_ms_lines(log);
            if !b.is_empty() {
                b.remove(0); // the warm-up round
            }
            b.sort_by(f64::total_cmp);
            let (b50, b99) = (percentile(&b, 50.0), percentile(&b, 99.0));
            println!("{name}_starts={}", b.len());
            println!("{name}_start_p50_ms={b50:.1}");
            println!("{name}_start_p99_ms={b99:.1}");
            println!(
                "{name}_network_ms_p50={:.1}",
                phase_median(log, "network_ms")
            );
            println!("{name}_added_p50_ms={:.1}", b50 - p50);
            println!(
                "{name}_overhead_vs_runc_p50_pct={:.1}",
                (b50 / r50 - 1.0) * 100.0
            );
        }
    }

    // Clean up: stop the containers through the agent, then everything.
    client
        .delete_job("bench")
        .await
        .map_err(|e| e.to_string())?;
    let _ = wait_for("the containers to stop", Duration::from_secs(120), || {
        let url = url.clone();
        async move {
            let mut c = creds().connect(&url).await.ok()?;
            let a = c.list_allocs(Some("bench"), None).await.ok()?;
            a.iter().all(|a| a.status.is_terminal()).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(procs);
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", &format!("skiff_{bridge}")])
        .stderr(Stdio::null())
        .status();
    // Whatever the agent had no time to clean: containers, overlays, and
    // the plain runs' parent cgroup.
    let agent_root = agent_dir.join("runc");
    if let Ok(out) = Command::new("runc")
        .arg("--root")
        .arg(&agent_root)
        .args(["list", "-q"])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = runc(&agent_root).args(["delete", "--force", id]).status();
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if Path::new(point).starts_with(&o.work) {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(controller.path().join("skiff-bench"));
    }
    let _ = std::fs::remove_dir_all(&o.work);
    Ok(())
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("agentbench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(&opts)) {
        eprintln!("agentbench: {e}");
        std::process::exit(1);
    }
}
