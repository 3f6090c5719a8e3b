//! The real inventory: NVIDIA's management library (NVML) through
//! nvml-wrapper, loaded at run time (`libnvidia-ml.so.1` is opened when
//! the agent starts; the binary has no link-time dependency on it).
//!
//! Every NVML call Skiff makes is in this module. What can be checked
//! without a GPU, the translation of NVML's answers into Skiff's terms, is
//! in plain functions tested below; the calls themselves run only on a
//! machine with the driver (`tests/gpu/run-on-gpu-host.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, TemperatureSensor, TopologyLevel,
};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use skiff_model::{Gpu, GpuDriver, GpuLink, GpuMetrics, LinkLevel};

use super::health::HealthEvent;
use super::{DeviceNode, GpuDevice, GpuInventory, Inventory, InventoryError, Sample};

/// NVML's most NVLinks per GPU (`NVML_NVLINK_MAX_LINKS`).
const MAX_NVLINKS: u32 = 18;
/// Events that make a GPU unhealthy.
const HEALTH_EVENTS: EventTypes =
    EventTypes::CRITICAL_XID_ERROR.union(EventTypes::DOUBLE_BIT_ECC_ERROR);

/// Control nodes a GPU container needs, when the host has them.
const CONTROL_NODES: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// Driver libraries a CUDA program or nvidia-smi loads, by soname.
const DRIVER_LIBS: [&str; 8] = [
    "libnvidia-ml.so.1",
    "libcuda.so.1",
    "libcudadebugger.so.1",
    "libnvidia-ptxjitcompiler.so.1",
    "libnvidia-nvvm.so.4",
    "libnvidia-cfg.so.1",
    "libnvidia-opencl.so.1",
    "libnvidia-allocator.so.1",
];
/// Driver libraries named only by the driver's version.
const VERSIONED_LIBS: [&str; 2] = ["libnvidia-gpucomp.so", "libnvidia-pkcs11.so"];
const DRIVER_TOOLS: [&str; 3] = ["nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control"];

const LIB_DIRS: [&str; 9] = [
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib",
];
const BIN_DIRS: [&str; 4] = [
    "/usr/local/nvidia/bin",
    "/usr/bin",
    "/usr/local/bin",
    "/bin",
];

fn nvml_err(e: NvmlError) -> InventoryError {
    InventoryError::Nvml(e.to_string())
}

/// The inventory through NVML.
pub struct NvmlInventory {
    nvml: &'static Nvml,
    /// The GPUs by NVML index (whole ones and those in MIG mode).
    devices: Vec<Device<'static>>,
    /// UUID of each device in `devices`.
    uuids: Vec<String>,
    events: Option<EventSet<'static>>,
    /// Consecutive failed waits, to log only the first.
    wait_errors: u32,
}

impl NvmlInventory {
    /// Loads NVML. Fails, with the reason, on a machine without the driver.
    pub fn open() -> Result<NvmlInventory, InventoryError> {
        let nvml = Nvml::init().map_err(|e| InventoryError::NoDriver(no_driver_reason(&e)))?;
        // One NVML handle for the life of the process: devices and event
        // sets borrow it, and a monitor thread keeps them.
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let mut inv = NvmlInventory {
            nvml,
            devices: Vec::new(),
            uuids: Vec::new(),
            events: None,
            wait_errors: 0,
        };
        inv.load_devices()?;
        Ok(inv)
    }

    fn load_devices(&mut self) -> Result<(), InventoryError> {
        let count = self.nvml.device_count().map_err(nvml_err)?;
        self.devices.clear();
        self.uuids.clear();
        for i in 0..count {
            let d = self.nvml.device_by_index(i).map_err(nvml_err)?;
            self.uuids.push(d.uuid().map_err(nvml_err)?);
            self.devices.push(d);
        }
        self.events = self.register_events();
        Ok(())
    }

    /// One event set for every GPU that supports the health events. A
    /// failed registration frees the set, so the set is built again
    /// without the GPU that failed.
    fn register_events(&self) -> Option<EventSet<'static>> {
        let mut skip = vec![false; self.devices.len()];
        'again: loop {
            let mut set = match self.nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create an NVML event set; XID health checks are off");
                    return None;
                }
            };
            let mut any = false;
            for (i, d) in self.devices.iter().enumerate() {
                if skip[i] {
                    continue;
                }
                let wanted = match d.supported_event_types() {
                    Ok(t) => t & HEALTH_EVENTS,
                    Err(_) => EventTypes::empty(),
                };
                if wanted.is_empty() {
                    tracing::info!(gpu = %self.uuids[i], "GPU supports no health events; only sampling watches it");
                    skip[i] = true;
                    continue;
                }
                match d.register_events(wanted, set) {
                    Ok(s) => {
                        set = s;
                        any = true;
                    }
                    Err(e) => {
                        tracing::warn!(gpu = %self.uuids[i], error = %e.error, "cannot watch the GPU's health events");
                        skip[i] = true;
                        continue 'again;
                    }
                }
            }
            return any.then_some(set);
        }
    }

    /// NVML's answer for one GPU, or a MIG instance of one.
    fn describe(&self, d: &Device<'static>, index: u32) -> Gpu {
        let cc = d
            .cuda_compute_capability()
            .map(|c| format!("{}.{}", c.major, c.minor))
            .unwrap_or_default();
        let pci_bus_id = d.pci_info().map(|p| p.bus_id).unwrap_or_default();
        let numa_node = d
            .numa_node_id()
            .ok()
            .or_else(|| numa_node_from_sysfs(Path::new("/sys/bus/pci/devices"), &pci_bus_id));
        Gpu {
            uuid: d.uuid().unwrap_or_default(),
            model: d.name().unwrap_or_default(),
            memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
            index,
            compute_capability: cc,
            pci_bus_id,
            pcie_generation: d.max_pcie_link_gen().unwrap_or(0),
            pcie_width: d.max_pcie_link_width().unwrap_or(0),
            power_limit_mw: d
                .enforced_power_limit()
                .or_else(|_| d.power_management_limit())
                .unwrap_or(0),
            max_sm_clock_mhz: d.max_clock_info(Clock::SM).unwrap_or(0),
            max_memory_clock_mhz: d.max_clock_info(Clock::Memory).unwrap_or(0),
            numa_node,
            ..Gpu::default()
        }
    }

    /// Remote ends of the GPU's active NVLinks (PCI bus ids).
    fn nvlink_remotes(d: &Device<'static>) -> Vec<String> {
        let mut out = Vec::new();
        for l in 0..MAX_NVLINKS {
            let link = d.link_wrapper_for(l);
            if link.is_active().unwrap_or(false) {
                if let Ok(p) = link.remote_pci_info() {
                    out.push(p.bus_id);
                }
            }
        }
        out
    }

    /// The MIG instances of GPU `d` (at `index`, with device minor `minor`).
    fn mig_instances(&self, parent: &Gpu, d: &Device<'static>, minor: u32) -> Vec<GpuDevice> {
        let slots = d.mig_device_count().unwrap_or(0);
        let mut out = Vec::new();
        for j in 0..slots {
            // Empty slots answer with an error: skip them.
            let Ok(m) = d.mig_device_by_index(j) else {
                continue;
            };
            let name = m.name().unwrap_or_default();
            let mut gpu = self.describe(&m, parent.index);
            if gpu.uuid.is_empty() {
                tracing::warn!(gpu = %parent.uuid, instance = j, "a MIG instance without a UUID is left out");
                continue;
            }
            gpu.model = parent.model.clone();
            gpu.pci_bus_id = parent.pci_bus_id.clone();
            gpu.numa_node = parent.numa_node;
            gpu.mig_profile = Some(mig_profile_of(&name).unwrap_or("unknown").to_string());
            gpu.parent = Some(parent.uuid.clone());
            let mut devices = vec![DeviceNode::same(format!("/dev/nvidia{minor}"))];
            match mig_instance_ids(self.nvml, &m) {
                Some((gi, ci)) => {
                    for cap in mig_cap_files(Path::new(PROC_CAPS), minor, gi, ci) {
                        match read_cap_minor(&cap) {
                            Some(n) => devices
                                .push(DeviceNode::same(format!("/dev/nvidia-caps/nvidia-cap{n}"))),
                            None => {
                                tracing::warn!(file = %cap.display(), "cannot read a MIG capability")
                            }
                        }
                    }
                }
                None => {
                    tracing::warn!(gpu = %gpu.uuid, "cannot tell the MIG instance's ids; its capability devices are left out")
                }
            }
            out.push(GpuDevice {
                cdi_names: vec![gpu.uuid.clone(), format!("{}:{j}", parent.index)],
                gpu,
                devices,
            });
        }
        out
    }
}

/// Where the driver publishes the MIG capability device numbers.
const PROC_CAPS: &str = "/proc/driver/nvidia/capabilities";

/// The GPU instance and compute instance ids of a MIG device handle.
/// nvml-wrapper 0.13 does not wrap these two calls, so they go through its
/// raw function table; a driver without them yields `None`.
#[allow(unsafe_code)]
fn mig_instance_ids(nvml: &Nvml, mig: &Device<'_>) -> Option<(u32, u32)> {
    let lib = nvml.lib();
    let gi_fn = lib.nvmlDeviceGetGpuInstanceId.as_ref().ok()?;
    let ci_fn = lib.nvmlDeviceGetComputeInstanceId.as_ref().ok()?;
    let mut gi: u32 = 0;
    let mut ci: u32 = 0;
    // SAFETY: the handle comes from a live `Device` of this NVML instance
    // (NVML is never shut down: it is leaked for the process's life), and
    // both functions only write one unsigned int through the pointer, which
    // points to a local that outlives the call.
    let ok = unsafe {
        let handle = mig.handle();
        gi_fn(handle, &mut gi) == 0 && ci_fn(handle, &mut ci) == 0
    };
    ok.then_some((gi, ci))
}

/// Why NVML could not be loaded, in words for the operator.
fn no_driver_reason(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) => {
            "libnvidia-ml.so.1 cannot be loaded (no NVIDIA driver installed)".into()
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel module is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        other => other.to_string(),
    }
}

/// The MIG profile in a MIG device's name (`NVIDIA A100-SXM4-40GB MIG
/// 1g.5gb` -> `1g.5gb`).
pub fn mig_profile_of(name: &str) -> Option<&str> {
    let (_, rest) = name.rsplit_once("MIG ")?;
    let p = rest.split_whitespace().next()?;
    (!p.is_empty()).then_some(p)
}

/// NVML's topology level between two GPUs, in Skiff's terms.
pub fn link_level(level: TopologyLevel) -> LinkLevel {
    match level {
        TopologyLevel::Internal | TopologyLevel::Single | TopologyLevel::Multiple => {
            LinkLevel::PcieSwitch
        }
        TopologyLevel::HostBridge | TopologyLevel::Node => LinkLevel::Numa,
        TopologyLevel::System => LinkLevel::System,
    }
}

/// A PCI bus id in one form (NVML writes `00000000:07:00.0`, sysfs
/// `0000:07:00.0`).
pub fn normalize_bus_id(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    match id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => id,
    }
}

/// The NUMA node of a PCI device from sysfs (`-1` there means none).
pub fn numa_node_from_sysfs(pci_devices: &Path, bus_id: &str) -> Option<u32> {
    if bus_id.is_empty() {
        return None;
    }
    let text =
        std::fs::read_to_string(pci_devices.join(normalize_bus_id(bus_id)).join("numa_node"))
            .ok()?;
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// The files that hold the device minors of a MIG instance's capabilities
/// (its GPU instance's, then its compute instance's).
pub fn mig_cap_files(proc_caps: &Path, gpu_minor: u32, gi: u32, ci: u32) -> Vec<PathBuf> {
    let gi_dir = proc_caps
        .join(format!("gpu{gpu_minor}"))
        .join("mig")
        .join(format!("gi{gi}"));
    vec![
        gi_dir.join("access"),
        gi_dir.join(format!("ci{ci}")).join("access"),
    ]
}

/// The `DeviceFileMinor:` of a capability file.
pub fn read_cap_minor(path: &Path) -> Option<u32> {
    parse_cap_minor(&std::fs::read_to_string(path).ok()?)
}

pub fn parse_cap_minor(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("DeviceFileMinor:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Names for the reasons NVML gives for held-down clocks.
pub fn throttle_names(r: ThrottleReasons) -> Vec<String> {
    let names = [
        (ThrottleReasons::GPU_IDLE, "gpu_idle"),
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks",
        ),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake"),
        (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clocks"),
    ];
    names
        .iter()
        .filter(|(bit, _)| r.contains(*bit))
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Links between each pair of GPUs: NVLink when one GPU's active links
/// reach the other, or both reach NVSwitches; otherwise NVML's PCIe
/// topology (`ancestor`, asked only for such pairs).
pub fn links_between(
    gpus: &[(String, String, Vec<String>)],
    mut ancestor: impl FnMut(usize, usize) -> Option<LinkLevel>,
) -> Vec<GpuLink> {
    // (uuid, bus id, NVLink remote bus ids)
    let bus: BTreeMap<String, usize> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| (normalize_bus_id(&g.1), i))
        .collect();
    let to_switch = |i: usize| {
        gpus[i]
            .2
            .iter()
            .any(|r| !bus.contains_key(&normalize_bus_id(r)))
    };
    let mut out = Vec::new();
    for a in 0..gpus.len() {
        for b in a + 1..gpus.len() {
            let direct = gpus[a]
                .2
                .iter()
                .any(|r| normalize_bus_id(r) == normalize_bus_id(&gpus[b].1));
            let level = if direct || (to_switch(a) && to_switch(b)) {
                Some(LinkLevel::NvLink)
            } else {
                ancestor(a, b)
            };
            if let Some(level) = level {
                out.push(GpuLink {
                    a: gpus[a].0.clone(),
                    b: gpus[b].0.clone(),
                    level,
                });
            }
        }
    }
    out
}

/// The driver's libraries and tools on this host.
pub fn find_driver_files(
    lib_dirs: &[PathBuf],
    bin_dirs: &[PathBuf],
    version: &str,
) -> Vec<PathBuf> {
    let first = |dirs: &[PathBuf], name: &str| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
    };
    let mut out = Vec::new();
    for lib in DRIVER_LIBS {
        out.extend(first(lib_dirs, lib));
    }
    if !version.is_empty() {
        for lib in VERSIONED_LIBS {
            out.extend(first(lib_dirs, &format!("{lib}.{version}")));
        }
    }
    for tool in DRIVER_TOOLS {
        out.extend(first(bin_dirs, tool));
    }
    out
}

/// The library directories to search: the usual ones, then those
/// `/etc/ld.so.conf.d` names.
fn lib_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = LIB_DIRS.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/etc/ld.so.conf.d") {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                let l = line.trim();
                if l.starts_with('/') && !dirs.iter().any(|d| d == Path::new(l)) {
                    dirs.push(PathBuf::from(l));
                }
            }
        }
    }
    dirs
}

impl GpuInventory for NvmlInventory {
    fn kind(&self) -> &'static str {
        "nvml"
    }

    fn discover(&mut self) -> Result<Inventory, InventoryError> {
        let driver = GpuDriver {
            driver_version: self.nvml.sys_driver_version().unwrap_or_default(),
            cuda_version: self
                .nvml
                .sys_cuda_driver_version()
                .map(|v| {
                    format!(
                        "{}.{}",
                        nvml_wrapper::cuda_driver_version_major(v),
                        nvml_wrapper::cuda_driver_version_minor(v)
                    )
                })
                .unwrap_or_default(),
        };
        let mut gpus = Vec::new();
        let mut whole = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            let mut gpu = self.describe(d, i as u32);
            // One GPU NVML cannot describe is left out; the others (and
            // the node's CPU work) go on.
            let minor = match d.minor_number() {
                Ok(m) if !gpu.uuid.is_empty() => m,
                Ok(_) => {
                    tracing::warn!(index = i, "a GPU without a UUID is left out");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(gpu = %gpu.uuid, index = i, error = %e, "a GPU whose device node NVML cannot tell is left out");
                    continue;
                }
            };
            let remotes = Self::nvlink_remotes(d);
            gpu.mig_enabled = d.mig_mode().is_ok_and(|m| m.current == 1);
            whole.push((gpu.uuid.clone(), gpu.pci_bus_id.clone(), remotes));
            let instances = if gpu.mig_enabled {
                self.mig_instances(&gpu, d, minor)
            } else {
                Vec::new()
            };
            gpus.push(GpuDevice {
                cdi_names: vec![gpu.uuid.clone(), i.to_string()],
                gpu,
                devices: vec![DeviceNode::same(format!("/dev/nvidia{minor}"))],
            });
            gpus.extend(instances);
        }
        // NVLink peers by UUID where the far end is one of these GPUs.
        let by_bus: BTreeMap<String, String> = whole
            .iter()
            .map(|(u, b, _)| (normalize_bus_id(b), u.clone()))
            .collect();
        for (u, _, remotes) in &whole {
            if let Some(g) = gpus.iter_mut().find(|g| g.gpu.uuid == *u) {
                g.gpu.nvlink_peers = remotes
                    .iter()
                    .map(|r| {
                        by_bus
                            .get(&normalize_bus_id(r))
                            .cloned()
                            .unwrap_or_else(|| r.clone())
                    })
                    .collect();
            }
        }
        let links = links_between(&whole, |a, b| {
            let other = self.nvml.device_by_index(b as u32).ok()?;
            self.devices[a]
                .topology_common_ancestor(other)
                .ok()
                .map(link_level)
        });
        let control_devices = CONTROL_NODES
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| DeviceNode::same(*p))
            .collect();
        let bin_dirs: Vec<PathBuf> = BIN_DIRS.iter().map(PathBuf::from).collect();
        let driver_files = find_driver_files(&lib_dirs(), &bin_dirs, &driver.driver_version);
        Ok(Inventory {
            driver,
            gpus,
            links,
            control_devices,
            driver_files,
        })
    }

    fn sample(&mut self) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (d, uuid) in self.devices.iter().zip(&self.uuids) {
            let util = d.utilization_rates();
            let mem = d.memory_info();
            if matches!(util, Err(NvmlError::GpuLost)) || matches!(mem, Err(NvmlError::GpuLost)) {
                out.push(Sample::Lost { uuid: uuid.clone() });
                continue;
            }
            let util = util.ok();
            out.push(Sample::Ok(GpuMetrics {
                uuid: uuid.clone(),
                utilization_pct: util.as_ref().map_or(0, |u| u.gpu),
                memory_utilization_pct: util.as_ref().map_or(0, |u| u.memory),
                memory_used_bytes: mem.map_or(0, |m| m.used),
                temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                power_mw: d.power_usage().unwrap_or(0),
                ecc_corrected: d
                    .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    .unwrap_or(0),
                ecc_uncorrected: d
                    .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    .unwrap_or(0),
                throttle_reasons: d
                    .current_throttle_reasons()
                    .map(throttle_names)
                    .unwrap_or_default(),
            }));
        }
        out
    }

    fn wait_events(&mut self, timeout: Duration) -> Vec<HealthEvent> {
        let Some(set) = &self.events else {
            std::thread::sleep(timeout);
            return Vec::new();
        };
        let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        match set.wait(ms) {
            Ok(e) => {
                self.wait_errors = 0;
                let uuid = e.device.uuid().ok();
                let mut out = Vec::new();
                if e.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    match e.event_data {
                        Some(XidError::Value(xid)) => out.push(HealthEvent::Xid { uuid, xid }),
                        _ => tracing::warn!(gpu = ?uuid, "an XID event without a code"),
                    }
                } else if e.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    if let Some(uuid) = uuid {
                        out.push(HealthEvent::EccUncorrectable { uuid, count: 1 });
                    }
                }
                out
            }
            Err(NvmlError::Timeout) => Vec::new(),
            Err(e) => {
                // A lost GPU shows in the next sample; do not spin.
                if self.wait_errors == 0 {
                    tracing::warn!(error = %e, "waiting for GPU events failed");
                }
                self.wait_errors += 1;
                std::thread::sleep(timeout);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_nvml_without_a_driver_says_why_instead_of_failing_the_agent() {
        // This machine has no NVIDIA driver; a GPU host skips the check.
        if Path::new("/dev/nvidiactl").exists() {
            return;
        }
        match NvmlInventory::open() {
            Err(InventoryError::NoDriver(reason)) => {
                assert!(reason.contains("libnvidia-ml.so.1"), "{reason}")
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("NVML opened on a machine without /dev/nvidiactl"),
        }
    }

    #[test]
    fn mig_profiles_come_from_the_instance_name() {
        assert_eq!(
            mig_profile_of("NVIDIA A100-SXM4-40GB MIG 1g.5gb"),
            Some("1g.5gb")
        );
        assert_eq!(
            mig_profile_of("NVIDIA H100 80GB HBM3 MIG 1c.2g.20gb"),
            Some("1c.2g.20gb")
        );
        assert_eq!(mig_profile_of("NVIDIA A100-SXM4-40GB"), None);
    }

    #[test]
    fn topology_levels_map_to_link_levels() {
        assert_eq!(link_level(TopologyLevel::Single), LinkLevel::PcieSwitch);
        assert_eq!(link_level(TopologyLevel::Multiple), LinkLevel::PcieSwitch);
        assert_eq!(link_level(TopologyLevel::HostBridge), LinkLevel::Numa);
        assert_eq!(link_level(TopologyLevel::Node), LinkLevel::Numa);
        assert_eq!(link_level(TopologyLevel::System), LinkLevel::System);
    }

    #[test]
    fn bus_ids_compare_in_one_form() {
        assert_eq!(normalize_bus_id("00000000:07:00.0"), "0000:07:00.0");
        assert_eq!(normalize_bus_id("0000:A7:00.0"), "0000:a7:00.0");
    }

    #[test]
    fn numa_nodes_are_read_from_sysfs_and_minus_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        for (bus, node) in [("0000:07:00.0", "1\n"), ("0000:08:00.0", "-1\n")] {
            std::fs::create_dir_all(dir.path().join(bus)).unwrap();
            std::fs::write(dir.path().join(bus).join("numa_node"), node).unwrap();
        }
        assert_eq!(
            numa_node_from_sysfs(dir.path(), "00000000:07:00.0"),
            Some(1)
        );
        assert_eq!(numa_node_from_sysfs(dir.path(), "00000000:08:00.0"), None);
        assert_eq!(numa_node_from_sysfs(dir.path(), "00000000:09:00.0"), None);
    }

    #[test]
    fn mig_capabilities_are_found_under_proc() {
        let files = mig_cap_files(Path::new("/proc/driver/nvidia/capabilities"), 0, 7, 0);
        assert_eq!(
            files,
            [
                PathBuf::from("/proc/driver/nvidia/capabilities/gpu0/mig/gi7/access"),
                PathBuf::from("/proc/driver/nvidia/capabilities/gpu0/mig/gi7/ci0/access"),
            ]
        );
        assert_eq!(
            parse_cap_minor("DeviceFileMinor: 66\nDeviceFileMode: 292\nDeviceFileModify: 1\n"),
            Some(66)
        );
        assert_eq!(parse_cap_minor("nothing"), None);
    }

    #[test]
    fn throttle_reasons_are_named() {
        let r = ThrottleReasons::SW_POWER_CAP | ThrottleReasons::HW_SLOWDOWN;
        assert_eq!(throttle_names(r), ["sw_power_cap", "hw_slowdown"]);
        assert!(throttle_names(ThrottleReasons::NONE).is_empty());
    }

    #[test]
    fn nvlinks_direct_or_through_switches_win_over_pcie() {
        let g = |u: &str, bus: &str, remotes: &[&str]| {
            (
                u.to_string(),
                bus.to_string(),
                remotes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let gpus = [
            g("a", "00000000:01:00.0", &["00000000:02:00.0"]),
            g("b", "00000000:02:00.0", &["00000000:01:00.0"]),
            g("c", "00000000:03:00.0", &["00000000:f0:00.0"]),
            g("d", "00000000:04:00.0", &["00000000:f1:00.0"]),
            g("e", "00000000:05:00.0", &[]),
        ];
        let mut asked = Vec::new();
        let links = links_between(&gpus, |a, b| {
            asked.push((a, b));
            Some(LinkLevel::System)
        });
        let level = |a: &str, b: &str| links.iter().find(|l| l.a == a && l.b == b).map(|l| l.level);
        assert_eq!(level("a", "b"), Some(LinkLevel::NvLink));
        assert_eq!(
            level("c", "d"),
            Some(LinkLevel::NvLink),
            "both on NVSwitches"
        );
        assert_eq!(level("a", "e"), Some(LinkLevel::System));
        assert!(!asked.contains(&(0, 1)), "NVLink pairs need no PCIe answer");
    }

    #[test]
    fn driver_files_are_found_by_soname_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        for f in [
            "libnvidia-ml.so.550.54.15",
            "libcuda.so.550.54.15",
            "libnvidia-gpucomp.so.550.54.15",
        ] {
            std::fs::write(lib.join(f), b"").unwrap();
        }
        std::os::unix::fs::symlink("libnvidia-ml.so.550.54.15", lib.join("libnvidia-ml.so.1"))
            .unwrap();
        std::os::unix::fs::symlink("libcuda.so.550.54.15", lib.join("libcuda.so.1")).unwrap();
        std::fs::write(bin.join("nvidia-smi"), b"").unwrap();
        let found = find_driver_files(
            std::slice::from_ref(&lib),
            std::slice::from_ref(&bin),
            "550.54.15",
        );
        assert_eq!(
            found,
            [
                lib.join("libnvidia-ml.so.1"),
                lib.join("libcuda.so.1"),
                lib.join("libnvidia-gpucomp.so.550.54.15"),
                bin.join("nvidia-smi"),
            ]
        );
    }
}
