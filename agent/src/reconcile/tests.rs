//! The reconciler's scenarios, without root and without waiting.
//!
//! Most drive the pure decisions ([`Containers`]) through a [`Node`]: the
//! test plays the servers (what the agent reports, they then hold), the
//! shims (exit records) and the clock. The last few run the whole
//! reconciler, executor included, on the recording fake runtime,
//! in-memory records and tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_model::alloc::reason;
use skiff_model::{AllocStatus, Allocation, DesiredStatus, TaskSpec};
use tokio::sync::mpsc;

use super::decide::{Action, Containers, Decision};
use super::observe::Observed;
use super::records::{MemRecords, Records};
use super::restarts::Restarts;
use super::state::{Cleanup, Ending, Found, State};
use super::testing::{spec, task};
use super::{Event, Reconciler, Settings};
use crate::clock::{self, ManualClock, Now};
use crate::paths::Paths;
use crate::probe::ProbeEvent;
use crate::rootfs::RootfsMode;
use crate::runtime::fake::{Call, FakeRuntime};
use crate::runtime::ExecOutput;
use crate::shim::ExitRecord;

/// When the tests' clock starts, in ms since the epoch.
const T0_MS: u64 = 1_700_000_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn alloc_of(id: &str, task: TaskSpec) -> Allocation {
    Allocation::new(id, "j", 1, 0, "n", task)
}

/// Actions in a form a test can compare at a glance.
fn render(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Start { alloc, run } => format!("start {} {run}", alloc.id),
            Action::Stop {
                id,
                signal,
                grace,
                delay,
            } => {
                let mut s = format!(
                    "stop {id} {signal} {}",
                    skiff_model::duration::format_duration(*grace)
                );
                if !delay.is_zero() {
                    s.push_str(&format!(
                        " after {}",
                        skiff_model::duration::format_duration(*delay)
                    ));
                }
                s
            }
            Action::Cleanup { id } => format!("cleanup {id}"),
            Action::Watch { id } => format!("watch {id}"),
            Action::Probe { id, run, .. } => format!("probe {id} {run}"),
            Action::EndProbes { id } => format!("end-probes {id}"),
            Action::SaveRestarts { id, restarts } => {
                format!("save {id} {}/{}", restarts.count, restarts.step)
            }
            Action::Forget { id } => format!("forget {id}"),
        })
        .collect()
}

/// The servers' set as the watch hands it to the reconciler.
fn desired_event(allocs: Vec<Allocation>) -> Event {
    Event::Desired(allocs.into_iter().map(std::sync::Arc::new).collect())
}

/// One node's decisions, with the test as servers, shims and clock.
struct Node {
    c: Containers,
    now: Now,
    desired: Vec<Allocation>,
    exits: HashMap<String, ExitRecord>,
}

impl Node {
    fn new(desired: Vec<Allocation>) -> Node {
        Node {
            c: Containers::new(secs(10), Default::default()),
            now: Now {
                wall: clock::from_ms(T0_MS),
                mono: Instant::now(),
            },
            desired,
            exits: HashMap::new(),
        }
    }

    /// One pass, its report lost on the way.
    fn decide(&mut self) -> Decision {
        let desired = super::desired::Desired::new(self.desired.clone());
        self.c.decide(&desired, &self.exits, self.now)
    }

    /// One pass whose report reaches the servers, which then hold what it
    /// says.
    fn pass(&mut self) -> (Vec<String>, Vec<Observed>) {
        let d = self.decide();
        self.c.sent(&d.report, self.now.mono);
        for o in &d.report {
            let a = self.alloc(&o.alloc_id);
            a.status = o.status;
            a.exit_code = o.exit_code;
            a.message = o.message.clone();
            a.restart_count = o.restart_count;
            a.healthy = o.healthy;
            a.reason = o.reason.clone();
        }
        (render(&d.actions), d.report)
    }

    fn alloc(&mut self, id: &str) -> &mut Allocation {
        self.desired.iter_mut().find(|a| a.id == id).unwrap()
    }

    fn advance(&mut self, by: Duration) {
        self.now.wall += by;
        self.now.mono += by;
    }

    fn state(&self, id: &str) -> &State {
        &self.c.get(id).unwrap().state
    }

    /// The start task of the current run succeeded (a new run has no
    /// exit record yet).
    fn started(&mut self, id: &str) {
        let run = self.c.get(id).unwrap().restarts.count;
        self.exits.remove(id);
        self.c.started(id, run, Ok(Default::default()), ms(5));
    }

    /// The shim records an exit with `code` now, after a run of `ran`.
    fn exit(&mut self, id: &str, code: i32, ran: Duration) -> ExitRecord {
        let finished = self.now.wall.duration_since(clock::from_ms(0)).unwrap();
        let record = ExitRecord {
            exit_code: code,
            signal: (code > 128).then_some(code - 128),
            oom_killed: false,
            started_at_ms: (finished - ran).as_millis() as u64,
            finished_at_ms: finished.as_millis() as u64,
        };
        self.exits.insert(id.to_string(), record.clone());
        record
    }

    /// A node with `a` running (started, reported, watched and probed).
    fn running(task: TaskSpec) -> Node {
        let mut n = Node::new(vec![alloc_of("a", task)]);
        n.pass();
        n.started("a");
        n.pass();
        n
    }
}

#[test]
fn a_pending_allocation_starts_once_then_runs_watched_and_probed() {
    let mut n = Node::new(vec![alloc_of("a", task("{}"))]);
    assert_eq!(n.pass(), (vec!["start a 0".to_string()], vec![]));
    assert_eq!(n.pass(), (vec![], vec![]), "a start is under way");
    n.started("a");
    let (actions, report) = n.pass();
    assert_eq!(actions, ["watch a", "probe a 0"]);
    assert_eq!(report.len(), 1);
    let r = &report[0];
    assert_eq!((r.status, r.healthy), (AllocStatus::Running, Some(true)));
    assert_eq!((r.restart_count, r.reason.as_str()), (0, ""));
    assert_eq!(
        n.pass(),
        (vec![], vec![]),
        "a second pass finds nothing to do"
    );
}

#[test]
fn a_start_that_fails_is_reported_cleaned_up_and_forgotten() {
    let mut n = Node::new(vec![alloc_of("a", task("{}"))]);
    n.pass();
    n.c.started("a", 0, Err("image oci:/i: not found".into()), ms(5));
    let (actions, report) = n.pass();
    assert_eq!(actions, ["end-probes a", "cleanup a"]);
    assert_eq!(
        (report[0].status, report[0].reason.as_str()),
        (AllocStatus::Failed, reason::START_FAILED)
    );
    assert_eq!(report[0].message, "image oci:/i: not found");
    n.c.cleaned("a");
    assert_eq!(n.pass().0, ["end-probes a", "forget a"]);
    assert!(n.c.get("a").is_none());
}

#[test]
fn the_back_off_grows_with_each_restart_and_starts_over_after_a_long_run() {
    let mut n = Node::running(task(
        "{policy: on-failure, backoff: {initial: 1s, max: 4s, reset_after: 60s}}",
    ));
    let mut delays = Vec::new();
    let mut saved = Vec::new();
    for round in 1..=5u32 {
        let ran = if round == 5 { secs(61) } else { secs(2) };
        n.advance(ran);
        n.exit("a", 1, ran);
        let (actions, report) = n.pass();
        assert_eq!(actions, ["end-probes a", "end-probes a", "cleanup a"]);
        let State::BackOff { delay, .. } = n.state("a").clone() else {
            panic!("{:?}", n.state("a"));
        };
        delays.push(delay.as_secs());
        let r = &report[0];
        assert_eq!(
            (r.status, r.reason.as_str(), r.exit_code, r.healthy),
            (AllocStatus::Running, reason::BACK_OFF, Some(1), Some(false))
        );
        assert_eq!(
            r.message,
            format!("exited with code 1; starting again in {}s", delay.as_secs())
        );
        n.c.cleaned("a");
        n.advance(delay - ms(1));
        assert_eq!(
            n.pass().0,
            Vec::<String>::new(),
            "not before its back-off ends"
        );
        n.advance(ms(1));
        let (actions, _) = n.pass();
        assert_eq!(actions[1], format!("start a {round}"));
        saved.push(actions[0].clone());
        n.started("a");
        let (_, report) = n.pass();
        assert_eq!(
            report[0].message,
            format!(
                "restarted {round} time{}; the last run exited with code 1",
                if round == 1 { "" } else { "s" }
            )
        );
        assert_eq!(report[0].restart_count, round);
    }
    assert_eq!(delays, [1, 2, 4, 4, 1]);
    assert_eq!(
        saved,
        [
            "save a 1/1",
            "save a 2/2",
            "save a 3/3",
            "save a 4/4",
            "save a 5/1"
        ]
    );
}

#[test]
fn a_restart_waits_until_the_last_run_is_cleaned_up() {
    let mut n = Node::running(task("{policy: always, backoff: {initial: 1s}}"));
    n.advance(secs(3));
    n.exit("a", 0, secs(3));
    assert_eq!(n.pass().0, ["end-probes a", "end-probes a", "cleanup a"]);
    n.advance(secs(5));
    assert_eq!(n.pass().0, Vec::<String>::new(), "the cleanup still runs");
    assert_eq!(n.c.next_wakeup(), None, "the Cleaned event wakes it");
    n.c.cleaned("a");
    let until = clock::from_ms(T0_MS + 3_000 + 1_000);
    assert_eq!(n.c.next_wakeup(), Some(until));
    assert_eq!(n.pass().0, ["save a 1/1", "start a 1"]);
}

#[test]
fn an_allocation_the_servers_drop_is_stopped_cleaned_up_and_forgotten() {
    let mut n = Node::running(task("{}"));
    n.desired.clear();
    assert_eq!(n.pass(), (vec!["stop a 15 10s".to_string()], vec![]));
    assert_eq!(n.state("a"), &State::Stopping { requested: true });
    assert_eq!(n.pass(), (vec![], vec![]), "stopped once");
    let record = n.exit("a", 143, secs(1));
    assert_eq!(
        n.c.stop_done("a", Some(record)),
        [Action::EndProbes { id: "a".into() }]
    );
    assert_eq!(
        n.pass(),
        (vec!["end-probes a".into(), "cleanup a".into()], vec![])
    );
    n.c.cleaned("a");
    assert_eq!(n.pass().0, ["end-probes a", "forget a"]);
    assert_eq!(n.c.tracked(), 0);
}

#[test]
fn a_dropped_allocation_waiting_to_restart_is_not_signalled_and_is_forgotten() {
    let mut n = Node::running(task("{policy: always}"));
    n.exit("a", 1, secs(1));
    n.pass();
    n.c.cleaned("a");
    n.desired.clear();
    assert_eq!(n.pass().0, ["end-probes a", "forget a"]);
    assert!(n.c.get("a").is_none());
}

#[test]
fn an_adopted_container_the_servers_no_longer_list_is_stopped_the_default_way() {
    let mut n = Node::new(vec![]);
    n.c.adopt("b".into(), Found::Running, Restarts::default());
    assert_eq!(
        n.pass().0,
        ["stop b 15 10s"],
        "no task: SIGTERM and the agent's grace"
    );
}

#[test]
fn a_stop_sends_the_task_s_signal_and_ends_complete() {
    let mut n = Node::running(spec("stop_signal: SIGUSR1, stop_grace: 20s"));
    n.alloc("a").desired = DesiredStatus::Stop;
    assert_eq!(n.pass().0, ["stop a 10 20s"]);
    n.exit("a", 0, secs(5));
    let (actions, report) = n.pass();
    assert_eq!(actions, ["end-probes a", "end-probes a", "cleanup a"]);
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code),
        (AllocStatus::Complete, reason::STOPPED, Some(0))
    );
    assert_eq!(r.message, "stopped (exited with code 0)");
    assert_eq!(n.c.stop_done("a", None), [], "the exit was seen first");
    n.c.cleaned("a");
    assert_eq!(
        n.pass().0,
        ["end-probes a", "forget a"],
        "the servers hold its end"
    );
}

/// An allocation placed on the GPUs of one that was evicted starts only
/// once that one has exited: the victim's stop grace (a checkpoint
/// written) still has the GPUs' memory.
#[test]
fn a_new_allocation_waits_for_its_gpus_to_be_released() {
    let mut old = alloc_of("a", spec("stop_grace: 30s"));
    old.gpus = vec!["GPU-0".into(), "GPU-1".into()];
    let mut n = Node::new(vec![old]);
    n.pass();
    n.started("a");
    n.pass();
    n.alloc("a").desired = DesiredStatus::Stop;
    let mut new = alloc_of("b", task("{}"));
    new.gpus = vec!["GPU-1".into()];
    let mut other = alloc_of("c", task("{}"));
    other.gpus = vec!["GPU-2".into()];
    n.desired.push(new);
    n.desired.push(other);
    assert_eq!(
        n.pass().0,
        ["stop a 15 30s", "start c 0"],
        "b waits, c does not"
    );
    n.advance(secs(10));
    assert_eq!(n.pass().0, Vec::<String>::new(), "still stopping");
    n.exit("a", 0, secs(20));
    let actions = n.pass().0;
    assert!(actions.contains(&"start b 0".to_string()), "{actions:?}");
}

#[test]
fn a_stop_that_leaves_no_exit_record_fails_the_allocation_and_says_why() {
    let mut n = Node::running(task("{}"));
    n.alloc("a").desired = DesiredStatus::Stop;
    n.pass();
    // SIGKILL and the forced delete left no exit record.
    n.c.stop_done("a", None);
    let (actions, report) = n.pass();
    assert_eq!(actions, ["end-probes a", "cleanup a"]);
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code),
        (AllocStatus::Failed, reason::STOPPED, None)
    );
    assert_eq!(r.message, "stopped; its exit code was not recorded");
}

#[test]
fn a_stop_asked_for_while_starting_waits_for_the_start() {
    let mut n = Node::new(vec![alloc_of("a", task("{}"))]);
    n.pass();
    n.alloc("a").desired = DesiredStatus::Stop;
    assert_eq!(n.pass().0, Vec::<String>::new());
    n.started("a");
    assert_eq!(n.pass().0, ["stop a 15 10s"]);
}

#[test]
fn a_stop_before_the_start_completes_the_allocation_without_starting_it() {
    let mut a = alloc_of("a", task("{}"));
    a.desired = DesiredStatus::Stop;
    let mut n = Node::new(vec![a]);
    let (actions, report) = n.pass();
    assert!(actions.is_empty(), "{actions:?}");
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.message.as_str()),
        (
            AllocStatus::Complete,
            reason::STOPPED,
            "stopped before it started"
        )
    );
    assert_eq!(n.pass(), (vec![], vec![]), "the servers hold it now");
    assert_eq!(n.c.tracked(), 0);
}

#[test]
fn a_stop_while_waiting_to_restart_keeps_the_failure_and_sends_no_signal() {
    let mut n = Node::running(task(
        "{policy: on-failure, backoff: {initial: 1h, max: 1h}}",
    ));
    n.exit("a", 2, secs(1));
    n.pass();
    n.alloc("a").desired = DesiredStatus::Stop;
    let (actions, report) = n.pass();
    assert!(actions.is_empty(), "nothing runs to signal: {actions:?}");
    assert!(matches!(
        n.state("a"),
        State::Exited {
            ending: Ending::StoppedInBackOff,
            cleanup: Cleanup::Running,
            ..
        }
    ));
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code),
        (AllocStatus::Failed, reason::ERROR, Some(2))
    );
    assert_eq!(
        r.message,
        "exited with code 2; stopped while waiting to restart"
    );
    n.c.cleaned("a");
    n.advance(secs(7200));
    assert_eq!(
        n.pass().0,
        ["end-probes a", "forget a"],
        "never started again"
    );
}

fn liveness(restart: &str) -> TaskSpec {
    spec(&format!(
        "restart: {restart}, stop_grace: 2s, probes: {{liveness: {{exec: {{command: [cat, /tmp/alive]}}}}}}"
    ))
}

#[test]
fn a_failed_probe_stops_the_container_and_its_restart_says_why() {
    let mut n = Node::running(liveness("{policy: on-failure}"));
    let failed = ProbeEvent::Failed {
        probe: "liveness",
        message: "exit code 1".into(),
    };
    assert_eq!(render(&n.c.probe("a", 0, failed)), ["stop a 15 2s"]);
    assert_eq!(n.state("a"), &State::Stopping { requested: false });
    assert_eq!(n.pass(), (vec![], vec![]), "running, not ready, as before");
    let record = n.exit("a", 137, secs(4));
    n.c.stop_done("a", Some(record));
    let (actions, report) = n.pass();
    assert_eq!(actions, ["end-probes a", "cleanup a"]);
    assert_eq!(report[0].reason, reason::BACK_OFF);
    assert_eq!(
        report[0].message,
        "liveness probe failed: exit code 1; starting again in 10s"
    );
    n.c.cleaned("a");
    n.advance(secs(10));
    assert_eq!(n.pass().0, ["save a 1/1", "start a 1"]);
    n.started("a");
    let (_, report) = n.pass();
    assert_eq!(
        report[0].message,
        "restarted 1 time; the last run was stopped: liveness probe failed: exit code 1"
    );
}

#[test]
fn a_failed_probe_without_a_restart_fails_the_allocation_as_probe_failed() {
    let mut n = Node::running(liveness("{policy: never}"));
    let failed = ProbeEvent::Failed {
        probe: "liveness",
        message: "exit code 1".into(),
    };
    n.c.probe("a", 0, failed);
    n.exit("a", 137, secs(4));
    let (_, report) = n.pass();
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code),
        (AllocStatus::Failed, reason::PROBE_FAILED, Some(137))
    );
    assert_eq!(
        r.message,
        "liveness probe failed: exit code 1 (killed by signal 9)"
    );
}

#[test]
fn a_stop_asked_for_during_a_probe_kill_is_not_sent_twice_and_ends_complete() {
    let mut n = Node::running(liveness("{policy: always}"));
    let failed = ProbeEvent::Failed {
        probe: "liveness",
        message: "exit code 1".into(),
    };
    n.c.probe("a", 0, failed);
    n.alloc("a").desired = DesiredStatus::Stop;
    assert_eq!(n.pass().0, Vec::<String>::new());
    assert_eq!(n.state("a"), &State::Stopping { requested: true });
    n.exit("a", 143, secs(1));
    let (_, report) = n.pass();
    assert_eq!(
        (report[0].status, report[0].reason.as_str()),
        (AllocStatus::Complete, reason::STOPPED)
    );
}

#[test]
fn events_about_an_earlier_run_are_ignored() {
    let mut n = Node::running(liveness("{policy: always, backoff: {initial: 1s}}"));
    n.exit("a", 1, secs(1));
    n.pass();
    n.c.cleaned("a");
    n.advance(secs(1));
    assert_eq!(n.pass().0, ["save a 1/1", "start a 1"]);
    // The first run's start and probes answer late.
    n.c.started("a", 0, Err("late".into()), ms(5));
    assert_eq!(n.state("a"), &State::Starting);
    n.started("a");
    let failed = ProbeEvent::Failed {
        probe: "liveness",
        message: "late".into(),
    };
    assert_eq!(n.c.probe("a", 0, failed), []);
    assert!(matches!(n.state("a"), State::Running { .. }));
    n.c.probe("a", 1, ProbeEvent::Ready(true));
    assert_eq!(n.c.get("a").unwrap().healthy, Some(true));
    // A start result for a container that already runs changes nothing.
    n.c.started("a", 1, Err("twice".into()), ms(5));
    assert!(matches!(n.state("a"), State::Running { .. }));
}

#[test]
fn probe_verdicts_for_a_stopping_container_are_ignored() {
    let mut n = Node::running(liveness("{}"));
    n.alloc("a").desired = DesiredStatus::Stop;
    n.pass();
    n.c.probe("a", 0, ProbeEvent::Ready(true));
    assert_eq!(n.c.get("a").unwrap().healthy, None);
}

#[test]
fn a_report_is_not_sent_again_until_it_changes_or_five_seconds_pass() {
    let mut n = Node::new(vec![alloc_of("a", liveness("{}"))]);
    n.pass();
    n.started("a");
    let first = n.decide().report;
    assert_eq!(first.len(), 1);
    // Lost on the way: sent again at once.
    assert_eq!(n.decide().report, first);
    n.c.sent(&first, n.now.mono);
    assert_eq!(n.decide().report, [], "just sent");
    n.advance(ms(4_900));
    assert_eq!(n.decide().report, []);
    n.advance(ms(200));
    assert_eq!(n.decide().report, first, "the servers did not take it");
    n.c.sent(&first, n.now.mono);
    // Readiness changed: the new status goes at once.
    n.c.probe("a", 0, ProbeEvent::Ready(true));
    let ready = n.decide().report;
    assert_eq!(ready[0].healthy, Some(true));
    // Once the servers hold it, it is not sent again, however long.
    n.pass();
    n.advance(secs(60));
    assert_eq!(n.decide().report, []);
}

#[test]
fn a_running_allocation_this_node_knows_nothing_of_is_reported_lost() {
    let mut a = alloc_of("a", task("{}"));
    a.status = AllocStatus::Running;
    let mut n = Node::new(vec![a]);
    let (actions, report) = n.pass();
    assert!(actions.is_empty());
    assert_eq!(
        (report[0].status, report[0].reason.as_str()),
        (AllocStatus::Failed, reason::ERROR)
    );
    assert_eq!(
        report[0].message,
        "the container is gone from this node (its state was lost)"
    );
}

/// A node whose agent just restarted: `a` was running at count `count`.
fn adopted(found: Found, t: TaskSpec, count: u32) -> Node {
    let mut a = alloc_of("a", t);
    a.status = AllocStatus::Running;
    a.restart_count = count;
    a.healthy = Some(true);
    let mut n = Node::new(vec![a]);
    let restarts = Restarts { count, step: count };
    n.c.adopt("a".into(), found, restarts);
    n
}

#[test]
fn an_adopted_running_container_keeps_running_and_is_watched_and_probed() {
    let mut n = adopted(Found::Running, task("{}"), 2);
    assert_eq!(
        n.pass(),
        (vec!["watch a".into(), "probe a 2".into()], vec![])
    );
}

#[test]
fn an_exit_missed_while_the_agent_was_away_is_reported_and_the_count_goes_on() {
    let t = task("{policy: on-failure, backoff: {initial: 1s, max: 1h}}");
    let record = ExitRecord {
        exit_code: 5,
        signal: None,
        oom_killed: false,
        started_at_ms: T0_MS - 3_000,
        finished_at_ms: T0_MS - 1_000,
    };
    let mut n = adopted(Found::Exited(record), t, 3);
    let (actions, report) = n.pass();
    assert_eq!(actions, ["end-probes a", "cleanup a"]);
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code, r.restart_count),
        (AllocStatus::Running, reason::BACK_OFF, Some(5), 3)
    );
    assert_eq!(r.message, "exited with code 5; starting again in 8s");
    n.c.cleaned("a");
    n.advance(secs(7));
    assert_eq!(n.pass().0, ["save a 4/4", "start a 4"], "8s after the exit");
}

#[test]
fn an_exit_missed_under_a_never_policy_ends_the_allocation() {
    let t = task("{policy: never}");
    let mut n = adopted(Found::Exited(super::testing::exit(7, 4, false)), t, 0);
    let (_, report) = n.pass();
    let r = &report[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.exit_code),
        (AllocStatus::Failed, reason::ERROR, Some(7))
    );
    assert_eq!(r.message, "exited with code 7");
}

#[test]
fn a_container_that_lost_its_monitor_fails_with_a_message_saying_so() {
    for (was_running, message) in [
        (
            true,
            "the container's monitor died; the container was stopped",
        ),
        (false, "the agent stopped while the container was starting"),
    ] {
        let mut n = adopted(Found::Lost { was_running }, task("{}"), 0);
        let (actions, report) = n.pass();
        assert_eq!(actions, ["end-probes a", "cleanup a"]);
        let r = &report[0];
        assert_eq!(
            (r.status, r.reason.as_str(), r.message.as_str()),
            (AllocStatus::Failed, reason::START_FAILED, message)
        );
    }
}

// The reconciler with its executor, on fakes.

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccc";
const D: &str = "dddddddddddddddddddddddddddddddd";

fn cid(id: &str) -> String {
    crate::paths::container_id(id)
}

type FakeReconciler = Reconciler<FakeRuntime, MemRecords, Arc<ManualClock>>;

struct Rig {
    rec: FakeReconciler,
    events: mpsc::Receiver<Event>,
    runtime: Arc<FakeRuntime>,
    records: Arc<MemRecords>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(runtime: impl Into<Arc<FakeRuntime>>, records: impl Into<Arc<MemRecords>>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (tx, events) = mpsc::channel(64);
        let (runtime, records) = (runtime.into(), records.into());
        let clock = Arc::new(ManualClock::at_ms(T0_MS));
        let settings = Settings {
            runtime_binary: "runc".into(),
            stop_grace: secs(10),
            log_max_size: 1 << 20,
            log_max_files: 2,
            rootfs: RootfsMode::Copy,
            gpus: None,
            images: crate::image::ImagePolicy::unrestricted(),
            images_in_use: Default::default(),
            network: None,
            node_host: "127.0.0.1".into(),
            live: Default::default(),
            resync: super::RESYNC,
            image_timeout: secs(600),
            registry: Arc::new(
                crate::image::registry::Puller::new(&dir.path().join("content"), Arc::default())
                    .unwrap(),
            ),
        };
        let rec = Reconciler::with_edges(
            runtime.clone(),
            records.clone(),
            clock.clone(),
            Paths::new(dir.path()),
            settings,
            tx,
        );
        Rig {
            rec,
            events,
            runtime,
            records,
            clock,
            _dir: dir,
        }
    }

    /// Applies events until one that `until` picks has been applied.
    async fn handle_until(&mut self, until: impl Fn(&Event) -> bool) {
        loop {
            let ev = self
                .events
                .recv()
                .await
                .expect("the reconciler holds a sender");
            let last = until(&ev);
            self.rec.handle(ev);
            if last {
                return;
            }
        }
    }
}

fn running_alloc(id: &str, t: TaskSpec) -> Allocation {
    let mut a = alloc_of(id, t);
    a.status = AllocStatus::Running;
    a.healthy = Some(true);
    a
}

#[tokio::test(start_paused = true)]
async fn adoption_reads_the_records_and_stops_what_lost_its_monitor() {
    let records = MemRecords::new();
    for id in [A, B, C, D] {
        records.add(id, Restarts::default());
    }
    records.set_alive(A, true);
    records.record_exit(B, super::testing::exit(7, 2, false));
    let runtime = FakeRuntime::new();
    runtime.set_state(&cid(C), "running");
    let mut rig = Rig::new(runtime, records);
    rig.rec.adopt().await;
    assert_eq!(rig.rec.tracked(), 4);
    assert!(matches!(rig.rec.state(A), Some(State::Running { .. })));
    assert!(matches!(rig.rec.state(B), Some(State::Ended(r)) if r.exit_code == 7));
    assert!(
        matches!(rig.rec.state(C), Some(State::Failed { message, .. })
        if message == "the container's monitor died; the container was stopped")
    );
    assert!(
        matches!(rig.rec.state(D), Some(State::Failed { message, .. })
        if message == "the agent stopped while the container was starting")
    );
    let force = |id: &str| Call::Delete {
        id: cid(id),
        force: true,
    };
    let state = |id: &str| Call::State { id: cid(id) };
    assert_eq!(
        rig.runtime.calls(),
        [state(C), force(C), state(D), force(D)],
        "the running shim and the recorded exit need no runtime"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_without_an_exit_escalates_to_a_forced_delete_then_is_reported_and_forgotten() {
    let records = MemRecords::new();
    records.add(A, Restarts::default());
    records.set_alive(A, true);
    let mut rig = Rig::new(FakeRuntime::new(), records);
    rig.rec.adopt().await;
    let mut a = running_alloc(A, task("{}"));
    rig.rec.handle(desired_event(vec![a.clone()]));
    assert_eq!(rig.rec.reconcile(), [], "the servers hold it");
    assert_eq!(rig.rec.executor.probing(), 1);
    a.desired = DesiredStatus::Stop;
    rig.rec.handle(desired_event(vec![a.clone()]));
    rig.rec.reconcile();
    let began = tokio::time::Instant::now();
    rig.handle_until(|e| matches!(e, Event::StopDone { .. }))
        .await;
    let took = began.elapsed();
    assert!(
        took >= secs(20) && took < secs(21),
        "grace, then 10s: {took:?}"
    );
    let report = rig.rec.reconcile();
    assert_eq!(report[0].message, "stopped; its exit code was not recorded");
    rig.handle_until(|e| matches!(e, Event::Cleaned { .. }))
        .await;
    a.status = report[0].status;
    a.message = report[0].message.clone();
    a.reason = report[0].reason.clone();
    a.healthy = None;
    rig.rec.handle(desired_event(vec![a]));
    assert_eq!(rig.rec.reconcile(), []);
    assert_eq!(rig.rec.tracked(), 0);
    assert_eq!(rig.rec.executor.probing(), 0, "its probes ended");
    assert_eq!(rig.records.removed(), [A]);
    let kill = |s: &str| Call::Kill {
        id: cid(A),
        signal: s.into(),
    };
    assert_eq!(
        rig.runtime.actions(),
        [
            kill("15"),
            kill("9"),
            Call::Delete {
                id: cid(A),
                force: true
            },
            Call::Delete {
                id: cid(A),
                force: false
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_missed_exit_restarts_with_the_count_from_the_records() {
    let records = MemRecords::new();
    records.add(B, Restarts { count: 3, step: 3 });
    let mut record = super::testing::exit(5, 2, false);
    record.started_at_ms = T0_MS - 3_000;
    record.finished_at_ms = T0_MS - 1_000;
    records.record_exit(B, record);
    let mut rig = Rig::new(FakeRuntime::new(), records);
    rig.rec.adopt().await;
    let mut b = running_alloc(
        B,
        task("{policy: on-failure, backoff: {initial: 1s, max: 1h}}"),
    );
    b.restart_count = 3;
    rig.rec.handle(desired_event(vec![b]));
    let report = rig.rec.reconcile();
    assert_eq!((report[0].exit_code, report[0].restart_count), (Some(5), 3));
    rig.handle_until(|e| matches!(e, Event::Cleaned { .. }))
        .await;
    rig.clock.advance(secs(6));
    rig.rec.reconcile();
    assert!(
        matches!(rig.rec.state(B), Some(State::BackOff { .. })),
        "8s after the exit: {:?}",
        rig.rec.state(B)
    );
    rig.clock.advance(secs(1));
    rig.rec.reconcile();
    assert_eq!(rig.rec.state(B), Some(&State::Starting));
    assert_eq!(rig.records.restarts(B), Restarts { count: 4, step: 4 });
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_kills_through_the_runtime_and_waits_to_restart() {
    let records = Arc::new(MemRecords::new());
    records.add(A, Restarts::default());
    records.set_alive(A, true);
    let runtime = FakeRuntime::new();
    runtime.answer_exec(vec![ExecOutput {
        exit_code: 1,
        ..ExecOutput::default()
    }]);
    // The container ends on its stop signal.
    let on_kill = records.clone();
    runtime.on_kill(move |_, _| on_kill.record_exit(A, super::testing::exit(143, 1, false)));
    let mut rig = Rig::new(runtime, records);
    rig.rec.adopt().await;
    let t = spec(
        "stop_grace: 2s, probes: {liveness: {exec: {command: [cat, /tmp/alive]}, period: 1s, failure_threshold: 1}}",
    );
    rig.rec.handle(desired_event(vec![running_alloc(A, t)]));
    rig.rec.reconcile();
    rig.handle_until(|e| matches!(e, Event::StopDone { .. }))
        .await;
    let report = rig.rec.reconcile();
    assert_eq!(
        report[0].message,
        "liveness probe failed: exit code 1; starting again in 10s"
    );
    assert_eq!(
        rig.runtime.actions(),
        [
            Call::Exec {
                id: cid(A),
                command: vec!["cat".into(), "/tmp/alive".into()]
            },
            Call::Kill {
                id: cid(A),
                signal: "15".into()
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_loop_sends_a_report_again_when_it_did_not_arrive_and_not_when_it_did() {
    let rig = Rig::new(FakeRuntime::new(), MemRecords::new());
    let tx = rig.rec.events.clone();
    let sent: Arc<std::sync::Mutex<Vec<Vec<Observed>>>> = Default::default();
    let calls = sent.clone();
    let looping = tokio::spawn(super::run_loop(rig.rec, rig.events, move |updates| {
        let mut calls = calls.lock().unwrap();
        calls.push(updates);
        // The first report is lost on the way; the second arrives.
        let arrived = calls.len() > 1;
        async move { arrived }
    }));
    let mut a = alloc_of(A, task("{}"));
    a.desired = DesiredStatus::Stop;
    tx.send(desired_event(vec![a])).await.unwrap();
    tokio::time::sleep(secs(2)).await;
    let calls = sent.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], calls[1]);
    assert_eq!(calls[0][0].message, "stopped before it started");
    looping.abort();
}

#[tokio::test(start_paused = true)]
async fn forged_allocation_ids_from_the_servers_are_ignored_and_touch_nothing_outside_the_data_dir()
{
    let mut rig = Rig::new(FakeRuntime::new(), MemRecords::new());
    // `containers/../victim` is a directory beside `containers`.
    let victim = rig._dir.path().join("victim");
    std::fs::create_dir_all(victim.join("bundle")).unwrap();
    std::fs::write(victim.join("bundle/keep"), b"x").unwrap();
    for forged in [
        "../victim",
        "../../../../tmp/victim",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let mut run = alloc_of(forged, task("{}"));
        run.desired = DesiredStatus::Run;
        let mut stop = running_alloc(forged, task("{}"));
        stop.desired = DesiredStatus::Stop;
        for a in [run, stop] {
            rig.rec
                .handle(desired_event(vec![a, alloc_of(A, task("{}"))]));
            let report = rig.rec.reconcile();
            assert!(
                report.iter().all(|o| o.alloc_id == A),
                "nothing is reported for {forged:?}: {report:?}"
            );
        }
    }
    tokio::time::sleep(secs(1)).await;
    while let Ok(ev) = rig.events.try_recv() {
        rig.rec.handle(ev);
    }
    assert_eq!(rig.rec.tracked(), 1, "only the real allocation is tracked");
    assert!(
        rig.runtime
            .calls()
            .iter()
            .all(|c| format!("{c:?}").contains(A)),
        "the runtime only heard of the real allocation: {:?}",
        rig.runtime.calls()
    );
    assert!(
        victim.join("bundle/keep").is_file(),
        "the directory outside is untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn logs_of_allocations_the_servers_no_longer_list_are_removed_unless_a_container_remains() {
    let records = MemRecords::new();
    for id in [A, B, C] {
        records.add_logs(id);
    }
    // C's container is still here (being stopped, say).
    records.add(C, Restarts::default());
    records.set_alive(C, true);
    let mut rig = Rig::new(FakeRuntime::new(), records);
    rig.rec.adopt().await;
    // The first listing names A only: B's logs go, C's stay with its container.
    rig.rec
        .handle(desired_event(vec![running_alloc(A, task("{}"))]));
    let mut logged = rig.records.logged();
    logged.sort();
    assert_eq!(logged, [A, C]);
    // A listed again: nothing goes.
    rig.rec
        .handle(desired_event(vec![running_alloc(A, task("{}"))]));
    assert_eq!(rig.records.logged().len(), 2);
    // A collected: its logs go.
    rig.rec.handle(desired_event(vec![]));
    assert_eq!(rig.records.logged(), [C]);
}

#[tokio::test(start_paused = true)]
async fn a_pass_woken_by_events_reads_only_the_exits_of_shims_seen_to_exit() {
    let records = MemRecords::new();
    for id in [A, B, C] {
        records.add(id, Restarts::default());
        records.set_alive(id, true);
    }
    let mut rig = Rig::new(FakeRuntime::new(), records);
    rig.rec.adopt().await;
    let allocs: Vec<Allocation> = [A, B, C]
        .iter()
        .map(|id| running_alloc(id, task("{}")))
        .collect();
    rig.rec.handle(desired_event(allocs.clone()));
    let reads = || rig.records.exit_reads();
    let before = reads();
    assert_eq!(
        rig.rec.pass(super::Woken::Events),
        [],
        "the servers hold them running"
    );
    assert_eq!(
        reads() - before,
        0,
        "a new allocation set reads no exit record"
    );
    // B's shim exits after recording the exit: that one record is read.
    rig.records
        .record_exit(B, super::testing::exit(3, 1, false));
    rig.rec.handle(Event::ShimExited { id: B.into() });
    let report = rig.rec.pass(super::Woken::Events);
    assert_eq!(reads() - before, 1);
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].alloc_id, B);
    assert_eq!(report[0].exit_code, Some(3));
    // The clock's pass looks at every running container.
    rig.rec.handle(desired_event(allocs));
    let before = reads();
    rig.rec.reconcile();
    assert_eq!(reads() - before, 2, "A and C (B has ended)");
}

#[tokio::test(start_paused = true)]
async fn the_clocks_passes_read_every_exit_record_only_now_and_then_and_still_find_a_missed_exit() {
    let records = Arc::new(MemRecords::new());
    for id in [A, B, C] {
        records.add(id, Restarts::default());
        records.set_alive(id, true);
    }
    let mut rig = Rig::new(FakeRuntime::new(), records.clone());
    rig.rec.adopt().await;
    let tx = rig.rec.events.clone();
    let sent: Arc<std::sync::Mutex<Vec<Observed>>> = Default::default();
    let calls = sent.clone();
    let looping = tokio::spawn(super::run_loop(rig.rec, rig.events, move |updates| {
        calls.lock().unwrap().extend(updates);
        async { true }
    }));
    let allocs: Vec<Allocation> = [A, B, C]
        .iter()
        .map(|id| running_alloc(id, task("{}")))
        .collect();
    tx.send(desired_event(allocs)).await.unwrap();
    let before = records.exit_reads();
    // Twenty of the clock's passes; two of them look at every record.
    tokio::time::sleep(super::EXIT_SWEEP * 2 + secs(1) / 5).await;
    assert_eq!(records.exit_reads() - before, 6, "two looks at A, B and C");
    assert_eq!(
        sent.lock().unwrap().len(),
        0,
        "the servers hold them running"
    );
    // B exits and its watch misses it: the next look finds it.
    records.record_exit(B, super::testing::exit(3, 1, false));
    tokio::time::sleep(super::EXIT_SWEEP).await;
    let sent = sent.lock().unwrap().clone();
    assert!(!sent.is_empty(), "the exit is reported");
    assert_eq!((sent[0].alloc_id.as_str(), sent[0].exit_code), (B, Some(3)));
    looping.abort();
}

/// A rig whose reconciler adopted A, running, and has passed once over
/// the servers' list of it running.
async fn adopted_a_running() -> Rig {
    let records = MemRecords::new();
    records.add(A, Restarts::default());
    records.set_alive(A, true);
    let mut rig = Rig::new(FakeRuntime::new(), records);
    rig.rec.adopt().await;
    rig.rec
        .handle(desired_event(vec![running_alloc(A, task("{}"))]));
    rig.rec.pass(super::Woken::Events);
    rig
}

#[tokio::test(start_paused = true)]
async fn a_clocks_pass_with_nothing_new_publishes_nothing() {
    let mut rig = adopted_a_running().await;
    assert_eq!(
        rig.rec.publishes, 1,
        "a new allocation is published at once"
    );
    for _ in 0..10 {
        rig.rec.pass(super::Woken::Clock);
    }
    assert_eq!(rig.rec.publishes, 1, "nothing new, nothing published");
    rig.rec.handle(Event::Probe {
        id: A.into(),
        run: 0,
        event: crate::probe::ProbeEvent::Ready(false),
    });
    rig.rec.pass(super::Woken::Events);
    assert_eq!(
        rig.rec.publishes, 1,
        "an event's pass leaves it to the clock"
    );
    rig.rec.pass(super::Woken::Clock);
    assert_eq!(rig.rec.publishes, 2);
    assert_eq!(rig.rec.live.snapshot()[A].ready, Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_clocks_pass_with_no_news_decides_nothing_unless_something_is_under_way() {
    let mut rig = adopted_a_running().await;
    rig.rec.pass(super::Woken::Clock);
    let settled = rig.rec.decided;
    for _ in 0..10 {
        rig.rec.pass(super::Woken::Clock);
    }
    assert_eq!(rig.rec.decided, settled, "no news: nothing decided");
    rig.rec.pass(super::Woken::Sweep);
    assert_eq!(rig.rec.decided, settled + 1, "the sweep always looks");
    // B is new: it starts, and while it does the clock's passes decide.
    rig.rec.handle(desired_event(vec![
        running_alloc(A, task("{}")),
        alloc_of(B, task("{}")),
    ]));
    rig.rec.pass(super::Woken::Events);
    assert_eq!(rig.rec.state(B), Some(&State::Starting));
    rig.rec.pass(super::Woken::Clock);
    rig.rec.pass(super::Woken::Clock);
    assert_eq!(rig.rec.decided, settled + 4);
}
