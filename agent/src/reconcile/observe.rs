//! What the agent reports to the servers about each allocation, and which
//! reports are worth sending: one the server already holds, or sent a
//! moment ago, is not sent again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use skiff_model::alloc::reason;
use skiff_model::duration::format_duration;
use skiff_model::{AllocStatus, Allocation, DesiredStatus};

use super::state::{Container, Ending, State};
use crate::image::progress::{describe, PullProgress};

/// A status sent to the server is not sent again for this long, unless it
/// changes, while the server's view catches up.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);

/// Pull progress is reported at most this often per allocation (each
/// report is a replicated write).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A status update for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Empty as [`observe`] and its siblings make it: a pass names the
    /// allocation only once the report is due (most are not, and a copy of
    /// the id per container per pass is most of what a pass allocates).
    pub alloc_id: String,
    pub status: AllocStatus,
    pub exit_code: Option<i32>,
    pub message: String,
    pub restart_count: u32,
    pub healthy: Option<bool>,
    pub reason: String,
    /// The digest pulled for an image the task names by tag only.
    pub image_digest: String,
    /// `network: bridge`: the running container's address.
    pub address: String,
}

impl Observed {
    /// Says the same as `other` about its allocation (the id aside: a
    /// report is looked up by it).
    fn says_same(&self, other: &Observed) -> bool {
        let Observed {
            alloc_id: _,
            status,
            exit_code,
            message,
            restart_count,
            healthy,
            reason,
            image_digest,
            address,
        } = self;
        *status == other.status
            && *exit_code == other.exit_code
            && *message == other.message
            && *restart_count == other.restart_count
            && *healthy == other.healthy
            && *reason == other.reason
            && *image_digest == other.image_digest
            && *address == other.address
    }
}

/// What the server should record for an allocation whose container this
/// agent tracks; `None` while there is nothing new to say.
pub fn observe(a: &Allocation, c: &Container) -> Option<Observed> {
    let last = c.last_exit.as_ref();
    let running = |healthy: Option<bool>, reason: &str, message: String| Observed {
        alloc_id: String::new(),
        status: AllocStatus::Running,
        exit_code: last.map(|r| r.exit_code),
        message,
        restart_count: c.restarts.count,
        healthy,
        reason: reason.into(),
        image_digest: String::new(),
        address: String::new(),
    };
    let restarted = || match last {
        Some(r) if c.restarts.count > 0 => format!(
            "restarted {} time{}; the last run {}",
            c.restarts.count,
            if c.restarts.count == 1 { "" } else { "s" },
            match &c.last_killed_for {
                Some(k) => format!("was stopped: {k}"),
                None => r.describe(),
            }
        ),
        _ => String::new(),
    };
    Some(match &c.state {
        State::Starting | State::Ended(_) => return None,
        State::Running { .. } | State::Stopping { .. } => {
            let healthy = match (c.listing.task(), c.healthy) {
                (_, Some(h)) => Some(h),
                // Without probes a running container is ready at once.
                (Some(t), None) if t.probes.is_empty() => Some(true),
                (_, None) if c.adopted => None,
                _ => Some(false),
            };
            running(healthy, "", restarted())
        }
        State::BackOff { delay, .. } => {
            let why = match (&c.killed_for, last) {
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
        State::Exited { record, ending, .. } => {
            // A stop explains the end only when the container was running
            // when it came; a failed run waiting to restart stays failed
            // (a batch job's failure count must not shrink).
            let by_request = *ending == Ending::Stopped
                || (a.desired == DesiredStatus::Stop && record.succeeded());
            let mut how = match &c.killed_for {
                Some(k) => format!("{k} ({})", record.describe()),
                None => record.describe(),
            };
            if *ending == Ending::StoppedInBackOff {
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
            } else if c.killed_for.is_some() {
                (AllocStatus::Failed, reason::PROBE_FAILED, how)
            } else if record.succeeded() {
                (AllocStatus::Complete, reason::COMPLETED, how)
            } else {
                (AllocStatus::Failed, reason::ERROR, how)
            };
            Observed {
                alloc_id: String::new(),
                status,
                exit_code: Some(record.exit_code),
                message,
                restart_count: c.restarts.count,
                healthy: None,
                reason: why.into(),
                image_digest: String::new(),
                address: String::new(),
            }
        }
        State::Failed {
            message, reason, ..
        } => Observed {
            alloc_id: String::new(),
            status: AllocStatus::Failed,
            exit_code: None,
            message: message.clone(),
            restart_count: c.restarts.count,
            healthy: None,
            reason: (*reason).into(),
            image_digest: String::new(),
            address: String::new(),
        },
    })
}

/// What the server should record for an allocation whose container is
/// being started: `pending` with reason `pulling` and how far the pull of
/// its image has got, while one is under way.
pub fn observe_pull(a: &Allocation, pulls: &PullProgress) -> Option<Observed> {
    let image = a.task.image.registry.as_ref()?.to_string();
    let (done, total, left) = pulls.of(&image)?;
    Some(Observed {
        alloc_id: String::new(),
        status: AllocStatus::Pending,
        exit_code: None,
        message: describe(&image, done, total, left),
        restart_count: a.restart_count,
        healthy: None,
        reason: reason::PULLING.into(),
        image_digest: String::new(),
        address: String::new(),
    })
}

/// What the server should record for an allocation this agent has no
/// container for.
pub fn observe_untracked(a: &Allocation) -> Option<Observed> {
    let gone = |status, message: &str, why: &str| Observed {
        alloc_id: String::new(),
        status,
        exit_code: None,
        message: message.into(),
        restart_count: a.restart_count,
        healthy: None,
        reason: why.into(),
        image_digest: String::new(),
        address: String::new(),
    };
    if a.desired == DesiredStatus::Stop && !a.status.is_terminal() {
        Some(gone(
            AllocStatus::Complete,
            "stopped before it started",
            reason::STOPPED,
        ))
    } else if a.desired == DesiredStatus::Run && a.status == AllocStatus::Running {
        Some(gone(
            AllocStatus::Failed,
            "the container is gone from this node (its state was lost)",
            reason::ERROR,
        ))
    } else if a.desired == DesiredStatus::Run && a.status == AllocStatus::Lost {
        // Its node was declared down and came back without it: say so,
        // and the servers stop waiting for it.
        Some(gone(
            AllocStatus::Lost,
            "not running on this node when it came back",
            reason::ERROR,
        ))
    } else {
        None
    }
}

/// The reports that reached the servers, and when.
#[derive(Debug, Default)]
pub struct Sent(HashMap<String, (Observed, Instant)>);

impl Sent {
    /// Whether `o` is worth sending: the server does not hold it yet, and
    /// it was not sent in the last [`RESEND_AFTER`].
    pub fn due(&self, a: &Allocation, o: &Observed, now: Instant) -> bool {
        let server_has = a.status == o.status
            && a.exit_code == o.exit_code
            && a.restart_count == o.restart_count
            && a.healthy == o.healthy
            && a.reason == o.reason
            && (o.message.is_empty() || a.message == o.message)
            && (o.address.is_empty() || a.address == o.address)
            && (o.image_digest.is_empty()
                || a.task
                    .image
                    .registry
                    .as_ref()
                    .is_some_and(|r| r.digest.is_some()));
        if server_has {
            return false; // what most passes find, without a look-up
        }
        let recently_sent = self.0.get(&a.id).is_some_and(|(s, t)| {
            let age = now.saturating_duration_since(*t);
            (s.says_same(o) && age < RESEND_AFTER)
                || (s.reason == reason::PULLING
                    && o.reason == reason::PULLING
                    && age < PROGRESS_EVERY)
        });
        !recently_sent
    }

    /// Records that these updates reached the server at `now`.
    pub fn record(&mut self, updates: &[Observed], now: Instant) {
        for u in updates {
            self.0.insert(u.alloc_id.clone(), (u.clone(), now));
        }
    }

    pub fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::restarts::Restarts;
    use crate::reconcile::state::{Cleanup, Listing};
    use crate::reconcile::testing::{alloc, exit};
    use std::time::SystemTime;

    #[test]
    fn an_adopted_container_is_of_unknown_readiness_and_a_lost_one_that_is_gone_says_so() {
        let id = "0123456789abcdef0123456789abcdef";
        let mut a = alloc(id, "{policy: always}");
        a.task = crate::reconcile::testing::spec(
            "probes: {readiness: {exec: {command: [cat, /tmp/ready]}}}",
        );
        assert!(!a.task.probes.is_empty());
        let mut c = Container::new(
            State::running(),
            Listing::Listed(a.task.clone()),
            Restarts::default(),
        );
        c.adopted = true;
        assert_eq!(observe(&a, &c).unwrap().healthy, None, "not known yet");
        c.adopted = false;
        assert_eq!(
            observe(&a, &c).unwrap().healthy,
            Some(false),
            "a fresh run is not ready yet"
        );
        // Lost, still wanted, and this node came back without it.
        a.status = AllocStatus::Lost;
        let o = observe_untracked(&a).unwrap();
        assert_eq!(o.status, AllocStatus::Lost);
        assert_eq!(o.message, "not running on this node when it came back");
        // Once the servers stopped it, nothing more is said.
        a.desired = DesiredStatus::Stop;
        assert_eq!(observe_untracked(&a), None);
    }

    #[test]
    fn a_waiting_or_oom_killed_allocation_says_so() {
        let a = Allocation {
            status: AllocStatus::Running,
            create_index: 1,
            modify_index: 1,
            ..alloc("0123456789abcdef0123456789abcdef", "{policy: on-failure}")
        };
        let mut c = Container::new(
            State::BackOff {
                until: SystemTime::now(),
                delay: Duration::from_secs(20),
                cleanup: Cleanup::Due,
            },
            Listing::Unknown,
            Restarts { count: 2, step: 2 },
        );
        c.last_exit = Some(exit(1, 1, false));
        let o = observe(&a, &c).unwrap();
        assert_eq!(o.status, AllocStatus::Running);
        assert_eq!(o.reason, reason::BACK_OFF);
        assert_eq!(
            (o.healthy, o.restart_count, o.exit_code),
            (Some(false), 2, Some(1))
        );
        assert_eq!(o.message, "exited with code 1; starting again in 20s");

        c.state = State::Exited {
            record: exit(137, 1, true),
            ending: Ending::Exit,
            cleanup: Cleanup::Due,
        };
        let o = observe(&a, &c).unwrap();
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
            ..alloc("0123456789abcdef0123456789abcdef", "{policy: on-failure}")
        };
        a.desired = DesiredStatus::Stop;
        let exited = |code, ending| State::Exited {
            record: exit(code, 1, false),
            ending,
            cleanup: Cleanup::Due,
        };
        let mut c = Container::new(
            exited(3, Ending::Exit),
            Listing::Unknown,
            Restarts { count: 1, step: 1 },
        );
        let o = observe(&a, &c).unwrap();
        assert_eq!((o.status, o.exit_code), (AllocStatus::Failed, Some(3)));
        assert_eq!(o.message, "exited with code 3", "it was not waiting");
        c.state = exited(3, Ending::StoppedInBackOff);
        let o = observe(&a, &c).unwrap();
        assert_eq!(
            o.message,
            "exited with code 3; stopped while waiting to restart"
        );
        // One that ran when the stop came ends complete, whatever its code.
        c.state = exited(143, Ending::Stopped);
        let o = observe(&a, &c).unwrap();
        assert_eq!(
            (o.status, o.reason.as_str()),
            (AllocStatus::Complete, reason::STOPPED)
        );
    }
}
