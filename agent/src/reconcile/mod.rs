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
//!
//! The rooms: `state.rs` names where a container is in its life (one
//! [`State`] per container); `decide.rs` is the pure decision, from the
//! servers' allocations, the recorded exits and the time to [`Action`]s;
//! `execute.rs` carries the actions out through the [`Runtime`] and the
//! [`Records`]; `start.rs` is the start pipeline (image, root filesystem,
//! bundle, shim); `stop.rs` the stop signal, grace period and SIGKILL;
//! `restarts.rs` the restart policy, back-off and `restarts.json`;
//! `observe.rs` what to report and when not to send it again. This file
//! owns the state, applies events, and runs the loop.

mod decide;
mod desired;
mod event;
mod execute;
mod gate;
mod observe;
mod records;
mod restarts;
mod start;
mod state;
#[cfg(any(test, feature = "sim"))]
mod steady;
mod stop;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_model::DesiredStatus;
use tokio::sync::mpsc;

pub use event::{Event, Settings};
pub use observe::Observed;
pub use records::{FileRecords, Records};
pub use restarts::Restarts;
pub use state::{Cleanup, Ending, State};
#[cfg(feature = "sim")]
pub use steady::SteadyNode;

use decide::{Containers, Decision};
use desired::Desired;
use state::Found;

use crate::clock::{Clock, SystemClock};
use crate::metrics::LiveAlloc;
use crate::paths::{container_id, Paths};
use crate::runtime::Runtime;
use execute::Executor;

/// How often the agent's reconciler looks at its containers without
/// being woken.
pub const RESYNC: Duration = Duration::from_millis(500);

/// How often the clock's pass also reads the exit record of every running
/// container. Each shim's exit is watched and wakes a pass at once; this
/// look finds one whose watch failed.
pub const EXIT_SWEEP: Duration = Duration::from_secs(5);

/// What woke a pass, and so what it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woken {
    /// Events: the exits of shims seen to exit only.
    Events,
    /// The clock: also publishes what the metrics and the image
    /// garbage collector read, when it changed.
    Clock,
    /// The clock, and the exit record of every running container.
    Sweep,
}

/// The reconciler: the containers' state and the decisions about it
/// ([`Containers`]), the executor that carries them out, and the edges it
/// reads: the runtime, the per-container records and the clock.
pub struct Reconciler<R: Runtime, X: Records = FileRecords, C: Clock = SystemClock> {
    containers: Containers,
    executor: Executor<R, X>,
    runtime: Arc<R>,
    records: Arc<X>,
    clock: C,
    desired: Option<Desired>,
    /// A report to the servers is under way (one at a time).
    reporting: bool,
    events: mpsc::Sender<Event>,
    /// Published for the image garbage collector.
    images_in_use: crate::image::gc::InUse,
    /// Published for the metrics and the heartbeats.
    live: Arc<crate::metrics::LiveAllocs>,
    resync: Duration,
    /// Containers whose shim exited since the last pass: a pass woken by
    /// events looks for the exit records of these only (a look at every
    /// container's is left to the resync), so its work follows what
    /// changed, not how many containers run.
    shims_exited: std::collections::HashSet<String>,
    /// The servers listed an allocation not seen before: the images in
    /// use are published at the next pass, not only at the clock's.
    new_listed: bool,
    /// Something that what is published may follow from happened since
    /// it was last published (an event, an action, an exit): a clock's
    /// pass with nothing new publishes nothing.
    unpublished: bool,
    /// Times the live view was published (tests pin the work).
    publishes: u64,
    /// The last pass had nothing to do, nothing to report and nothing in
    /// flight, and no event came since (`stirred` false): a clock's pass
    /// then has nothing to decide either, and skips the walk.
    quiet: bool,
    stirred: bool,
    /// Passes that decided (tests pin the work).
    decided: u64,
}

/// What the reconcilers of this process did, all together: a count of
/// work, not of time (the simulated nodes of `scalebench` print it per
/// placement).
#[derive(Debug, Default)]
pub struct Tally {
    /// Passes that decided (a clock's pass with nothing new is not one).
    pub passes: AtomicU64,
    /// Allocations those passes looked at (each pass walks its node's).
    pub looked_at: AtomicU64,
}

/// The tally of every reconciler in this process.
pub static TALLY: Tally = Tally {
    passes: AtomicU64::new(0),
    looked_at: AtomicU64::new(0),
};

impl<R: Runtime> Reconciler<R> {
    /// A reconciler on the agent's data directory and the real clock.
    pub fn new(
        runtime: Arc<R>,
        paths: Paths,
        settings: Settings,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let records = Arc::new(FileRecords::new(paths.clone()));
        Reconciler::with_edges(runtime, records, SystemClock, paths, settings, events)
    }
}

impl<R: Runtime, X: Records, C: Clock> Reconciler<R, X, C> {
    /// A reconciler on the given records and clock (tests pass fakes).
    pub fn with_edges(
        runtime: Arc<R>,
        records: Arc<X>,
        clock: C,
        paths: Paths,
        settings: Settings,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Reconciler {
            containers: Containers::new(settings.stop_grace, settings.registry.progress()),
            images_in_use: settings.images_in_use.clone(),
            live: settings.live.clone(),
            resync: settings.resync,
            shims_exited: Default::default(),
            new_listed: true,
            unpublished: true,
            publishes: 0,
            quiet: false,
            stirred: false,
            decided: 0,
            executor: Executor::new(
                runtime.clone(),
                records.clone(),
                paths,
                settings,
                events.clone(),
            ),
            runtime,
            records,
            clock,
            desired: None,
            reporting: false,
            events,
        }
    }

    /// Re-adopts the containers a previous run of the agent left behind:
    /// running ones keep running, and ones that exited meanwhile are
    /// reported with the exit code their shim recorded (and restarted if
    /// their policy says so).
    pub async fn adopt(&mut self) {
        for id in self.records.containers() {
            let restarts = self.records.restarts(&id);
            let found = if let Some(record) = self.records.exit(&id) {
                Found::Exited(record)
            } else if self.records.shim_alive(&id) {
                Found::Running
            } else {
                let cid = container_id(&id);
                let was_running = matches!(
                    self.runtime.state(&cid).await,
                    Ok(Some(ref s)) if s.status == "running"
                );
                let _ = self.runtime.delete(&cid, true).await;
                Found::Lost { was_running }
            };
            self.containers.adopt(id, found, restarts);
        }
        // Networks no container record explains were left by a crash
        // (the rest are torn down when their containers are cleaned up).
        if let Some(net) = self.executor.network() {
            let known = self.records.containers().into_iter().collect();
            net.orphans(&known).await;
        }
    }

    /// Removes the logs of allocations the servers no longer list (they
    /// collected them) and that have no container here.
    fn drop_logs(&self, listed: &Desired) {
        for id in self.records.logged() {
            if !listed.contains(&id) && self.containers.get(&id).is_none() {
                tracing::info!(alloc = %id, "removing the logs of a collected allocation");
                self.records.remove_logs(&id);
            }
        }
    }

    pub fn handle(&mut self, event: Event) {
        self.stirred = true;
        if !matches!(event, Event::Reported { .. }) {
            self.unpublished = true;
        }
        match event {
            Event::Desired(mut allocs) => {
                // Ids become directory names: one that is not an id the
                // leader makes is never acted on (nor adopted, see
                // `FileRecords::containers`), whoever sent it.
                allocs.retain(|a| {
                    let ok = crate::paths::valid_alloc_id(&a.id);
                    if !ok {
                        tracing::warn!(alloc = ?a.id, job = %a.job, "ignoring an allocation whose id is not an allocation id");
                    }
                    ok
                });
                let next = Desired::new(allocs);
                let before = self.desired.as_ref();
                if before.is_none_or(|b| b.lists_one_not_in(&next)) {
                    self.drop_logs(&next);
                }
                self.new_listed |= before.is_none_or(|b| next.lists_one_not_in(b));
                self.desired = Some(next)
            }
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
                if result.is_ok() {
                    self.live.started(took);
                }
                self.containers.started(&id, run, result, took)
            }
            Event::StopDone { id } => {
                let record = if self.containers.stopping(&id) {
                    self.records.exit(&id)
                } else {
                    None
                };
                let actions = self.containers.stop_done(&id, record);
                self.executor.execute(actions);
            }
            Event::ShimExited { id } => {
                tracing::debug!(alloc = %id, "shim exited");
                self.shims_exited.insert(id);
            }
            Event::Cleaned { id } => self.containers.cleaned(&id),
            Event::Probe { id, run, event } => {
                let actions = self.containers.probe(&id, run, event);
                self.executor.execute(actions);
            }
        }
    }

    /// One pass, looking for the exit record of every running container:
    /// decide, act, and return the statuses to report.
    pub fn reconcile(&mut self) -> Vec<Observed> {
        self.pass(Woken::Sweep)
    }

    /// One pass; what woke it says which exit records it reads.
    fn pass(&mut self, woken: Woken) -> Vec<Observed> {
        let Some(desired) = &self.desired else {
            return Vec::new(); // nothing heard from the servers yet
        };
        let stirred = std::mem::take(&mut self.stirred);
        if woken == Woken::Clock && self.quiet && !stirred && !self.unpublished {
            return Vec::new();
        }
        self.decided += 1;
        TALLY.passes.fetch_add(1, Ordering::Relaxed);
        TALLY
            .looked_at
            .fetch_add(desired.len() as u64, Ordering::Relaxed);
        let exited = std::mem::take(&mut self.shims_exited);
        let exits: HashMap<String, _> = self
            .containers
            .awaiting_exit()
            .filter(|id| woken == Woken::Sweep || exited.contains(*id))
            .filter_map(|id| Some((id.to_string(), self.records.exit(id)?)))
            .collect();
        let now = self.clock.now();
        let Decision { actions, report } = self.containers.decide(desired, &exits, now);
        self.unpublished |= !actions.is_empty() || !exits.is_empty();
        self.quiet = actions.is_empty()
            && report.is_empty()
            && exits.is_empty()
            && !self.containers.in_flight();
        self.executor.execute(actions);
        // What the metrics, the heartbeats and the image garbage collector
        // read is published by the clock's passes (twice a second) when
        // something happened since, and at once when a new allocation may
        // want an image no other does: not at every event, each of which
        // would cost a walk over all.
        let new_listed = std::mem::take(&mut self.new_listed);
        if !(new_listed || woken != Woken::Events && self.unpublished) {
            return report;
        }
        self.unpublished = false;
        self.publishes += 1;
        // What the image garbage collector must keep: what allocations
        // want to run, and what containers not yet cleaned up stand on.
        let in_use: std::collections::HashSet<String> = desired
            .iter()
            .filter(|a| a.desired == DesiredStatus::Run && !a.status.is_terminal())
            .map(|a| a.task.image.to_string())
            .chain(self.containers.images())
            .collect();
        let mut published = self.images_in_use.lock().unwrap_or_else(|p| p.into_inner());
        if published.as_ref() != Some(&in_use) {
            *published = Some(in_use);
        }
        drop(published);
        self.live.publish(self.live_view(desired));
        report
    }

    /// The allocations the servers list that have a container here, as
    /// the metrics see them.
    fn live_view(&self, desired: &Desired) -> std::collections::BTreeMap<String, LiveAlloc> {
        desired
            .iter()
            .filter_map(|a| {
                let c = self.containers.get(&a.id)?;
                let (namespace, job) = skiff_model::job::split_job_key(&a.job);
                let want = a.task.resources.amount();
                Some((
                    a.id.clone(),
                    LiveAlloc {
                        namespace: namespace.to_string(),
                        job: job.to_string(),
                        running: matches!(c.state, State::Running { .. } | State::Stopping { .. }),
                        cgroup: format!("/skiff/{}", container_id(&a.id)),
                        restarts: c.restarts.count,
                        oom_kills: c.oom_kills,
                        ready: c.healthy,
                        gpus: a.gpus.clone(),
                        cpu_millis: want.cpu_millis,
                        memory_bytes: want.memory_bytes,
                    },
                ))
            })
            .collect()
    }

    /// Records that these updates reached the server.
    pub fn sent(&mut self, updates: &[Observed]) {
        let now = self.clock.now().mono;
        self.containers.sent(updates, now);
    }

    /// How many containers this agent is tracking.
    pub fn tracked(&self) -> usize {
        self.containers.tracked()
    }

    pub fn state(&self, alloc_id: &str) -> Option<&State> {
        self.containers.get(alloc_id).map(|c| &c.state)
    }

    /// How long until the reconciler next has something to do that no
    /// event will announce (the end of the earliest back-off).
    fn next_wakeup(&self) -> Option<Duration> {
        let now = self.clock.now().wall;
        self.containers
            .next_wakeup()
            .map(|t| t.duration_since(now).unwrap_or_default())
    }
}

/// Drives a reconciler: applies events, reconciles, and hands the
/// resulting updates to `report` (which returns whether they were sent).
/// Reports run beside the loop, one at a time, so a slow server never
/// holds up starting or stopping containers.
pub async fn run_loop<R, X, C, F, Fut>(
    mut rec: Reconciler<R, X, C>,
    mut events: mpsc::Receiver<Event>,
    mut report: F,
) where
    R: Runtime,
    X: Records,
    C: Clock,
    F: FnMut(Vec<Observed>) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let resync = rec.resync;
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sweep_every = EXIT_SWEEP.max(resync);
    let mut swept = tokio::time::Instant::now();
    loop {
        // Wake when a back-off ends, not at the next tick after it.
        let wake = rec.next_wakeup().unwrap_or(resync).min(resync);
        let woken = tokio::select! {
            _ = tokio::time::sleep(wake) => Woken::Clock,
            ev = events.recv() => match ev {
                Some(ev) => {
                    rec.handle(ev);
                    while let Ok(ev) = events.try_recv() {
                        rec.handle(ev);
                    }
                    Woken::Events
                }
                None => return,
            },
            _ = tick.tick() => Woken::Clock,
        };
        // Now and then the clock's pass looks for every exit record (one
        // a shim wrote without its exit watch noticing is found then).
        let woken = if woken == Woken::Clock && swept.elapsed() >= sweep_every {
            swept = tokio::time::Instant::now();
            Woken::Sweep
        } else {
            woken
        };
        let updates = rec.pass(woken);
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
