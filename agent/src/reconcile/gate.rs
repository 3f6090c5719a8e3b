//! Starts go first. A replaced container's cleanup (`runc delete`, its
//! root filesystem unmounted, its network's CNI DELs) is work nobody waits
//! for, while its successor's start is what a user waits for; on a small
//! node the two otherwise share the CPUs and netfilter (a portmap DEL
//! alone runs a dozen `iptables` processes). So a cleanup waits while
//! starts are in flight, up to a limit, except when one of them publishes
//! a host port the cleanup still forwards: then the old forwarding goes
//! first, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The starts in flight on this node, with the host ports each publishes.
#[derive(Debug, Default)]
pub struct StartGate {
    starting: Mutex<HashMap<u64, Vec<u16>>>,
    next: AtomicU64,
    changed: Notify,
}

/// One start in flight; it leaves the gate when dropped.
pub struct Starting {
    gate: Arc<StartGate>,
    token: u64,
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.gate
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
        self.gate.changed.notify_waiters();
    }
}

impl StartGate {
    /// A start publishing `ports` on the node begins.
    pub fn enter(self: &Arc<Self>, ports: Vec<u16>) -> Starting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, ports);
        Starting {
            gate: self.clone(),
            token,
        }
    }

    /// Whether a cleanup of something forwarding `ports` may go now.
    fn clear_for(&self, ports: &[u16]) -> bool {
        let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        starting.is_empty()
            || starting
                .values()
                .any(|theirs| theirs.iter().any(|p| ports.contains(p)))
    }

    /// Waits until no start is in flight, or one needs a port of `ports`,
    /// or `limit` has passed; says whether it waited the whole limit.
    pub async fn wait_clear(&self, ports: &[u16], limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a start ending in between
            // still wakes us.
            changed.as_mut().enable();
            if self.clear_for(ports) {
                return false;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_cleanup_waits_for_starts_unless_they_need_its_ports() {
        let gate = Arc::new(StartGate::default());
        // Nothing starting: at once.
        assert!(!gate.wait_clear(&[8080], LONG).await);

        let a = gate.enter(vec![]);
        let b = gate.enter(vec![25000]);
        // A start needs one of its ports: the old forwarding goes first.
        assert!(!gate.wait_clear(&[25000], LONG).await);
        // Otherwise it waits for both starts to end.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait_clear(&[8080], LONG).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one start is still in flight");
        drop(b);
        assert!(!waiting.await.unwrap());

        // A start that never ends holds a cleanup for the limit only.
        let _stuck = gate.enter(vec![]);
        let began = tokio::time::Instant::now();
        assert!(gate.wait_clear(&[], Duration::from_secs(10)).await);
        assert_eq!(began.elapsed(), Duration::from_secs(10));
    }
}
