//! The agent's reconciler: makes the containers on this node match the
//! allocations the servers assigned to it, restarts them as their restart
//! policy says, runs their probes, and reports what it observes.
//!
//! One task owns all local state. It wakes on a new allocation set, on the
//! end of a start, stop or cleanup it spawned, on a probe verdict, or on a
//! timer, and then: notices exits (from the shims' exit records), decides
//! whether an exited container starts again (after its back-off) or is
//! done, starts what should run, stops what should not, cleans up, and
//! sends the server every status that differs from what the server holds.
//! Each step is idempotent, so it is safe to run as often as it likes.
//!
//! Restarts happen in place: the allocation keeps its id and node, its
//! `restart_count` grows, and while it waits out its back-off it stays
//! `running` with reason `back_off`. The servers never see a terminal
//! status until the restart policy gives up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use skiff_model::alloc::reason;
use skiff_model::duration::format_duration;
use skiff_model::lifecycle::{normalize_signal, DEFAULT_STOP_SIGNAL, SIGNALS};
use skiff_model::{AllocStatus, Allocation, DesiredStatus, NetworkMode, TaskSpec};
use tokio::sync::mpsc;

use crate::bundle::{build_spec, BundleInput};
use crate::gpu::GpuNode;
use crate::image::ImageStore;
use crate::paths::{container_id, Paths};
use crate::probe::{self, ContainerChecker, ProbeEvent};
use crate::rootfs::{self, RootfsMode};
use crate::runtime::Runtime;
use crate::shim::{self, ExitRecord, ShimArgs};

/// How often the reconciler looks at its containers without being woken.
const RESYNC: Duration = Duration::from_millis(500);
/// A status sent to the server is not sent again for this long, unless it
/// changes, while the server's view catches up.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Per-container file with the restart bookkeeping that must survive an
/// agent restart.
const RESTARTS_FILE: &str = "restarts.json";

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
}

/// What this agent knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Image being prepared, bundle written, shim starting.
    Starting,
    Running,
    /// Stop signal sent, waiting for the exit. `requested`: the servers
    /// asked (else a probe failed and the restart policy decides next).
    Stopping {
        requested: bool,
    },
    /// The container ended; whether it starts again is decided next.
    Ended(ExitRecord),
    /// Waiting to start again once `until` has passed.
    BackOff {
        until: SystemTime,
        delay: Duration,
    },
    /// Done for good; `stopped` when it was stopped on request.
    Exited {
        record: ExitRecord,
        stopped: bool,
    },
    /// Never ran, or its monitor was lost; the message says which.
    Failed {
        message: String,
        reason: &'static str,
    },
}

impl Phase {
    fn terminal(&self) -> bool {
        matches!(self, Phase::Exited { .. } | Phase::Failed { .. })
    }
}

/// Restart bookkeeping, kept in `containers/ID/restarts.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Restarts {
    /// Restarts so far.
    count: u32,
    /// Restarts since the back-off was last reset.
    step: u32,
}

#[derive(Debug)]
struct Local {
    phase: Phase,
    /// A cleanup (runc delete, bundle removal) is under way.
    cleaning: bool,
    /// The runtime's container and the bundle are gone.
    cleaned: bool,
    /// The server no longer lists the allocation: remove it once stopped.
    orphan: bool,
    /// The task, once the servers' allocation set has been seen.
    task: Option<TaskSpec>,
    restarts: Restarts,
    last_exit: Option<ExitRecord>,
    healthy: Option<bool>,
    /// The probe task of the running container.
    prober: Option<tokio::task::AbortHandle>,
    /// A task waits for the running container's shim to exit.
    watched: bool,
    /// Why the agent killed the current run (a failed probe).
    killed_for: Option<String>,
    /// The same for the run before the current one.
    last_killed_for: Option<String>,
    /// Stopped while it waited out a back-off (its last run failed).
    stopped_in_back_off: bool,
}

impl Local {
    fn new(phase: Phase, restarts: Restarts) -> Local {
        Local {
            phase,
            cleaning: false,
            cleaned: false,
            orphan: false,
            task: None,
            restarts,
            last_exit: None,
            healthy: None,
            prober: None,
            watched: false,
            killed_for: None,
            last_killed_for: None,
            stopped_in_back_off: false,
        }
    }

    fn stop_probes(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
    }
}

/// A status update for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub alloc_id: String,
    pub status: AllocStatus,
    pub exit_code: Option<i32>,
    pub message: String,
    pub restart_count: u32,
    pub healthy: Option<bool>,
    pub reason: String,
}

pub enum Event {
    /// The full set of allocations the servers assigned to this node.
    Desired(Vec<Allocation>),
    Started {
        id: String,
        /// Which run of the container (its restart count) this was.
        run: u32,
        result: Result<(), String>,
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

pub struct Reconciler<R: Runtime> {
    runtime: Arc<R>,
    paths: Paths,
    images: ImageStore,
    settings: Settings,
    desired: Option<Vec<Allocation>>,
    local: HashMap<String, Local>,
    sent: HashMap<String, (Observed, Instant)>,
    /// A report to the servers is under way (one at a time).
    reporting: bool,
    events: mpsc::Sender<Event>,
}

fn restarts_path(paths: &Paths, id: &str) -> PathBuf {
    paths.container_dir(id).join(RESTARTS_FILE)
}

fn read_restarts(paths: &Paths, id: &str) -> Restarts {
    std::fs::read(restarts_path(paths, id))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl<R: Runtime> Reconciler<R> {
    pub fn new(
        runtime: Arc<R>,
        paths: Paths,
        settings: Settings,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Reconciler {
            runtime,
            images: ImageStore::new(paths.images()),
            paths,
            settings,
            desired: None,
            local: HashMap::new(),
            sent: HashMap::new(),
            reporting: false,
            events,
        }
    }

    /// Re-adopts the containers a previous run of the agent left behind:
    /// running ones keep running, and ones that exited meanwhile are
    /// reported with the exit code their shim recorded (and restarted if
    /// their policy says so).
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
            let restarts = read_restarts(&self.paths, &id);
            let phase = if let Some(record) = ExitRecord::read(&state_dir) {
                Phase::Ended(record)
            } else if shim::shim_alive(&state_dir) {
                Phase::Running
            } else {
                let cid = container_id(&id);
                let running = matches!(
                    self.runtime.state(&cid).await,
                    Ok(Some(ref s)) if s.status == "running"
                );
                let _ = self.runtime.delete(&cid, true).await;
                Phase::Failed {
                    message: if running {
                        // Nobody would record its exit: it was stopped
                        // rather than left to guess an exit code.
                        "the container's monitor died; the container was stopped".into()
                    } else {
                        "the agent stopped while the container was starting".into()
                    },
                    reason: reason::START_FAILED,
                }
            };
            tracing::info!(alloc = %id, ?phase, restarts = restarts.count, "re-adopted container");
            self.local.insert(id, Local::new(phase, restarts));
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Desired(allocs) => self.desired = Some(allocs),
            Event::Reported { updates, sent } => {
                self.reporting = false;
                if sent {
                    self.sent(&updates);
                }
            }
            Event::Started {
                id,
                run,
                result,
                took,
            } => {
                let Some(l) = self.local.get_mut(&id) else {
                    return;
                };
                if l.phase != Phase::Starting || run != l.restarts.count {
                    return;
                }
                // A stop asked for meanwhile happens on the next pass.
                l.phase = match result {
                    Ok(()) => {
                        tracing::info!(
                            alloc = %id,
                            run,
                            start_ms = took.as_secs_f64() * 1000.0,
                            "container started"
                        );
                        Phase::Running
                    }
                    Err(message) => {
                        tracing::warn!(alloc = %id, error = %message, "container failed to start");
                        Phase::Failed {
                            message,
                            reason: reason::START_FAILED,
                        }
                    }
                };
            }
            Event::StopDone { id } => {
                let Some(l) = self.local.get_mut(&id) else {
                    return;
                };
                let Phase::Stopping { requested } = l.phase else {
                    return;
                };
                l.stop_probes();
                l.phase = match ExitRecord::read(&self.paths.state_dir(&id)) {
                    Some(record) if requested => Phase::Exited {
                        record,
                        stopped: true,
                    },
                    Some(record) => Phase::Ended(record),
                    None => Phase::Failed {
                        message: "stopped; its exit code was not recorded".into(),
                        reason: reason::STOPPED,
                    },
                };
            }
            Event::ShimExited { id } => {
                tracing::debug!(alloc = %id, "shim exited");
            }
            Event::Cleaned { id } => {
                if let Some(l) = self.local.get_mut(&id) {
                    l.cleaning = false;
                    l.cleaned = true;
                }
            }
            Event::Probe { id, run, event } => {
                let Some(l) = self.local.get_mut(&id) else {
                    return;
                };
                if l.phase != Phase::Running || run != l.restarts.count {
                    return; // about an earlier run
                }
                match event {
                    ProbeEvent::Ready(ready) => {
                        if l.healthy != Some(ready) {
                            tracing::info!(alloc = %id, ready, "readiness changed");
                        }
                        l.healthy = Some(ready);
                    }
                    ProbeEvent::Failed { probe, message } => {
                        tracing::info!(alloc = %id, probe, error = %message, "probe failed; stopping the container");
                        l.killed_for = Some(format!("{probe} probe failed: {message}"));
                        l.healthy = Some(false);
                        l.phase = Phase::Stopping { requested: false };
                        let task = l.task.clone();
                        self.spawn_stop(id, task.as_ref());
                    }
                }
            }
        }
    }

    /// One pass: act on differences and return the statuses to report.
    pub fn reconcile(&mut self) -> Vec<Observed> {
        let Some(desired) = self.desired.clone() else {
            return Vec::new(); // nothing heard from the servers yet
        };
        let by_id: HashMap<&str, &Allocation> =
            desired.iter().map(|a| (a.id.as_str(), a)).collect();

        // Learn tasks; mark what the servers no longer list.
        for (id, l) in self.local.iter_mut() {
            match by_id.get(id.as_str()) {
                Some(a) if l.task.is_none() => l.task = Some(a.task.clone()),
                Some(_) => {}
                None if !l.orphan => {
                    tracing::info!(alloc = %id, "the servers no longer list this allocation; removing it");
                    l.orphan = true;
                }
                None => {}
            }
        }

        // Notice exits.
        for (id, l) in self.local.iter_mut() {
            if matches!(l.phase, Phase::Running | Phase::Stopping { .. }) {
                if let Some(record) = ExitRecord::read(&self.paths.state_dir(id)) {
                    tracing::info!(alloc = %id, code = record.exit_code, oom = record.oom_killed, "container exited");
                    l.stop_probes();
                    l.watched = false;
                    l.phase = match l.phase {
                        Phase::Stopping { requested: true } => Phase::Exited {
                            record,
                            stopped: true,
                        },
                        _ => Phase::Ended(record),
                    };
                }
            }
        }

        // Decide what follows an exit: a restart after a back-off, or the end.
        for (id, l) in self.local.iter_mut() {
            let Phase::Ended(record) = &l.phase else {
                continue;
            };
            let record = record.clone();
            let stop_wanted = l.orphan
                || by_id
                    .get(id.as_str())
                    .is_some_and(|a| a.desired == DesiredStatus::Stop);
            l.last_exit = Some(record.clone());
            l.healthy = None;
            l.cleaned = false;
            l.cleaning = false;
            l.phase = match after_exit(&record, l.task.as_ref(), l.restarts.step, stop_wanted) {
                AfterExit::Restart { delay, step } => {
                    l.restarts.step = step;
                    let until = system_time(record.finished_at_ms) + delay;
                    tracing::info!(alloc = %id, delay = %format_duration(delay), restarts = l.restarts.count, "container exited; restarting after its back-off");
                    Phase::BackOff { until, delay }
                }
                AfterExit::Done { stopped } => Phase::Exited { record, stopped },
            };
        }

        // Start, restart and stop.
        for a in &desired {
            match (a.desired, self.local.get_mut(&a.id)) {
                (DesiredStatus::Run, None) if a.status == AllocStatus::Pending => {
                    let mut l = Local::new(Phase::Starting, Restarts::default());
                    l.task = Some(a.task.clone());
                    self.local.insert(a.id.clone(), l);
                    self.spawn_start(a.clone(), 0);
                }
                (DesiredStatus::Run, Some(l)) => {
                    if let Phase::BackOff { until, .. } = l.phase {
                        if l.cleaned && SystemTime::now() >= until {
                            l.restarts.count += 1;
                            l.restarts.step += 1;
                            let r = l.restarts;
                            if let Err(e) = persist_restarts(&self.paths, &a.id, r) {
                                tracing::warn!(alloc = %a.id, error = %e, "cannot record the restart count");
                            }
                            l.phase = Phase::Starting;
                            l.cleaned = false;
                            l.last_killed_for = l.killed_for.take();
                            self.spawn_start(a.clone(), r.count);
                        }
                    }
                }
                (DesiredStatus::Stop, Some(l)) => match &l.phase {
                    Phase::Running => {
                        l.phase = Phase::Stopping { requested: true };
                        let task = l.task.clone();
                        self.spawn_stop(a.id.clone(), task.as_ref());
                    }
                    Phase::Stopping { requested: false } => {
                        l.phase = Phase::Stopping { requested: true };
                    }
                    Phase::BackOff { .. } => {
                        // Its last run ended by itself (a failure, or
                        // the policy would not restart it): that end, not
                        // the stop, says how it went.
                        let record = l.last_exit.clone().expect("a back-off follows an exit");
                        l.phase = Phase::Exited {
                            record,
                            stopped: false,
                        };
                        l.stopped_in_back_off = true;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        let orphans: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| l.orphan && !l.phase.terminal())
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphans {
            let Some(l) = self.local.get_mut(&id) else {
                continue;
            };
            match &l.phase {
                Phase::Running => {
                    l.phase = Phase::Stopping { requested: true };
                    let task = l.task.clone();
                    self.spawn_stop(id, task.as_ref());
                }
                Phase::BackOff { .. } => {
                    let record = l.last_exit.clone().expect("a back-off follows an exit");
                    l.phase = Phase::Exited {
                        record,
                        stopped: false,
                    };
                    l.stopped_in_back_off = true;
                }
                _ => {}
            }
        }

        // Learn of exits as they happen.
        let to_watch: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == Phase::Running && !l.watched)
            .map(|(id, _)| id.clone())
            .collect();
        for id in to_watch {
            self.spawn_exit_watch(&id);
            if let Some(l) = self.local.get_mut(&id) {
                l.watched = true;
            }
        }

        // Probes for running containers.
        let to_probe: Vec<(String, TaskSpec, u32)> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == Phase::Running && l.prober.is_none())
            .filter_map(|(id, l)| Some((id.clone(), l.task.clone()?, l.restarts.count)))
            .collect();
        for (id, task, run) in to_probe {
            let handle = self.spawn_probes(&id, &task, run);
            if let Some(l) = self.local.get_mut(&id) {
                l.prober = Some(handle);
            }
        }

        // Clean up what ended (and what waits to start again).
        let to_clean: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| {
                !l.cleaned
                    && !l.cleaning
                    && (l.phase.terminal() || matches!(l.phase, Phase::BackOff { .. }))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in to_clean {
            if let Some(l) = self.local.get_mut(&id) {
                l.cleaning = true;
                l.stop_probes();
            }
            self.spawn_cleanup(id);
        }

        // Report, and forget what the server has recorded as finished.
        let mut updates = Vec::new();
        let mut forget = Vec::new();
        for a in &desired {
            let observed = match self.local.get(&a.id) {
                Some(l) => observe(a, l),
                None if a.desired == DesiredStatus::Stop && !a.status.is_terminal() => {
                    Some(Observed {
                        alloc_id: a.id.clone(),
                        status: AllocStatus::Complete,
                        exit_code: None,
                        message: "stopped before it started".into(),
                        restart_count: a.restart_count,
                        healthy: None,
                        reason: reason::STOPPED.into(),
                    })
                }
                None if a.desired == DesiredStatus::Run && a.status == AllocStatus::Running => {
                    Some(Observed {
                        alloc_id: a.id.clone(),
                        status: AllocStatus::Failed,
                        exit_code: None,
                        message: "the container is gone from this node (its state was lost)".into(),
                        restart_count: a.restart_count,
                        healthy: None,
                        reason: reason::ERROR.into(),
                    })
                }
                None => None,
            };
            if let Some(o) = observed {
                let server_has = a.status == o.status
                    && a.exit_code == o.exit_code
                    && a.restart_count == o.restart_count
                    && a.healthy == o.healthy
                    && a.reason == o.reason
                    && (o.message.is_empty() || a.message == o.message);
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
                    if l.cleaned && l.phase.terminal() {
                        forget.push(a.id.clone());
                    }
                }
            }
        }
        for (id, l) in &self.local {
            if l.orphan && l.cleaned && l.phase.terminal() {
                forget.push(id.clone());
            }
        }
        for id in forget {
            if let Some(mut l) = self.local.remove(&id) {
                l.stop_probes();
            }
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

    /// When the reconciler next has something to do that no event will
    /// announce: the end of the earliest back-off.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        self.local
            .values()
            .filter_map(|l| match l.phase {
                // Until it is cleaned up, the Cleaned event wakes us.
                Phase::BackOff { until, .. } if l.cleaned => Some(until),
                _ => None,
            })
            .min()
    }

    fn spawn_exit_watch(&self, id: &str) {
        let Some((pid, start)) = shim::read_shim_pid(&self.paths.state_dir(id)) else {
            return;
        };
        let events = self.events.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = crate::sys::wait_process_exit(pid, start).await {
                tracing::debug!(alloc = %id, error = %e, "cannot watch the shim; the resync will notice its exit");
                return;
            }
            let _ = events.send(Event::ShimExited { id }).await;
        });
    }

    fn spawn_start(&self, alloc: Allocation, run: u32) {
        let runtime = self.runtime.clone();
        let paths = self.paths.clone();
        let images = self.images.clone();
        let settings = self.settings.clone();
        let events = self.events.clone();
        let began = Instant::now();
        tokio::spawn(async move {
            let id = alloc.id.clone();
            let result = start(&*runtime, &paths, &images, &settings, &alloc).await;
            let took = began.elapsed();
            let _ = events
                .send(Event::Started {
                    id,
                    run,
                    result,
                    took,
                })
                .await;
        });
    }

    fn spawn_stop(&self, id: String, task: Option<&TaskSpec>) {
        let runtime = self.runtime.clone();
        let state_dir = self.paths.state_dir(&id);
        let name = task
            .and_then(|t| t.stop_signal.as_deref())
            .and_then(normalize_signal)
            .unwrap_or(DEFAULT_STOP_SIGNAL);
        // runc takes numbers for every signal (not all names, SIGRTMIN+3).
        let signal = SIGNALS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| "15".to_string(), |(_, num)| num.to_string());
        let grace = task
            .and_then(|t| t.stop_grace)
            .unwrap_or(self.settings.stop_grace);
        let events = self.events.clone();
        tokio::spawn(async move {
            stop(&*runtime, &container_id(&id), &state_dir, &signal, grace).await;
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
            match tokio::task::spawn_blocking(move || rootfs::release(&bundle)).await {
                Ok(Err(e)) => {
                    tracing::warn!(alloc = %id, error = %e, "could not remove the bundle")
                }
                Err(e) => tracing::warn!(alloc = %id, error = %e, "bundle removal panicked"),
                Ok(Ok(())) => {}
            }
            let _ = events.send(Event::Cleaned { id }).await;
        });
    }

    fn spawn_probes(&self, id: &str, task: &TaskSpec, run: u32) -> tokio::task::AbortHandle {
        let (tx, mut rx) = mpsc::channel(8);
        let netns = match task.network {
            NetworkMode::Host => None,
            NetworkMode::None => {
                std::fs::read_to_string(self.paths.state_dir(id).join(shim::INIT_PID))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
            }
        };
        let checker = ContainerChecker {
            runtime: self.runtime.clone(),
            container_id: container_id(id),
            netns,
        };
        let probes = task.probes.clone();
        let events = self.events.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            let forward = async {
                while let Some(event) = rx.recv().await {
                    let e = Event::Probe {
                        id: id.clone(),
                        run,
                        event,
                    };
                    if events.send(e).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(
                probe::run_probes(checker, probes, tokio::time::Instant::now(), tx),
                forward
            );
        });
        task.abort_handle()
    }
}

/// What follows a container's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterExit {
    /// Start again after `delay`; `step` is the back-off step it used.
    Restart { delay: Duration, step: u32 },
    /// The allocation is done; `stopped` when the servers asked for it.
    Done { stopped: bool },
}

/// Applies the task's restart policy to an exit: `step` is how many
/// restarts happened since the back-off was last reset.
fn after_exit(
    record: &ExitRecord,
    task: Option<&TaskSpec>,
    step: u32,
    stop_wanted: bool,
) -> AfterExit {
    let restart = task
        .map(|t| t.restart)
        .filter(|r| !stop_wanted && r.policy.restarts(record.succeeded()));
    match restart {
        Some(r) => {
            // A long enough run starts the back-off over.
            let step = if record.ran_for() >= r.backoff.reset_after {
                0
            } else {
                step
            };
            AfterExit::Restart {
                delay: r.backoff.delay(step),
                step,
            }
        }
        None => AfterExit::Done {
            stopped: stop_wanted,
        },
    }
}

fn persist_restarts(paths: &Paths, id: &str, r: Restarts) -> std::io::Result<()> {
    let json = serde_json::to_vec(&r).expect("restart counts serialize");
    shim::write_atomic(&restarts_path(paths, id), &json)
}

/// What the server should record for an allocation in a given phase.
fn observe(a: &Allocation, l: &Local) -> Option<Observed> {
    let last = l.last_exit.as_ref();
    let running = |healthy: Option<bool>, reason: &str, message: String| Observed {
        alloc_id: a.id.clone(),
        status: AllocStatus::Running,
        exit_code: last.map(|r| r.exit_code),
        message,
        restart_count: l.restarts.count,
        healthy,
        reason: reason.into(),
    };
    let restarted = || match last {
        Some(r) if l.restarts.count > 0 => format!(
            "restarted {} time{}; the last run {}",
            l.restarts.count,
            if l.restarts.count == 1 { "" } else { "s" },
            match &l.last_killed_for {
                Some(k) => format!("was stopped: {k}"),
                None => r.describe(),
            }
        ),
        _ => String::new(),
    };
    Some(match &l.phase {
        Phase::Starting | Phase::Ended(_) => return None,
        Phase::Running | Phase::Stopping { .. } => {
            let healthy = match (&l.task, l.healthy) {
                (_, Some(h)) => Some(h),
                // Without probes a running container is ready at once.
                (Some(t), None) if t.probes.is_empty() => Some(true),
                _ => Some(false),
            };
            running(healthy, "", restarted())
        }
        Phase::BackOff { delay, .. } => {
            let why = match (&l.killed_for, last) {
                (Some(k), _) => k.clone(),
                (None, Some(r)) => r.describe(),
                (None, None) => "exited".into(),
            };
            running(
                Some(false),
                reason::BACK_OFF,
                format!("{why}; starting again in {}", format_duration(*delay)),
            )
        }
        Phase::Exited { record, stopped } => {
            // A stop explains the end only when the container was running
            // when it came; a failed run waiting to restart stays failed
            // (a batch job's failure count must not shrink).
            let by_request = *stopped || (a.desired == DesiredStatus::Stop && record.succeeded());
            let mut how = match &l.killed_for {
                Some(k) => format!("{k} ({})", record.describe()),
                None => record.describe(),
            };
            if l.stopped_in_back_off {
                how.push_str("; stopped while waiting to restart");
            }
            let (status, why, message) = if by_request {
                (
                    AllocStatus::Complete,
                    reason::STOPPED,
                    format!("stopped ({how})"),
                )
            } else if record.oom_killed && !record.succeeded() {
                (AllocStatus::Failed, reason::OOM_KILLED, how)
            } else if l.killed_for.is_some() {
                (AllocStatus::Failed, reason::PROBE_FAILED, how)
            } else if record.succeeded() {
                (AllocStatus::Complete, reason::COMPLETED, how)
            } else {
                (AllocStatus::Failed, reason::ERROR, how)
            };
            Observed {
                alloc_id: a.id.clone(),
                status,
                exit_code: Some(record.exit_code),
                message,
                restart_count: l.restarts.count,
                healthy: None,
                reason: why.into(),
            }
        }
        Phase::Failed { message, reason } => Observed {
            alloc_id: a.id.clone(),
            status: AllocStatus::Failed,
            exit_code: None,
            message: message.clone(),
            restart_count: l.restarts.count,
            healthy: None,
            reason: (*reason).into(),
        },
    })
}

/// Prepares the image, writes the bundle and starts the container.
pub async fn start<R: Runtime>(
    runtime: &R,
    paths: &Paths,
    images: &ImageStore,
    settings: &Settings,
    alloc: &Allocation,
) -> Result<(), String> {
    let t0 = Instant::now();
    let image_ref = alloc.task.image.clone();
    let images = images.clone();
    let prepared = tokio::task::spawn_blocking(move || images.prepare(&image_ref))
        .await
        .map_err(|e| format!("image preparation panicked: {e}"))?
        .map_err(|e| format!("image {}: {e}", alloc.task.image))?;

    let bundle = paths.bundle(&alloc.id);
    let rootfs = bundle.join("rootfs");
    let (src, b, mode) = (prepared.rootfs.clone(), bundle.clone(), settings.rootfs);
    let kind = tokio::task::spawn_blocking(move || {
        rootfs::release(&b).map_err(|e| format!("removing the old bundle {}: {e}", b.display()))?;
        std::fs::create_dir_all(&b).map_err(|e| format!("creating {}: {e}", b.display()))?;
        rootfs::prepare(&src, &b, mode).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("rootfs preparation panicked: {e}"))??;
    let t_rootfs = Instant::now();

    let cid = container_id(&alloc.id);
    // Exactly the GPUs the servers gave it: their device nodes, the
    // driver's files and the variables that name them.
    let gpu_edits = if alloc.gpus.is_empty() {
        None
    } else {
        let node = settings
            .gpus
            .as_ref()
            .ok_or_else(|| "this node has no GPUs".to_string())?;
        Some(node.edits_for(&alloc.gpus)?)
    };
    let spec = build_spec(&BundleInput {
        alloc,
        container_id: &cid,
        image: &prepared.config,
        rootfs: &rootfs,
        gpu_edits: gpu_edits.as_ref(),
    })
    .map_err(|e| e.to_string())?;
    let cgroup = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    spec.save(bundle.join("config.json"))
        .map_err(|e| format!("writing config.json: {e}"))?;

    let log_dir = paths.log_dir(&alloc.id);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    let state_dir = paths.state_dir(&alloc.id);
    let _ = std::fs::remove_dir_all(&state_dir);
    let t_spec = Instant::now();
    let args = ShimArgs {
        id: cid,
        bundle,
        state_dir,
        runtime: settings.runtime_binary.clone(),
        runtime_root: paths.runtime_root(),
        log_dir,
        log_max_size: settings.log_max_size,
        log_max_files: settings.log_max_files,
        cgroup,
    };
    let result = runtime.start(&args).await.map_err(|e| e.to_string());
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let done = Instant::now();
    tracing::debug!(
        alloc = %alloc.id,
        ?kind,
        image_and_rootfs_ms = ms(t0, t_rootfs),
        spec_ms = ms(t_rootfs, t_spec),
        shim_ms = ms(t_spec, done),
        "start phases"
    );
    result
}

/// The stop signal, a grace period, SIGKILL; returns once the shim
/// recorded the exit (or it is clear it never will).
async fn stop<R: Runtime>(runtime: &R, cid: &str, state_dir: &Path, signal: &str, grace: Duration) {
    let exited = || ExitRecord::read(state_dir).is_some();
    if exited() {
        return;
    }
    if let Err(e) = runtime.kill(cid, signal).await {
        tracing::debug!(container = cid, signal, error = %e, "stop signal failed");
    }
    if wait_until(exited, grace).await {
        return;
    }
    tracing::info!(
        container = cid,
        grace = %format_duration(grace),
        "still running after the grace period; sending SIGKILL"
    );
    if let Err(e) = runtime.kill(cid, "9").await {
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drives a reconciler: applies events, reconciles, and hands the
/// resulting updates to `report` (which returns whether they were sent).
/// Reports run beside the loop, one at a time, so a slow server never
/// holds up starting or stopping containers.
pub async fn run_loop<R, F, Fut>(
    mut rec: Reconciler<R>,
    mut events: mpsc::Receiver<Event>,
    mut report: F,
) where
    R: Runtime,
    F: FnMut(Vec<Observed>) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wake when a back-off ends, not at the next tick after it.
        let wake = rec
            .next_wakeup()
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(RESYNC)
            .min(RESYNC);
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
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
        if !updates.is_empty() && !rec.reporting {
            rec.reporting = true;
            let done = rec.events.clone();
            let send = report(updates.clone());
            tokio::spawn(async move {
                let sent = send.await;
                let _ = done.send(Event::Reported { updates, sent }).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{JobSpec, RestartPolicy};

    fn task(restart: &str) -> TaskSpec {
        JobSpec::from_yaml(&format!(
            "name: t\ntask: {{image: 'oci:/i', restart: {restart}}}"
        ))
        .unwrap()
        .task
    }

    fn exit(code: i32, ran_secs: u64, oom: bool) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            signal: (code > 128).then_some(code - 128),
            oom_killed: oom,
            started_at_ms: 1_000_000,
            finished_at_ms: 1_000_000 + ran_secs * 1000,
        }
    }

    #[test]
    fn policies_decide_what_follows_an_exit() {
        let always = task("{policy: always}");
        let on_failure = task("{policy: on-failure}");
        let never = task("{policy: never}");
        assert_eq!(always.restart.policy, RestartPolicy::Always);
        let first = AfterExit::Restart {
            delay: Duration::from_secs(10),
            step: 0,
        };
        assert_eq!(
            after_exit(&exit(0, 1, false), Some(&always), 0, false),
            first
        );
        assert_eq!(
            after_exit(&exit(0, 1, false), Some(&on_failure), 0, false),
            AfterExit::Done { stopped: false }
        );
        assert_eq!(
            after_exit(&exit(137, 1, true), Some(&on_failure), 0, false),
            first
        );
        assert_eq!(
            after_exit(&exit(1, 1, false), Some(&never), 0, false),
            AfterExit::Done { stopped: false }
        );
        // Asked to stop: never restarted.
        assert_eq!(
            after_exit(&exit(143, 1, false), Some(&always), 0, true),
            AfterExit::Done { stopped: true }
        );
    }

    #[test]
    fn the_back_off_grows_and_resets_after_a_long_run() {
        let t = task("{backoff: {initial: 1s, max: 8s, reset_after: 60s}}");
        let delays: Vec<u64> = (0..6)
            .map(
                |step| match after_exit(&exit(1, 2, false), Some(&t), step, false) {
                    AfterExit::Restart { delay, .. } => delay.as_secs(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert_eq!(
            after_exit(&exit(1, 61, false), Some(&t), 5, false),
            AfterExit::Restart {
                delay: Duration::from_secs(1),
                step: 0
            }
        );
    }

    #[test]
    fn a_waiting_or_oom_killed_allocation_says_so() {
        let a = Allocation {
            status: AllocStatus::Running,
            create_index: 1,
            modify_index: 1,
            ..Allocation::new(
                "0123456789abcdef0123456789abcdef",
                "j",
                1,
                0,
                "n",
                task("{policy: on-failure}"),
            )
        };
        let mut l = Local::new(
            Phase::BackOff {
                until: SystemTime::now(),
                delay: Duration::from_secs(20),
            },
            Restarts { count: 2, step: 2 },
        );
        l.last_exit = Some(exit(1, 1, false));
        let o = observe(&a, &l).unwrap();
        assert_eq!(o.status, AllocStatus::Running);
        assert_eq!(o.reason, reason::BACK_OFF);
        assert_eq!(
            (o.healthy, o.restart_count, o.exit_code),
            (Some(false), 2, Some(1))
        );
        assert_eq!(o.message, "exited with code 1; starting again in 20s");

        l.phase = Phase::Exited {
            record: exit(137, 1, true),
            stopped: false,
        };
        let o = observe(&a, &l).unwrap();
        assert_eq!(
            (o.status, o.reason.as_str()),
            (AllocStatus::Failed, reason::OOM_KILLED)
        );
        assert_eq!(o.healthy, None);
    }

    #[test]
    fn a_failed_run_stopped_while_waiting_to_restart_stays_failed() {
        let mut a = Allocation {
            status: AllocStatus::Running,
            ..Allocation::new(
                "0123456789abcdef0123456789abcdef",
                "j",
                1,
                0,
                "n",
                task("{policy: on-failure}"),
            )
        };
        a.desired = DesiredStatus::Stop;
        let mut l = Local::new(
            Phase::Exited {
                record: exit(3, 1, false),
                stopped: false,
            },
            Restarts { count: 1, step: 1 },
        );
        let o = observe(&a, &l).unwrap();
        assert_eq!((o.status, o.exit_code), (AllocStatus::Failed, Some(3)));
        assert_eq!(o.message, "exited with code 3", "it was not waiting");
        l.stopped_in_back_off = true;
        let o = observe(&a, &l).unwrap();
        assert_eq!(
            o.message,
            "exited with code 3; stopped while waiting to restart"
        );
        // One that ran when the stop came ends complete, whatever its code.
        l.phase = Phase::Exited {
            record: exit(143, 1, false),
            stopped: true,
        };
        let o = observe(&a, &l).unwrap();
        assert_eq!(
            (o.status, o.reason.as_str()),
            (AllocStatus::Complete, reason::STOPPED)
        );
    }
}
