//! The control plane with many nodes, end to end, without containers: one
//! `skiff server` (TLS, on loopback) and `--nodes` simulated nodes in this
//! process (`skiff_bench::simnodes`: the real node API, allocations
//! reported running after a short delay), then jobs totalling `--allocs`
//! replicas applied at once. A first, single-server step towards issue
//! 21's `scalebench --servers 3 --nodes 5000 --allocs 150000`.
//!
//! ```text
//! cargo build --release -p skiff -p skiff-bench
//! target/release/scalebench [--nodes 1000] [--allocs 10000] [--skiff target/release/skiff]
//! ```
//!
//! Prints `key=value` lines: `allocs_running`, `seconds_to_running`,
//! `placements_per_sec_e2e` (from the first apply to the last allocation
//! reported running), `api_p50_ms_*`/`api_p99_ms_*` for a job get and a
//! list of all nodes while the cluster fills, `false_downs`,
//! `server_rss_mib_full`, and the simulated nodes' heartbeats.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_bench::procs::{wait_for, Proc};
use skiff_bench::simnodes::{self, SimOptions};
use skiff_bench::stats::percentile;
use skiff_model::{AllocStatus, JobSpec, NodeStatus};

struct Opts {
    nodes: usize,
    allocs: usize,
    skiff: PathBuf,
}

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        nodes: 1000,
        allocs: 10_000,
        skiff: PathBuf::from("target/release/skiff"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--nodes" => o.nodes = value()?.parse()?,
            "--allocs" => o.allocs = value()?.parse()?,
            "--skiff" => o.skiff = value()?.into(),
            _ => anyhow::bail!("usage: scalebench [--nodes N] [--allocs N] [--skiff PATH]"),
        }
    }
    Ok(o)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server");
    let args: Vec<String> = [
        "server",
        "--api",
        "127.0.0.1:0",
        "--peer-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        // A /24 for every simulated node.
        "--node-subnets",
        "10.0.0.0/8",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([server_dir.display().to_string()])
    .collect();
    std::fs::create_dir_all(&server_dir)?;
    let server = Proc::spawn(&o.skiff, &args, &dir.path().join("server.log"))?;
    let addr = wait_for("the server", Duration::from_secs(30), || {
        let f = server_dir.join("api.addr");
        async move { std::fs::read_to_string(f).ok() }
    })
    .await?;
    set_global(Creds::from_admin_conf(&server_dir)?);
    let url = creds().url(&addr);
    let join = creds().agent_args(&url).await?;
    let token = join
        .iter()
        .skip_while(|a| *a != "--token")
        .nth(1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no node token"))?;
    let pid = server
        .child
        .as_ref()
        .map(std::process::Child::id)
        .unwrap_or(0);
    println!("nodes={}", o.nodes);
    println!("allocs={}", o.allocs);
    println!("server_rss_mib_idle={:.1}", rss_mib(pid));

    let names: Vec<String> = (0..o.nodes).map(|i| format!("sim-{i:05}")).collect();
    let joined = Instant::now();
    let sim = simnodes::start(&url, &token, &names, SimOptions::default()).await?;
    let mut client = creds().connect(&url).await?;
    wait_for("every node ready", Duration::from_secs(600), || {
        let url = url.clone();
        let n = o.nodes;
        async move {
            let mut c = creds().connect(&url).await.ok()?;
            let nodes = c.list_nodes().await.ok()?;
            (nodes.len() == n && nodes.iter().all(|x| x.node.status == NodeStatus::Ready))
                .then_some(())
        }
    })
    .await?;
    println!(
        "seconds_to_nodes_ready={:.1}",
        joined.elapsed().as_secs_f64()
    );

    // Jobs of 100 replicas (the last takes the rest), applied at once.
    let jobs = o.allocs.div_ceil(100);
    let started = Instant::now();
    for j in 0..jobs {
        let replicas = (o.allocs - j * 100).min(100);
        let spec = JobSpec::from_yaml(&format!(
            "name: scale-{j:05}\nreplicas: {replicas}\ntask:\n  image: 'oci:{}/app'\n  resources: {{cpu: 100m, memory: 128Mi}}\n",
            simnodes::IMAGE_ROOT
        ))?;
        client.apply_job(&spec).await?;
    }
    let applied = started.elapsed();
    // API latency while the cluster fills, and the time to all running.
    let (mut gets, mut lists) = (Vec::new(), Vec::new());
    let running = loop {
        let t = Instant::now();
        client.get_job("scale-00000").await?;
        gets.push(t.elapsed());
        let t = Instant::now();
        client.list_nodes().await?;
        lists.push(t.elapsed());
        let n = sim.stats.starts.lock().map(|s| s.len()).unwrap_or(0);
        if n >= o.allocs || started.elapsed() > Duration::from_secs(900) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let filled = started.elapsed();
    // Confirmed from the servers' side.
    let allocs = client.list_allocs(None, None).await?;
    let confirmed = allocs
        .iter()
        .filter(|a| a.status == AllocStatus::Running)
        .count();
    let nodes = client.list_nodes().await?;
    let downs = nodes
        .iter()
        .filter(|n| n.node.status != NodeStatus::Ready)
        .count();
    let twice = sim
        .stats
        .starts
        .lock()
        .map(|s| s.values().filter(|n| **n > 1).count())
        .unwrap_or(0);
    println!("apply_seconds={:.1}", applied.as_secs_f64());
    println!("allocs_running={confirmed}");
    println!("allocs_reported_running={running}");
    println!("allocs_started_twice={twice}");
    println!("seconds_to_running={:.1}", filled.as_secs_f64());
    println!(
        "placements_per_sec_e2e={:.0}",
        running as f64 / filled.as_secs_f64().max(1e-9)
    );
    for (name, mut v) in [("get_job", gets), ("list_nodes", lists)] {
        println!("api_p50_ms_{name}={:.1}", ms(percentile(&mut v, 50.0)));
        println!("api_p99_ms_{name}={:.1}", ms(percentile(&mut v, 99.0)));
    }
    println!("false_downs={downs}");
    println!("server_rss_mib_full={:.1}", rss_mib(pid));
    println!(
        "sim_heartbeats={} sim_errors={}",
        sim.stats.heartbeats.load(Ordering::Relaxed),
        sim.stats.errors.load(Ordering::Relaxed)
    );
    Ok(())
}
