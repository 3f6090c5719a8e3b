//! The restart policy: what follows a container's exit, how long its
//! back-off is, and the restart bookkeeping kept in `restarts.json` so
//! that it survives an agent restart.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_model::TaskSpec;

use crate::shim::{self, ExitRecord};

/// Per-container file with the restart bookkeeping.
pub const RESTARTS_FILE: &str = "restarts.json";

/// Restart bookkeeping, kept in `containers/ID/restarts.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// Restarts so far.
    pub count: u32,
    /// Restarts since the back-off was last reset.
    pub step: u32,
}

impl Restarts {
    /// Reads `path`; nothing recorded (or unreadable) counts as none.
    pub fn read(path: &Path) -> Restarts {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `path` whole (a reader never sees half of it).
    pub fn write(self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self).expect("restart counts serialize");
        shim::write_atomic(path, &json)
    }
}

/// What follows a container's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start again after `delay`; `step` is the back-off step it used.
    Restart { delay: Duration, step: u32 },
    /// The allocation is done; `stopped` when the servers asked for it.
    Done { stopped: bool },
}

/// Applies the task's restart policy to an exit: `step` is how many
/// restarts happened since the back-off was last reset.
pub fn after_exit(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::testing::{exit, task};
    use skiff_model::RestartPolicy;

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
    fn the_restart_file_keeps_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESTARTS_FILE);
        assert_eq!(Restarts::read(&path), Restarts::default(), "none yet");
        Restarts { count: 3, step: 2 }.write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"count":3,"step":2}"#
        );
        assert_eq!(Restarts::read(&path), Restarts { count: 3, step: 2 });
    }
}
