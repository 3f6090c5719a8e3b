//! Simulated nodes (feature `sim`), for measuring the control plane at
//! sizes one machine cannot run containers for (bench/'s `simnodes` and
//! `scalebench`). Each node is the agent's own code from its credentials
//! on: the join with a node token, the node's session (registration,
//! heartbeats, the allocation watch, status reports: [`crate::session`])
//! and the reconciler with its start pipeline (the image checked against
//! the image roots and unpacked, a copied root filesystem, the bundle).
//! Only the runtime pretends ([`SimRuntime`] behind the agent's
//! [`Runtime`] trait): a container "starts" after a delay, can be told to
//! fail, and "exits" when signalled, recording its exit as a shim would.
//! There is no bridge network, no metrics listener and no GPU monitor
//! thread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_model::Resources;
use skiff_proto::pb;
use tokio::sync::mpsc;

use crate::agent::AgentError;
use crate::gpu::{GpuConfig, GpuInventory as _, GpuNode};
use crate::paths::Paths;
use crate::reconcile::{Reconciler, Settings};
use crate::rootfs::RootfsMode;
use crate::runtime::{ContainerState, ExecOutput, Runtime, RuntimeError};
use crate::servers::Servers;
use crate::session::{Calls, Session};
use crate::shim::{ExitRecord, ShimArgs};

/// How the simulated containers behave.
#[derive(Debug, Clone)]
pub struct SimBehaviour {
    /// From the start call to the container running.
    pub start_delay: Duration,
    /// Containers of jobs whose names (without the namespace) start with
    /// this fail to start.
    pub fail_jobs: Option<String>,
}

/// What the simulated runtimes of all nodes did.
#[derive(Debug, Default)]
pub struct SimStarts {
    /// Times each allocation's container started.
    pub starts: Mutex<HashMap<String, u32>>,
    /// Containers started, by job name (without its namespace).
    pub by_job: Mutex<HashMap<String, u64>>,
    /// Starts that failed because the job was told to fail.
    pub failed: AtomicU64,
    /// Starts given a GPU that a container running on the node holds.
    pub gpu_conflicts: AtomicU64,
}

/// A container the simulated runtime knows.
struct SimContainer {
    state_dir: PathBuf,
    gpus: Vec<String>,
    started_at_ms: u64,
    running: bool,
}

/// One node's pretend runtime.
pub struct SimRuntime {
    behaviour: SimBehaviour,
    starts: Arc<SimStarts>,
    containers: Mutex<HashMap<String, SimContainer>>,
}

impl SimRuntime {
    pub fn new(behaviour: SimBehaviour, starts: Arc<SimStarts>) -> SimRuntime {
        SimRuntime {
            behaviour,
            starts,
            containers: Mutex::default(),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimContainer>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the simulated runtime reads from a bundle's config.json.
#[derive(serde::Deserialize, Default)]
struct BundleView {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    process: Option<ProcessView>,
}

#[derive(serde::Deserialize, Default)]
struct ProcessView {
    #[serde(default)]
    env: Vec<String>,
}

fn failed(verb: &'static str, id: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed {
        verb,
        id: id.to_string(),
        message: message.into(),
    }
}

impl Runtime for SimRuntime {
    async fn start(&self, args: &ShimArgs) -> Result<(), RuntimeError> {
        let config = std::fs::read(args.bundle.join("config.json"))
            .map_err(|e| failed("start", &args.id, format!("reading config.json: {e}")))?;
        let view: BundleView = serde_json::from_slice(&config)
            .map_err(|e| failed("start", &args.id, format!("config.json: {e}")))?;
        let alloc = view.annotations.get("io.skiff.alloc-id").cloned();
        let job_key = view.annotations.get("io.skiff.job").cloned();
        let job = skiff_model::split_job_key(job_key.as_deref().unwrap_or("")).1;
        let gpus: Vec<String> = view
            .process
            .unwrap_or_default()
            .env
            .iter()
            .find_map(|e| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
            .filter(|v| !v.is_empty() && *v != "void")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        tokio::time::sleep(self.behaviour.start_delay).await;
        if let Some(prefix) = &self.behaviour.fail_jobs {
            if job.starts_with(prefix.as_str()) {
                self.starts.failed.fetch_add(1, Ordering::Relaxed);
                return Err(RuntimeError::Start(format!(
                    "simulated: jobs {prefix}* fail to start"
                )));
            }
        }
        std::fs::create_dir_all(&args.state_dir)
            .map_err(|e| failed("start", &args.id, format!("state directory: {e}")))?;
        let mut containers = self.containers();
        let taken = containers
            .values()
            .filter(|c| c.running)
            .flat_map(|c| &c.gpus)
            .filter(|g| gpus.contains(g))
            .count();
        self.starts
            .gpu_conflicts
            .fetch_add(taken as u64, Ordering::Relaxed);
        containers.insert(
            args.id.clone(),
            SimContainer {
                state_dir: args.state_dir.clone(),
                gpus,
                started_at_ms: crate::clock::now_ms(),
                running: true,
            },
        );
        drop(containers);
        if let Some(alloc) = alloc {
            *self
                .starts
                .starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(alloc)
                .or_default() += 1;
        }
        *self
            .starts
            .by_job
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(job.to_string())
            .or_default() += 1;
        Ok(())
    }

    /// Any signal ends the container, its exit recorded where the shim
    /// would record it.
    async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let mut containers = self.containers();
        let c = containers
            .get_mut(id)
            .ok_or_else(|| failed("kill", id, "container does not exist"))?;
        if !c.running {
            return Err(failed("kill", id, "container not running"));
        }
        c.running = false;
        let signal = signal.parse::<i32>().unwrap_or(15);
        let record = ExitRecord {
            exit_code: 128 + signal,
            signal: Some(signal),
            oom_killed: false,
            started_at_ms: c.started_at_ms,
            finished_at_ms: crate::clock::now_ms(),
        };
        let json = serde_json::to_vec(&record).map_err(|e| failed("kill", id, e.to_string()))?;
        crate::shim::write_atomic(&c.state_dir.join(crate::shim::EXIT_FILE), &json)
            .map_err(|e| failed("kill", id, format!("recording the exit: {e}")))
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut containers = self.containers();
        match containers.get(id) {
            Some(c) if c.running && !force => Err(failed("delete", id, "container is running")),
            Some(_) => {
                containers.remove(id);
                Ok(())
            }
            None => Err(failed("delete", id, "container does not exist")),
        }
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        Ok(self.containers().get(id).map(|c| ContainerState {
            id: id.to_string(),
            pid: 0,
            status: if c.running { "running" } else { "stopped" }.to_string(),
        }))
    }

    async fn exec(
        &self,
        id: &str,
        _command: &[String],
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        match self.containers().get(id) {
            Some(c) if c.running => Ok(ExecOutput::default()),
            _ => Err(failed("exec", id, "container not running")),
        }
    }
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    /// The servers' URLs (`https://`), as an agent is given them.
    pub servers: Vec<String>,
    /// A node join token.
    pub token: String,
    /// The node's own data directory.
    pub data_dir: PathBuf,
    /// Where `oci:` layouts may be read (`--image-roots`).
    pub image_roots: Vec<PathBuf>,
    /// What the node offers.
    pub capacity: Resources,
    /// A fake GPU inventory (`--fake-gpus`).
    pub fake_gpus: Option<PathBuf>,
}

/// Runs `node` as an agent on `runtime` until the process stops (or the
/// task is aborted). Errors only when it cannot begin: its directory,
/// its join, its GPU inventory.
pub async fn run_node(
    node: SimNode,
    runtime: Arc<SimRuntime>,
    calls: Arc<Calls>,
) -> Result<(), AgentError> {
    let paths = Paths::new(&node.data_dir);
    skiff_pki::files::make_private_dir(paths.root()).map_err(|source| AgentError::DataDir {
        path: node.data_dir.clone(),
        source,
    })?;
    crate::agent::make_data_dirs(&paths)?;
    let security = crate::tls::Security {
        insecure: false,
        join_token: Some(node.token.clone()),
    };
    let tls = crate::tls::credentials(&security, paths.root(), &node.name, &node.servers).await?;
    let servers = Servers::new(&node.servers, &tls)?.first_for(&node.name);
    let gpu_config = GpuConfig {
        fake: node.fake_gpus.clone(),
        ..GpuConfig::default()
    };
    let gpus = Arc::new(match &node.fake_gpus {
        Some(file) => {
            let found = crate::gpu::fake::FakeInventory::open(file)?.discover()?;
            GpuNode::new(found, &gpu_config, None)
        }
        None => GpuNode::empty(),
    });
    let images = crate::image::ImagePolicy::new(node.image_roots.clone());
    let registration = pb::RegisterRequest {
        image_roots: images.roots(),
        name: node.name.clone(),
        capacity: Some(node.capacity.into()),
        reserved: Some(Resources::default().into()),
        address: "127.0.0.1:9".into(),
        agent_version: concat!(env!("CARGO_PKG_VERSION"), "-sim").into(),
        ..Default::default()
    };
    let puller = Arc::new(crate::image::registry::Puller::new(
        &paths.root().join("content"),
        Arc::default(),
    )?);
    let (tx, rx) = mpsc::channel(256);
    let settings = Settings {
        runtime_binary: "sim".into(),
        stop_grace: Duration::from_secs(10),
        image_timeout: Duration::from_secs(600),
        registry: puller,
        log_max_size: 1 << 20,
        log_max_files: 2,
        rootfs: RootfsMode::Copy,
        gpus: Some(gpus.clone()),
        images: images.clone(),
        images_in_use: Default::default(),
        network: None,
        node_host: "127.0.0.1".into(),
        live: Default::default(),
        // The pretend containers exit only when signalled, and the stop
        // that signals them finds the exit record at once: nothing is
        // left for the agent's half-second look to find.
        resync: Duration::from_secs(5),
    };
    let mut rec = Reconciler::new(runtime, paths, settings, tx.clone());
    rec.adopt().await;
    let session = Session {
        servers,
        registration,
        gpus,
        health: None,
        usage: None,
        images,
        network: None,
        calls,
    };
    session.run(rec, tx, rx).await;
    Ok(())
}

/// Writes a one-layer OCI image layout (one small file, `/sim`) at
/// `layout`, for jobs of simulated nodes to name (`oci:LAYOUT`).
pub fn write_image(layout: &Path) -> std::io::Result<()> {
    use sha2::Digest as _;
    let blobs = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8], media_type: &str| -> std::io::Result<serde_json::Value> {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok(serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
        }))
    };
    let mut tar = tar::Builder::new(Vec::new());
    let body = b"a simulated node's container\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_600_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append_data(&mut header, "sim", &body[..])?;
    let layer = tar.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)));
    let layer = put(&layer, "application/vnd.oci.image.layer.v1.tar")?;
    let config = serde_json::json!({
        "architecture": oci_spec::image::Arch::default().to_string(),
        "os": "linux",
        "config": { "Cmd": ["/sim"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = put(
        config.to_string().as_bytes(),
        "application/vnd.oci.image.config.v1+json",
    )?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let manifest = put(
        manifest.to_string().as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest] });
    std::fs::write(layout.join("index.json"), index.to_string())
}
