//! The agent's reconciler: makes the containers on this node match the
//! allocations the servers assigned to it, and reports what it observes.
//!
//! One task owns all local state. It wakes on a new allocation set, on the
//! end of a start or stop it spawned, or on a timer, and then:
//! starts what should run and does not, stops what should not run and
//! does, notices exits (from the shims' exit records), cleans up, and
//! sends the server every status that differs from what the server holds.
//! Each step is idempotent, so it is safe to run as often as it likes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_model::{AllocStatus, Allocation, DesiredStatus};
use tokio::sync::mpsc;

use crate::bundle::{build_spec, BundleInput};
use crate::image::{copy_rootfs, ImageStore};
use crate::paths::{container_id, Paths};
use crate::runtime::Runtime;
use crate::shim::{self, ExitRecord, ShimArgs};

/// How often the reconciler looks at its containers without being woken.
const RESYNC: Duration = Duration::from_millis(500);
/// A status sent to the server is not sent again for this long, unless it
/// changes, while the server's view catches up.
const RESEND_AFTER: Duration = Duration::from_secs(5);

/// What this agent knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Image being prepared, bundle written, shim starting.
    Starting,
    Running,
    /// Stop requested; signals sent, waiting for the exit.
    Stopping,
    /// The container ended; `stopped` when it was stopped on request.
    Exited {
        record: ExitRecord,
        stopped: bool,
    },
    /// Never ran, or its monitor was lost; the reason says which.
    Failed(String),
}

#[derive(Debug)]
struct Local {
    phase: Phase,
    /// The runtime's container and the bundle are gone.
    cleaned: bool,
    /// The server no longer lists the allocation: remove it once stopped.
    orphan: bool,
}

/// A status update for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub alloc_id: String,
    pub status: AllocStatus,
    pub exit_code: Option<i32>,
    pub message: String,
}

pub enum Event {
    /// The full set of allocations the servers assigned to this node.
    Desired(Vec<Allocation>),
    Started {
        id: String,
        result: Result<(), String>,
    },
    StopDone {
        id: String,
    },
    Cleaned {
        id: String,
    },
}

pub struct Reconciler<R: Runtime> {
    runtime: Arc<R>,
    paths: Paths,
    images: ImageStore,
    runtime_binary: PathBuf,
    shim_grace: Duration,
    desired: Option<Vec<Allocation>>,
    local: HashMap<String, Local>,
    sent: HashMap<String, (Observed, Instant)>,
    events: mpsc::Sender<Event>,
}

impl<R: Runtime> Reconciler<R> {
    pub fn new(
        runtime: Arc<R>,
        paths: Paths,
        runtime_binary: PathBuf,
        stop_grace: Duration,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Reconciler {
            runtime,
            images: ImageStore::new(paths.images()),
            paths,
            runtime_binary,
            shim_grace: stop_grace,
            desired: None,
            local: HashMap::new(),
            sent: HashMap::new(),
            events,
        }
    }

    /// Re-adopts the containers a previous run of the agent left behind:
    /// running ones keep running, and ones that exited meanwhile are
    /// reported with the exit code their shim recorded.
    pub async fn adopt(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.paths.containers()) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !crate::logs::valid_alloc_id(&id) {
                continue;
            }
            let state_dir = self.paths.state_dir(&id);
            let phase = if let Some(record) = ExitRecord::read(&state_dir) {
                Phase::Exited {
                    record,
                    stopped: false,
                }
            } else if shim::shim_alive(&state_dir) {
                Phase::Running
            } else {
                match self.runtime.state(&container_id(&id)).await {
                    Ok(Some(s)) if s.status == "running" => {
                        // Running, but nobody will record its exit: stop it
                        // and report the loss rather than guess an exit code.
                        let _ = self.runtime.delete(&container_id(&id), true).await;
                        Phase::Failed(
                            "the container's monitor died; the container was stopped".into(),
                        )
                    }
                    _ => {
                        let _ = self.runtime.delete(&container_id(&id), true).await;
                        Phase::Failed("the agent stopped while the container was starting".into())
                    }
                }
            };
            tracing::info!(alloc = %id, ?phase, "re-adopted container");
            self.local.insert(
                id,
                Local {
                    phase,
                    cleaned: false,
                    orphan: false,
                },
            );
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Desired(allocs) => self.desired = Some(allocs),
            Event::Started { id, result } => {
                if let Some(l) = self.local.get_mut(&id) {
                    if l.phase == Phase::Starting {
                        // A stop asked for meanwhile happens on the next pass.
                        l.phase = match result {
                            Ok(()) => Phase::Running,
                            Err(msg) => Phase::Failed(msg),
                        };
                    }
                }
            }
            Event::StopDone { id } => {
                if let Some(l) = self.local.get_mut(&id) {
                    if let Some(record) = ExitRecord::read(&self.paths.state_dir(&id)) {
                        l.phase = Phase::Exited {
                            record,
                            stopped: true,
                        };
                    } else if matches!(l.phase, Phase::Stopping) {
                        l.phase = Phase::Failed("stopped; its exit code was not recorded".into());
                    }
                }
            }
            Event::Cleaned { id } => {
                if let Some(l) = self.local.get_mut(&id) {
                    l.cleaned = true;
                }
            }
        }
    }

    /// One pass: act on differences and return the statuses to report.
    pub fn reconcile(&mut self) -> Vec<Observed> {
        let Some(desired) = self.desired.clone() else {
            return Vec::new(); // nothing heard from the servers yet
        };
        let listed: HashSet<&str> = desired.iter().map(|a| a.id.as_str()).collect();

        // Notice exits.
        for (id, l) in self.local.iter_mut() {
            if matches!(l.phase, Phase::Running | Phase::Stopping) {
                if let Some(record) = ExitRecord::read(&self.paths.state_dir(id)) {
                    let stopped = l.phase == Phase::Stopping;
                    tracing::info!(alloc = %id, code = record.exit_code, stopped, "container exited");
                    l.phase = Phase::Exited { record, stopped };
                }
            }
        }

        // Start and stop.
        for a in &desired {
            let local = self.local.get_mut(&a.id);
            match (a.desired, local) {
                (DesiredStatus::Run, None) if a.status == AllocStatus::Pending => {
                    self.local.insert(
                        a.id.clone(),
                        Local {
                            phase: Phase::Starting,
                            cleaned: false,
                            orphan: false,
                        },
                    );
                    self.spawn_start(a.clone());
                }
                (DesiredStatus::Stop, Some(l)) if l.phase == Phase::Running => {
                    l.phase = Phase::Stopping;
                    self.spawn_stop(a.id.clone());
                }
                _ => {}
            }
        }
        for (id, l) in self.local.iter_mut() {
            if !listed.contains(id.as_str()) && !l.orphan {
                tracing::info!(alloc = %id, "the servers no longer list this allocation; removing it");
                l.orphan = true;
            }
        }
        let orphans_running: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| l.orphan && l.phase == Phase::Running)
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphans_running {
            if let Some(l) = self.local.get_mut(&id) {
                l.phase = Phase::Stopping;
            }
            self.spawn_stop(id);
        }

        // Clean up what ended.
        let to_clean: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| {
                !l.cleaned && matches!(l.phase, Phase::Exited { .. } | Phase::Failed(_))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in to_clean {
            if let Some(l) = self.local.get_mut(&id) {
                l.cleaned = true; // set now so it is spawned once
            }
            self.spawn_cleanup(id);
        }

        // Report, and forget what the server has recorded as finished.
        let mut updates = Vec::new();
        let mut forget = Vec::new();
        for a in &desired {
            let observed = match self.local.get(&a.id) {
                Some(l) => observe(a, &l.phase),
                None if a.desired == DesiredStatus::Stop && !a.status.is_terminal() => {
                    Some(Observed {
                        alloc_id: a.id.clone(),
                        status: AllocStatus::Complete,
                        exit_code: None,
                        message: "stopped before it started".into(),
                    })
                }
                None if a.desired == DesiredStatus::Run && a.status == AllocStatus::Running => {
                    Some(Observed {
                        alloc_id: a.id.clone(),
                        status: AllocStatus::Failed,
                        exit_code: None,
                        message: "the container is gone from this node (its state was lost)".into(),
                    })
                }
                None => None,
            };
            if let Some(o) = observed {
                let server_has = a.status == o.status && a.exit_code == o.exit_code;
                let recently_sent = self
                    .sent
                    .get(&a.id)
                    .is_some_and(|(s, t)| *s == o && t.elapsed() < RESEND_AFTER);
                if !server_has && !recently_sent {
                    updates.push(o);
                }
            }
            if a.status.is_terminal() {
                if let Some(l) = self.local.get(&a.id) {
                    if l.cleaned && matches!(l.phase, Phase::Exited { .. } | Phase::Failed(_)) {
                        forget.push(a.id.clone());
                    }
                }
            }
        }
        for (id, l) in &self.local {
            if l.orphan && l.cleaned && matches!(l.phase, Phase::Exited { .. } | Phase::Failed(_)) {
                forget.push(id.clone());
            }
        }
        for id in forget {
            self.local.remove(&id);
            self.sent.remove(&id);
            // The exit record has been reported; the logs stay for `skiff logs`.
            let _ = std::fs::remove_dir_all(self.paths.container_dir(&id));
        }
        updates
    }

    /// Records that these updates reached the server.
    pub fn sent(&mut self, updates: &[Observed]) {
        let now = Instant::now();
        for u in updates {
            self.sent.insert(u.alloc_id.clone(), (u.clone(), now));
        }
    }

    /// How many containers this agent is tracking.
    pub fn tracked(&self) -> usize {
        self.local.len()
    }

    pub fn phase(&self, alloc_id: &str) -> Option<&Phase> {
        self.local.get(alloc_id).map(|l| &l.phase)
    }

    fn spawn_start(&self, alloc: Allocation) {
        let runtime = self.runtime.clone();
        let paths = self.paths.clone();
        let images = self.images.clone();
        let runtime_binary = self.runtime_binary.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let id = alloc.id.clone();
            let result = start(&*runtime, &paths, &images, runtime_binary, &alloc).await;
            match &result {
                Ok(()) => tracing::info!(alloc = %id, job = %alloc.job, "container started"),
                Err(e) => {
                    tracing::warn!(alloc = %id, job = %alloc.job, error = %e, "container failed to start")
                }
            }
            let _ = events.send(Event::Started { id, result }).await;
        });
    }

    fn spawn_stop(&self, id: String) {
        let runtime = self.runtime.clone();
        let state_dir = self.paths.state_dir(&id);
        let grace = self.shim_grace;
        let events = self.events.clone();
        tokio::spawn(async move {
            stop(&*runtime, &container_id(&id), &state_dir, grace).await;
            let _ = events.send(Event::StopDone { id }).await;
        });
    }

    fn spawn_cleanup(&self, id: String) {
        let runtime = self.runtime.clone();
        let bundle = self.paths.bundle(&id);
        let events = self.events.clone();
        tokio::spawn(async move {
            let cid = container_id(&id);
            if let Err(e) = runtime.delete(&cid, false).await {
                tracing::debug!(alloc = %id, error = %e, "delete failed; forcing");
                if let Err(e) = runtime.delete(&cid, true).await {
                    tracing::warn!(alloc = %id, error = %e, "could not delete the container");
                }
            }
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(bundle)).await;
            let _ = events.send(Event::Cleaned { id }).await;
        });
    }
}

/// What the server should record for an allocation in a given phase.
fn observe(a: &Allocation, phase: &Phase) -> Option<Observed> {
    let (status, exit_code, message) = match phase {
        Phase::Starting => return None,
        Phase::Running | Phase::Stopping => (AllocStatus::Running, None, String::new()),
        Phase::Exited { record, stopped } => {
            let by_request = *stopped || a.desired == DesiredStatus::Stop;
            let how = match record.signal {
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("exited with code {}", record.exit_code),
            };
            if by_request {
                (
                    AllocStatus::Complete,
                    Some(record.exit_code),
                    format!("stopped ({how})"),
                )
            } else if record.exit_code == 0 {
                (AllocStatus::Complete, Some(0), how)
            } else {
                (AllocStatus::Failed, Some(record.exit_code), how)
            }
        }
        Phase::Failed(msg) => (AllocStatus::Failed, None, msg.clone()),
    };
    Some(Observed {
        alloc_id: a.id.clone(),
        status,
        exit_code,
        message,
    })
}

/// Prepares the image, writes the bundle and starts the container.
async fn start<R: Runtime>(
    runtime: &R,
    paths: &Paths,
    images: &ImageStore,
    runtime_binary: PathBuf,
    alloc: &Allocation,
) -> Result<(), String> {
    let image_ref = alloc.task.image.clone();
    let images = images.clone();
    let prepared = tokio::task::spawn_blocking(move || images.prepare(&image_ref))
        .await
        .map_err(|e| format!("image preparation panicked: {e}"))?
        .map_err(|e| format!("image {}: {e}", alloc.task.image))?;

    let bundle = paths.bundle(&alloc.id);
    let rootfs = bundle.join("rootfs");
    let (src, dst, b) = (prepared.rootfs.clone(), rootfs.clone(), bundle.clone());
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).map_err(|e| format!("creating {}: {e}", b.display()))?;
        copy_rootfs(&src, &dst).map_err(|e| format!("copying the image's rootfs: {e}"))
    })
    .await
    .map_err(|e| format!("rootfs copy panicked: {e}"))??;

    let cid = container_id(&alloc.id);
    let spec = build_spec(&BundleInput {
        alloc,
        container_id: &cid,
        image: &prepared.config,
        rootfs: &rootfs,
    })
    .map_err(|e| e.to_string())?;
    spec.save(bundle.join("config.json"))
        .map_err(|e| format!("writing config.json: {e}"))?;

    let log_dir = paths.log_dir(&alloc.id);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let state_dir = paths.state_dir(&alloc.id);
    let _ = std::fs::remove_dir_all(&state_dir);
    let args = ShimArgs {
        id: cid,
        bundle,
        state_dir,
        runtime: runtime_binary,
        runtime_root: paths.runtime_root(),
        stdout: log_dir.join("stdout.log"),
        stderr: log_dir.join("stderr.log"),
    };
    runtime.start(&args).await.map_err(|e| e.to_string())
}

/// SIGTERM, a grace period, SIGKILL; returns once the shim recorded the
/// exit (or it is clear it never will).
async fn stop<R: Runtime>(runtime: &R, cid: &str, state_dir: &std::path::Path, grace: Duration) {
    let exited = || ExitRecord::read(state_dir).is_some();
    if exited() {
        return;
    }
    if let Err(e) = runtime.kill(cid, "TERM").await {
        tracing::debug!(container = cid, error = %e, "SIGTERM failed");
    }
    if wait_until(exited, grace).await {
        return;
    }
    tracing::info!(
        container = cid,
        ?grace,
        "still running after the grace period; sending SIGKILL"
    );
    if let Err(e) = runtime.kill(cid, "KILL").await {
        tracing::debug!(container = cid, error = %e, "SIGKILL failed");
    }
    if !wait_until(exited, Duration::from_secs(10)).await {
        tracing::warn!(
            container = cid,
            "no exit recorded after SIGKILL; deleting by force"
        );
        let _ = runtime.delete(cid, true).await;
    }
}

async fn wait_until(cond: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drives a reconciler: applies events, reconciles, and hands the
/// resulting updates to `report` (which returns whether they were sent).
pub async fn run_loop<R, F, Fut>(
    mut rec: Reconciler<R>,
    mut events: mpsc::Receiver<Event>,
    mut report: F,
) where
    R: Runtime,
    F: FnMut(Vec<Observed>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => {
                    rec.handle(ev);
                    while let Ok(ev) = events.try_recv() {
                        rec.handle(ev);
                    }
                }
                None => return,
            },
            _ = tick.tick() => {}
        }
        let updates = rec.reconcile();
        if !updates.is_empty() && report(updates.clone()).await {
            rec.sent(&updates);
        }
    }
}
