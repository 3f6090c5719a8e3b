//! Cold pulls and warm starts of a registry image, against skopeo and
//! umoci in the same run, with real processes and real runc.
//!
//! ```sh
//! cargo build --release -p skiff -p skiff-bench
//! sudo target/release/imagebench [--layers 5] [--layer-mib 40] [--rounds 3] [--warm 10]
//! ```
//!
//! It builds an image of busybox plus `--layers` layers of `--layer-mib`
//! MiB of random bytes each (gzip cannot shrink them), pushes it to a
//! `docker-registry` on loopback, and then, `--rounds` times each, in
//! turns:
//!
//! - **skopeo + umoci**: `skopeo copy docker://… oci:…` and `umoci unpack`
//!   into an empty directory, timed together;
//! - **skiff cold**: the agent's image cache emptied (agent stopped, its
//!   `images/` removed, started again), then a new version of a
//!   one-replica job on the image; timed by the agent's own `start_ms`
//!   (allocation reaching the reconciler to the container running: pull,
//!   verify, unpack, root filesystem, runc), and apply-to-running as the
//!   client sees it.
//!
//! Last, `--warm` new versions of the job start with the image cached:
//! the warm start, to set beside agentbench's start latency. Results are
//! `key=value` lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_bench::procs::{free_ports, wait_for, wait_until, Proc};
use skiff_model::{AllocStatus, JobSpec};

struct Opts {
    skiff: PathBuf,
    layers: usize,
    layer_mib: usize,
    rounds: usize,
    warm: usize,
    work: PathBuf,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        skiff: PathBuf::from("target/release/skiff"),
        layers: 5,
        layer_mib: 40,
        rounds: 3,
        warm: 10,
        work: std::env::temp_dir().join(format!("skiff-imagebench-{}", std::process::id())),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        let mut number = |name: &str| -> anyhow::Result<usize> {
            value()?
                .parse()
                .with_context(|| format!("{name} must be a number"))
        };
        match a.as_str() {
            "--skiff" => o.skiff = value()?.into(),
            "--layers" => o.layers = number("--layers")?.max(1),
            "--layer-mib" => o.layer_mib = number("--layer-mib")?.max(1),
            "--rounds" => o.rounds = number("--rounds")?.max(1),
            "--warm" => o.warm = number("--warm")?,
            "--work-dir" => o.work = value()?.into(),
            "-h" | "--help" => bail!(
                "usage: imagebench [--layers N] [--layer-mib N] [--rounds N] [--warm N] [--skiff PATH] [--work-dir DIR]"
            ),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !o.skiff.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p skiff`",
            o.skiff.display()
        );
    }
    Ok(o)
}

/// Runs `cmd`, which must succeed.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// busybox and `layers` layers of random bytes, as `latest` of a layout.
fn build_image(o: &Opts) -> anyhow::Result<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repo")?;
    let layout = o.work.join("big");
    run(
        Command::new("bash")
            .arg(repo.join("scripts/build-busybox-image.sh"))
            .arg(&layout)
            .arg("latest"),
        "build-busybox-image.sh",
    )?;
    let image = format!("{}:latest", layout.display());
    let bundle = o.work.join("bundle");
    let mut noise = vec![0u8; o.layer_mib << 20];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    for i in 0..o.layers {
        run(
            Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle),
            "umoci unpack",
        )?;
        std::io::Read::read_exact(&mut urandom, &mut noise)?;
        std::fs::create_dir_all(bundle.join("rootfs/data"))?;
        std::fs::write(bundle.join(format!("rootfs/data/layer-{i}.bin")), &noise)?;
        run(
            Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle),
            "umoci repack",
        )?;
        std::fs::remove_dir_all(&bundle)?;
    }
    Ok(layout)
}

fn start_registry(o: &Opts) -> anyhow::Result<(Proc, String)> {
    let dir = o.work.join("registry");
    std::fs::create_dir_all(&dir)?;
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )?;
    let registry = Proc::spawn(
        Path::new("docker-registry"),
        &["serve".into(), config.display().to_string()],
        &dir.join("registry.log"),
    )?;
    if !wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(&addr).is_ok()
    }) {
        bail!("docker-registry did not listen on {addr}");
    }
    Ok((registry, addr))
}

/// The `start_ms` of the agent's "container started" lines.
fn start_ms_lines(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("container started"))
        .filter_map(|l| {
            l.split("start_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Deletes job `img` and waits until its allocations have ended.
async fn delete_and_wait(url: &str) -> anyhow::Result<()> {
    let mut c = creds().connect(url).await?;
    let _ = c.delete_job("img").await;
    wait_for(
        "the job's containers to go",
        Duration::from_secs(60),
        || async {
            let mut c = creds().connect(url).await.ok()?;
            let a = c.list_allocs(Some("img"), None).await.ok()?;
            a.iter().all(|a| a.status.is_terminal()).then_some(())
        },
    )
    .await
}

/// Applies version `round` of job `img` and waits for it to run alone;
/// returns apply-to-running in ms.
async fn start_version(url: &str, image: &str, round: usize) -> anyhow::Result<f64> {
    let spec = JobSpec::from_yaml(&format!(
        "name: img\nupdate: {{max_unavailable: 1, max_surge: 0}}\ntask:\n  image: {image}\n  command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n  env: {{ROUND: '{round}'}}\n  resources: {{cpu: 500m, memory: 32Mi}}\n"
    ))?;
    let mut client = creds().connect(url).await?;
    let t = Instant::now();
    let version = client.apply_job(&spec).await?.job.version;
    wait_for(
        "the new version to run",
        Duration::from_secs(600),
        || async {
            let mut c = creds().connect(url).await.ok()?;
            let a = c.list_allocs(Some("img"), None).await.ok()?;
            a.iter()
                .any(|a| a.job_version == version && a.status == AllocStatus::Running)
                .then_some(())
        },
    )
    .await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

async fn bench(o: &Opts) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work)?;
    let t = Instant::now();
    let layout = build_image(o)?;
    println!("image_build_s={:.1}", t.elapsed().as_secs_f64());
    let (_registry, addr) = start_registry(o)?;
    let remote = format!("{addr}/bench/big:1");
    run(
        Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{remote}")),
        "skopeo copy (push)",
    )?;
    let size: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "image_layers={} image_mib={:.0}",
        o.layers + 1,
        size as f64 / 1048576.0
    );

    let server_dir = o.work.join("server");
    let agent_dir = o.work.join("agent");
    std::fs::create_dir_all(&server_dir)?;
    std::fs::create_dir_all(&agent_dir)?;
    let _server = Proc::spawn(
        &o.skiff,
        &[
            "server".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            server_dir.display().to_string(),
            "--insecure-registry".into(),
            addr.clone(),
        ],
        &server_dir.join("server.log"),
    )?;
    let api = wait_for("the server", Duration::from_secs(20), || {
        let f = server_dir.join("api.addr");
        async move { std::fs::read_to_string(f).ok() }
    })
    .await?;
    set_global(Creds::from_admin_conf(&server_dir)?);
    let url = creds().url(&api);
    let join = creds().agent_args(&url).await?;
    let agent_log = agent_dir.join("agent.log");
    let mut agent_args: Vec<String> = [
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--name",
        "bench",
        "--stop-grace",
        "1s",
        "--insecure-registry",
        &addr,
        "--server",
        &url,
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    agent_args.push(agent_dir.display().to_string());
    let mut first_args = agent_args.clone();
    first_args.extend(join);
    let mut agent = Proc::spawn(&o.skiff, &first_args, &agent_log)?;
    wait_for("the agent to register", Duration::from_secs(30), || async {
        let mut c = creds().connect(&url).await.ok()?;
        (!c.list_nodes().await.ok()?.is_empty()).then_some(())
    })
    .await?;

    let (mut tools, mut cold, mut cold_apply) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // skopeo + umoci, from nothing.
        let (copy, unpacked) = (o.work.join("skopeo"), o.work.join("unpacked"));
        let _ = std::fs::remove_dir_all(&copy);
        let _ = std::fs::remove_dir_all(&unpacked);
        let t = Instant::now();
        run(
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false"])
                .arg(format!("docker://{remote}"))
                .arg(format!("oci:{}:1", copy.display())),
            "skopeo copy (pull)",
        )?;
        run(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:1", copy.display()))
                .arg(&unpacked),
            "umoci unpack",
        )?;
        tools.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = std::fs::remove_dir_all(&copy);
        let _ = std::fs::remove_dir_all(&unpacked);

        // Skiff, from an empty cache: the job's container gone, the agent
        // stopped, its images removed, the agent back.
        delete_and_wait(&url).await?;
        wait_until(Duration::from_secs(30), || {
            !agent_dir.join("containers").exists()
                || std::fs::read_dir(agent_dir.join("containers"))
                    .is_ok_and(|mut d| d.next().is_none())
        });
        agent.kill9();
        std::fs::remove_dir_all(agent_dir.join("images")).context("emptying the image cache")?;
        agent = Proc::spawn(&o.skiff, &agent_args, &agent_log)?;
        let before = start_ms_lines(&agent_log).len();
        cold_apply.push(start_version(&url, &remote, round).await?);
        let lines = start_ms_lines(&agent_log);
        cold.push(
            *lines
                .get(before)
                .context("no start_ms for the cold start")?,
        );
        println!(
            "round={round} skopeo_umoci_ms={:.0} skiff_cold_start_ms={:.0} skiff_cold_apply_to_running_ms={:.0}",
            tools[round], cold[round], cold_apply[round]
        );
    }
    let (t, s) = (median(tools), median(cold.clone()));
    println!(
        "cold_skopeo_umoci_ms_p50={t:.0} cold_skiff_start_ms_p50={s:.0} cold_skiff_apply_to_running_ms_p50={:.0} cold_ratio_skiff_over_tools={:.2}",
        median(cold_apply),
        s / t
    );

    let before = start_ms_lines(&agent_log).len();
    let mut warm_apply = Vec::new();
    for i in 0..o.warm {
        warm_apply.push(start_version(&url, &remote, o.rounds + i).await?);
    }
    let warm: Vec<f64> = start_ms_lines(&agent_log).split_off(before);
    println!(
        "warm_starts={} warm_start_ms_p50={:.1} warm_apply_to_running_ms_p50={:.0}",
        warm.len(),
        median(warm),
        median(warm_apply)
    );
    delete_and_wait(&url).await?;
    Ok(())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // The agent logs each start's phases at debug level.
    std::env::set_var("SKIFF_LOG", "info,skiff_agent=debug,slog=warn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = rt.block_on(bench(&o));
    let _ = std::fs::remove_dir_all(&o.work);
    if let Err(e) = result {
        eprintln!("imagebench: {e:#}");
        std::process::exit(1);
    }
}
