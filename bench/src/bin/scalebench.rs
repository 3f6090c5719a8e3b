//! The control plane with many nodes, end to end, without containers: one
//! or three `skiff server` processes (mutual TLS, on loopback) and
//! `--nodes` simulated nodes in this process (`skiff_bench::simnodes`: the
//! agent's own code on a pretend runtime whose containers start after a
//! short delay), then
//! jobs totalling `--allocs` replicas applied at once; with three servers,
//! the leader is killed once the cluster is full (issue 21).
//!
//! ```text
//! cargo build --release -p skiff -p skiff-bench
//! target/release/scalebench [--servers 3] [--nodes 1000] [--allocs 10000]
//!     [--skiff target/release/skiff] [--no-kill] [--sim-dir /dev/shm]
//! ```
//!
//! The simulated nodes' data directories (every container's bundle, root
//! filesystem, records and logs) are under the run's temporary directory,
//! on one disk for all of them, unless `--sim-dir` names another place
//! (a tmpfs takes the nodes' own disks out of the figure: on a real
//! cluster each node writes to its own).
//!
//! Prints `key=value` lines: `allocs_running`, `seconds_to_running`,
//! `placements_per_sec_e2e` (from the first apply to the last allocation
//! reported running), `api_p50_ms_*`/`api_p99_ms_*` for a job apply, a job
//! get, a list of one job's allocations and a list of all nodes while the
//! cluster fills (`_filling`) and once full (`_full`), the job apply alone
//! before any work (`_idle`), `false_downs` (nodes the servers declared
//! down, from their counters, and nodes not ready at the end),
//! `cpu_seconds_filling_simnodes` and `_servers` (who used the CPUs),
//! `raft_entries_per_placement_filling` and `raft_entries_filling_<kind>`
//! (the replicated commands the fill took, from the leader's counters),
//! `server_rss_mib_*`, `leader_heartbeats_per_sec`, and after the leader
//! kill `seconds_to_new_leader` and the same checks again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_bench::cluster::{leader_among, SkiffCluster};
use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_bench::procs::{cpu_ticks_of, free_ports, wait_for, Proc};
use skiff_bench::simnodes::{self, SimOptions};
use skiff_bench::stats::percentile;
use skiff_model::{AllocStatus, JobSpec, NodeStatus};

struct Opts {
    servers: usize,
    nodes: usize,
    allocs: usize,
    skiff: PathBuf,
    kill: bool,
    sim_dir: Option<PathBuf>,
    /// The servers' `--planners`.
    planners: u16,
    /// Each simulated node's CPU in millicores (the replicas ask for
    /// 100m, so this bounds how many the bin-packer puts on one node).
    node_cpu: u64,
}

/// Clients applying the jobs at once.
const APPLIERS: usize = 8;

const USAGE: &str = "usage: scalebench [--servers 1|3] [--nodes N] [--allocs N] [--skiff PATH] [--no-kill] [--sim-dir DIR] [--planners N] [--node-cpu MILLIS]";

fn parse() -> anyhow::Result<Opts> {
    let mut o = Opts {
        servers: 1,
        nodes: 1000,
        allocs: 10_000,
        skiff: PathBuf::from("target/release/skiff"),
        kill: true,
        sim_dir: None,
        planners: 1,
        node_cpu: SimOptions::default().cpu_millis,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--servers" => o.servers = value()?.parse()?,
            "--nodes" => o.nodes = value()?.parse()?,
            "--allocs" => o.allocs = value()?.parse()?,
            "--skiff" => o.skiff = value()?.into(),
            "--no-kill" => o.kill = false,
            "--sim-dir" => o.sim_dir = Some(value()?.into()),
            "--planners" => o.planners = value()?.parse()?,
            "--node-cpu" => o.node_cpu = value()?.parse()?,
            _ => anyhow::bail!("{USAGE}"),
        }
    }
    // Room for every replica (100m each) and the sampler's jobs.
    let room = o.nodes as u64 * (o.node_cpu / 100);
    anyhow::ensure!(
        room >= o.allocs as u64 + 100,
        "--node-cpu {}: {} nodes hold {room} replicas of 100m, fewer than --allocs {} and the sampler's 100",
        o.node_cpu,
        o.nodes,
        o.allocs
    );
    anyhow::ensure!(
        o.servers == 1 || o.servers == 3,
        "--servers: 1 or 3, not {}",
        o.servers
    );
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

/// The servers under test: their processes, API URLs and data dirs.
struct Servers {
    procs: Vec<Proc>,
    urls: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Servers {
    async fn start(o: &Opts, dir: &Path) -> anyhow::Result<Servers> {
        // A /24 for every simulated node.
        let subnets = [
            "--node-subnets".to_string(),
            "10.0.0.0/8".to_string(),
            "--planners".to_string(),
            o.planners.to_string(),
        ];
        if o.servers == 3 {
            let (c, security) = Creds::shared_ca(&dir.join("ca"))?;
            set_global(c);
            let ports = free_ports(6);
            let cluster =
                SkiffCluster::start(&o.skiff, dir, &ports, &security, "127.0.0.1:0", &subnets)?;
            let servers = Servers {
                procs: cluster.procs,
                urls: cluster.urls,
                dirs: (1..=3).map(|i| dir.join(format!("skiff{i}"))).collect(),
            };
            wait_for("a leader", Duration::from_secs(60), || servers.leader()).await?;
            return Ok(servers);
        }
        let server_dir = dir.join("server");
        std::fs::create_dir_all(&server_dir)?;
        let mut args: Vec<String> = [
            "server",
            "--api",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([server_dir.display().to_string()])
        .collect();
        args.extend(subnets);
        let server = Proc::spawn(&o.skiff, &args, &dir.join("server.log"))?;
        let addr = wait_for("the server", Duration::from_secs(30), || {
            let f = server_dir.join("api.addr");
            async move { std::fs::read_to_string(f).ok() }
        })
        .await?;
        set_global(Creds::from_admin_conf(&server_dir)?);
        Ok(Servers {
            procs: vec![server],
            urls: vec![creds().url(&addr)],
            dirs: vec![server_dir],
        })
    }

    /// The server that says it leads, if one does.
    async fn leader(&self) -> Option<usize> {
        let alive = |i: usize| self.procs[i].child.is_some();
        leader_among(&self.urls, alive, Duration::from_secs(2)).await
    }

    fn pid(&self, i: usize) -> u32 {
        self.procs[i]
            .child
            .as_ref()
            .map(std::process::Child::id)
            .unwrap_or(0)
    }

    /// The largest RSS among the running servers, and the leader's.
    fn rss(&self, leader: usize) -> (f64, f64) {
        let max = (0..self.procs.len())
            .map(|i| rss_mib(self.pid(i)))
            .fold(0.0, f64::max);
        (max, rss_mib(self.pid(leader)))
    }

    /// Server `i`'s metrics, as `GET /metrics` serves them (none when
    /// they cannot be read).
    fn metrics(&self, i: usize) -> Option<String> {
        let addr = std::fs::read_to_string(self.dirs[i].join("metrics.addr")).ok()?;
        skiff_bench::http::body(addr.trim(), "/metrics").ok()
    }

    /// A counter of server `i`'s metrics (0 when it cannot be read).
    fn counter(&self, i: usize, name: &str) -> f64 {
        let Some(body) = self.metrics(i) else {
            return 0.0;
        };
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Server `i`'s applied commands by kind
    /// (`skiff_raft_applied_entries_total{kind}`).
    fn applied_by_kind(&self, i: usize) -> std::collections::BTreeMap<String, f64> {
        let Some(body) = self.metrics(i) else {
            return Default::default();
        };
        let head = "skiff_raft_applied_entries_total{kind=\"";
        body.lines()
            .filter_map(|l| {
                let (kind, n) = l.strip_prefix(head)?.split_once("\"} ")?;
                Some((kind.to_string(), n.trim().parse().ok()?))
            })
            .collect()
    }

    /// The cumulative buckets of server `i`'s answer times for `method`
    /// (`Cluster/GetJob`): (upper bound in seconds, calls at or under it).
    fn buckets(&self, i: usize, method: &str) -> Buckets {
        let Some(body) = self.metrics(i) else {
            return Vec::new();
        };
        let head = format!("skiff_grpc_request_duration_seconds_bucket{{method=\"{method}\",le=\"");
        body.lines()
            .filter_map(|l| {
                let (le, n) = l.strip_prefix(&head)?.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.trim().parse().ok()?))
            })
            .collect()
    }

    /// Nodes declared down, summed over the running servers (each counts
    /// the ones it declared while it led).
    fn declared_down(&self) -> f64 {
        (0..self.procs.len())
            .filter(|i| self.procs[*i].child.is_some())
            .map(|i| self.counter(i, "skiff_nodes_declared_down_total"))
            .sum()
    }
}

/// Latencies of the calls issue 21 names, sampled together.
#[derive(Default)]
struct Calls {
    /// Rounds that ended in an error (their calls are not timed).
    failed: usize,
    apply_job: Vec<Duration>,
    get_job: Vec<Duration>,
    list_job_allocs: Vec<Duration>,
    list_nodes: Vec<Duration>,
}

impl Calls {
    /// One round: a small job's new version, then (with `reads`) a job
    /// get, one job's allocations and every node.
    async fn sample(
        &mut self,
        client: &mut skiff_client::Client,
        image: &str,
        round: usize,
        reads: bool,
    ) -> anyhow::Result<()> {
        let probe = JobSpec::from_yaml(&format!(
            "name: probe\nreplicas: 1\ntask:\n  image: '{image}'\n  network: none\n  env: {{ROUND: '{round}'}}\n  resources: {{cpu: 10m, memory: 16Mi}}\n",
        ))?;
        let t = Instant::now();
        client.apply_job(&probe).await?;
        self.apply_job.push(t.elapsed());
        if !reads {
            return Ok(());
        }
        let t = Instant::now();
        client.get_job("scale-00000").await?;
        self.get_job.push(t.elapsed());
        let t = Instant::now();
        client.list_allocs(Some("scale-00000"), None).await?;
        self.list_job_allocs.push(t.elapsed());
        let t = Instant::now();
        client.list_nodes().await?;
        self.list_nodes.push(t.elapsed());
        Ok(())
    }

    fn print(self, when: &str) {
        println!("api_failed_rounds_{when}={}", self.failed);
        for (name, mut v) in [
            ("apply_job", self.apply_job),
            ("get_job", self.get_job),
            ("list_job_allocs", self.list_job_allocs),
            ("list_nodes", self.list_nodes),
        ] {
            if v.is_empty() {
                continue;
            }
            println!(
                "api_p50_ms_{name}_{when}={:.1}",
                ms(percentile(&mut v, 50.0))
            );
            println!(
                "api_p99_ms_{name}_{when}={:.1}",
                ms(percentile(&mut v, 99.0))
            );
        }
        println!();
    }
}

/// The calls' answer times as server `i` saw them: for each call's name
/// and method, the buckets [`Servers::buckets`] read at the start of a
/// phase.
struct ServerSide(Vec<(&'static str, &'static str, Buckets)>);

/// Cumulative histogram buckets: (upper bound in seconds, count).
type Buckets = Vec<(f64, f64)>;

const METHODS: [(&str, &str); 4] = [
    ("apply_job", "Cluster/ApplyJob"),
    ("get_job", "Cluster/GetJob"),
    ("list_job_allocs", "Cluster/ListAllocs"),
    ("list_nodes", "Cluster/ListNodes"),
];

impl ServerSide {
    fn read(servers: &Servers, i: usize) -> ServerSide {
        ServerSide(
            METHODS
                .iter()
                .map(|&(name, method)| (name, method, servers.buckets(i, method)))
                .collect(),
        )
    }

    /// Prints, for the calls answered since `self` was read, the bucket
    /// bound under which 99% of them were answered
    /// (`api_server_p99_ms_le_<call>_<when>`): the server's own share of
    /// the latency, without the client's or the network's.
    fn print_since(self, servers: &Servers, i: usize, when: &str) {
        for (name, method, before) in self.0 {
            let now = servers.buckets(i, method);
            let count =
                |v: &[(f64, f64)], le: f64| v.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            let total = now.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
            if total <= 0.0 {
                continue;
            }
            let p99 = now
                .iter()
                .find(|(le, n)| n - count(&before, *le) >= 0.99 * total)
                .map_or(f64::INFINITY, |b| b.0);
            println!("api_server_p99_ms_le_{name}_{when}={:.1}", p99 * 1000.0);
        }
    }
}

/// The simulated nodes' reconcilers' passes and the allocations those
/// looked at, so far.
fn tally() -> (u64, u64) {
    let t = &skiff_agent::reconcile::TALLY;
    (
        t.passes.load(Ordering::Relaxed),
        t.looked_at.load(Ordering::Relaxed),
    )
}

/// The simulated nodes' heartbeats and failed calls (so far), by kind.
fn print_sim_stats(s: &simnodes::SimStats, when: &str) {
    let c = &s.calls;
    println!(
        "sim_heartbeats{when}={} sim_reports{when}={} sim_errors{when}={} (register {}, heartbeat {}, watch {}, report {})",
        s.heartbeats(),
        c.reports.load(Ordering::Relaxed),
        c.errors(),
        c.register_errors.load(Ordering::Relaxed),
        c.heartbeat_errors.load(Ordering::Relaxed),
        c.watch_errors.load(Ordering::Relaxed),
        c.report_errors.load(Ordering::Relaxed),
    );
}

/// Nodes the servers list as not ready, and allocations they list
/// running.
async fn census(url: &str) -> anyhow::Result<(usize, usize)> {
    let mut c = creds().connect(url).await?;
    let not_ready = c
        .list_nodes()
        .await?
        .iter()
        .filter(|n| n.node.status != NodeStatus::Ready)
        .count();
    let running = c
        .list_allocs(None, None)
        .await?
        .iter()
        .filter(|a| a.status == AllocStatus::Running && a.job != "probe")
        .count();
    Ok((not_ready, running))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let dir = tempfile::tempdir()?;
    eprintln!("data and logs in {}", dir.path().display());
    let result = run(&o, dir.path()).await;
    if result.is_err() {
        eprintln!("kept {} for its logs", dir.keep().display());
    }
    result
}

async fn run(o: &Opts, dir: &Path) -> anyhow::Result<()> {
    let mut servers = Servers::start(o, dir).await?;
    let leader = servers.leader().await.unwrap_or(0);
    let url = servers.urls[leader].clone();
    let join = creds().agent_args(&url).await?;
    let token = join
        .iter()
        .skip_while(|a| *a != "--token")
        .nth(1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no node token"))?;
    println!("servers={}", o.servers);
    println!("nodes={}", o.nodes);
    println!("planners={}", o.planners);
    println!("node_cpu_millis={}", o.node_cpu);
    println!("allocs={}", o.allocs);
    println!("server_rss_mib_idle={:.1}", servers.rss(leader).0);

    let names: Vec<String> = (0..o.nodes).map(|i| format!("sim-{i:05}")).collect();
    let joined = Instant::now();
    let sim_dir = match &o.sim_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(dir)?,
    };
    println!("sim_dir={}", o.sim_dir.as_deref().unwrap_or(dir).display());
    let sim = simnodes::start(
        sim_dir.path(),
        &servers.urls,
        &token,
        &names,
        SimOptions {
            cpu_millis: o.node_cpu,
            ..SimOptions::default()
        },
    )
    .await?;
    let image = sim.image.clone();
    let mut client = creds().connect(&url).await?;
    wait_for("every node ready", Duration::from_secs(1800), || {
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
    println!("server_rss_mib_nodes={:.1}", servers.rss(leader).0);

    // Writes and reads before any work: the idle figures.
    let mut idle = Calls::default();
    for round in 0..30 {
        idle.sample(&mut client, &image, round, false).await?;
    }
    idle.print("idle");

    // Jobs of 100 replicas (the last takes the rest), applied at once;
    // a second client samples the calls while the cluster fills.
    let filling = Arc::new(AtomicBool::new(true));
    // The sampler has a thread and a runtime of its own: queued behind
    // thousands of simulated agents' tasks, it would time this process,
    // not the servers (a real client is on another machine).
    let sampler = {
        let (url, filling, image) = (url.clone(), filling.clone(), image.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut calls = Calls::default();
                let mut c = creds().connect(&url).await?;
                // One round a second, as a steady client would call; a
                // slow round delays the next, it does not pile them up.
                let mut pace = tokio::time::interval(Duration::from_secs(1));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut round = 1000;
                while filling.load(Ordering::Relaxed) {
                    pace.tick().await;
                    round += 1;
                    if calls.sample(&mut c, &image, round, true).await.is_err() {
                        calls.failed += 1;
                    }
                }
                anyhow::Ok(calls)
            })
        })
    };
    // Several clients apply at once (as a CI system or several people
    // would): one client's round trips would measure the client.
    let jobs = o.allocs.div_ceil(100);
    // Who used the CPUs while filling: the simulated nodes (this process)
    // and the servers.
    let cpu = || {
        let servers: u64 = servers.procs.iter().map(|p| p.cpu_ticks()).sum();
        (cpu_ticks_of(std::process::id()), servers)
    };
    // CPU seconds (nodes, servers) between two readings; USER_HZ ticks
    // are 10 ms.
    let used = |before: (u64, u64), after: (u64, u64)| {
        (
            after.0.saturating_sub(before.0) as f64 / 100.0,
            after.1.saturating_sub(before.1) as f64 / 100.0,
        )
    };
    let cpu_before = cpu();
    let tally_before = tally();
    let entries_before = servers.applied_by_kind(leader);
    let server_side = ServerSide::read(&servers, leader);
    let started = Instant::now();
    let mut appliers = tokio::task::JoinSet::new();
    for first in 0..APPLIERS.min(jobs) {
        let (url, allocs, image) = (url.clone(), o.allocs, image.clone());
        appliers.spawn(async move {
            let mut c = creds().connect(&url).await?;
            for j in (first..jobs).step_by(APPLIERS) {
                let replicas = (allocs - j * 100).min(100);
                let spec = JobSpec::from_yaml(&format!(
                    "name: scale-{j:05}\nreplicas: {replicas}\ntask:\n  image: '{}'\n  network: none\n  resources: {{cpu: 100m, memory: 128Mi}}\n",
                    image
                ))?;
                c.apply_job(&spec).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = appliers.join_next().await {
        done??;
    }
    let applied = started.elapsed();
    let running = loop {
        let n = sim.stats.started("scale-") as usize;
        if n >= o.allocs || started.elapsed() > Duration::from_secs(1800) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let filled = started.elapsed();
    let cpu_after = cpu();
    filling.store(false, Ordering::Relaxed);
    let during = tokio::task::spawn_blocking(move || sampler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))??;
    let (not_ready, confirmed) = census(&url).await?;
    let twice = sim.stats.started_twice();
    println!("apply_seconds={:.1}", applied.as_secs_f64());
    println!("allocs_running={confirmed}");
    println!("allocs_reported_running={running}");
    println!("allocs_started_twice={twice}");
    println!("seconds_to_running={:.1}", filled.as_secs_f64());
    let (nodes_cpu, servers_cpu) = used(cpu_before, cpu_after);
    println!("cpu_seconds_filling_simnodes={nodes_cpu:.1}");
    println!("cpu_seconds_filling_servers={servers_cpu:.1}");
    // The nodes' reconcilers' work per placement, counted, not timed.
    let (passes, looked_at) = tally();
    let per = |n: u64, before: u64| (n - before) as f64 / running.max(1) as f64;
    println!(
        "sim_passes_per_placement_filling={:.2}",
        per(passes, tally_before.0)
    );
    println!(
        "sim_allocs_looked_at_per_placement_filling={:.1}",
        per(looked_at, tally_before.1)
    );
    // The Raft entries behind each placement (every server applies each),
    // by kind: counted, not timed.
    let entries = servers.applied_by_kind(leader);
    let mut all = 0.0;
    for (kind, n) in &entries {
        let d = n - entries_before.get(kind).copied().unwrap_or(0.0);
        all += d;
        if d > 0.0 {
            println!("raft_entries_filling_{kind}={d}");
        }
    }
    println!(
        "raft_entries_per_placement_filling={:.3}",
        all / running.max(1) as f64
    );
    println!(
        "placements_per_sec_e2e={:.0}",
        running as f64 / filled.as_secs_f64().max(1e-9)
    );
    during.print("filling");
    server_side.print_since(&servers, leader, "filling");
    println!();
    let server_side = ServerSide::read(&servers, leader);
    let mut full = Calls::default();
    for round in 0..30 {
        full.sample(&mut client, &image, 5000 + round, true).await?;
    }
    full.print("full");
    server_side.print_since(&servers, leader, "full");
    println!();
    // How long planning held the state's lock (applies wait for it).
    let lock = |what: &str| {
        servers.counter(
            leader,
            &format!("skiff_scheduler_planning_lock_seconds_{what}"),
        )
    };
    let (locked, batches) = (lock("sum"), lock("count"));
    println!("planning_batches={batches}");
    println!(
        "plan_rejections={}",
        servers.counter(leader, "skiff_scheduler_plan_rejections_total")
    );
    for p in 0..o.planners {
        let name = format!("skiff_scheduler_planned_evaluations_total{{planner=\"{p}\"}}");
        println!(
            "planned_evaluations_planner_{p}={}",
            servers.counter(leader, &name)
        );
    }
    println!(
        "planning_lock_ms_mean={:.1}",
        1000.0 * locked / batches.max(1.0)
    );
    let beats = servers.counter(leader, "skiff_heartbeats_received_total");
    let cpu_before = cpu();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_after = cpu();
    let beats = servers.counter(leader, "skiff_heartbeats_received_total") - beats;
    println!("leader_heartbeats_per_sec={:.0}", beats / 10.0);
    // Once full and nothing changing: what the nodes and the servers
    // spend just keeping it so (percent of one CPU, over 10 s).
    let (nodes_cpu, servers_cpu) = used(cpu_before, cpu_after);
    println!("cpu_percent_full_idle_simnodes={:.1}", nodes_cpu * 10.0);
    println!("cpu_percent_full_idle_servers={:.1}", servers_cpu * 10.0);
    let declared = servers.declared_down();
    println!("false_downs={}", declared as usize + not_ready);
    let (rss_max, rss_leader) = servers.rss(leader);
    println!("server_rss_mib_full={rss_max:.1}");
    println!("leader_rss_mib_full={rss_leader:.1}");
    print_sim_stats(&sim.stats, "");

    if o.servers == 3 && o.kill {
        // The leader dies at full size; the others must take over without
        // declaring a node down, and everything keeps running.
        let killed = Instant::now();
        servers.procs[leader].kill9();
        let next = wait_for("a new leader", Duration::from_secs(120), || {
            servers.leader()
        })
        .await?;
        println!(
            "seconds_to_new_leader={:.1}",
            killed.elapsed().as_secs_f64()
        );
        // Past the new leader's grace window and a TTL after it.
        let ttl = Duration::from_secs(5).max(Duration::from_secs_f64(o.nodes as f64 / 50.0));
        tokio::time::sleep(ttl * 3).await;
        let url = servers.urls[next].clone();
        let mut after = Calls::default();
        let mut c = creds().connect(&url).await?;
        for round in 0..20 {
            after.sample(&mut c, &image, 9000 + round, true).await?;
        }
        after.print("after_kill");
        let (not_ready, confirmed) = census(&url).await?;
        let downs = servers.declared_down() as usize + not_ready;
        let twice = sim.stats.started_twice();
        println!("false_downs_after_kill={downs}");
        println!("allocs_running_after_kill={confirmed}");
        println!("allocs_started_twice_after_kill={twice}");
        println!("server_rss_mib_after_kill={:.1}", servers.rss(next).0);
        print_sim_stats(&sim.stats, "_after_kill");
    }
    Ok(())
}
