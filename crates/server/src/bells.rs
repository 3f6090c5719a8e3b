//! One doorbell per node for the allocation watches.
//!
//! A watch used to wake on every applied entry and take the state's lock
//! to find that the entry concerned another node: with 5,000 agents that
//! is 5,000 wake-ups per entry, most of a follower's time. Instead one task
//! per server follows the applied index and rings only the bells of the
//! nodes whose allocations changed (the state's marks); when something
//! every watch reads changed (access records, the network view) or the
//! marks do not reach back far enough (a snapshot was installed), it rings
//! them all. A watch waits on its node's bell.
//!
//! No change is missed: the task notes the applied index before any watch
//! subscribes, and a watch looks at the state after subscribing, so every
//! change after its look is after the task's index and rings its bell.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use skiff_store::Store;
use tokio::sync::watch;

/// The bells of the nodes watched on this server.
#[derive(Default)]
pub struct Bells {
    /// By node; the value is the applied index of the last ring.
    by_node: Mutex<HashMap<String, watch::Sender<u64>>>,
    started: AtomicBool,
}

/// How many bells one applied round rang (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rang {
    Some(usize),
    All,
}

impl Bells {
    /// A bell for `node`: it changes after an applied entry that may
    /// concern the node's watch, and fails once `store` stops. Starts the
    /// ringing task on first use.
    pub fn subscribe(self: &Arc<Self>, store: &Store, node: &str) -> watch::Receiver<u64> {
        if !self.started.swap(true, Ordering::AcqRel) {
            let seen = store.state().index;
            tokio::spawn(ring(store.clone(), Arc::downgrade(self), seen));
        }
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Rings the bells the entries after `seen` concern, as of `state`.
    fn ring_for(&self, state: &skiff_store::State, seen: u64) -> Rang {
        let index = state.index;
        let everyone = state.access_changed_at() > seen || state.network_changed_at() > seen;
        // `None`: every bell (the marks do not reach back to `seen`).
        let nodes = if everyone {
            None
        } else {
            state.nodes_with_alloc_changes_after(seen)
        };
        let mut map = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        let Some(nodes) = nodes else {
            // Bells nobody listens to any more go.
            map.retain(|_, tx| tx.receiver_count() > 0);
            for tx in map.values() {
                tx.send_replace(index);
            }
            return Rang::All;
        };
        let mut rang = 0;
        for tx in nodes.into_iter().filter_map(|node| map.get(node)) {
            tx.send_replace(index);
            rang += 1;
        }
        Rang::Some(rang)
    }
}

/// Follows the applied index and rings; when the store stops, drops
/// every bell so the watches end.
async fn ring(store: Store, bells: Weak<Bells>, mut seen: u64) {
    let mut applied = store.subscribe();
    while applied.changed().await.is_ok() {
        let Some(bells) = bells.upgrade() else {
            return;
        };
        let state = store.state();
        bells.ring_for(&state, seen);
        seen = state.index;
    }
    if let Some(bells) = bells.upgrade() {
        bells
            .by_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched_copy::tests::{apply, register, report};
    use skiff_model::{AllocStatus, JobSpec};
    use skiff_store::{Command, State};

    #[test]
    fn an_entry_rings_only_the_nodes_it_changed() {
        let mut state = State::default();
        for n in ["n1", "n2", "n3"] {
            register(&mut state, n, 8_000);
        }
        let bells = Bells::default();
        let mut rx: Vec<watch::Receiver<u64>> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                bells
                    .by_node
                    .lock()
                    .unwrap()
                    .entry(n.to_string())
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            })
            .collect();
        let spec = JobSpec::from_yaml(
            "name: web\nreplicas: 1\ntask: {image: 'oci:/i', network: none, resources: {cpu: 1, memory: 64Mi}}",
        )
        .unwrap();
        apply(&mut state, Command::UpsertJob { spec });
        let eval = state.evals.values().next().cloned().unwrap();
        let plan = crate::evals::plan_eval(&state, &eval, Default::default());
        let node = plan.placements[0].placement.node.clone();
        let seen = state.index;
        apply(&mut state, Command::ApplyPlan { plan });
        assert_eq!(bells.ring_for(&state, seen), Rang::Some(1));
        let rung: Vec<bool> = rx.iter_mut().map(|r| r.has_changed().unwrap()).collect();
        let which = ["n1", "n2", "n3"].iter().position(|n| *n == node).unwrap();
        for (i, r) in rung.iter().enumerate() {
            assert_eq!(*r, i == which, "bell of node {} rang: {r}", i + 1);
        }
        for r in &mut rx {
            r.borrow_and_update();
        }

        // An entry about no allocation rings nothing.
        let seen = state.index;
        apply(
            &mut state,
            Command::DeleteJob {
                name: "none".into(),
            },
        );
        assert_eq!(bells.ring_for(&state, seen), Rang::Some(0));

        // The allocation reports running: its node's bell only.
        let id = state.allocs.keys().next().unwrap().clone();
        let seen = state.index;
        report(&mut state, &id, AllocStatus::Running, 1);
        assert_eq!(bells.ring_for(&state, seen), Rang::Some(1));
        assert!(rx[which].has_changed().unwrap());

        // A node joining changes what every watch reads: all ring.
        let seen = state.index;
        register(&mut state, "n4", 8_000);
        assert_eq!(bells.ring_for(&state, seen), Rang::All);
        assert!(rx.iter().all(|r| r.has_changed().unwrap()));
    }
}
