//! Stopping a container: its stop signal, a grace period, SIGKILL, and a
//! forced delete when even that leaves no exit recorded.

use std::time::Duration;

use skiff_model::duration::format_duration;
use skiff_model::lifecycle::{normalize_signal, DEFAULT_STOP_SIGNAL, SIGNALS};
use skiff_model::TaskSpec;
use tokio::time::Instant;

use super::records::Records;
use crate::paths::container_id;
use crate::runtime::Runtime;

/// How long the exit may take to be recorded after SIGKILL before the
/// container is deleted by force.
pub const AFTER_SIGKILL: Duration = Duration::from_secs(10);
/// How often the exit record is looked for while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The signal that stops a task's container, as runc takes it: a number
/// (runc knows every signal by number, not all by name: SIGRTMIN+3).
pub fn stop_signal(task: Option<&TaskSpec>) -> String {
    let name = task
        .and_then(|t| t.stop_signal.as_deref())
        .and_then(normalize_signal)
        .unwrap_or(DEFAULT_STOP_SIGNAL);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or_else(|| "15".to_string(), |(_, num)| num.to_string())
}

/// The shutdown delay, the stop signal, a grace period, SIGKILL; returns
/// once the shim recorded the exit of allocation `id`'s container (or it
/// is clear it never will).
pub async fn stop<R: Runtime, X: Records>(
    runtime: &R,
    records: &X,
    id: &str,
    signal: &str,
    grace: Duration,
    delay: Duration,
) {
    let cid = container_id(id);
    let cid = cid.as_str();
    let exited = || records.exit(id).is_some();
    // It has left its job's endpoints: clients move away meanwhile.
    if exited() || wait_until(exited, delay).await {
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
    if !wait_until(exited, AFTER_SIGKILL).await {
        tracing::warn!(
            container = cid,
            "no exit recorded after SIGKILL; deleting by force"
        );
        let _ = runtime.delete(cid, true).await;
    }
}

/// Waits until `cond` holds (true) or `limit` has passed (false). On
/// tokio's clock, so a test with a paused clock runs it at once.
async fn wait_until(cond: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::reconcile::records::MemRecords;
    use crate::reconcile::testing::{exit, task, ID};
    use crate::runtime::fake::{Call, FakeRuntime};

    const CID: &str = "skiff-0123456789abcdef0123456789abcdef";

    fn kill(signal: &str) -> Call {
        Call::Kill {
            id: CID.into(),
            signal: signal.into(),
        }
    }

    /// A fake runtime whose container exits (after `after`) on `signal`.
    fn exits_on(signal: &'static str, after: Duration) -> (Arc<FakeRuntime>, Arc<MemRecords>) {
        let runtime = Arc::new(FakeRuntime::new());
        let records = Arc::new(MemRecords::new());
        let r = records.clone();
        runtime.on_kill(move |_, sig| {
            if sig == signal {
                let r = r.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    r.record_exit(ID, exit(128 + 15, 1, false));
                });
            }
        });
        (runtime, records)
    }

    #[test]
    fn the_stop_signal_is_the_task_s_as_a_number() {
        assert_eq!(stop_signal(None), "15");
        let t = |s: &str| {
            let mut t = task("{}");
            t.stop_signal = Some(s.into());
            t
        };
        assert_eq!(stop_signal(Some(&t("SIGUSR1"))), "10");
        assert_eq!(stop_signal(Some(&t("INT"))), "2");
        assert_eq!(stop_signal(Some(&t("SIGRTMIN+3"))), "37");
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_obeys_its_stop_signal_gets_nothing_more() {
        let (runtime, records) = exits_on("10", Duration::from_millis(300));
        let t = Instant::now();
        stop(
            &*runtime,
            &*records,
            ID,
            "10",
            Duration::from_secs(20),
            Duration::ZERO,
        )
        .await;
        assert_eq!(runtime.calls(), [kill("10")]);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_delay_comes_before_the_stop_signal() {
        let (runtime, records) = exits_on("15", Duration::from_millis(100));
        let t = Instant::now();
        let stopping = stop(
            &*runtime,
            &*records,
            ID,
            "15",
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        tokio::pin!(stopping);
        // Still serving during the delay: no signal yet.
        assert!(
            tokio::time::timeout(Duration::from_millis(1900), &mut stopping)
                .await
                .is_err()
        );
        assert!(runtime.calls().is_empty(), "{:?}", runtime.calls());
        stopping.await;
        assert_eq!(runtime.calls(), [kill("15")]);
        assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn one_that_ignores_it_gets_sigkill_after_the_grace_period() {
        let (runtime, records) = exits_on("9", Duration::from_millis(100));
        let t = Instant::now();
        stop(
            &*runtime,
            &*records,
            ID,
            "15",
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .await;
        assert_eq!(runtime.calls(), [kill("15"), kill("9")]);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "the grace period, then the kill: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_exit_after_sigkill_it_is_deleted_by_force() {
        let runtime = FakeRuntime::new();
        let records = MemRecords::new();
        let t = Instant::now();
        stop(
            &runtime,
            &records,
            ID,
            "15",
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            runtime.calls(),
            [
                kill("15"),
                kill("9"),
                Call::Delete {
                    id: CID.into(),
                    force: true
                }
            ]
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(12) && took < Duration::from_secs(13),
            "grace, then {AFTER_SIGKILL:?}: {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_already_exited_is_not_signalled() {
        let runtime = FakeRuntime::new();
        let records = MemRecords::new();
        records.record_exit(ID, exit(0, 1, false));
        stop(
            &runtime,
            &records,
            ID,
            "15",
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .await;
        assert!(runtime.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_kill_still_escalates() {
        let runtime = FakeRuntime::new();
        runtime.fail("kill", "container not running");
        let records = MemRecords::new();
        stop(
            &runtime,
            &records,
            ID,
            "15",
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .await;
        assert_eq!(
            runtime.calls(),
            [
                kill("15"),
                kill("9"),
                Call::Delete {
                    id: CID.into(),
                    force: true
                }
            ]
        );
    }
}
