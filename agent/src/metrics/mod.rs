//! The agent's `/metrics` (`--metrics-addr`, `127.0.0.1:7712` by
//! default): per allocation what its cgroup used (cpu, memory working
//! set, processes), its restarts, OOM kills and readiness; image pulls;
//! how long container starts took; and the GPUs under DCGM's names
//! ([`dcgm`]).
//!
//! The reconciler publishes what it tracks ([`LiveAllocs::publish`]) as
//! it changes; a scrape reads the cgroups of what is running then. An
//! allocation's series exist while the reconciler tracks it and are gone
//! from the next scrape after, so the series stay bounded by what runs
//! on the node.

pub mod cgroup;
pub mod dcgm;
pub mod secure;
pub mod usage;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use skiff_metrics::{gauge, labels, GaugesF64, Labels};

use crate::gpu::GpuNode;
use crate::image::registry::Puller;

/// One allocation the reconciler tracks, as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAlloc {
    pub namespace: String,
    /// The job's name (without its namespace).
    pub job: String,
    /// Its container runs (or is being stopped).
    pub running: bool,
    /// Its container's cgroup (`linux.cgroupsPath`).
    pub cgroup: String,
    /// Times it was started again.
    pub restarts: u32,
    /// Runs that ended killed by the OOM killer.
    pub oom_kills: u32,
    /// What its readiness probe said of this run; `None`: not known yet.
    pub ready: Option<bool>,
    /// The GPUs it holds (UUIDs).
    pub gpus: Vec<String>,
    /// What it asked for: millicores and bytes.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What the reconciler publishes for the metrics and the heartbeats: the
/// allocations it tracks, and how long container starts took.
pub struct LiveAllocs {
    allocs: Mutex<BTreeMap<String, LiveAlloc>>,
    start_seconds: Histogram,
    /// Where dcgm-exporter's job-mapping files go, and each GPU's index.
    mapping: Option<(PathBuf, BTreeMap<String, u32>)>,
}

impl std::fmt::Debug for LiveAllocs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAllocs")
            .field("allocs", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for LiveAllocs {
    fn default() -> Self {
        LiveAllocs {
            allocs: Mutex::default(),
            // 10 ms to about 160 s.
            start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 15)),
            mapping: None,
        }
    }
}

impl LiveAllocs {
    /// Also keeps dcgm-exporter's job-mapping files in `dir` for the GPUs
    /// of `gpus`.
    pub fn with_job_mapping(dir: PathBuf, gpus: &GpuNode) -> LiveAllocs {
        let index_of = gpus.gpus().into_iter().map(|g| (g.uuid, g.index)).collect();
        LiveAllocs {
            mapping: Some((dir, index_of)),
            ..LiveAllocs::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LiveAlloc>> {
        self.allocs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what is tracked (cheap when nothing changed).
    pub fn publish(&self, now: BTreeMap<String, LiveAlloc>) {
        let mut held = self.lock();
        if *held == now {
            return;
        }
        // Who holds which GPU matters only for dcgm-exporter's files.
        let Some((dir, index_of)) = &self.mapping else {
            *held = now;
            return;
        };
        let holders_now = holders(&now);
        let changed = holders(&held) != holders_now;
        *held = now;
        drop(held);
        if changed {
            if let Err(e) = dcgm::write_job_mapping(dir, index_of, &holders_now) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write the DCGM job-mapping files");
            }
        }
    }

    /// A container start that succeeded after `took`.
    pub fn started(&self, took: std::time::Duration) {
        self.start_seconds.observe(took.as_secs_f64());
    }

    /// What is tracked now.
    pub fn snapshot(&self) -> BTreeMap<String, LiveAlloc> {
        self.lock().clone()
    }
}

/// Who holds each GPU.
fn holders(allocs: &BTreeMap<String, LiveAlloc>) -> BTreeMap<String, dcgm::Holder> {
    allocs
        .iter()
        .filter(|(_, a)| a.running)
        .flat_map(|(id, a)| {
            a.gpus.iter().map(move |u| {
                (
                    u.clone(),
                    dcgm::Holder {
                        namespace: a.namespace.clone(),
                        job: a.job.clone(),
                        alloc: id.clone(),
                    },
                )
            })
        })
        .collect()
}

/// What a scrape reads besides what is published: each running
/// allocation's use and OOM kills (from its cgroup), and the pulls.
struct Readings<'a> {
    usage: &'a dyn Fn(&LiveAlloc) -> Option<cgroup::Usage>,
    ooms: &'a dyn Fn(&LiveAlloc) -> u64,
    pulls: Option<(crate::image::registry::PullCounts, u64)>,
}

/// Every series the agent serves, with made-up values (one allocation
/// holding one GPU): what the metrics reference in the docs is made from.
pub fn example() -> String {
    use crate::gpu::{GpuDevice, Inventory, Sample};
    let mut gpu = skiff_model::Gpu::new("GPU-0", "NVIDIA H200", 80 << 30);
    gpu.pci_bus_id = "00000000:01:00.0".into();
    let inventory = Inventory {
        gpus: vec![GpuDevice {
            gpu,
            devices: Vec::new(),
            cdi_names: Vec::new(),
        }],
        ..Inventory::default()
    };
    let gpus = Arc::new(GpuNode::new(inventory, &Default::default(), None));
    gpus.record_samples(
        vec![Sample::Ok(skiff_model::GpuMetrics {
            uuid: "GPU-0".into(),
            utilization_pct: 50,
            ..Default::default()
        })],
        0,
    );
    let live = Arc::new(LiveAllocs::default());
    live.publish(BTreeMap::from([(
        "a1".to_string(),
        LiveAlloc {
            namespace: "default".into(),
            job: "train".into(),
            running: true,
            cgroup: "/skiff/skiff-a1".into(),
            restarts: 0,
            oom_kills: 0,
            ready: Some(true),
            gpus: vec!["GPU-0".into()],
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
    )]));
    live.started(std::time::Duration::from_millis(300));
    let m = AgentMetrics {
        node: "n1".into(),
        live,
        gpus,
        puller: None,
        cgroup_root: PathBuf::new(),
    };
    m.render_from(&Readings {
        usage: &|_| Some(cgroup::Usage::default()),
        ooms: &|_| 0,
        pulls: Some(Default::default()),
    })
}

/// Everything a scrape of the agent reads.
#[derive(Clone)]
pub struct AgentMetrics {
    pub node: String,
    pub live: Arc<LiveAllocs>,
    pub gpus: Arc<GpuNode>,
    pub puller: Option<Arc<Puller>>,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
}

impl AgentMetrics {
    /// What each running allocation uses now, read from its cgroup.
    pub fn usage(&self) -> BTreeMap<String, cgroup::Usage> {
        self.live
            .snapshot()
            .into_iter()
            .filter(|(_, a)| a.running)
            .filter_map(|(id, a)| Some((id, cgroup::usage(&self.cgroup_root, &a.cgroup)?)))
            .collect()
    }

    /// The exposition: Skiff's series, then the GPUs' under DCGM's names.
    pub fn render(&self) -> String {
        let usage = |a: &LiveAlloc| cgroup::usage(&self.cgroup_root, &a.cgroup);
        let ooms =
            |a: &LiveAlloc| crate::shim::oom_kills(&self.cgroup_root, &a.cgroup).unwrap_or(0);
        let pulls = self
            .puller
            .as_ref()
            .map(|p| (p.pull_counts(), p.blobs_fetched()));
        self.render_from(&Readings {
            usage: &usage,
            ooms: &ooms,
            pulls,
        })
    }

    /// The exposition from `r`'s readings.
    fn render_from(&self, r: &Readings) -> String {
        let allocs = self.live.snapshot();
        let mut reg = Registry::with_prefix("skiff");
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
            .set(1);
        reg.register(
            "agent_build_info",
            "This agent's version (always 1; the servers' service discovery labels its node)",
            info,
        );
        reg.register(
            "agent_allocations",
            "Allocations this agent tracks",
            gauge(allocs.len() as u64),
        );
        let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let memory = Family::<Labels, Gauge>::default();
        let pids = Family::<Labels, Gauge>::default();
        let restarts = Family::<Labels, Counter>::default();
        let ooms = Family::<Labels, Counter>::default();
        let ready = Family::<Labels, Gauge>::default();
        let cpu_request = GaugesF64::default();
        let memory_request = Family::<Labels, Gauge>::default();
        for (id, a) in &allocs {
            let l = labels(&[
                ("namespace", &a.namespace),
                ("job", &a.job),
                ("alloc", id),
                ("task", &a.job),
            ]);
            let mut oom = u64::from(a.oom_kills);
            if a.running {
                if let Some(u) = (r.usage)(a) {
                    cpu.get_or_create(&l).inc_by(u.cpu_seconds);
                    memory
                        .get_or_create(&l)
                        .set(i64::try_from(u.memory_working_set_bytes).unwrap_or(i64::MAX));
                    pids.get_or_create(&l).set(u.pids as i64);
                }
                oom += (r.ooms)(a);
            }
            restarts.get_or_create(&l).inc_by(a.restarts.into());
            ooms.get_or_create(&l).inc_by(oom);
            if let Some(r) = a.ready {
                ready.get_or_create(&l).set(i64::from(r));
            }
            cpu_request
                .get_or_create(&l)
                .set(a.cpu_millis as f64 / 1000.0);
            memory_request
                .get_or_create(&l)
                .set(i64::try_from(a.memory_bytes).unwrap_or(i64::MAX));
        }
        reg.register(
            "alloc_cpu_seconds",
            "CPU time the allocation's container used (this run), from its cgroup",
            cpu,
        );
        reg.register(
            "alloc_memory_working_set_bytes",
            "Memory the allocation's container uses, less the inactive file cache",
            memory,
        );
        reg.register(
            "alloc_pids",
            "Processes and threads in the allocation's container",
            pids,
        );
        reg.register(
            "alloc_restarts",
            "Times the allocation's container was started again",
            restarts,
        );
        reg.register(
            "alloc_oom_kills",
            "Processes of the allocation the OOM killer killed",
            ooms,
        );
        reg.register(
            "alloc_ready",
            "1 when the allocation's readiness probe passes (absent until known)",
            ready,
        );
        reg.register(
            "alloc_cpu_request_cores",
            "The CPU the allocation asked for, in cores",
            cpu_request,
        );
        reg.register(
            "alloc_memory_request_bytes",
            "The memory the allocation asked for",
            memory_request,
        );
        reg.register(
            "container_start_duration_seconds",
            "From an allocation reaching the agent (or its back-off ending) to its container running",
            self.live.start_seconds.clone(),
        );
        if let Some((counts, blobs)) = r.pulls {
            let pulls = Family::<Labels, Counter>::default();
            for (result, n) in [
                ("pulled", counts.pulled),
                ("cached", counts.cached),
                ("failed", counts.failed),
            ] {
                pulls
                    .get_or_create(&labels(&[("result", result)]))
                    .inc_by(n);
            }
            reg.register(
                "image_pulls",
                "Registry image pulls, by result (cached: held already, no registry asked)",
                pulls,
            );
            let fetched = Counter::<u64>::default();
            fetched.inc_by(blobs);
            reg.register(
                "image_blobs_fetched",
                "Image blobs downloaded from registries",
                fetched,
            );
        }
        let mut text = skiff_metrics::encode(&reg);
        let gpus = self.gpus.gpus();
        let samples = self.gpus.metrics();
        let last_xid = self.gpus.last_xids();
        let holders = holders(&allocs);
        if let Some(reg) = dcgm::registry(&dcgm::GpuView {
            hostname: &self.node,
            gpus: &gpus,
            samples: &samples,
            last_xid: &last_xid,
            holders: &holders,
        }) {
            text.push_str(&dcgm::encode(&reg));
        }
        text
    }
}

/// Where and how the agent serves its metrics.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (`--metrics-addr`); none: nowhere.
    pub addr: Option<std::net::SocketAddr>,
    /// Instead of a listener of its own: appended to a server's metrics in
    /// the same process (`skiff dev`).
    pub appendix: Option<skiff_metrics::Appendix>,
    /// Where dcgm-exporter's job-mapping files go
    /// (`--dcgm-job-mapping-dir`).
    pub dcgm_job_mapping_dir: Option<PathBuf>,
}

/// The agent's metrics, being served.
pub struct Served {
    /// What the reconciler publishes to.
    pub live: Arc<LiveAllocs>,
    /// What a scrape reads (the heartbeats' use samples read it too).
    pub metrics: AgentMetrics,
    /// The bound address to register (empty: none of its own).
    pub address: String,
    /// The listener's task.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts serving the agent's metrics as `cfg` says; a listener that
/// cannot bind fails with its address.
/// Off loopback `secure` gives who may read and the TLS to serve with.
pub async fn setup(
    cfg: &MetricsConfig,
    node: &str,
    gpus: &Arc<GpuNode>,
    puller: &Arc<Puller>,
    data_dir: &std::path::Path,
    advertise: std::net::IpAddr,
    secure: impl FnOnce() -> Security,
) -> Result<Served, (std::net::SocketAddr, std::io::Error)> {
    let live = Arc::new(match &cfg.dcgm_job_mapping_dir {
        Some(dir) => LiveAllocs::with_job_mapping(dir.clone(), gpus),
        None => LiveAllocs::default(),
    });
    let metrics = AgentMetrics {
        node: node.to_string(),
        live: live.clone(),
        gpus: gpus.clone(),
        puller: Some(puller.clone()),
        cgroup_root: crate::shim::CGROUP_ROOT.into(),
    };
    let mut served = Served {
        metrics: metrics.clone(),
        live,
        address: String::new(),
        task: None,
    };
    if let Some(appendix) = &cfg.appendix {
        appendix.set(move || metrics.render());
    } else if let Some(addr) = cfg.addr {
        let secured = skiff_metrics::needs_tls(addr).then(secure);
        let (bound, task) = start(addr, metrics, data_dir, secured)
            .await
            .map_err(|e| (addr, e))?;
        // Bound to every address: the servers list it at the node's.
        served.address = if bound.ip().is_unspecified() {
            std::net::SocketAddr::new(advertise, bound.port()).to_string()
        } else {
            bound.to_string()
        };
        served.task = Some(task);
    }
    Ok(served)
}

/// Binds `addr` and serves the agent's `/metrics` there (until the
/// returned task is aborted); returns the bound address.
/// The bound address is also written to `DATA_DIR/metrics.addr`.
/// Who may read metrics off loopback, and the TLS to serve them with.
pub type Security = (skiff_metrics::Access, Arc<skiff_metrics::CurrentTls>);

pub async fn start(
    addr: std::net::SocketAddr,
    metrics: AgentMetrics,
    data_dir: &std::path::Path,
    secured: Option<Security>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    crate::shim::write_atomic(
        &data_dir.join(skiff_metrics::ADDR_FILE),
        bound.to_string().as_bytes(),
    )?;
    let access = secured
        .as_ref()
        .map_or(skiff_metrics::Access::Open, |(a, _)| a.clone());
    let app = skiff_metrics::guarded_get(
        skiff_metrics::Router::new(),
        "/metrics",
        skiff_metrics::CONTENT_TYPE,
        access,
        move || metrics.render(),
    );
    let task = match secured {
        Some((_, tls)) => {
            tracing::info!(addr = %bound, "serving metrics at https://{bound}/metrics (a metrics token needed)");
            tokio::spawn(skiff_metrics::serve_tls(
                listener,
                tls,
                app,
                std::future::pending(),
            ))
        }
        None => {
            tracing::info!(addr = %bound, "serving metrics at http://{bound}/metrics");
            tokio::spawn(skiff_metrics::serve(listener, app, std::future::pending()))
        }
    };
    Ok((bound, task))
}
