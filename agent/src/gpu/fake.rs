//! A fake GPU inventory read from a file (`skiff agent --fake-gpus FILE`),
//! for tests and for trying Skiff on a machine without GPUs.
//!
//! The file (YAML or JSON) describes GPUs with the same attributes NVML
//! reports, their topology, MIG instances, live metrics, and where the
//! device nodes and driver files that stand in for the real ones are on
//! this machine (see `docs/gpus.md` and `examples/fake-gpus.yaml`). The
//! agent reads it again when it changes, so editing the metrics, or
//! setting `lost: true` on a GPU, takes effect within a sample period.
//!
//! Health events are injected by appending JSON lines to `FILE.events`:
//!
//! ```text
//! {"kind": "xid", "gpu": "GPU-...", "xid": 79}
//! {"kind": "ecc_uncorrectable", "gpu": "GPU-..."}
//! {"kind": "lost", "gpu": "GPU-..."}
//! ```
//!
//! The agent reads new lines as they appear (it remembers how far it got).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use skiff_model::quantity::parse_memory;
use skiff_model::{Gpu, GpuDriver, GpuLink, GpuMetrics, LinkLevel};

use super::health::HealthEvent;
use super::{DeviceNode, GpuDevice, GpuInventory, Inventory, InventoryError, Sample};

/// The control device names a fake file may give stand-ins for.
pub const CONTROL_DEVICES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Quantity {
    Bytes(u64),
    Text(String),
}

impl Quantity {
    fn bytes(&self, field: &str) -> Result<u64, String> {
        match self {
            Quantity::Bytes(b) => Ok(*b),
            Quantity::Text(t) => parse_memory(t).map_err(|e| format!("{field}: {e}")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeFile {
    #[serde(default)]
    driver_version: String,
    #[serde(default)]
    cuda_version: String,
    #[serde(default)]
    gpus: Vec<FakeGpu>,
    #[serde(default)]
    links: Vec<FakeLink>,
    /// Stand-ins for `/dev/nvidiactl` and friends: name -> host path.
    #[serde(default)]
    control_devices: BTreeMap<String, PathBuf>,
    /// Files standing in for the driver's libraries and tools.
    #[serde(default)]
    driver_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeLink {
    a: String,
    b: String,
    level: LinkLevel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeGpu {
    uuid: String,
    #[serde(default)]
    model: String,
    memory: Quantity,
    /// NVML's index; the position in the list when absent.
    #[serde(default)]
    index: Option<u32>,
    /// The device minor (`/dev/nvidiaN` in the container); the index when
    /// absent.
    #[serde(default)]
    minor: Option<u32>,
    /// The host node standing in for `/dev/nvidiaN`; `/dev/nvidiaN` itself
    /// when absent.
    #[serde(default)]
    device: Option<PathBuf>,
    #[serde(default)]
    compute_capability: String,
    #[serde(default)]
    pci_bus_id: String,
    #[serde(default)]
    pcie_generation: u32,
    #[serde(default)]
    pcie_width: u32,
    #[serde(default)]
    power_limit_watts: u32,
    #[serde(default)]
    max_sm_clock_mhz: u32,
    #[serde(default)]
    max_memory_clock_mhz: u32,
    #[serde(default)]
    numa_node: Option<u32>,
    #[serde(default)]
    nvlink_peers: Vec<String>,
    #[serde(default)]
    metrics: FakeMetrics,
    /// The GPU does not answer (fell off the bus) while this is true.
    #[serde(default)]
    lost: bool,
    /// MIG instances; the GPU is in MIG mode when there are any.
    #[serde(default)]
    mig: Vec<FakeMig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeMetrics {
    #[serde(default)]
    utilization: u32,
    #[serde(default)]
    memory_utilization: u32,
    #[serde(default)]
    memory_used: Option<Quantity>,
    #[serde(default)]
    temperature: u32,
    #[serde(default)]
    power_watts: u32,
    #[serde(default)]
    ecc_corrected: u64,
    #[serde(default)]
    ecc_uncorrected: u64,
    #[serde(default)]
    throttle: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeMig {
    uuid: String,
    profile: String,
    memory: Quantity,
    /// Host nodes standing in for the instance's
    /// `/dev/nvidia-caps/nvidia-capN` (same file names in the container).
    #[serde(default)]
    caps: Vec<PathBuf>,
}

/// What `--fake-gpus FILE` describes.
pub struct FakeInventory {
    path: PathBuf,
    events_path: PathBuf,
    events_offset: u64,
    /// The file as last read, and its modification stamp.
    file: Option<FakeFile>,
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FakeInventory {
    /// Opens `path` and checks it; health events will be read from
    /// `path.events` (only lines added from now on).
    pub fn open(path: &Path) -> Result<FakeInventory, InventoryError> {
        let mut events = path.as_os_str().to_owned();
        events.push(".events");
        let events_path = PathBuf::from(events);
        let events_offset = std::fs::metadata(&events_path).map_or(0, |m| m.len());
        let mut inv = FakeInventory {
            path: path.to_path_buf(),
            events_path,
            events_offset,
            file: None,
            stamp: None,
        };
        inv.discover()?;
        Ok(inv)
    }

    fn error(&self, reason: impl Into<String>) -> InventoryError {
        InventoryError::Fake {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// A path in the file, relative to the file's directory.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }

    fn read(&self) -> Result<FakeFile, InventoryError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.error(e.to_string()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| self.error(e.to_string()))
    }

    fn build(&self, f: &FakeFile) -> Result<Inventory, InventoryError> {
        let mut gpus: Vec<GpuDevice> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut unique = |uuid: &str, at: &str| {
            if uuid.is_empty() {
                Err(self.error(format!("{at}.uuid: must not be empty")))
            } else if !seen.insert(uuid.to_string()) {
                Err(self.error(format!("{at}.uuid: {uuid:?} is listed twice")))
            } else {
                Ok(())
            }
        };
        for (i, g) in f.gpus.iter().enumerate() {
            let at = format!("gpus[{i}]");
            unique(&g.uuid, &at)?;
            let index = g.index.unwrap_or(i as u32);
            let minor = g.minor.unwrap_or(index);
            let memory = g
                .memory
                .bytes(&format!("{at}.memory"))
                .map_err(|e| self.error(e))?;
            let node = DeviceNode {
                path: PathBuf::from(format!("/dev/nvidia{minor}")),
                host_path: match &g.device {
                    Some(d) => self.resolve(d),
                    None => PathBuf::from(format!("/dev/nvidia{minor}")),
                },
            };
            let gpu = Gpu {
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_bytes: memory,
                index,
                compute_capability: g.compute_capability.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                pcie_generation: g.pcie_generation,
                pcie_width: g.pcie_width,
                power_limit_mw: g.power_limit_watts.saturating_mul(1000),
                max_sm_clock_mhz: g.max_sm_clock_mhz,
                max_memory_clock_mhz: g.max_memory_clock_mhz,
                numa_node: g.numa_node,
                mig_enabled: !g.mig.is_empty(),
                nvlink_peers: g.nvlink_peers.clone(),
                ..Gpu::default()
            };
            gpus.push(GpuDevice {
                gpu,
                devices: vec![node.clone()],
                cdi_names: vec![g.uuid.clone(), index.to_string()],
            });
            for (j, m) in g.mig.iter().enumerate() {
                let mat = format!("{at}.mig[{j}]");
                unique(&m.uuid, &mat)?;
                if m.profile.is_empty() {
                    return Err(self.error(format!("{mat}.profile: must not be empty")));
                }
                let mut devices = vec![node.clone()];
                for c in &m.caps {
                    let host = self.resolve(c);
                    let name = host
                        .file_name()
                        .ok_or_else(|| {
                            self.error(format!("{mat}.caps: {} has no file name", c.display()))
                        })?
                        .to_owned();
                    devices.push(DeviceNode {
                        path: Path::new("/dev/nvidia-caps").join(name),
                        host_path: host,
                    });
                }
                gpus.push(GpuDevice {
                    gpu: Gpu {
                        uuid: m.uuid.clone(),
                        model: g.model.clone(),
                        memory_bytes: m
                            .memory
                            .bytes(&format!("{mat}.memory"))
                            .map_err(|e| self.error(e))?,
                        index,
                        compute_capability: g.compute_capability.clone(),
                        pci_bus_id: g.pci_bus_id.clone(),
                        numa_node: g.numa_node,
                        mig_profile: Some(m.profile.clone()),
                        parent: Some(g.uuid.clone()),
                        ..Gpu::default()
                    },
                    devices,
                    cdi_names: vec![m.uuid.clone(), format!("{index}:{j}")],
                });
            }
        }
        let mut links = Vec::with_capacity(f.links.len());
        for (i, l) in f.links.iter().enumerate() {
            for (field, uuid) in [("a", &l.a), ("b", &l.b)] {
                if !f.gpus.iter().any(|g| g.uuid == *uuid) {
                    return Err(self.error(format!(
                        "links[{i}].{field}: {uuid:?} is not one of the gpus"
                    )));
                }
            }
            links.push(GpuLink {
                a: l.a.clone(),
                b: l.b.clone(),
                level: l.level,
            });
        }
        let mut control_devices = Vec::new();
        for (name, host) in &f.control_devices {
            if !CONTROL_DEVICES.contains(&name.as_str()) {
                return Err(self.error(format!(
                    "control_devices.{name}: unknown; expected one of {}",
                    CONTROL_DEVICES.join(", ")
                )));
            }
            control_devices.push(DeviceNode {
                path: Path::new("/dev").join(name),
                host_path: self.resolve(host),
            });
        }
        Ok(Inventory {
            driver: GpuDriver {
                driver_version: f.driver_version.clone(),
                cuda_version: f.cuda_version.clone(),
            },
            gpus,
            links,
            control_devices,
            driver_files: f.driver_files.iter().map(|p| self.resolve(p)).collect(),
        })
    }

    /// New complete lines of the events file.
    fn read_events(&mut self) -> Vec<HealthEvent> {
        let Ok(mut file) = std::fs::File::open(&self.events_path) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.events_offset {
            // Truncated or replaced: start over.
            self.events_offset = 0;
        }
        if len == self.events_offset || file.seek(SeekFrom::Start(self.events_offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        // Only whole lines; a line being written is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.events_offset += complete as u64;
        let mut out = Vec::new();
        for line in text[..complete]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_str::<HealthEvent>(line) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(file = %self.events_path.display(), line, error = %e, "ignoring a bad health event")
                }
            }
        }
        out
    }
}

impl GpuInventory for FakeInventory {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn discover(&mut self) -> Result<Inventory, InventoryError> {
        let stamp_before = stamp(&self.path);
        let f = self.read()?;
        let inv = self.build(&f)?;
        self.file = Some(f);
        self.stamp = stamp_before;
        Ok(inv)
    }

    fn sample(&mut self) -> Vec<Sample> {
        let Some(f) = &self.file else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for g in &f.gpus {
            if g.lost {
                out.push(Sample::Lost {
                    uuid: g.uuid.clone(),
                });
                continue;
            }
            let m = &g.metrics;
            out.push(Sample::Ok(GpuMetrics {
                uuid: g.uuid.clone(),
                utilization_pct: m.utilization.min(100),
                memory_utilization_pct: m.memory_utilization.min(100),
                memory_used_bytes: m
                    .memory_used
                    .as_ref()
                    .and_then(|q| q.bytes("memory_used").ok())
                    .unwrap_or(0),
                temperature_c: m.temperature,
                power_mw: m.power_watts.saturating_mul(1000),
                ecc_corrected: m.ecc_corrected,
                ecc_uncorrected: m.ecc_uncorrected,
                throttle_reasons: m.throttle.clone(),
            }));
        }
        out
    }

    fn wait_events(&mut self, timeout: Duration) -> Vec<HealthEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.read_events();
            if !events.is_empty() || Instant::now() >= deadline {
                return events;
            }
            std::thread::sleep(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
    }

    fn changed(&mut self) -> bool {
        stamp(&self.path) != self.stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
driver_version: 550.54.15
cuda_version: "12.4"
control_devices: {nvidiactl: dev/ctl}
driver_files: [lib/libnvidia-ml.so.1, /usr/bin/true]
gpus:
  - uuid: GPU-a
    model: NVIDIA A100-SXM4-80GB
    memory: 80Gi
    device: dev/gpu0
    compute_capability: "8.0"
    pcie_generation: 4
    pcie_width: 16
    power_limit_watts: 400
    numa_node: 0
    nvlink_peers: [GPU-b]
    metrics: {utilization: 37, memory_used: 10Gi, temperature: 41, power_watts: 95, throttle: [sw_power_cap]}
  - uuid: GPU-b
    model: NVIDIA A100-SXM4-80GB
    memory: 85899345920
    mig:
      - {uuid: MIG-b1, profile: 3g.40gb, memory: 40Gi, caps: [dev/cap21, dev/cap22]}
links:
  - {a: GPU-a, b: GPU-b, level: nvlink}
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("gpus.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_file_describes_gpus_mig_instances_links_and_stand_in_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), FILE);
        let mut inv = FakeInventory::open(&path).unwrap();
        let i = inv.discover().unwrap();
        assert_eq!(i.driver.driver_version, "550.54.15");
        assert_eq!(i.gpus.len(), 3);
        let a = &i.gpus[0];
        assert_eq!(a.gpu.memory_bytes, 80 << 30);
        assert_eq!(a.gpu.power_limit_mw, 400_000);
        assert_eq!(a.devices[0].path, Path::new("/dev/nvidia0"));
        assert_eq!(a.devices[0].host_path, dir.path().join("dev/gpu0"));
        let b = &i.gpus[1];
        assert!(b.gpu.mig_enabled);
        assert_eq!(b.devices[0].host_path, Path::new("/dev/nvidia1"));
        let mig = &i.gpus[2];
        assert_eq!(mig.gpu.mig_profile.as_deref(), Some("3g.40gb"));
        assert_eq!(mig.gpu.parent.as_deref(), Some("GPU-b"));
        assert_eq!(mig.cdi_names, ["MIG-b1", "1:0"]);
        let paths: Vec<_> = mig.devices.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/dev/nvidia1"),
                PathBuf::from("/dev/nvidia-caps/cap21"),
                PathBuf::from("/dev/nvidia-caps/cap22")
            ]
        );
        assert_eq!(i.links.len(), 1);
        assert_eq!(i.control_devices[0].path, Path::new("/dev/nvidiactl"));
        assert_eq!(i.driver_files[0], dir.path().join("lib/libnvidia-ml.so.1"));
        let samples = inv.sample();
        let Sample::Ok(m) = &samples[0] else {
            panic!("{samples:?}")
        };
        assert_eq!((m.utilization_pct, m.power_mw), (37, 95_000));
        assert_eq!(m.throttle_reasons, ["sw_power_cap"]);
    }

    #[test]
    fn mistakes_in_the_file_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "gpus: [{uuid: a, memory: 1Gi}, {uuid: a, memory: 1Gi}]",
                "gpus[1].uuid: \"a\" is listed twice",
            ),
            ("gpus: [{uuid: a, memory: lots}]", "gpus[0].memory:"),
            (
                "gpus: [{uuid: a, memory: 1Gi}]\nlinks: [{a: a, b: z, level: nvlink}]",
                "links[0].b: \"z\" is not one of the gpus",
            ),
            (
                "control_devices: {nvidia-fs: /dev/null}",
                "control_devices.nvidia-fs: unknown",
            ),
            (
                "gpus: [{uuid: a, memory: 1Gi, colour: red}]",
                "unknown field `colour`",
            ),
        ];
        for (text, want) in cases {
            let path = write(dir.path(), text);
            let err = FakeInventory::open(&path).err().unwrap().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn health_events_are_read_line_by_line_as_they_are_appended() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), FILE);
        let events = dir.path().join("gpus.yaml.events");
        std::fs::write(&events, "{\"kind\":\"lost\",\"gpu\":\"GPU-a\"}\n").unwrap();
        let mut inv = FakeInventory::open(&path).unwrap();
        // Lines from before the agent started are history, not news.
        assert!(inv.wait_events(Duration::ZERO).is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&events)
            .unwrap();
        write!(
            f,
            "{{\"kind\":\"xid\",\"gpu\":\"GPU-b\",\"xid\":79}}\nnot json\n{{\"kind\":\"xid\","
        )
        .unwrap();
        let got = inv.wait_events(Duration::from_millis(200));
        assert_eq!(
            got,
            [HealthEvent::Xid {
                uuid: Some("GPU-b".into()),
                xid: 79
            }]
        );
        writeln!(f, "\"gpu\":\"GPU-a\",\"xid\":48}}").unwrap();
        assert_eq!(inv.wait_events(Duration::from_millis(200)).len(), 1);
    }

    #[test]
    fn a_lost_gpu_samples_as_lost_and_edits_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), FILE);
        let mut inv = FakeInventory::open(&path).unwrap();
        assert!(!inv.changed());
        let lost = FILE.replace("  - uuid: GPU-a\n", "  - uuid: GPU-a\n    lost: true\n");
        // A different length, so the change shows whatever the clock's
        // resolution.
        std::fs::write(&path, &lost).unwrap();
        assert!(inv.changed());
        inv.discover().unwrap();
        assert!(!inv.changed());
        assert_eq!(
            inv.sample()[0],
            Sample::Lost {
                uuid: "GPU-a".into()
            }
        );
    }

    #[test]
    fn the_example_file_is_a_valid_inventory() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fake-gpus.yaml");
        let mut inv = FakeInventory::open(&path).unwrap();
        let i = inv.discover().unwrap();
        assert_eq!(i.gpus.len(), 7, "five GPUs and two MIG instances");
        assert_eq!(i.gpus.iter().filter(|g| g.gpu.is_mig()).count(), 2);
        assert_eq!(i.links.len(), 4);
        assert_eq!(inv.sample().len(), 5);
    }
}
