//! Time from losing a node (SIGKILL of its agent, its containers' monitors
//! and its containers) to its allocations running elsewhere, with the
//! server's default heartbeat settings.
//!
//! ```text
//! cargo build --release -p skiff -p skiff-bench
//! target/release/nodebench [--rounds 5] [--replicas 2] [--skiff target/release/skiff]
//! ```
//!
//! Each round starts a fresh agent, kills the node that runs the job, and
//! times until the job's replicas all run on the new node. Needs root, runc,
//! umoci and busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skiff_bench::creds::{global as creds, set_global, Creds};
use skiff_bench::procs::{wait_until, Proc};
use skiff_bench::stats::{ms, percentile};
use skiff_model::{AllocStatus, JobSpec};

struct Opts {
    rounds: usize,
    replicas: u32,
    skiff: PathBuf,
}

fn parse() -> anyhow::Result<Opts> {
    let exe = std::env::current_exe()?;
    let mut o = Opts {
        rounds: 5,
        replicas: 2,
        skiff: exe.parent().map(|d| d.join("skiff")).unwrap_or_default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = val()?.parse()?,
            "--replicas" => o.replicas = val()?.parse()?,
            "--skiff" => o.skiff = val()?.into(),
            "-h" | "--help" => {
                println!("nodebench [--rounds N] [--replicas N] [--skiff PATH]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !o.skiff.is_file() {
        bail!(
            "{} not found: cargo build --release -p skiff",
            o.skiff.display()
        );
    }
    Ok(o)
}

/// An agent and what it runs, killable as a whole machine.
struct Node {
    name: String,
    dir: PathBuf,
    proc_: Proc,
}

impl Node {
    async fn start(skiff: &Path, dir: &Path, name: &str, url: &str) -> anyhow::Result<Node> {
        std::fs::create_dir_all(dir)?;
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--name".into(),
            name.into(),
            "--server".into(),
            url.into(),
            "--data-dir".into(),
            dir.display().to_string(),
            // The bench's image layout lies beside the nodes' directories.
            "--image-roots".into(),
            dir.parent().unwrap_or(dir).display().to_string(),
        ];
        args.extend(creds().agent_args(url).await?);
        Ok(Node {
            name: name.into(),
            dir: dir.to_path_buf(),
            proc_: Proc::spawn(skiff, &args, &dir.join("agent.log"))?,
        })
    }

    /// SIGKILL for the agent, every shim of its containers, and every
    /// process in its containers.
    fn kill_machine(&mut self) {
        self.proc_.kill9();
        let dir = self.dir.display().to_string();
        let shims = Command::new("pkill")
            .args(["-9", "-f", &format!("shim .*{dir}")])
            .status();
        let _ = shims;
        let root = self.dir.join("runc");
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["kill", "--all", id, "KILL"])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Removes what the killed node left (containers, overlay mounts).
    fn clean(&self) {
        let root = self.dir.join("runc");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .status();
            }
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            for line in mounts.lines() {
                if let Some(point) = line.split_whitespace().nth(1) {
                    if point.starts_with(&self.dir.display().to_string()) {
                        let _ = Command::new("umount").args(["-l", point]).status();
                    }
                }
            }
        }
    }
}

async fn running_on(url: &str, node: &str, n: usize) -> bool {
    let Ok(mut c) = creds().connect(url).await else {
        return false;
    };
    let Ok(allocs) = c.list_allocs(Some("moving"), None).await else {
        return false;
    };
    allocs
        .iter()
        .filter(|a| a.node == node && a.status == AllocStatus::Running)
        .count()
        == n
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let work = tempfile::tempdir()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let layout = work.path().join("busybox");
    let built = Command::new("bash")
        .arg(repo.join("scripts/build-busybox-image.sh"))
        .arg(&layout)
        .arg("latest")
        .stdout(Stdio::null())
        .status()?;
    if !built.success() {
        bail!("building the busybox image failed (umoci and busybox-static installed?)");
    }
    let server_dir = work.path().join("server");
    std::fs::create_dir_all(&server_dir)?;
    let _server = Proc::spawn(
        &o.skiff,
        &[
            "server".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--peer-addr".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            server_dir.display().to_string(),
        ],
        &server_dir.join("server.log"),
    )?;
    let addr_file = server_dir.join("api.addr");
    if !wait_until(Duration::from_secs(20), || addr_file.is_file()) {
        bail!("the server did not start");
    }
    set_global(Creds::from_admin_conf(&server_dir)?);
    let url = creds().url(&std::fs::read_to_string(&addr_file)?);
    let spec = JobSpec::from_yaml(&format!(
        "name: moving\nreplicas: {}\ntask:\n  image: oci:{}:latest\n  command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        o.replicas,
        layout.display()
    ))?;

    let mut current = Node::start(&o.skiff, &work.path().join("node-0"), "node-0", &url).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = creds().connect(&url).await?;
    client.apply_job(&spec).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running_on(&url, &current.name, o.replicas as usize).await {
        if Instant::now() > deadline {
            bail!("the job never ran");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::new();
    let mut dead = Vec::new();
    for round in 1..=o.rounds {
        let name = format!("node-{round}");
        let next = Node::start(&o.skiff, &work.path().join(&name), &name, &url).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = client.list_nodes().await?;
            if nodes
                .iter()
                .any(|n| n.node.name == name && n.node.status == skiff_model::NodeStatus::Ready)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not register");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the new node heartbeat for a while, as a long-lived one would.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = Instant::now();
        current.kill_machine();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !running_on(&url, &name, o.replicas as usize).await {
            if Instant::now() > deadline {
                bail!("round {round}: the replicas did not move to {name}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = killed_at.elapsed();
        println!(
            "round={round} killed={} replacement_running_ms={}",
            current.name,
            ms(took)
        );
        times.push(took);
        dead.push(std::mem::replace(&mut current, next));
    }
    println!(
        "rounds={} replicas={} p50_ms={} max_ms={}",
        times.len(),
        o.replicas,
        ms(percentile(&mut times.clone(), 50.0)),
        ms(times.iter().max().copied().unwrap_or_default())
    );
    current.kill_machine();
    for n in dead.iter().chain(std::iter::once(&current)) {
        n.clean();
    }
    Ok(())
}
