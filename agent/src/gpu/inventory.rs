//! The vocabulary of the GPU edge: what an inventory reports (GPUs, their
//! device nodes, links, samples) and the [`GpuInventory`] trait that NVML
//! and the fake inventory implement. Imports nothing else of `gpu/`.

use std::path::PathBuf;
use std::time::Duration;

use skiff_model::{Gpu, GpuDriver, GpuLink, GpuMetrics};

use super::health::HealthEvent;

/// A device node a GPU needs in the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceNode {
    /// Where it appears in the container (`/dev/nvidia0`).
    pub path: PathBuf,
    /// The node on the host whose type and numbers it copies (the same
    /// path for a real GPU; a stand-in for the fake inventory).
    pub host_path: PathBuf,
}

impl DeviceNode {
    pub fn same(path: impl Into<PathBuf>) -> DeviceNode {
        let path = path.into();
        DeviceNode {
            host_path: path.clone(),
            path,
        }
    }
}

/// One entry of the inventory: what the servers learn about it, and the
/// device nodes a container given it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Health fields are left healthy here; [`GpuNode`] fills them in.
    pub gpu: Gpu,
    /// `/dev/nvidiaN` (its GPU's, for a MIG instance) and, for a MIG
    /// instance, its `/dev/nvidia-caps/nvidia-capN` nodes.
    pub devices: Vec<DeviceNode>,
    /// Names a CDI spec may give it, best first: its UUID, then its index
    /// (`0`, or `0:1` for the second MIG instance of GPU 0).
    pub cdi_names: Vec<String>,
}

/// Everything the inventory knows about the node's GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub driver: GpuDriver,
    /// Whole GPUs, GPUs in MIG mode, and MIG instances.
    pub gpus: Vec<GpuDevice>,
    pub links: Vec<GpuLink>,
    /// Device nodes every GPU container needs: `nvidiactl`, `nvidia-uvm`,
    /// `nvidia-uvm-tools`, `nvidia-modeset` (those the host has).
    pub control_devices: Vec<DeviceNode>,
    /// The driver's libraries and tools on the host, bind-mounted
    /// read-only into GPU containers.
    pub driver_files: Vec<PathBuf>,
}

impl Inventory {
    pub fn uuids(&self) -> Vec<String> {
        self.gpus.iter().map(|g| g.gpu.uuid.clone()).collect()
    }

    pub fn find(&self, uuid: &str) -> Option<&GpuDevice> {
        self.gpus.iter().find(|g| g.gpu.uuid == uuid)
    }
}

/// One live reading of one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Ok(GpuMetrics),
    /// The GPU did not answer: it fell off the bus.
    Lost {
        uuid: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("the NVIDIA management library (NVML) is not available: {0}")]
    NoDriver(String),
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("fake GPU file {path}: {reason}")]
    Fake { path: PathBuf, reason: String },
}

/// The hardware edge. Implementations block; the monitor runs them on a
/// thread of their own.
pub trait GpuInventory: Send {
    /// `nvml` or `fake`, for logs.
    fn kind(&self) -> &'static str;
    /// Reads what the GPUs are (called at start, and again when
    /// [`GpuInventory::changed`] says so).
    fn discover(&mut self) -> Result<Inventory, InventoryError>;
    /// A live reading of every GPU.
    fn sample(&mut self) -> Vec<Sample>;
    /// Waits up to `timeout` for health events and returns those seen.
    fn wait_events(&mut self, timeout: Duration) -> Vec<HealthEvent>;
    /// The inventory may have changed since the last `discover`.
    fn changed(&mut self) -> bool {
        false
    }
}
