//! The node's GPUs: what they are, how healthy, how busy, and what a
//! container needs to use exactly the ones it was given.
//!
//! The hardware sits behind [`GpuInventory`], with two implementations:
//! [`nvml::NvmlInventory`] (the NVIDIA driver's management library,
//! loaded at run time; a machine without it simply has no GPUs) and
//! [`fake::FakeInventory`] (a file describing GPUs, for tests and for
//! trying Skiff on a machine without any). Everything above the trait,
//! health bookkeeping, registration, metrics and injection, is shared.
//!
//! [`GpuNode`] holds the node's inventory, health and latest samples; a
//! monitor thread ([`spawn_monitor`]) keeps them current and bumps a
//! generation number whenever what the servers must know changes
//! (inventory or health), which makes the agent register again. Samples
//! go with heartbeats and never cause a Raft write.

pub mod fake;
pub mod health;
pub mod inject;
mod inventory;
pub mod nvml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_model::{Gpu, GpuDriver, GpuLink, GpuMetrics};
use tokio::sync::watch;

use crate::clock::now_ms;
use health::{HealthEvent, HealthTracker, Unhealthy};
pub use inject::ContainerEdits;
pub use inventory::{DeviceNode, GpuDevice, GpuInventory, Inventory, InventoryError, Sample};

/// How the agent watches its GPUs (from its flags).
#[derive(Debug, Clone)]
pub struct GpuConfig {
    /// Use this fake inventory file instead of NVML.
    pub fake: Option<PathBuf>,
    /// An unhealthy GPU is healthy again after this long without a new
    /// bad event.
    pub quiet_period: Duration,
    /// XIDs that do not make a GPU unhealthy.
    pub ignored_xids: Vec<u64>,
    /// How often GPUs are sampled.
    pub metrics_interval: Duration,
    /// Where to look for CDI specs; `None`: `/etc/cdi` and `/var/run/cdi`
    /// with NVML, none with the fake inventory.
    pub cdi_dirs: Option<Vec<PathBuf>>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            fake: None,
            quiet_period: Duration::from_secs(300),
            ignored_xids: health::DEFAULT_IGNORED_XIDS.to_vec(),
            metrics_interval: Duration::from_secs(5),
            cdi_dirs: None,
        }
    }
}

/// The CDI directories NVIDIA's toolkit writes to.
pub const DEFAULT_CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

struct Shared {
    inventory: Inventory,
    tracker: HealthTracker,
    metrics: Vec<GpuMetrics>,
    /// Last ECC uncorrectable counts seen, to notice new errors.
    ecc: BTreeMap<String, u64>,
    /// The last XID seen on each GPU (an XID without a GPU: on all).
    last_xid: BTreeMap<String, u64>,
    /// Grows whenever what the servers must know changes.
    generation: u64,
}

/// The node's GPUs, their health and latest samples, shared by the
/// monitor thread, the registration and heartbeat loops, container starts
/// and the reset service.
pub struct GpuNode {
    shared: Mutex<Shared>,
    changed: watch::Sender<u64>,
    registered: watch::Sender<u64>,
    registered_index: std::sync::atomic::AtomicU64,
    health_file: Option<PathBuf>,
    cdi_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for GpuNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("GpuNode")
            .field("gpus", &s.inventory.gpus.len())
            .field("unhealthy", &s.tracker.unhealthy().len())
            .field("generation", &s.generation)
            .finish()
    }
}

impl GpuNode {
    /// A node with `inventory`, remembering health in `health_file` (and
    /// taking over what it holds).
    pub fn new(inventory: Inventory, cfg: &GpuConfig, health_file: Option<PathBuf>) -> GpuNode {
        let mut tracker = HealthTracker::new(cfg.quiet_period, cfg.ignored_xids.iter().copied());
        if let Some(saved) = health_file.as_deref().and_then(read_health) {
            let known = inventory.uuids();
            tracker.restore(
                saved
                    .into_iter()
                    .filter(|(u, _)| known.contains(u))
                    .collect(),
            );
        }
        let cdi_dirs = match &cfg.cdi_dirs {
            Some(d) => d.clone(),
            None if cfg.fake.is_none() => DEFAULT_CDI_DIRS.iter().map(PathBuf::from).collect(),
            None => Vec::new(),
        };
        GpuNode {
            shared: Mutex::new(Shared {
                inventory,
                tracker,
                metrics: Vec::new(),
                ecc: BTreeMap::new(),
                last_xid: BTreeMap::new(),
                generation: 1,
            }),
            changed: watch::Sender::new(1),
            registered: watch::Sender::new(0),
            registered_index: std::sync::atomic::AtomicU64::new(0),
            health_file,
            cdi_dirs,
        }
    }

    /// A node without GPUs.
    pub fn empty() -> GpuNode {
        GpuNode::new(Inventory::default(), &GpuConfig::default(), None)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GPUs as the servers should see them, health included. A MIG
    /// instance is unhealthy when its GPU is.
    pub fn gpus(&self) -> Vec<Gpu> {
        let s = self.lock();
        s.inventory
            .gpus
            .iter()
            .map(|d| {
                let mut g = d.gpu.clone();
                let own = s.tracker.status(&g.uuid);
                let parent = g.parent.as_deref().and_then(|p| s.tracker.status(p));
                let bad = own.map(|u| u.reason.clone()).or_else(|| {
                    parent.map(|u| {
                        format!(
                            "its GPU {}: {}",
                            g.parent.as_deref().unwrap_or(""),
                            u.reason
                        )
                    })
                });
                if let Some(reason) = bad {
                    g.healthy = false;
                    g.health_reason = reason;
                }
                g
            })
            .collect()
    }

    pub fn links(&self) -> Vec<GpuLink> {
        self.lock().inventory.links.clone()
    }

    pub fn driver(&self) -> GpuDriver {
        self.lock().inventory.driver.clone()
    }

    pub fn metrics(&self) -> Vec<GpuMetrics> {
        self.lock().metrics.clone()
    }

    /// The last XID seen on each GPU since the agent started (application
    /// XIDs included, as DCGM reports them).
    pub fn last_xids(&self) -> BTreeMap<String, u64> {
        self.lock().last_xid.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().inventory.gpus.is_empty()
    }

    /// Changes whenever the node must register again.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The generation the servers have.
    pub fn registered_generation(&self) -> u64 {
        *self.registered.borrow()
    }

    /// The registration loop says which generation the servers have, and
    /// the Raft index of the registration that carried it.
    pub fn mark_registered(&self, generation: u64, index: u64) {
        self.registered_index.fetch_max(index, Ordering::Relaxed);
        self.registered.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }

    /// The Raft index of the latest registration the servers accepted.
    pub fn registered_index(&self) -> u64 {
        self.registered_index.load(Ordering::Relaxed)
    }

    /// Waits until the servers have `generation` (or `limit` passes).
    pub async fn wait_registered(&self, generation: u64, limit: Duration) -> bool {
        let mut rx = self.registered.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|g| *g >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn bump(&self, s: &mut Shared) {
        s.generation += 1;
        self.changed.send_replace(s.generation);
        if let Some(path) = &self.health_file {
            if let Err(e) = write_health(path, s.tracker.unhealthy()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot save GPU health");
            }
        }
    }

    /// Applies health events seen at `now_ms`.
    pub fn record_events(&self, events: &[HealthEvent], now_ms: u64) {
        if events.is_empty() {
            return;
        }
        let mut s = self.lock();
        let all = s.inventory.uuids();
        let mut turned = false;
        for e in events {
            if let Some(u) = e.uuid() {
                if s.inventory.find(u).is_none() {
                    tracing::debug!(gpu = u, "health event for a GPU not in the inventory");
                    continue;
                }
            }
            if let HealthEvent::Xid { xid, .. } = e {
                let on: Vec<String> = e.uuid().map_or(all.clone(), |u| vec![u.to_string()]);
                for u in on {
                    s.last_xid.insert(u, *xid);
                }
            }
            turned |= s.tracker.record(e, &all, now_ms);
        }
        if turned {
            self.bump(&mut s);
        }
    }

    /// Takes a round of samples: keeps the metrics, and turns new
    /// uncorrectable ECC errors and lost GPUs into health events.
    pub fn record_samples(&self, samples: Vec<Sample>, now_ms: u64) {
        let mut events = Vec::new();
        let mut metrics = Vec::new();
        {
            let mut s = self.lock();
            for sample in samples {
                match sample {
                    Sample::Ok(m) => {
                        let before = s.ecc.insert(m.uuid.clone(), m.ecc_uncorrected);
                        if let Some(b) = before {
                            if m.ecc_uncorrected > b {
                                events.push(HealthEvent::EccUncorrectable {
                                    uuid: m.uuid.clone(),
                                    count: m.ecc_uncorrected - b,
                                });
                            }
                        }
                        metrics.push(m);
                    }
                    Sample::Lost { uuid } => events.push(HealthEvent::Lost { uuid }),
                }
            }
            s.metrics = metrics;
        }
        self.record_events(&events, now_ms);
    }

    /// Forgets GPUs that stayed quiet long enough.
    pub fn expire(&self, now_ms: u64) {
        let mut s = self.lock();
        if s.tracker.expire(now_ms) {
            self.bump(&mut s);
        }
    }

    /// An operator's reset of `uuid`: returns what it was (if unhealthy)
    /// and the generation the servers must reach, or `None` when the node
    /// has no such GPU.
    pub fn reset(&self, uuid: &str) -> Option<(Option<Unhealthy>, u64)> {
        let mut s = self.lock();
        s.inventory.find(uuid)?;
        let was = s.tracker.reset(uuid);
        // Its ECC baseline starts over, so old errors do not count again.
        s.ecc.remove(uuid);
        if was.is_some() {
            self.bump(&mut s);
        }
        Some((was, s.generation))
    }

    /// A new inventory (the fake file changed, say).
    pub fn replace_inventory(&self, inventory: Inventory) {
        let mut s = self.lock();
        if s.inventory != inventory {
            s.inventory = inventory;
            self.bump(&mut s);
        }
    }

    /// What a container given `uuids` needs: a CDI spec's edits where one
    /// describes all of them, else the devices, driver files and
    /// environment from the inventory.
    pub fn edits_for(&self, uuids: &[String]) -> Result<ContainerEdits, String> {
        let s = self.lock();
        let mut units = Vec::with_capacity(uuids.len());
        for u in uuids {
            match s.inventory.find(u) {
                Some(d) => units.push(d.clone()),
                None => return Err(format!("GPU {u} is not one of this node's GPUs")),
            }
        }
        if let Some(edits) = inject::cdi_edits(&self.cdi_dirs, &units) {
            return Ok(edits);
        }
        Ok(inject::own_edits(&s.inventory, &units))
    }
}

fn read_health(path: &Path) -> Option<BTreeMap<String, Unhealthy>> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable GPU health file");
            None
        }
    }
}

fn write_health(path: &Path, bad: &BTreeMap<String, Unhealthy>) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(bad).expect("health serializes");
    crate::shim::write_atomic(path, &json)
}

/// Opens the inventory the configuration names. A machine without the
/// NVIDIA driver gets an empty inventory, and the reason is logged once.
pub fn open_inventory(cfg: &GpuConfig) -> Result<Option<Box<dyn GpuInventory>>, InventoryError> {
    if let Some(path) = &cfg.fake {
        return Ok(Some(Box::new(fake::FakeInventory::open(path)?)));
    }
    match nvml::NvmlInventory::open() {
        Ok(inv) => Ok(Some(Box::new(inv))),
        Err(e) => {
            tracing::info!(reason = %e, "no GPUs: this node reports none");
            Ok(None)
        }
    }
}

/// Starts the monitor thread: it waits for health events, samples every
/// `metrics_interval`, forgets quiet GPUs, and picks up inventory changes.
/// It stops when `stop` is set.
pub fn spawn_monitor(
    mut inventory: Box<dyn GpuInventory>,
    node: Arc<GpuNode>,
    cfg: &GpuConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let interval = cfg.metrics_interval.max(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("gpu-monitor".into())
        .spawn(move || {
            let mut next_sample = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let wait = next_sample
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_millis(500));
                let events = inventory.wait_events(wait);
                node.record_events(&events, now_ms());
                if std::time::Instant::now() >= next_sample {
                    if inventory.changed() {
                        match inventory.discover() {
                            Ok(inv) => node.replace_inventory(inv),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the GPU inventory again")
                            }
                        }
                    }
                    let samples = inventory.sample();
                    node.record_samples(samples, now_ms());
                    next_sample = std::time::Instant::now() + interval;
                }
                node.expire(now_ms());
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let mut gpus = vec![
            GpuDevice {
                gpu: Gpu::new("GPU-a", "A100", 80 << 30),
                devices: vec![DeviceNode::same("/dev/nvidia0")],
                cdi_names: vec!["GPU-a".into(), "0".into()],
            },
            GpuDevice {
                gpu: Gpu {
                    mig_enabled: true,
                    index: 1,
                    ..Gpu::new("GPU-m", "A100", 80 << 30)
                },
                devices: vec![DeviceNode::same("/dev/nvidia1")],
                cdi_names: vec!["GPU-m".into(), "1".into()],
            },
        ];
        gpus.push(GpuDevice {
            gpu: Gpu {
                mig_profile: Some("1g.10gb".into()),
                parent: Some("GPU-m".into()),
                index: 1,
                ..Gpu::new("MIG-1", "A100", 10 << 30)
            },
            devices: vec![
                DeviceNode::same("/dev/nvidia1"),
                DeviceNode::same("/dev/nvidia-caps/nvidia-cap12"),
            ],
            cdi_names: vec!["MIG-1".into(), "1:0".into()],
        });
        Inventory {
            gpus,
            ..Default::default()
        }
    }

    fn cfg() -> GpuConfig {
        GpuConfig {
            quiet_period: Duration::from_secs(60),
            cdi_dirs: Some(vec![]),
            ..GpuConfig::default()
        }
    }

    fn metrics(uuid: &str, ecc: u64) -> Sample {
        Sample::Ok(GpuMetrics {
            uuid: uuid.into(),
            ecc_uncorrected: ecc,
            ..Default::default()
        })
    }

    #[test]
    fn health_changes_bump_the_generation_and_samples_do_not() {
        let node = GpuNode::new(inventory(), &cfg(), None);
        let g0 = node.generation();
        node.record_samples(vec![metrics("GPU-a", 0)], 0);
        node.record_samples(vec![metrics("GPU-a", 0)], 1000);
        assert_eq!(node.generation(), g0, "metrics alone never re-register");
        assert_eq!(node.metrics().len(), 1);
        // A new uncorrectable ECC error makes the GPU unhealthy.
        node.record_samples(vec![metrics("GPU-a", 3)], 2000);
        assert!(node.generation() > g0);
        let a = &node.gpus()[0];
        assert!(!a.healthy);
        assert_eq!(a.health_reason, "3 uncorrectable ECC errors");
    }

    #[test]
    fn a_mig_instance_is_unhealthy_with_its_gpu() {
        let node = GpuNode::new(inventory(), &cfg(), None);
        node.record_events(
            &[HealthEvent::Xid {
                uuid: Some("GPU-m".into()),
                xid: 79,
            }],
            0,
        );
        let gpus = node.gpus();
        assert!(gpus[0].healthy);
        assert!(!gpus[1].healthy);
        assert!(!gpus[2].healthy);
        assert_eq!(
            gpus[2].health_reason,
            "its GPU GPU-m: XID 79: fell off the bus"
        );
        node.expire(61_000);
        assert!(node.gpus().iter().all(|g| g.healthy));
    }

    #[test]
    fn health_survives_an_agent_restart_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gpu-health.json");
        let node = GpuNode::new(inventory(), &cfg(), Some(file.clone()));
        node.record_samples(
            vec![Sample::Lost {
                uuid: "GPU-a".into(),
            }],
            0,
        );
        let again = GpuNode::new(inventory(), &cfg(), Some(file));
        assert_eq!(again.gpus()[0].health_reason, "fell off the bus");
    }

    #[test]
    fn a_reset_names_unknown_gpus_and_reports_what_was_wrong() {
        let node = GpuNode::new(inventory(), &cfg(), None);
        assert!(node.reset("GPU-zz").is_none());
        let (was, _) = node.reset("GPU-a").unwrap();
        assert!(was.is_none());
        node.record_events(
            &[HealthEvent::Lost {
                uuid: "GPU-a".into(),
            }],
            0,
        );
        let (was, generation) = node.reset("GPU-a").unwrap();
        assert_eq!(was.unwrap().reason, "fell off the bus");
        assert_eq!(generation, node.generation());
        assert!(node.gpus()[0].healthy);
    }

    #[test]
    fn container_edits_name_exactly_the_given_gpus() {
        let node = GpuNode::new(inventory(), &cfg(), None);
        let e = node.edits_for(&["MIG-1".into()]).unwrap();
        let paths: Vec<&str> = e.device_nodes.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidia1", "/dev/nvidia-caps/nvidia-cap12"]);
        assert!(e.env.contains(&"NVIDIA_VISIBLE_DEVICES=MIG-1".to_string()));
        assert!(node
            .edits_for(&["GPU-zz".into()])
            .unwrap_err()
            .contains("GPU-zz"));
    }
}
