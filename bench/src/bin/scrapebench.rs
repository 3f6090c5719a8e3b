//! What one Prometheus scrape of a server costs as the cluster grows:
//! time and bytes of `GET /metrics` and of the agents' service discovery
//! (`GET /v1/sd/agents`) with N registered nodes, and of one `Top` call.
//!
//! ```text
//! cargo build --release -p skiff -p skiff-bench
//! target/release/scrapebench [--nodes 200,1000] [--scrapes 50] [--skiff target/release/skiff]
//! ```
//!
//! The server runs with `--insecure` on loopback, so the bench registers
//! the nodes itself over the node API (each with a metrics address, a few
//! labels, and one heartbeat carrying the use of 20 allocations), without
//! an agent per node. Results are `key=value` lines. The agent's side (a
//! scrape with 100 allocations running) is in `agentbench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_bench::http::cost;
use skiff_bench::procs::{wait_for, Proc};
use skiff_bench::stats::percentile;
use skiff_proto::pb;

struct Opts {
    nodes: Vec<usize>,
    scrapes: usize,
    skiff: PathBuf,
}

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        nodes: vec![200, 1000],
        scrapes: 50,
        skiff: PathBuf::from("target/release/skiff"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--nodes" => {
                o.nodes = value()?
                    .split(',')
                    .map(|n| n.parse())
                    .collect::<Result<_, _>>()?
            }
            "--scrapes" => o.scrapes = value()?.parse()?,
            "--skiff" => o.skiff = value()?.into(),
            _ => {
                anyhow::bail!("usage: scrapebench [--nodes 200,1000] [--scrapes 50] [--skiff PATH]")
            }
        }
    }
    Ok(o)
}

async fn register(url: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let mut c = pb::node_api_client::NodeApiClient::new(channel);
    for i in from..to {
        let name = format!("node-{i:05}");
        c.register(pb::RegisterRequest {
            name: name.clone(),
            labels: [("zone", format!("z{}", i % 4)), ("pool", "bench".into())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            capacity: Some(pb::Resources {
                cpu_millis: 32_000,
                memory_bytes: 128 << 30,
                gpus: 0,
            }),
            reserved: Some(pb::Resources::default()),
            address: format!("127.0.0.1:{}", 20_000 + i),
            metrics_address: format!("127.0.0.1:{}", 40_000 + i),
            agent_version: "bench".into(),
            ..Default::default()
        })
        .await?;
        c.heartbeat(pb::HeartbeatRequest {
            name,
            gpu_metrics: Vec::new(),
            usage: Some(pb::NodeUsage {
                cpu_millis: 12_000,
                memory_bytes: 40 << 30,
                allocs: (0..20)
                    .map(|a| pb::AllocUsage {
                        alloc_id: format!("{i:016x}{a:016x}"),
                        cpu_millis: 500,
                        memory_bytes: 1 << 30,
                    })
                    .collect(),
                age_ms: 0,
            }),
        })
        .await?;
    }
    Ok(())
}

async fn measure(o: &Opts, nodes: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "server",
        "--insecure",
        "--api",
        "127.0.0.1:0",
        "--peer-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        // A /24 per node for thousands of nodes.
        "--node-subnets",
        "10.0.0.0/8",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.path().display().to_string()])
    .collect();
    let _server = Proc::spawn(&o.skiff, &args, &dir.path().join("server.log"))?;
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).ok();
    let api = wait_for("the server", Duration::from_secs(30), || async {
        read("api.addr")
    })
    .await?;
    let metrics = read("metrics.addr").unwrap_or_default();
    let url = format!("http://{api}");
    let started = Instant::now();
    let tasks = 8;
    let mut joins = Vec::new();
    for t in 0..tasks {
        let url = url.clone();
        let (from, to) = (nodes * t / tasks, nodes * (t + 1) / tasks);
        joins.push(tokio::spawn(async move { register(&url, from, to).await }));
    }
    for j in joins {
        j.await??;
    }
    let registered = started.elapsed();
    let (m50, m99, mbytes) = cost(&metrics, "/metrics", o.scrapes)?;
    let (s50, s99, sbytes) = cost(&metrics, "/v1/sd/agents", o.scrapes)?;
    let mut cluster = pb::cluster_client::ClusterClient::new(
        tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?,
    )
    .max_decoding_message_size(64 << 20);
    let mut tops = Vec::new();
    for _ in 0..o.scrapes.min(20) {
        let t = Instant::now();
        cluster
            .top(pb::TopRequest {
                allocs: true,
                ..Default::default()
            })
            .await?;
        tops.push(t.elapsed());
    }
    println!("nodes={nodes}");
    println!("register_seconds={:.1}", registered.as_secs_f64());
    println!("server_scrape_p50_ms={m50:.2}");
    println!("server_scrape_p99_ms={m99:.2}");
    println!("server_scrape_bytes={mbytes}");
    println!("sd_p50_ms={s50:.2}");
    println!("sd_p99_ms={s99:.2}");
    println!("sd_bytes={sbytes}");
    println!(
        "top_p50_ms={:.2}",
        percentile(&mut tops, 50.0).as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    for &n in &o.nodes {
        measure(&o, n).await?;
    }
    Ok(())
}
