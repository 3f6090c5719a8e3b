//! What the reconciler is given: its settings (from the agent's flags) and
//! the events that wake it. Plain data, shared by the loop, the executor
//! and the start pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_model::Allocation;

use super::observe::Observed;
use crate::gpu::GpuNode;
use crate::probe::ProbeEvent;
use crate::rootfs::RootfsMode;

/// How the agent runs containers (from its flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub runtime_binary: PathBuf,
    /// Time between the stop signal and SIGKILL, unless a task says.
    pub stop_grace: Duration,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub rootfs: RootfsMode,
    /// The node's GPUs, for containers given some.
    pub gpus: Option<Arc<GpuNode>>,
    /// Where `oci:` layouts may be read from.
    pub images: crate::image::ImagePolicy,
    /// The deadline for preparing an image.
    pub image_timeout: Duration,
    /// Pulls registry images into the node's content store.
    pub registry: Arc<crate::image::registry::Puller>,
    /// The images (as tasks name them) that allocations on this node want
    /// or run: the image garbage collector keeps them. Kept up to date by
    /// the reconciler.
    pub images_in_use: crate::image::gc::InUse,
    /// The node's bridge network (`network: bridge`); none in tests that
    /// do not use it.
    pub network: Option<Arc<crate::network::Network>>,
    /// The node's address as the servers know it, without the port (for
    /// `SKIFF_ADDR_*` of published ports).
    pub node_host: String,
    /// What the reconciler tracks, published for the metrics and the
    /// heartbeats.
    pub live: Arc<crate::metrics::LiveAllocs>,
    /// How often the reconciler looks at its containers without being
    /// woken ([`crate::reconcile::RESYNC`] for the agent): what no event
    /// announces, an exit record a shim wrote without its exit watch
    /// noticing, is found at the latest then.
    pub resync: Duration,
}

/// What a start that succeeded says of its run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartedRun {
    /// The digest pulled for an image named by tag only.
    pub pulled: Option<String>,
    /// `network: bridge`: the container's address.
    pub address: Option<String>,
}

/// What wakes the reconciler.
pub enum Event {
    /// The full set of allocations the servers assigned to this node
    /// (shared with the watch's view).
    Desired(Vec<std::sync::Arc<Allocation>>),
    Started {
        id: String,
        /// Which run of the container (its restart count) this was.
        run: u32,
        result: Result<StartedRun, String>,
        /// From the allocation reaching the reconciler (or the back-off
        /// ending) to the container running.
        took: Duration,
    },
    /// A report to the servers finished; `sent` says whether it arrived.
    Reported {
        updates: Vec<Observed>,
        sent: bool,
    },
    StopDone {
        id: String,
    },
    Cleaned {
        id: String,
    },
    Probe {
        id: String,
        run: u32,
        event: ProbeEvent,
    },
    /// A container's shim exited (its exit record is written): look now
    /// rather than at the next tick.
    ShimExited {
        id: String,
    },
}
