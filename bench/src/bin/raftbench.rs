//! Committed writes per second and latency of a 3-server Skiff control
//! plane against a 3-member etcd cluster, on loopback, in the same run;
//! then failover: time from SIGKILL of Skiff's leader to the next
//! acknowledged write.
//!
//! ```text
//! cargo build --release -p skiff
//! cargo run --release -p skiff-bench --bin raftbench -- [--duration 10] [--clients 1,64]
//!     [--rounds 1] [--value-size 256] [--failovers 5] [--skiff target/release/skiff]
//!     [--etcd /usr/bin/etcd]
//! ```
//!
//! With `--rounds N` each client count is measured N times, Skiff and etcd
//! taking turns, and the median of the N ratios is printed too: on a noisy
//! machine one pair of runs can be 20 % off either way.
//!
//! Both systems fsync every commit (etcd by default; Skiff always). Each
//! client sends one write at a time over its own connection; clients are
//! spread over the three members (followers forward to the leader).
//!
//! Like for like: both run mutual TLS on their client and peer ports
//! (certificates of one CA the bench makes, etcd's for 127.0.0.1), or
//! both plaintext with `--insecure`; `--etcd-plaintext` keeps etcd in
//! plaintext beside a TLS Skiff (the comparison of earlier figures).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skiff_bench::cluster::SkiffCluster;
use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_bench::etcdpb::kv_client::KvClient;
use skiff_bench::etcdpb::PutRequest;
use skiff_bench::procs::{free_ports, wait_until, Proc};
use skiff_bench::stats::{ms, percentile};
use skiff_model::JobSpec;

struct Opts {
    duration: Duration,
    clients: Vec<usize>,
    rounds: usize,
    value_size: usize,
    failovers: usize,
    skiff: PathBuf,
    etcd: PathBuf,
    insecure: bool,
    /// etcd without TLS even when Skiff has it (the comparison before
    /// both had TLS).
    etcd_plaintext: bool,
    /// Servers without `/metrics` (and so without counting their calls),
    /// to measure what serving metrics costs.
    no_metrics: bool,
    /// With metrics: scrape every server's `/metrics` this often while
    /// the bench runs (as Prometheus would; 0: never).
    scrape_every: Duration,
}

fn parse() -> anyhow::Result<Opts> {
    let exe = std::env::current_exe()?;
    let mut o = Opts {
        duration: Duration::from_secs(10),
        clients: vec![1, 64],
        rounds: 1,
        value_size: 256,
        failovers: 5,
        skiff: exe.parent().map(|d| d.join("skiff")).unwrap_or_default(),
        etcd: PathBuf::from("/usr/bin/etcd"),
        insecure: false,
        etcd_plaintext: false,
        no_metrics: false,
        scrape_every: Duration::from_secs(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => o.duration = Duration::from_secs(val()?.parse()?),
            "--clients" => {
                o.clients = val()?
                    .split(',')
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => o.rounds = val()?.parse::<usize>()?.max(1),
            "--value-size" => o.value_size = val()?.parse()?,
            "--failovers" => o.failovers = val()?.parse()?,
            "--skiff" => o.skiff = val()?.into(),
            "--etcd" => o.etcd = val()?.into(),
            "--insecure" => o.insecure = true,
            "--etcd-plaintext" => o.etcd_plaintext = true,
            "--no-metrics" => o.no_metrics = true,
            "--scrape-every" => {
                o.scrape_every = Duration::from_secs_f64(
                    args.next()
                        .context("--scrape-every needs seconds")?
                        .parse()
                        .context("--scrape-every: seconds")?,
                )
            }
            "-h" | "--help" => {
                println!("raftbench [--duration SECS] [--clients 1,64] [--rounds N] [--value-size BYTES] [--failovers N] [--skiff PATH] [--etcd PATH] [--insecure (Skiff and etcd without TLS)] [--etcd-plaintext (etcd without TLS, Skiff with)] [--no-metrics (servers without /metrics)] [--scrape-every SECS (1; 0: never)]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !o.skiff.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p skiff`, or pass --skiff PATH",
            o.skiff.display()
        );
    }
    if !o.etcd.is_file() {
        bail!(
            "{} not found: `apt-get install etcd-server`, or pass --etcd PATH",
            o.etcd.display()
        );
    }
    Ok(o)
}

/// A thread that scrapes the three servers' `/metrics` every so often.
struct Scraper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Duration, usize)>,
}

impl Scraper {
    fn start(dir: &Path, every: Duration) -> Scraper {
        let files: Vec<PathBuf> = (1..=3)
            .map(|i| dir.join(format!("skiff{i}/metrics.addr")))
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut total, mut bytes) = (0, Duration::ZERO, 0);
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for f in &files {
                    let Ok(addr) = std::fs::read_to_string(f) else {
                        continue;
                    };
                    if let Ok((took, b)) = skiff_bench::http::get(addr.trim(), "/metrics") {
                        (n, total, bytes) = (n + 1, total + took, b);
                    }
                }
                std::thread::sleep(every);
            }
            (n, total, bytes)
        });
        Scraper { stop, thread }
    }

    /// Stops; how many scrapes, their time together, the last's bytes.
    fn stop(self) -> (usize, Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

struct EtcdCluster {
    procs: Vec<Proc>,
    urls: Vec<String>,
}

/// What etcd runs with when it runs TLS, as Skiff does: certificates of
/// Skiff's bench CA for 127.0.0.1, client certificates required on both
/// its ports.
struct EtcdTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The TLS the bench's etcd clients use, when etcd runs it.
static ETCD_CLIENT_TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> =
    std::sync::OnceLock::new();

impl EtcdTls {
    /// Certificates under `dir/ca` (where `Creds::shared_ca` wrote the CA).
    fn make(dir: &Path) -> anyhow::Result<EtcdTls> {
        let ca_dir = dir.join("ca");
        let ca = skiff_pki::Ca(skiff_pki::CertKey {
            cert_pem: std::fs::read_to_string(ca_dir.join("ca.crt"))?,
            key_pem: std::fs::read_to_string(ca_dir.join("ca.key"))?,
        });
        let host = ca.issue_for_host(
            "etcd",
            &["127.0.0.1".parse()?],
            Duration::from_secs(24 * 3600),
        )?;
        let t = EtcdTls {
            cert: ca_dir.join("etcd.crt"),
            key: ca_dir.join("etcd.key"),
            ca: ca_dir.join("ca.crt"),
        };
        skiff_pki::files::write_private(&t.cert, host.cert_pem.as_bytes())?;
        skiff_pki::files::write_private(&t.key, host.key_pem.as_bytes())?;
        let _ = ETCD_CLIENT_TLS.set(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
                .identity(tonic::transport::Identity::from_pem(
                    &host.cert_pem,
                    &host.key_pem,
                ))
                .domain_name("127.0.0.1"),
        );
        Ok(t)
    }

    fn args(&self) -> Vec<String> {
        let (cert, key, ca) = (self.cert.display(), self.key.display(), self.ca.display());
        vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]
    }
}

impl EtcdCluster {
    fn start(
        bin: &Path,
        dir: &Path,
        ports: &[u16],
        tls: Option<&EtcdTls>,
    ) -> anyhow::Result<EtcdCluster> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (peers, clients) = ports.split_at(3);
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{}={scheme}://127.0.0.1:{p}", i + 1))
            .collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let client = format!("{scheme}://127.0.0.1:{}", clients[i]);
            let peer = format!("{scheme}://127.0.0.1:{}", peers[i]);
            let mut args: Vec<String> = vec![
                format!("--name=e{}", i + 1),
                format!(
                    "--data-dir={}",
                    dir.join(format!("etcd{}", i + 1)).display()
                ),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-token=skiff-bench".into(),
                "--initial-cluster-state=new".into(),
                "--logger=zap".into(),
                "--log-level=error".into(),
            ];
            args.extend(tls.map(EtcdTls::args).unwrap_or_default());
            procs.push(Proc::spawn(
                bin,
                &args,
                &dir.join(format!("etcd{}.log", i + 1)),
            )?);
        }
        Ok(EtcdCluster {
            procs,
            urls: clients
                .iter()
                .map(|p| format!("{scheme}://127.0.0.1:{p}"))
                .collect(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Skiff,
    Etcd,
}

struct Phase {
    writes: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

fn job(name: &str, value: &str) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "name: {name}\nreplicas: 0\ntask: {{image: 'oci:/bench', env: {{V: '{value}'}}}}"
    ))
    .expect("bench spec is valid")
}

/// `clients` writers for `duration`, each one write at a time.
async fn run_phase(
    target: Target,
    urls: &[String],
    clients: usize,
    duration: Duration,
    value_size: usize,
) -> anyhow::Result<Phase> {
    let start = Instant::now() + Duration::from_millis(300); // connect first
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = urls[c % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let value: String =
                std::iter::repeat_n(char::from(b'a' + (c % 26) as u8), value_size).collect();
            let mut lat = Vec::new();
            let mut n = 0usize;
            match target {
                Target::Skiff => {
                    let mut client = creds().connect(&url).await?;
                    // Parse the spec once; each write only changes the name
                    // and the value, as an etcd Put only changes key and value.
                    let mut spec = job("b0", &value);
                    tokio::time::sleep_until(start.into()).await;
                    while Instant::now() < deadline {
                        n += 1;
                        spec.name = format!("b{}", (c * 7919 + n) % 1000);
                        spec.task.env.insert("V".into(), format!("{value}{n}"));
                        let t = Instant::now();
                        client
                            .apply_job(&spec)
                            .await
                            .with_context(|| format!("skiff write {n} of client {c} to {url}"))?;
                        lat.push(t.elapsed());
                    }
                }
                Target::Etcd => {
                    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
                    if let Some(tls) = ETCD_CLIENT_TLS.get() {
                        endpoint = endpoint.tls_config(tls.clone())?;
                    }
                    let channel = endpoint.connect().await?;
                    let mut client = KvClient::new(channel);
                    tokio::time::sleep_until(start.into()).await;
                    while Instant::now() < deadline {
                        n += 1;
                        let req = PutRequest {
                            key: format!("b{}", (c * 7919 + n) % 1000).into_bytes(),
                            value: format!("{value}{n}").into_bytes(),
                            ..Default::default()
                        };
                        let t = Instant::now();
                        client
                            .put(req)
                            .await
                            .with_context(|| format!("etcd write {n} of client {c} to {url}"))?;
                        lat.push(t.elapsed());
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = duration.as_secs_f64();
    Ok(Phase {
        writes: all.len(),
        secs,
        p50: percentile(&mut all, 50.0),
        p99: percentile(&mut all, 99.0),
    })
}

/// Server CPU (USER_HZ ticks of 10 ms, all three servers) per write, in µs.
fn us_per_write(ticks: u64, writes: usize) -> f64 {
    ticks as f64 * 10_000.0 / writes.max(1) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Waits until every member accepts writes (each is checked: a member
/// that failed to start would otherwise show up only mid-run).
async fn wait_writable(target: Target, urls: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls {
        loop {
            let last = run_phase(
                target,
                std::slice::from_ref(url),
                1,
                Duration::from_millis(100),
                8,
            )
            .await;
            match last {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    bail!("{url} did not accept writes within 30 s: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let dir = tempfile::tempdir()?;
    eprintln!("data and logs in {}", dir.path().display());
    let result = run(&o, dir.path()).await;
    if result.is_err() {
        // The servers' logs tell what went wrong: kept for a look.
        eprintln!("kept {} for its logs", dir.keep().display());
    }
    result
}

async fn run(o: &Opts, dir: &Path) -> anyhow::Result<()> {
    // Every port at once, so the two clusters never share one.
    let ports = free_ports(12);
    let (c, security) = if o.insecure {
        (Creds::insecure(), vec!["--insecure".to_string()])
    } else {
        Creds::shared_ca(&dir.join("ca"))?
    };
    set_global(c);
    println!(
        "skiff: {}",
        if o.insecure {
            "--insecure (plaintext)"
        } else {
            "mutual TLS"
        }
    );
    let metrics = if o.no_metrics { "none" } else { "127.0.0.1:0" };
    println!("skiff metrics: {metrics}");
    let mut skiff = SkiffCluster::start(&o.skiff, dir, &ports[..6], &security, metrics, &[])?;
    let etcd_tls = if o.insecure || o.etcd_plaintext {
        None
    } else {
        Some(EtcdTls::make(dir)?)
    };
    println!(
        "etcd: {}",
        if etcd_tls.is_some() {
            "mutual TLS (client and peer ports)"
        } else {
            "plaintext"
        }
    );
    let etcd = EtcdCluster::start(&o.etcd, dir, &ports[6..], etcd_tls.as_ref())?;
    wait_writable(Target::Skiff, &skiff.urls)
        .await
        .context("skiff")?;
    wait_writable(Target::Etcd, &etcd.urls)
        .await
        .context("etcd")?;

    // Server CPU over the whole run: what each cluster does later (saves,
    // compactions, collection) counts for it even when it happens while
    // the other one is measured.
    let cpu = |procs: &[Proc]| procs.iter().map(Proc::cpu_ticks).sum::<u64>();
    let (skiff_cpu0, etcd_cpu0) = (cpu(&skiff.procs), cpu(&etcd.procs));
    // As Prometheus would: every server's /metrics, now and then.
    let scraping =
        (!o.no_metrics && !o.scrape_every.is_zero()).then(|| Scraper::start(dir, o.scrape_every));
    let (mut skiff_writes, mut etcd_writes) = (0usize, 0usize);
    for &clients in &o.clients {
        let (mut throughput, mut p99) = (Vec::new(), Vec::new());
        for round in 1..=o.rounds {
            let before = cpu(&skiff.procs);
            let s = run_phase(
                Target::Skiff,
                &skiff.urls,
                clients,
                o.duration,
                o.value_size,
            )
            .await
            .with_context(|| format!("skiff, {clients} clients, round {round}"))?;
            let skiff_ticks = cpu(&skiff.procs).saturating_sub(before);
            let before = cpu(&etcd.procs);
            let e = run_phase(Target::Etcd, &etcd.urls, clients, o.duration, o.value_size)
                .await
                .with_context(|| format!("etcd, {clients} clients, round {round}"))?;
            let etcd_ticks = cpu(&etcd.procs).saturating_sub(before);
            skiff_writes += s.writes;
            etcd_writes += e.writes;
            for (name, p, ticks) in [("skiff", &s, skiff_ticks), ("etcd", &e, etcd_ticks)] {
                println!(
                    "target={name} clients={clients} round={round} value_bytes={} writes={} writes_per_sec={:.0} p50_ms={} p99_ms={} server_cpu_us_per_write={:.0}",
                    o.value_size,
                    p.writes,
                    p.writes as f64 / p.secs,
                    ms(p.p50),
                    ms(p.p99),
                    us_per_write(ticks, p.writes)
                );
            }
            throughput.push(s.writes as f64 / e.writes.max(1) as f64);
            p99.push(s.p99.as_secs_f64() / e.p99.as_secs_f64().max(1e-9));
            println!(
                "compare clients={clients} round={round} throughput_skiff_over_etcd={:.2} p99_skiff_over_etcd={:.2}",
                throughput[round - 1],
                p99[round - 1]
            );
        }
        if o.rounds > 1 {
            println!(
                "median clients={clients} rounds={} throughput_skiff_over_etcd={:.2} p99_skiff_over_etcd={:.2}",
                o.rounds,
                median(&mut throughput),
                median(&mut p99)
            );
        }
    }

    if let Some(s) = scraping {
        let (n, total, bytes) = s.stop();
        println!(
            "scrapes={n} scrape_mean_ms={:.2} scrape_bytes={bytes} every_secs={}",
            total.as_secs_f64() * 1000.0 / n.max(1) as f64,
            o.scrape_every.as_secs_f64()
        );
    }
    if skiff_writes > 0 && etcd_writes > 0 {
        let s = us_per_write(cpu(&skiff.procs).saturating_sub(skiff_cpu0), skiff_writes);
        let e = us_per_write(cpu(&etcd.procs).saturating_sub(etcd_cpu0), etcd_writes);
        println!(
            "cpu whole_run server_cpu_us_per_write skiff={s:.0} etcd={e:.0} skiff_over_etcd={:.2}",
            s / e.max(1e-9)
        );
    }

    // Failover: SIGKILL the leader, time the next acknowledged write.
    let mut times = Vec::new();
    let spec = Arc::new(job("failover", "x"));
    for round in 0..o.failovers {
        let leader = loop {
            if let Some(l) = skiff.leader().await {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let survivors: Vec<String> = skiff
            .urls
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, u)| u.clone())
            .collect();
        let mut clients = Vec::new();
        for u in &survivors {
            clients.push(creds().connect(u).await?);
        }
        let killed_at = Instant::now();
        skiff.procs[leader].kill9();
        let mut k = 0usize;
        let acked = loop {
            let mut spec = (*spec).clone();
            spec.task.env.insert("ROUND".into(), format!("{round}-{k}"));
            let n = clients.len();
            let c = &mut clients[k % n];
            k += 1;
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(3), c.apply_job(&spec)).await
            {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!("no write was acknowledged within 30 s of killing the leader");
            }
        };
        println!(
            "failover round={round} killed_server={} ms={}",
            leader + 1,
            ms(acked)
        );
        times.push(acked);
        skiff.procs[leader].start()?;
        let urls = skiff.urls.clone();
        tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(30), || {
                std::net::TcpStream::connect(
                    urls[leader]
                        .trim_start_matches("https://")
                        .trim_start_matches("http://"),
                )
                .is_ok()
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // let it catch up
    }
    if !times.is_empty() {
        println!(
            "failover runs={} p50_ms={} max_ms={}",
            times.len(),
            ms(percentile(&mut times.clone(), 50.0)),
            ms(*times.iter().max().unwrap())
        );
    }
    Ok(())
}
