//! The reconciler's vocabulary: where each container is in its life, and
//! what the agent remembers about it from one pass to the next. The rules
//! that move a container from state to state are in `decide.rs`.

use std::time::{Duration, SystemTime};

use skiff_model::TaskSpec;

use super::restarts::Restarts;
use crate::shim::ExitRecord;

/// Where one container is in its life. What the decisions need to know
/// about the current run lives in its variant, so no flag beside it can
/// disagree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Image being prepared, bundle written, shim starting.
    Starting,
    /// Running. `watched`: a task waits for its shim to exit; `probed`:
    /// its probes run (they need the task, which an adopted container
    /// learns only from the servers' next allocation set).
    Running { watched: bool, probed: bool },
    /// Stop signal sent, waiting for the exit. `requested`: the servers
    /// asked (else a probe failed and the restart policy decides next).
    Stopping { requested: bool },
    /// The container ended; whether it starts again is decided next.
    Ended(ExitRecord),
    /// Waiting to start again once `until` has passed and the last run is
    /// cleaned up.
    BackOff {
        until: SystemTime,
        delay: Duration,
        cleanup: Cleanup,
    },
    /// Done for good.
    Exited {
        record: ExitRecord,
        ending: Ending,
        cleanup: Cleanup,
    },
    /// Never ran, or its monitor was lost; the message says which.
    Failed {
        message: String,
        reason: &'static str,
        cleanup: Cleanup,
    },
}

/// Removing what a run left behind: the runtime's container and the
/// bundle (with its root filesystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Not begun.
    Due,
    /// A cleanup task is under way.
    Running,
    Done,
}

/// Why a container that is done for good ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// By itself, and its restart policy starts it no more.
    Exit,
    /// The servers wanted it stopped when it ended.
    Stopped,
    /// Stopped while it waited out a back-off: its last run ended by
    /// itself, and that end, not the stop, says how it went.
    StoppedInBackOff,
}

/// What the servers last said about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Adopted from an earlier run of the agent; no allocation set seen
    /// since.
    Unknown,
    /// The servers list it, with this task.
    Listed(TaskSpec),
    /// The servers no longer list it: it is stopped, cleaned up and
    /// forgotten.
    Gone(Option<TaskSpec>),
}

impl Listing {
    pub fn task(&self) -> Option<&TaskSpec> {
        match self {
            Listing::Listed(t) | Listing::Gone(Some(t)) => Some(t),
            Listing::Unknown | Listing::Gone(None) => None,
        }
    }

    pub fn gone(&self) -> bool {
        matches!(self, Listing::Gone(_))
    }
}

/// What an agent starting up finds of a container an earlier run left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its shim recorded an exit.
    Exited(ExitRecord),
    /// Its shim still runs.
    Running,
    /// No exit record and no shim; `was_running` when the runtime said
    /// the container ran (it has been stopped since: nobody would record
    /// its exit).
    Lost { was_running: bool },
}

/// What this agent knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub state: State,
    pub listing: Listing,
    pub restarts: Restarts,
    /// How the last run ended.
    pub last_exit: Option<ExitRecord>,
    /// What readiness said about the current run.
    pub healthy: Option<bool>,
    /// Why the agent killed the current run (a failed probe).
    pub killed_for: Option<String>,
    /// The same for the run before the current one.
    pub last_killed_for: Option<String>,
    /// Taken over from an earlier run of the agent, and its probes have
    /// not answered since: its readiness is not known (rather than "not
    /// ready", which would tell the servers it is unhealthy).
    pub adopted: bool,
    /// The digest pulled for its image, when the task names it by tag
    /// only (reported so the servers pin the version).
    pub pulled_digest: Option<String>,
    /// `network: bridge`: its address on the node's bridge (this run's).
    pub address: Option<String>,
    /// Runs that ended killed by the OOM killer (since this agent started).
    pub oom_kills: u32,
}

impl Container {
    pub fn new(state: State, listing: Listing, restarts: Restarts) -> Container {
        Container {
            state,
            listing,
            restarts,
            last_exit: None,
            healthy: None,
            killed_for: None,
            last_killed_for: None,
            adopted: false,
            pulled_digest: None,
            address: None,
            oom_kills: 0,
        }
    }
}

impl State {
    /// A fresh run.
    pub fn running() -> State {
        State::Running {
            watched: false,
            probed: false,
        }
    }

    /// Done for good: it only waits to be cleaned up and forgotten.
    pub fn terminal(&self) -> bool {
        matches!(self, State::Exited { .. } | State::Failed { .. })
    }

    /// Its cleanup, in the states that leave something to clean up.
    pub fn cleanup(&self) -> Option<Cleanup> {
        match self {
            State::BackOff { cleanup, .. }
            | State::Exited { cleanup, .. }
            | State::Failed { cleanup, .. } => Some(*cleanup),
            _ => None,
        }
    }

    pub fn cleanup_mut(&mut self) -> Option<&mut Cleanup> {
        match self {
            State::BackOff { cleanup, .. }
            | State::Exited { cleanup, .. }
            | State::Failed { cleanup, .. } => Some(cleanup),
            _ => None,
        }
    }

    /// What an agent starting up makes of a container it finds.
    pub fn adopted(found: Found) -> State {
        match found {
            Found::Exited(record) => State::Ended(record),
            Found::Running => State::running(),
            Found::Lost { was_running } => State::Failed {
                message: if was_running {
                    // Nobody would record its exit: it was stopped
                    // rather than left to guess an exit code.
                    "the container's monitor died; the container was stopped".into()
                } else {
                    "the agent stopped while the container was starting".into()
                },
                reason: skiff_model::alloc::reason::START_FAILED,
                cleanup: Cleanup::Due,
            },
        }
    }
}
