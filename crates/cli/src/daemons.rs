//! `skiff server`, `skiff agent` and `skiff dev`. (The hidden `skiff shim`
//! is dispatched in `main` before the command line is parsed.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skiff_agent::AgentConfig;
use skiff_server::evals::{Algorithm, SchedulerSettings};
use skiff_server::heartbeats::LivenessConfig;
use skiff_server::ServerConfig;
use skiff_store::RaftConfig;

use crate::args::{parse_duration, parse_log_size};
use crate::image_opts::{ImageGcOpts, RegistryOpts};
use crate::network_opts::{NetworkOpts, NodeSubnetsOpts};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerCmd {
    #[command(subcommand)]
    pub sub: Option<ServerSub>,
    #[command(flatten)]
    pub args: ServerArgs,
}

#[derive(clap::Subcommand)]
pub enum ServerSub {
    /// List the control-plane servers, or remove one.
    Members(crate::commands::MembersCmd),
}

#[derive(Args)]
pub struct ServerArgs {
    /// Where the Raft log (`raft/`) and the state (`state/`) live.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    data_dir: PathBuf,
    /// Address for the client and node APIs. Port 0 picks a free port
    /// (written to DATA_DIR/api.addr).
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: SocketAddr,
    /// Address for Raft traffic between servers (port 0: DATA_DIR/peer.addr).
    #[arg(long, default_value = "127.0.0.1:7701")]
    peer_addr: SocketAddr,
    /// This server's Raft id (unique in the cluster, 1 or more).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// The founding servers of a static cluster, ID=HOST:PORT of their peer
    /// addresses, comma-separated, this server included
    /// (e.g. 1=10.0.0.1:7701,2=10.0.0.2:7701,3=10.0.0.3:7701).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer, conflicts_with = "join")]
    peers: Vec<(u64, String)>,
    /// Join an existing cluster through any of its servers' API URL
    /// (e.g. https://10.0.0.1:7700), with a server join token (--token).
    /// The server joins as a learner and is promoted to voter once it
    /// caught up.
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    #[command(flatten)]
    security: ServerSecurityOpts,
    /// API address other servers and clients should use, when --api binds
    /// a wildcard such as 0.0.0.0.
    #[arg(long, value_name = "HOST:PORT")]
    advertise_api: Option<String>,
    /// Peer address other servers should use, when --peer-addr binds a wildcard.
    #[arg(long, value_name = "HOST:PORT")]
    advertise_peer: Option<String>,
    /// Compact the Raft log every N entries, keeping the newest half and
    /// nothing past the last state save (0: never; snapshots are then made
    /// only for servers that need one).
    #[arg(long, default_value_t = RaftConfig::default().snapshot_entries)]
    snapshot_entries: u64,
    #[command(flatten)]
    liveness: LivenessOpts,
    #[command(flatten)]
    scheduler: SchedulerOpts,
    #[command(flatten)]
    gc: GcOpts,
    #[command(flatten)]
    registries: RegistryOpts,
    #[command(flatten)]
    node_subnets: NodeSubnetsOpts,
    #[command(flatten)]
    log: crate::logging::LogOpts,
    #[command(flatten)]
    metrics: crate::logging::MetricsOpts,
}

#[derive(Args)]
struct ServerSecurityOpts {
    /// A server join token for --join (`skiff token create --role server`);
    /// needed once: the server keeps its credentials in DATA_DIR/tls.
    #[arg(
        long,
        env = "SKIFF_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "join"
    )]
    token: Option<String>,
    /// The cluster CA's certificate, for the founding servers of a static
    /// cluster (made once with `skiff ca create`); with --ca-key. A single
    /// founding server makes its own CA when none is given.
    #[arg(
        long,
        value_name = "FILE",
        requires = "ca_key",
        conflicts_with = "join",
        help_heading = "Security"
    )]
    ca_cert: Option<PathBuf>,
    /// The cluster CA's private key (with --ca-cert).
    #[arg(
        long,
        value_name = "FILE",
        requires = "ca_cert",
        help_heading = "Security"
    )]
    ca_key: Option<PathBuf>,
    /// How long the certificates this server signs for joins and renewals
    /// stay valid (for tests of renewal).
    #[arg(long, default_value = "8760h", value_parser = parse_duration, hide = true)]
    cert_lifetime: Duration,
    /// How long the CA a founding server makes, and each renewal of it,
    /// stays valid (for tests of its renewal).
    #[arg(long, default_value = "87600h", value_parser = parse_duration, hide = true)]
    ca_lifetime: Duration,
    #[command(flatten)]
    insecure: InsecureOpt,
}

#[derive(Args)]
struct InsecureOpt {
    /// Plaintext on every port, and every caller trusted: anyone who
    /// reaches a port can run anything on every node. Only for a throwaway
    /// cluster on a network nobody else reaches.
    #[arg(long, help_heading = "Security")]
    insecure: bool,
}

impl ServerSecurityOpts {
    fn security(&self) -> anyhow::Result<skiff_server::bootstrap::Security> {
        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                };
                let ca = skiff_pki::Ca(skiff_pki::CertKey {
                    cert_pem: read(cert)?,
                    key_pem: read(key)?,
                });
                ca.pin()
                    .with_context(|| format!("{} is not a CA certificate", cert.display()))?;
                Some(ca)
            }
            _ => None,
        };
        if self.insecure.insecure && (ca.is_some() || self.token.is_some()) {
            anyhow::bail!("--insecure cannot be combined with --ca-cert or --token");
        }
        Ok(skiff_server::bootstrap::Security {
            insecure: self.insecure.insecure,
            ca,
            join_token: self.token.clone(),
            leaf_lifetime: self.cert_lifetime,
            ca_lifetime: self.ca_lifetime,
        })
    }
}

#[derive(Args)]
struct SchedulerOpts {
    /// How the scheduler scores nodes: `binpack` fills the fullest node that
    /// fits (keeps whole nodes free for big and GPU work); `spread` picks the
    /// emptiest (spreads load).
    #[arg(long = "scheduler", value_name = "ALGORITHM", default_value = "binpack", value_parser = parse_algorithm)]
    algorithm: Algorithm,
    /// How many batches of evaluations the leader plans at once, each on
    /// its own thread with its own copy of the cluster (memory grows by
    /// about one copy each). Their plans are checked once more as they
    /// commit; planners that picked the same room have the later plan
    /// refused and planned again. More than 1 helps only with CPUs to
    /// spare.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    planners: u16,
}

impl SchedulerOpts {
    fn settings(&self) -> SchedulerSettings {
        SchedulerSettings {
            algorithm: self.algorithm,
            planners: usize::from(self.planners),
        }
    }
}

#[derive(Args)]
struct GcOpts {
    /// Finished allocations (complete, failed, lost) kept per job, newest
    /// first, however old; older ones go once past --gc-keep-for, and
    /// their logs with them.
    #[arg(long, default_value_t = 5)]
    gc_keep_finished: u32,
    /// Finished allocations younger than this are always kept (e.g. 1h,
    /// 30m).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gc_keep_for: Duration,
    /// Time between the leader's collection passes.
    #[arg(long, default_value = "30s", value_parser = parse_duration, hide = true)]
    gc_every: Duration,
}

impl GcOpts {
    fn settings(&self) -> skiff_server::gc::GcSettings {
        skiff_server::gc::GcSettings {
            keep_finished: self.gc_keep_finished,
            keep_for: self.gc_keep_for,
            every: self.gc_every.max(Duration::from_millis(100)),
        }
    }
}

#[derive(Args)]
struct LivenessOpts {
    /// Shortest heartbeat TTL handed to agents; a node silent past its TTL
    /// is declared down and its allocations are replaced elsewhere.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_ttl: Duration,
    /// Heartbeats per second the leader aims to receive at most: with many
    /// nodes the TTL grows to nodes / this.
    #[arg(long, default_value_t = 50.0)]
    heartbeats_per_second: f64,
    /// After a leader change, how long every node has to heartbeat before it
    /// can be declared down (default: the TTL).
    #[arg(long, value_parser = parse_duration)]
    heartbeat_grace: Option<Duration>,
}

impl LivenessOpts {
    fn config(&self) -> anyhow::Result<LivenessConfig> {
        if self.heartbeats_per_second <= 0.0 || !self.heartbeats_per_second.is_finite() {
            anyhow::bail!("--heartbeats-per-second must be more than 0");
        }
        if self.heartbeat_ttl < Duration::from_millis(100) {
            anyhow::bail!("--heartbeat-ttl must be at least 100ms");
        }
        Ok(LivenessConfig {
            min_ttl: self.heartbeat_ttl,
            max_heartbeats_per_second: self.heartbeats_per_second,
            grace: self.heartbeat_grace,
            ..LivenessConfig::default()
        })
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse()
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    log: crate::logging::LogOpts,
    /// Server API URL(s), comma-separated (https://HOST:PORT; http:// with
    /// --insecure).
    #[arg(long, env = "SKIFF_SERVER", default_value = skiff_client::DEFAULT_SERVER, value_delimiter = ',')]
    server: Vec<String>,
    /// A node join token (`skiff token create --role node`), needed once:
    /// the agent keeps the node's credentials in DATA_DIR/tls.
    #[arg(
        long,
        env = "SKIFF_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        help_heading = "Security"
    )]
    token: Option<String>,
    #[command(flatten)]
    insecure: InsecureOpt,
    /// Where containers, logs and the image cache live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeOpts,
    /// Address of the agent's own API (logs, exec and GPU resets, which
    /// servers relay).
    /// Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7702")]
    listen: SocketAddr,
    /// Address the servers use to reach this agent (default: the --listen address).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    #[command(flatten)]
    metrics: crate::logging::AgentMetricsOpts,
}

#[derive(Args)]
struct NodeOpts {
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Node label, KEY=VALUE; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Container runtime: `runc`, `crun`, or a path to a runc-compatible
    /// binary. crun is refused on hosts whose cgroups are in hybrid mode.
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    /// Time between the stop signal and SIGKILL when a container is
    /// stopped, unless its task sets `stop_grace` (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stop_grace: Duration,
    /// Resources held back for the system, e.g. `cpu=500m,memory=1Gi`:
    /// the node offers its capacity minus these.
    #[arg(long, value_name = "cpu=Q,memory=Q", value_parser = parse_reserve)]
    reserve: Option<skiff_model::Resources>,
    /// Rotate a container's log when it reaches this size (e.g. 10Mi).
    #[arg(long, default_value = "10Mi", value_parser = parse_log_size)]
    log_max_size: u64,
    /// Log files kept per container, the current one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    log_max_files: u32,
    /// How long verifying and unpacking an image may take before the
    /// container's start fails (e.g. 10m, 90s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    image_timeout: Duration,
    #[command(flatten)]
    image_gc: ImageGcOpts,
    #[command(flatten)]
    registries: RegistryOpts,
    #[command(flatten)]
    network: NetworkOpts,
    /// How a container's root filesystem is made from the image cache:
    /// `overlay` (overlayfs), `copy`, or `auto` (overlayfs where it works).
    #[arg(long, default_value = "auto", value_parser = ["auto", "overlay", "copy"])]
    rootfs: String,
    /// Directories under which jobs may name `oci:` image layouts,
    /// comma-separated; a namespace's policy (`skiff namespace apply`) may
    /// allow more. `skiff dev` also allows the directory it started in.
    #[arg(
        long,
        value_name = "DIRS",
        value_delimiter = ',',
        default_value = "/var/lib/skiff/images,/srv/images"
    )]
    image_roots: Vec<PathBuf>,
    #[command(flatten)]
    gpu: GpuOpts,
}

#[derive(Args)]
struct GpuOpts {
    /// Report the GPUs described in FILE (YAML or JSON) instead of asking
    /// the NVIDIA driver: for tests and for trying Skiff without GPUs.
    /// Health events are appended as JSON lines to FILE.events (see
    /// docs/gpus.md). Without this flag a machine without the NVIDIA
    /// driver simply reports no GPUs.
    #[arg(long, value_name = "FILE", help_heading = "GPUs")]
    fake_gpus: Option<PathBuf>,
    /// An unhealthy GPU is offered again after this long without a new
    /// XID, ECC or bus error (`skiff node gpu reset` does it at once).
    #[arg(long, default_value = "5m", value_parser = parse_duration, help_heading = "GPUs")]
    gpu_quiet_period: Duration,
    /// XIDs that do not make a GPU unhealthy, comma-separated, or `none`.
    /// The default ones are caused by applications, not by the GPU.
    #[arg(long, value_name = "LIST", default_value = "13,31,43,45,68", value_parser = parse_xids, help_heading = "GPUs")]
    gpu_ignore_xids: XidList,
    /// How often GPU utilisation, memory, temperature, power, ECC counts
    /// and throttling are sampled (sent with heartbeats).
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = "GPUs")]
    gpu_metrics_interval: Duration,
    /// Directories with CDI specs whose `nvidia.com/gpu` devices are used
    /// to inject GPUs, comma-separated; `none` to always inject from the
    /// inventory. Default: /etc/cdi,/var/run/cdi (none with --fake-gpus).
    #[arg(long, value_name = "DIRS", help_heading = "GPUs")]
    cdi_dirs: Option<String>,
}

/// A parsed `--gpu-ignore-xids`.
#[derive(Clone, Debug)]
struct XidList(Vec<u64>);

fn parse_xids(s: &str) -> Result<XidList, String> {
    if s.trim() == "none" || s.trim().is_empty() {
        return Ok(XidList(Vec::new()));
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("{x:?} is not an XID number (e.g. 13,31,43 or none)"))
        })
        .collect::<Result<_, _>>()
        .map(XidList)
}

impl GpuOpts {
    fn config(&self) -> skiff_agent::gpu::GpuConfig {
        let cdi_dirs = self.cdi_dirs.as_ref().map(|d| {
            if d.trim() == "none" {
                Vec::new()
            } else {
                d.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }
        });
        skiff_agent::gpu::GpuConfig {
            fake: self.fake_gpus.clone(),
            quiet_period: self.gpu_quiet_period,
            ignored_xids: self.gpu_ignore_xids.0.clone(),
            metrics_interval: self.gpu_metrics_interval,
            cdi_dirs,
        }
    }
}

#[derive(Args)]
pub struct DevArgs {
    #[command(flatten)]
    log: crate::logging::LogOpts,
    #[command(flatten)]
    metrics: crate::logging::MetricsOpts,
    /// Holds `server/` and `agent/`.
    #[arg(long, default_value = "/var/lib/skiff/dev")]
    data_dir: PathBuf,
    /// Address for the client API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    api: SocketAddr,
    #[command(flatten)]
    node: NodeOpts,
    #[command(flatten)]
    scheduler: SchedulerOpts,
    #[command(flatten)]
    liveness: LivenessOpts,
    #[command(flatten)]
    gc: GcOpts,
    #[command(flatten)]
    insecure: InsecureOpt,
}

/// `ID=HOST:PORT`.
fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must be ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("{s:?}: the id must be a number from 1 up"))?;
    let addr = addr.trim();
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok((id, addr.to_string()))
        }
        _ => Err(format!("{s:?}: the address must be HOST:PORT")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} must be KEY=VALUE with a non-empty KEY")),
    }
}

/// `cpu=500m,memory=1Gi` (either may be left out).
fn parse_reserve(s: &str) -> Result<skiff_model::Resources, String> {
    use skiff_model::quantity::{parse_cpu, parse_memory};
    let mut r = skiff_model::Resources::ZERO;
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('=') {
            Some(("cpu", q)) => r.cpu_millis = parse_cpu(q).map_err(|e| format!("cpu: {e}"))?,
            Some(("memory", q)) => {
                r.memory_bytes = parse_memory(q).map_err(|e| format!("memory: {e}"))?
            }
            _ => {
                return Err(format!(
                    "{part:?}: expected cpu=QUANTITY or memory=QUANTITY (e.g. cpu=500m,memory=1Gi)"
                ))
            }
        }
    }
    Ok(r)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn server_config(args: ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut peers = std::collections::HashMap::new();
    for (id, addr) in args.peers {
        if peers.insert(id, addr).is_some() {
            anyhow::bail!("--peers names server {id} twice");
        }
    }
    if !peers.is_empty() && !peers.contains_key(&args.id) {
        anyhow::bail!(
            "--peers must include this server (--id {}) with its peer address",
            args.id
        );
    }
    Ok(ServerConfig {
        data_dir: args.data_dir,
        api_addr: args.api,
        peer_addr: args.peer_addr,
        advertise_api: args.advertise_api,
        advertise_peer: args.advertise_peer,
        peers,
        join: args.join,
        security: args.security.security()?,
        raft: RaftConfig {
            id: args.id,
            snapshot_entries: args.snapshot_entries,
            ..RaftConfig::default()
        },
        scheduler: args.scheduler.settings(),
        liveness: args.liveness.config()?,
        gc: args.gc.settings(),
        registries: args.registries.config(),
        node_subnets: args.node_subnets.range()?,
        metrics_addr: args.metrics.addr()?,
        metrics_appendix: Default::default(),
    })
}

/// Paths made absolute against the current directory, without `.` or
/// `..` (the servers compare image paths with them as text).
fn absolute(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    use std::path::Component;
    let here = std::env::current_dir().context("cannot read the current directory")?;
    Ok(paths
        .into_iter()
        .map(|p| {
            let mut out = PathBuf::from("/");
            for c in here.join(p).components() {
                match c {
                    Component::Normal(s) => out.push(s),
                    Component::ParentDir => {
                        out.pop();
                    }
                    _ => {}
                }
            }
            out
        })
        .collect())
}

fn agent_config(
    servers: Vec<String>,
    data_dir: PathBuf,
    node: NodeOpts,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    security: skiff_agent::tls::Security,
) -> anyhow::Result<AgentConfig> {
    let shim_program =
        std::env::current_exe().context("cannot find the skiff binary to start shims")?;
    let labels: BTreeMap<String, String> = node.labels.into_iter().collect();
    Ok(AgentConfig {
        servers,
        data_dir,
        name: node.name.unwrap_or_else(skiff_agent::host::hostname),
        labels,
        listen,
        advertise,
        runtime: node.runtime,
        shim_program,
        shim_prefix: vec!["shim".into()],
        stop_grace: node.stop_grace,
        reserved: node.reserve.unwrap_or(skiff_model::Resources::ZERO),
        log_max_size: node.log_max_size,
        log_max_files: node.log_max_files,
        rootfs: skiff_agent::rootfs::RootfsMode::parse(&node.rootfs).unwrap_or_default(),
        gpu: node.gpu.config(),
        security,
        image_roots: absolute(node.image_roots)?,
        image_timeout: node.image_timeout,
        registry: node.registries.config(),
        image_gc: node.image_gc.policy()?,
        image_gc_every: node.image_gc.every(),
        network: node.network.config()?,
        metrics: Default::default(),
    })
}

pub async fn server(cmd: ServerCmd) -> anyhow::Result<()> {
    if let Some(ServerSub::Members(m)) = cmd.sub {
        return crate::commands::members(m).await;
    }
    cmd.args.log.init();
    let cfg = server_config(cmd.args)?;
    let running = skiff_server::start(&cfg).await?;
    skiff_server::serve(running, shutdown_signal()).await?;
    Ok(())
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    args.log.init();
    let security = skiff_agent::tls::Security {
        insecure: args.insecure.insecure,
        join_token: args.token,
    };
    if security.insecure && security.join_token.is_some() {
        anyhow::bail!("--insecure cannot be combined with --token");
    }
    let mut cfg = agent_config(
        args.server,
        args.data_dir,
        args.node,
        args.listen,
        args.advertise,
        security,
    )?;
    cfg.metrics.addr = args.metrics.addr()?;
    if let Some(addr) = cfg.metrics.addr {
        skiff_metrics::check_addr(addr, args.insecure.insecure)?;
    }
    cfg.metrics.dcgm_job_mapping_dir = args.metrics.job_mapping_dir();
    skiff_agent::run(cfg, shutdown_signal()).await?;
    Ok(())
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    args.log.init();
    let insecure = args.insecure.insecure;
    let server_dir = args.data_dir.join("server");
    // The agent's metrics are served on the server's metrics address.
    let appendix = skiff_metrics::Appendix::default();
    let server_cfg = ServerConfig {
        data_dir: server_dir.clone(),
        api_addr: args.api,
        peer_addr: "127.0.0.1:0".parse().expect("valid address"),
        advertise_api: None,
        advertise_peer: None,
        peers: Default::default(),
        join: None,
        security: skiff_server::bootstrap::Security {
            insecure,
            ca: None,
            join_token: None,
            leaf_lifetime: skiff_pki::LEAF_LIFETIME,
            ca_lifetime: skiff_pki::CA_LIFETIME,
        },
        raft: RaftConfig::default(),
        scheduler: args.scheduler.settings(),
        liveness: args.liveness.config()?,
        gc: args.gc.settings(),
        registries: args.node.registries.config(),
        node_subnets: crate::network_opts::default_node_subnets(),
        metrics_addr: args.metrics.addr()?,
        metrics_appendix: appendix.clone(),
    };
    let running = skiff_server::start(&server_cfg).await?;
    let scheme = if insecure { "http" } else { "https" };
    let url = format!("{scheme}://{}", running.api_addr);
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut server_stop = stop_tx.subscribe();
    let mut agent_stop = stop_tx.subscribe();
    let mut server = tokio::spawn(skiff_server::serve(running, async move {
        let _ = server_stop.recv().await;
    }));
    let agent_dir = args.data_dir.join("agent");
    let mut security = skiff_agent::tls::Security {
        insecure,
        join_token: None,
    };
    if !insecure {
        let admin = server_dir.join(skiff_server::bootstrap::ADMIN_CONF);
        if skiff_agent::tls::NodeCreds::load(&agent_dir)?.is_none() {
            security.join_token = Some(dev_node_token(&admin, &url).await?);
        }
        install_user_config(&admin, &args.data_dir);
    }
    let mut node = args.node;
    // The examples name layouts next to them.
    node.image_roots.push(".".into());
    let mut agent_cfg = agent_config(
        vec![url.clone()],
        agent_dir,
        node,
        "127.0.0.1:0".parse().expect("valid address"),
        None,
        security,
    )?;
    agent_cfg.metrics.appendix = Some(appendix);
    tracing::info!(api = %url, data_dir = %args.data_dir.display(), "skiff dev: one server and one agent in this process");
    let mut agent = tokio::spawn(skiff_agent::run(agent_cfg, async move {
        let _ = agent_stop.recv().await;
    }));
    tokio::select! {
        _ = shutdown_signal() => {}
        r = &mut agent => {
            let _ = stop_tx.send(());
            r.context("the agent panicked")??;
            anyhow::bail!("the agent stopped");
        }
        r = &mut server => {
            let _ = stop_tx.send(());
            r.context("the server panicked")??;
            anyhow::bail!("the server stopped");
        }
    }
    let _ = stop_tx.send(());
    let _ = agent.await;
    server.await.context("the server panicked")??;
    Ok(())
}

/// A short-lived node token for `skiff dev`'s own agent, made with the
/// administrator's credentials over loopback, as an operator would.
async fn dev_node_token(admin: &std::path::Path, url: &str) -> anyhow::Result<String> {
    let mut config = skiff_client::ClientConfig::load(admin)?;
    config.servers = vec![url.to_string()];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let made = async {
            skiff_client::Client::connect_config(&config)
                .await?
                .create_token(skiff_client::JoinRole::Node, 600, "skiff dev's own agent")
                .await
        }
        .await;
        match made {
            Ok(t) => return Ok(t.token),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e).context("cannot make a join token for the dev agent")
            }
            Err(e) => tracing::debug!(error = %e, "the server is not ready for a token yet"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first line of a `~/.skiff/config` that `skiff dev` wrote.
const DEV_MARK: &str = "# written by skiff dev for ";

/// Copies the administrator's credentials to `~/.skiff/config`, so plain
/// `skiff get nodes` works, unless that file holds something else (then
/// the log says how to point the CLI at them).
fn install_user_config(admin: &std::path::Path, data_dir: &std::path::Path) {
    let Some(path) = skiff_client::ClientConfig::default_path() else {
        return;
    };
    let mark = format!("{DEV_MARK}{}\n", data_dir.display());
    let ours = match std::fs::read_to_string(&path) {
        Ok(text) => text.starts_with(DEV_MARK),
        Err(_) => true,
    };
    let written = ours
        && std::fs::read_to_string(admin)
            .ok()
            .and_then(|text| {
                let dir = path.parent()?;
                skiff_pki::files::private_dir(dir).ok()?;
                skiff_pki::files::write_private(&path, format!("{mark}{text}").as_bytes()).ok()
            })
            .is_some();
    if written {
        tracing::info!(
            "the administrator's credentials are in {} (the skiff CLI reads them)",
            path.display()
        );
    } else {
        tracing::info!(
            "{} holds other credentials; for this cluster use `skiff --config {}` or SKIFF_CONFIG",
            path.display(),
            admin.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_say_so() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn reservations_name_cpu_and_memory() {
        assert_eq!(
            parse_reserve("cpu=500m,memory=1Gi"),
            Ok(skiff_model::Resources::new(500, 1 << 30))
        );
        assert_eq!(
            parse_reserve("memory=64Mi"),
            Ok(skiff_model::Resources::new(0, 64 << 20))
        );
        assert!(parse_reserve("disk=1Gi")
            .unwrap_err()
            .contains("expected cpu="));
        assert!(parse_reserve("cpu=lots").unwrap_err().starts_with("cpu:"));
        assert!(parse_log_size("1k").is_err());
        assert_eq!(parse_log_size("1Mi"), Ok(1 << 20));
    }

    #[test]
    fn peers_are_id_equals_host_port() {
        assert_eq!(
            parse_peer("2=10.0.0.2:7701"),
            Ok((2, "10.0.0.2:7701".into()))
        );
        assert_eq!(parse_peer("3=srv-3:7701"), Ok((3, "srv-3:7701".into())));
        assert!(parse_peer("0=a:1").unwrap_err().contains("from 1 up"));
        assert!(parse_peer("1=nohost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_peer("a:1").unwrap_err().contains("ID=HOST:PORT"));
    }

    #[test]
    fn ignored_xids_are_numbers_or_none() {
        assert_eq!(parse_xids("13, 31,43").unwrap().0, [13, 31, 43]);
        assert!(parse_xids("none").unwrap().0.is_empty());
        assert!(parse_xids("13,x")
            .unwrap_err()
            .contains("\"x\" is not an XID"));
    }

    #[test]
    fn the_snapshot_entries_flag_defaults_to_the_stores_default() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServerArgs,
        }
        let cli = <Cli as clap::Parser>::parse_from(["skiff-server"]);
        assert_eq!(
            cli.args.snapshot_entries,
            RaftConfig::default().snapshot_entries
        );
        assert_eq!(cli.args.snapshot_entries, 20_000);
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(parse_label("gpu="), Ok(("gpu".into(), String::new())));
        assert!(parse_label("=a").is_err());
        assert!(parse_label("zone").is_err());
    }
}
