//! The reconciler's decisions, and nothing else. From the allocations the
//! servers want, the exits the shims recorded, the events of the tasks it
//! spawned and the time, [`Containers`] works out each container's next
//! [`State`] and the [`Action`]s that get it there. No I/O, no tokio, no
//! clock: every input is an argument, so a test drives every rule without
//! root and without waiting (see `tests.rs`). The executor carries the
//! actions out; the decisions only log what they decided.
//!
//! A pass is idempotent: run twice on the same inputs, the second finds
//! nothing to do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use skiff_model::alloc::reason;
use skiff_model::duration::format_duration;
use skiff_model::{AllocStatus, Allocation, DesiredStatus, TaskSpec};

use super::desired::{walk_to, Desired};
use super::observe::{observe, observe_pull, observe_untracked, Observed, Sent};
use super::restarts::{after_exit, AfterExit, Restarts};
use super::state::{Cleanup, Container, Ending, Found, Listing, State};
use super::stop::stop_signal;
use crate::clock::{self, Now};
use crate::image::progress::PullProgress;
use crate::probe::ProbeEvent;
use crate::shim::ExitRecord;

/// What the executor is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start run `run` (the restart count) of the allocation's container.
    Start { alloc: Box<Allocation>, run: u32 },
    /// Send `signal`, wait `grace`, then SIGKILL.
    Stop {
        id: String,
        signal: String,
        grace: Duration,
        /// The task's `shutdown_delay` when the servers asked for the
        /// stop: the container keeps running that long first.
        delay: Duration,
    },
    /// Delete the runtime's container and remove the bundle.
    Cleanup { id: String },
    /// Wait for the container's shim to exit, to notice the exit at once.
    Watch { id: String },
    /// Run the task's probes against run `run`.
    Probe {
        id: String,
        task: Box<TaskSpec>,
        run: u32,
    },
    /// Stop the container's probes, if they run.
    EndProbes { id: String },
    /// Keep the restart bookkeeping across agent restarts.
    SaveRestarts { id: String, restarts: Restarts },
    /// Remove the container's records: the servers have its end.
    Forget { id: String },
}

/// The outcome of one pass: what to do, and what to tell the servers.
#[derive(Debug, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub report: Vec<Observed>,
}

/// Every container this agent tracks, and the reports that reached the
/// servers.
#[derive(Debug)]
pub struct Containers {
    map: BTreeMap<String, Container>,
    sent: Sent,
    /// Time between the stop signal and SIGKILL, unless a task says.
    default_grace: Duration,
    /// How far the image pulls under way have got.
    pulls: Arc<PullProgress>,
    /// The generation of the allocation set whose listings the map has
    /// learned (none after an adoption): the same set again is not
    /// walked again.
    learned: Option<u64>,
}

impl Containers {
    pub fn new(default_grace: Duration, pulls: Arc<PullProgress>) -> Containers {
        Containers {
            map: BTreeMap::new(),
            sent: Sent::default(),
            default_grace,
            pulls,
            learned: None,
        }
    }

    pub fn get(&self, id: &str) -> Option<&Container> {
        self.map.get(id)
    }

    /// The images of the containers not yet cleaned up (their root
    /// filesystems may stand on them).
    pub fn images(&self) -> impl Iterator<Item = String> + '_ {
        self.map
            .values()
            .filter(|c| c.state.cleanup() != Some(Cleanup::Done))
            .filter_map(|c| c.listing.task().map(|t| t.image.to_string()))
    }

    /// How many containers this agent tracks.
    pub fn tracked(&self) -> usize {
        self.map.len()
    }

    /// The containers whose exit the next pass looks for.
    pub fn awaiting_exit(&self) -> impl Iterator<Item = &str> {
        self.map
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Running { .. } | State::Stopping { .. }))
            .map(|(id, _)| id.as_str())
    }

    /// Takes on a container an earlier run of the agent left.
    pub fn adopt(&mut self, id: String, found: Found, restarts: Restarts) {
        let state = State::adopted(found);
        tracing::info!(alloc = %id, phase = ?state, restarts = restarts.count, "re-adopted container");
        let mut c = Container::new(state, Listing::Unknown, restarts);
        c.adopted = true;
        self.map.insert(id, c);
        self.learned = None;
    }

    /// A start task ended; `run` says which run it started.
    pub fn started(
        &mut self,
        id: &str,
        run: u32,
        result: Result<super::event::StartedRun, String>,
        took: Duration,
    ) {
        let Some(c) = self.map.get_mut(id) else {
            return;
        };
        if c.state != State::Starting || run != c.restarts.count {
            return;
        }
        // A stop asked for meanwhile happens on the next pass.
        c.state = match result {
            Ok(started) => {
                c.pulled_digest = started.pulled;
                c.address = started.address;
                tracing::info!(
                    alloc = %id,
                    run,
                    start_ms = took.as_secs_f64() * 1000.0,
                    "container started"
                );
                State::running()
            }
            Err(message) => {
                tracing::warn!(alloc = %id, error = %message, "container failed to start");
                State::Failed {
                    message,
                    reason: reason::START_FAILED,
                    cleanup: Cleanup::Due,
                }
            }
        };
    }

    /// Whether a stop task for `id` is under way (its end is worth
    /// reading the exit record for).
    pub fn stopping(&self, id: &str) -> bool {
        self.map
            .get(id)
            .is_some_and(|c| matches!(c.state, State::Stopping { .. }))
    }

    /// A stop task ended; `record` is the exit its shim recorded, if any.
    pub fn stop_done(&mut self, id: &str, record: Option<ExitRecord>) -> Vec<Action> {
        let Some(c) = self.map.get_mut(id) else {
            return Vec::new();
        };
        let State::Stopping { requested } = c.state else {
            return Vec::new();
        };
        c.state = match record {
            Some(record) if requested => State::Exited {
                record,
                ending: Ending::Stopped,
                cleanup: Cleanup::Due,
            },
            Some(record) => State::Ended(record),
            None => State::Failed {
                message: "stopped; its exit code was not recorded".into(),
                reason: reason::STOPPED,
                cleanup: Cleanup::Due,
            },
        };
        vec![Action::EndProbes { id: id.into() }]
    }

    /// A cleanup task ended.
    pub fn cleaned(&mut self, id: &str) {
        if let Some(cleanup) = self.map.get_mut(id).and_then(|c| c.state.cleanup_mut()) {
            *cleanup = Cleanup::Done;
        }
    }

    /// A probe verdict about run `run`.
    pub fn probe(&mut self, id: &str, run: u32, event: ProbeEvent) -> Vec<Action> {
        let Some(c) = self.map.get_mut(id) else {
            return Vec::new();
        };
        if !matches!(c.state, State::Running { .. }) || run != c.restarts.count {
            return Vec::new(); // about an earlier run
        }
        match event {
            ProbeEvent::Ready(ready) => {
                c.adopted = false;
                if c.healthy != Some(ready) {
                    tracing::info!(alloc = %id, ready, "readiness changed");
                }
                c.healthy = Some(ready);
                Vec::new()
            }
            ProbeEvent::Failed { probe, message } => {
                tracing::info!(alloc = %id, probe, error = %message, "probe failed; stopping the container");
                c.killed_for = Some(format!("{probe} probe failed: {message}"));
                c.healthy = Some(false);
                c.state = State::Stopping { requested: false };
                vec![stop_action(id, c.listing.task(), self.default_grace, false)]
            }
        }
    }

    /// Records that these updates reached the servers at `now`.
    pub fn sent(&mut self, updates: &[Observed], now: Instant) {
        self.sent.record(updates, now);
    }

    /// Whether a container is starting (its pull's progress is reported
    /// as time passes) or waiting out a back-off: a pass with no news may
    /// still have something to do.
    pub fn in_flight(&self) -> bool {
        self.map
            .values()
            .any(|c| matches!(c.state, State::Starting | State::BackOff { .. }))
    }

    /// When the next pass has something to do that no event will
    /// announce: the end of the earliest back-off.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        self.map
            .values()
            .filter_map(|c| match c.state {
                // Until it is cleaned up, the Cleaned event wakes us.
                State::BackOff {
                    until,
                    cleanup: Cleanup::Done,
                    ..
                } => Some(until),
                _ => None,
            })
            .min()
    }

    /// One pass: from the servers' allocation set, the exits recorded
    /// since the last pass (of containers running or stopping) and the
    /// time, to the actions to take and the statuses to report. The steps
    /// run in this order, each on what the one before left.
    pub fn decide(
        &mut self,
        desired: &Desired,
        exits: &HashMap<String, ExitRecord>,
        now: Now,
    ) -> Decision {
        let mut actions = Vec::new();
        if self.learned != Some(desired.generation()) {
            self.learn_listings(desired);
            self.learned = Some(desired.generation());
        }
        self.notice_exits(exits, &mut actions);
        self.follow_exits(desired);
        self.start_and_stop(desired, now.wall, &mut actions);
        self.watch_and_probe(&mut actions);
        self.clean_up(&mut actions);
        let report = self.report_and_forget(desired, now.mono, &mut actions);
        Decision { actions, report }
    }

    /// Learns tasks; marks what the servers no longer list. (Containers
    /// made by later passes are listed from the start.)
    fn learn_listings(&mut self, desired: &Desired) {
        for (id, c) in self.map.iter_mut() {
            match (desired.get(id), &c.listing) {
                (Some(a), Listing::Unknown) => c.listing = Listing::Listed(a.task.clone()),
                (Some(a), Listing::Gone(None)) => c.listing = Listing::Gone(Some(a.task.clone())),
                (Some(_), _) | (None, Listing::Gone(_)) => {}
                (None, listing) => {
                    tracing::info!(alloc = %id, "the servers no longer list this allocation; removing it");
                    c.listing = Listing::Gone(listing.task().cloned());
                }
            }
        }
    }

    /// Notices the exits of running and stopping containers.
    fn notice_exits(&mut self, exits: &HashMap<String, ExitRecord>, actions: &mut Vec<Action>) {
        for (id, c) in self.map.iter_mut() {
            if !matches!(c.state, State::Running { .. } | State::Stopping { .. }) {
                continue;
            }
            let Some(record) = exits.get(id) else {
                continue;
            };
            tracing::info!(alloc = %id, code = record.exit_code, oom = record.oom_killed, "container exited");
            actions.push(Action::EndProbes { id: id.clone() });
            c.oom_kills += u32::from(record.oom_killed);
            c.state = match c.state {
                State::Stopping { requested: true } => State::Exited {
                    record: record.clone(),
                    ending: Ending::Stopped,
                    cleanup: Cleanup::Due,
                },
                _ => State::Ended(record.clone()),
            };
        }
    }

    /// Decides what follows an exit: a restart after a back-off, or the end.
    fn follow_exits(&mut self, desired: &Desired) {
        for (id, c) in self.map.iter_mut() {
            let State::Ended(record) = &c.state else {
                continue;
            };
            let record = record.clone();
            let stop_wanted = c.listing.gone()
                || desired
                    .get(id)
                    .is_some_and(|a| a.desired == DesiredStatus::Stop);
            c.last_exit = Some(record.clone());
            c.healthy = None;
            c.adopted = false;
            c.state = match after_exit(&record, c.listing.task(), c.restarts.step, stop_wanted) {
                AfterExit::Restart { delay, step } => {
                    c.restarts.step = step;
                    let until = clock::from_ms(record.finished_at_ms) + delay;
                    tracing::info!(alloc = %id, delay = %format_duration(delay), restarts = c.restarts.count, "container exited; restarting after its back-off");
                    State::BackOff {
                        until,
                        delay,
                        cleanup: Cleanup::Due,
                    }
                }
                AfterExit::Done { stopped } => State::Exited {
                    record,
                    ending: if stopped {
                        Ending::Stopped
                    } else {
                        Ending::Exit
                    },
                    cleanup: Cleanup::Due,
                },
            };
        }
    }

    /// Starts what is new, restarts what waited out its back-off (and is
    /// cleaned up), stops what the servers want stopped or no longer list.
    fn start_and_stop(&mut self, desired: &Desired, now: SystemTime, actions: &mut Vec<Action>) {
        let grace = self.default_grace;
        let mut new = Vec::new();
        // GPUs still held by a container of this node (starting, running
        // or stopping: a preempted one may be writing its checkpoint in
        // its stop grace). A new allocation given one of them waits for
        // that exit: two processes never share a GPU's memory.
        let held: std::collections::HashSet<&str> = desired
            .iter()
            .filter(|a| !a.gpus.is_empty())
            .filter(|a| {
                self.map.get(&a.id).is_some_and(|c| {
                    matches!(
                        c.state,
                        State::Starting | State::Running { .. } | State::Stopping { .. }
                    )
                })
            })
            .flat_map(|a| a.gpus.iter().map(String::as_str))
            .collect();
        // Both in id order: walked side by side, no look-up per container.
        let mut containers = self.map.iter_mut().peekable();
        for a in desired.iter() {
            let c = walk_to(&mut containers, &a.id);
            match (a.desired, c) {
                (DesiredStatus::Run, None)
                    if a.status == AllocStatus::Pending
                        && a.gpus.iter().any(|g| held.contains(g.as_str())) =>
                {
                    tracing::debug!(alloc = %a.id, "waits for its GPUs: an allocation that held them has not exited yet");
                }
                (DesiredStatus::Run, None) if a.status == AllocStatus::Pending => {
                    new.push(a);
                    actions.push(Action::Start {
                        alloc: Box::new(a.clone()),
                        run: 0,
                    });
                }
                (DesiredStatus::Run, Some(c)) => match c.state {
                    State::BackOff {
                        until,
                        cleanup: Cleanup::Done,
                        ..
                    } if now >= until => {
                        c.restarts.count += 1;
                        c.restarts.step += 1;
                        actions.push(Action::SaveRestarts {
                            id: a.id.clone(),
                            restarts: c.restarts,
                        });
                        c.state = State::Starting;
                        c.last_killed_for = c.killed_for.take();
                        actions.push(Action::Start {
                            alloc: Box::new(a.clone()),
                            run: c.restarts.count,
                        });
                    }
                    _ => {}
                },
                (DesiredStatus::Stop, Some(c)) => stop(&a.id, c, grace, actions),
                _ => {}
            }
        }
        for a in new {
            let c = Container::new(
                State::Starting,
                Listing::Listed(a.task.clone()),
                Restarts::default(),
            );
            self.map.insert(a.id.clone(), c);
        }
        for (id, c) in self.map.iter_mut() {
            if c.listing.gone() {
                stop(id, c, grace, actions);
            }
        }
    }

    /// Watches for the exits of what runs, and probes it.
    fn watch_and_probe(&mut self, actions: &mut Vec<Action>) {
        for (id, c) in self.map.iter_mut() {
            let State::Running { watched, probed } = &mut c.state else {
                continue;
            };
            if !*watched {
                *watched = true;
                actions.push(Action::Watch { id: id.clone() });
            }
            if let (false, Some(task)) = (*probed, c.listing.task()) {
                *probed = true;
                actions.push(Action::Probe {
                    id: id.clone(),
                    task: Box::new(task.clone()),
                    run: c.restarts.count,
                });
            }
        }
    }

    /// Cleans up what ended (and what waits to start again).
    fn clean_up(&mut self, actions: &mut Vec<Action>) {
        for (id, c) in self.map.iter_mut() {
            if let Some(cleanup) = c.state.cleanup_mut() {
                if *cleanup == Cleanup::Due {
                    *cleanup = Cleanup::Running;
                    actions.push(Action::EndProbes { id: id.clone() });
                    actions.push(Action::Cleanup { id: id.clone() });
                }
            }
        }
    }

    /// The statuses worth reporting; forgets what the servers have
    /// recorded as finished, and what they no longer list, once it is
    /// cleaned up.
    fn report_and_forget(
        &mut self,
        desired: &Desired,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Vec<Observed> {
        let done = |c: &Container| c.state.terminal() && c.state.cleanup() == Some(Cleanup::Done);
        let mut report = Vec::new();
        let mut forget = Vec::new();
        // Both in id order: walked side by side, no look-up per container.
        let mut containers = self.map.iter().peekable();
        for a in desired.iter() {
            let c = walk_to(&mut containers, &a.id);
            let mut observed = match c {
                Some(c) if matches!(c.state, State::Starting) => observe_pull(a, &self.pulls),
                Some(c) => observe(a, c),
                None => observe_untracked(a),
            };
            // A tag the servers could not pin: say what this node pulled.
            let unpinned = a
                .task
                .image
                .registry
                .as_ref()
                .is_some_and(|r| r.digest.is_none());
            if let (Some(o), Some(d)) =
                (observed.as_mut(), c.and_then(|c| c.pulled_digest.as_ref()))
            {
                if unpinned && o.status == AllocStatus::Running {
                    o.image_digest = d.clone();
                }
            }
            if let (Some(o), Some(addr)) = (observed.as_mut(), c.and_then(|c| c.address.as_ref())) {
                if o.status == AllocStatus::Running {
                    o.address = addr.clone();
                }
            }
            if let Some(mut o) = observed {
                if self.sent.due(a, &o, now) {
                    o.alloc_id = a.id.clone();
                    report.push(o);
                }
            }
            if a.status.is_terminal() && c.is_some_and(done) {
                forget.push(a.id.clone());
            }
        }
        for (id, c) in &self.map {
            if c.listing.gone() && done(c) {
                forget.push(id.clone());
            }
        }
        for id in forget {
            if self.map.remove(&id).is_some() {
                self.sent.forget(&id);
                actions.push(Action::EndProbes { id: id.clone() });
                actions.push(Action::Forget { id });
            }
        }
        report
    }
}

/// The servers want the container stopped (or no longer list it).
fn stop(id: &str, c: &mut Container, grace: Duration, actions: &mut Vec<Action>) {
    match &c.state {
        State::Running { .. } => {
            c.state = State::Stopping { requested: true };
            actions.push(stop_action(id, c.listing.task(), grace, true));
        }
        State::Stopping { requested: false } => {
            c.state = State::Stopping { requested: true };
        }
        State::BackOff { cleanup, .. } => {
            // Its last run ended by itself (a failure, or the policy
            // would not restart it): that end, not the stop, says how it
            // went.
            let record = c.last_exit.clone().expect("a back-off follows an exit");
            c.state = State::Exited {
                record,
                ending: Ending::StoppedInBackOff,
                cleanup: *cleanup,
            };
        }
        _ => {}
    }
}

/// Stopping a task's container: its signal and grace period, after its
/// shutdown delay when the servers `asked` (not for a failed probe).
fn stop_action(id: &str, task: Option<&TaskSpec>, default_grace: Duration, asked: bool) -> Action {
    Action::Stop {
        id: id.to_string(),
        signal: stop_signal(task),
        grace: task.and_then(|t| t.stop_grace).unwrap_or(default_grace),
        delay: task
            .map(TaskSpec::effective_shutdown_delay)
            .filter(|_| asked)
            .unwrap_or_default(),
    }
}
