//! The cluster's events: what happened, in words (`skiff events`). Each
//! server derives them from the changes it applies ([`derive`]), so every
//! server tells the same story without a byte more in the Raft log, and
//! keeps them in memory ([`Journal`]): a repeat of an event (same reason,
//! object and message) counts on the one event, events older than an hour
//! go, and at most [`MAX_EVENTS`] are kept, so a large cluster's journal
//! stays bounded. A server started later knows what happened since it
//! started (and what its watch history still holds).

pub mod derive;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use skiff_proto::pb;
use skiff_store::Store;
use tokio::sync::watch;

pub use derive::{Happened, Kind, Seen};

/// Events kept at most.
pub const MAX_EVENTS: usize = 10_000;
/// How long an event is kept after it last happened.
pub const KEEP: Duration = Duration::from_secs(3600);

/// One event, counted and timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub id: u64,
    pub what: Happened,
    pub count: u32,
    pub first_ms: u64,
    pub last_ms: u64,
    pub index: u64,
}

impl From<&Recorded> for pb::ClusterEvent {
    fn from(r: &Recorded) -> Self {
        pb::ClusterEvent {
            id: r.id,
            r#type: r.what.kind.as_str().to_string(),
            reason: r.what.reason.to_string(),
            object_kind: r.what.object_kind.to_string(),
            object: r.what.object.clone(),
            job: r.what.job.clone(),
            node: r.what.node.clone(),
            message: r.what.message.clone(),
            count: r.count,
            first_ms: r.first_ms,
            last_ms: r.last_ms,
            index: r.index,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// By id: the order they (last) happened in.
    by_id: BTreeMap<u64, Recorded>,
    /// The id of each distinct event.
    by_what: HashMap<Happened, u64>,
    next: u64,
}

/// The events this server knows, bounded in age and number.
pub struct Journal {
    inner: Mutex<Inner>,
    /// The highest id recorded.
    latest: watch::Sender<u64>,
    max: usize,
    keep_ms: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new(MAX_EVENTS, KEEP)
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("events", &self.lock().by_id.len())
            .finish()
    }
}

impl Journal {
    pub fn new(max: usize, keep: Duration) -> Journal {
        Journal {
            inner: Mutex::default(),
            latest: watch::Sender::new(0),
            max,
            keep_ms: keep.as_millis() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what happened at `index`, at `now_ms`.
    pub fn record(&self, happened: Vec<Happened>, index: u64, now_ms: u64) {
        if happened.is_empty() {
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        for what in happened {
            inner.next += 1;
            let id = inner.next;
            let earlier = inner
                .by_what
                .insert(what.clone(), id)
                .and_then(|old| inner.by_id.remove(&old));
            let (count, first_ms) = earlier.map_or((1, now_ms), |e| (e.count + 1, e.first_ms));
            inner.by_id.insert(
                id,
                Recorded {
                    id,
                    what,
                    count,
                    first_ms,
                    last_ms: now_ms,
                    index,
                },
            );
        }
        // The oldest go: past the cap, or last seen too long ago.
        let cutoff = now_ms.saturating_sub(self.keep_ms);
        loop {
            let over = inner.by_id.len() > self.max;
            let Some(e) = inner.by_id.first_entry() else {
                break;
            };
            if !over && e.get().last_ms >= cutoff {
                break;
            }
            let gone = e.remove();
            inner.by_what.remove(&gone.what);
        }
        let latest = inner.next;
        drop(g);
        self.latest.send_replace(latest);
    }

    /// The events with an id above `after` that pass `keep`, oldest
    /// first, at most `limit`.
    pub fn after(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&Recorded) -> bool,
    ) -> Vec<Recorded> {
        self.lock()
            .by_id
            .range(after + 1..)
            .map(|(_, e)| e)
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// How many events are kept.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of the latest event, changing as events are recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Follows what this server applies and records what it means, for as
/// long as the store runs.
pub async fn record(store: Store, journal: std::sync::Arc<Journal>) {
    let mut applied = store.subscribe();
    let (mut seen, mut cursor) = {
        let state = store.state();
        (Seen::learn(&state), state.index)
    };
    loop {
        match store.events_after(cursor, 1000) {
            Ok(changes) if !changes.is_empty() => {
                let now = now_ms();
                for c in &changes {
                    journal.record(seen.change(c), c.index, now);
                }
                cursor = changes.last().map_or(cursor, |c| c.index);
                continue;
            }
            Ok(_) => {}
            Err(_) => {
                // Fell behind the watch history: start again from the
                // state as it is (what happened in between is not told).
                tracing::warn!(
                    "the event journal fell behind the watch history; some events are not recorded"
                );
                let state = store.state();
                (seen, cursor) = (Seen::learn(&state), state.index);
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{AllocStatus, Allocation, JobSpec};
    use skiff_store::{Event, Table};

    fn happened(reason: &'static str, object: &str) -> Happened {
        Happened {
            kind: Kind::Warning,
            reason,
            object_kind: "alloc",
            object: object.into(),
            job: "web".into(),
            node: "n1".into(),
            message: "exited with code 1".into(),
        }
    }

    #[test]
    fn a_repeat_counts_on_one_event_that_moves_to_the_end() {
        let j = Journal::new(100, KEEP);
        j.record(vec![happened("BackOff", "a")], 5, 1000);
        j.record(vec![happened("Failed", "b")], 6, 2000);
        j.record(vec![happened("BackOff", "a")], 7, 3000);
        let all = j.after(0, 10, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].what.reason, "Failed");
        let a = &all[1];
        assert_eq!(
            (a.count, a.first_ms, a.last_ms, a.index),
            (2, 1000, 3000, 7)
        );
        assert_eq!(*j.subscribe().borrow(), a.id);
        // A follower past the first sees only the repeat.
        assert_eq!(j.after(all[0].id, 10, |_| true), vec![a.clone()]);
    }

    #[test]
    fn the_journal_keeps_an_hour_and_at_most_its_cap() {
        let j = Journal::new(3, Duration::from_secs(3600));
        for i in 0..5u64 {
            let name = format!("a{i}");
            j.record(
                vec![Happened {
                    object: name,
                    ..happened("Lost", "")
                }],
                i,
                1000,
            );
        }
        let kept: Vec<String> = j
            .after(0, 10, |_| true)
            .into_iter()
            .map(|e| e.what.object)
            .collect();
        assert_eq!(kept, ["a2", "a3", "a4"]);
        // An hour later a new event pushes out the old ones.
        j.record(vec![happened("Lost", "late")], 9, 1000 + 3_600_001);
        assert_eq!(j.len(), 1);
    }

    fn change(table: Table, key: &str, value: Option<String>, index: u64) -> Event {
        Event {
            index,
            table,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn changes_of_an_allocation_read_as_what_happened_to_it() {
        let mut seen = Seen::default();
        let task = JobSpec::from_yaml("name: web\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        let mut a = Allocation::new("a".repeat(32), "web", 1, 0, "n1", task);
        let json = |a: &Allocation| Some(serde_json::to_string(a).unwrap());
        let reasons = |seen: &mut Seen, a: &Allocation| -> Vec<&'static str> {
            seen.change(&change(Table::Alloc, &a.id, json(a), 1))
                .iter()
                .map(|h| h.reason)
                .collect()
        };
        assert_eq!(reasons(&mut seen, &a), ["Placed"]);
        assert_eq!(
            reasons(&mut seen, &a),
            Vec::<&str>::new(),
            "no change, no event"
        );
        a.status = AllocStatus::Running;
        assert_eq!(reasons(&mut seen, &a), ["Started"]);
        a.reason = "back_off".into();
        a.message =
            "killed by the OOM killer (memory limit reached; exit code 137); starting again in 1s"
                .into();
        assert_eq!(reasons(&mut seen, &a), ["OOMKilled"]);
        a.reason.clear();
        a.restart_count = 1;
        assert_eq!(reasons(&mut seen, &a), ["Restarted"]);
        a.desired = skiff_model::DesiredStatus::Stop;
        a.message = "preempted by job big (priority 90)".into();
        assert_eq!(reasons(&mut seen, &a), ["Preempted"]);
        a.status = AllocStatus::Lost;
        assert_eq!(reasons(&mut seen, &a), ["Lost"]);
        // Collected: forgotten, silently.
        assert!(seen
            .change(&change(Table::Alloc, &a.id, None, 2))
            .is_empty());
        // What the state held already is learned without a word.
        let mut state = skiff_store::State::default();
        state.allocs.insert(a.id.clone(), a.clone());
        let mut learned = Seen::learn(&state);
        assert!(learned
            .change(&change(Table::Alloc, &a.id, json(&a), 3))
            .is_empty());
    }

    #[test]
    fn a_node_going_down_and_a_gpu_turning_unhealthy_are_warnings() {
        let mut seen = Seen::default();
        let mut gpu = skiff_model::Gpu::new("GPU-1", "NVIDIA H200", 1 << 30);
        let mut n = skiff_model::Node {
            gpus: vec![gpu.clone()],
            address: "127.0.0.1:7702".into(),
            agent_version: "0.1.0".into(),
            ..skiff_model::Node::ready("n1", Default::default())
        };
        let mut step = |n: &skiff_model::Node| -> Vec<(Kind, &'static str, String)> {
            seen.change(&change(
                Table::Node,
                &n.name,
                Some(serde_json::to_string(n).unwrap()),
                1,
            ))
            .into_iter()
            .map(|h| (h.kind, h.reason, h.message))
            .collect()
        };
        assert_eq!(step(&n)[0].1, "Registered");
        n.status = skiff_model::NodeStatus::Down;
        assert_eq!(step(&n)[0].0, Kind::Warning);
        n.status = skiff_model::NodeStatus::Ready;
        assert_eq!(step(&n)[0].1, "NodeReady");
        gpu.healthy = false;
        gpu.health_reason = "XID 79: fell off the bus".into();
        n.gpus = vec![gpu.clone()];
        let said = step(&n);
        assert_eq!(said[0].1, "GpuUnhealthy");
        assert!(said[0].2.contains("XID 79"), "{said:?}");
        gpu.healthy = true;
        n.gpus = vec![gpu];
        assert_eq!(step(&n)[0].1, "GpuHealthy");
    }
}
