//! The leader's garbage collector for finished allocations.
//!
//! Finished allocations (complete, failed, lost) are kept a while for
//! `skiff get allocs`, `describe` and `logs`, then dropped, so a node's
//! allocation set (and the state) does not grow for ever: per job, the
//! last [`GcSettings::keep_finished`] finished ones are kept, and any that
//! finished within [`GcSettings::keep_for`]. The newest allocation of each
//! replica slot of a job that still exists is never dropped (the state
//! machine holds that rule too): a batch job's finished runs say which of
//! its replicas are done. Agents remove an allocation's logs once it is
//! dropped.
//!
//! When an allocation finished is what the leader saw first: the time is
//! not replicated, so a new leader counts from its own start, and keeps
//! everything at least `keep_for` longer than strictly needed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use skiff_model::Allocation;
use skiff_store::{Command, State};

use crate::ctx::{now_ms, Ctx};

/// At most this many allocations are dropped by one command.
const BATCH: usize = 10_000;

/// How long finished allocations are kept (`--gc-keep-finished`,
/// `--gc-keep-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSettings {
    /// Finished allocations kept per job, newest first, whatever their age.
    pub keep_finished: u32,
    /// Any allocation that finished more recently is kept.
    pub keep_for: Duration,
    /// Time between passes.
    pub every: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            keep_finished: 5,
            keep_for: Duration::from_secs(3600),
            every: Duration::from_secs(30),
        }
    }
}

/// When each finished allocation was first seen finished (ms), by id.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, u64>);

/// One pass: the finished allocations to drop at `now_ms`. Records the
/// ones seen finished for the first time, forgets the ones gone.
pub fn plan(state: &State, seen: &mut Seen, settings: &GcSettings, now_ms: u64) -> Vec<String> {
    let keep_ms = settings.keep_for.as_millis() as u64;
    let mut by_job: BTreeMap<&str, Vec<(&Allocation, u64)>> = BTreeMap::new();
    for a in state.allocs.values().filter(|a| a.status.is_terminal()) {
        let at = *seen.0.entry(a.id.clone()).or_insert(now_ms);
        by_job.entry(a.job.as_str()).or_default().push((a, at));
    }
    seen.0
        .retain(|id, _| state.allocs.get(id).is_some_and(|a| a.status.is_terminal()));
    let mut drop = Vec::new();
    for (_, mut finished) in by_job {
        // Newest first: by when it finished, then by when it was made.
        finished.sort_by_key(|(a, at)| std::cmp::Reverse((*at, a.create_index)));
        for (a, at) in finished.into_iter().skip(settings.keep_finished as usize) {
            if now_ms.saturating_sub(at) >= keep_ms {
                drop.push(a.id.clone());
            }
        }
    }
    drop.truncate(BATCH);
    drop
}

/// Runs forever; collects while this server leads.
pub async fn run(ctx: Ctx, settings: GcSettings) {
    let mut seen = Seen::default();
    loop {
        tokio::time::sleep(settings.every).await;
        if !ctx.store.is_leader() {
            seen = Seen::default();
            continue;
        }
        let ids = {
            let state = ctx.store.state();
            plan(&state, &mut seen, &settings, now_ms())
        };
        if ids.is_empty() {
            continue;
        }
        let count = ids.len();
        match ctx
            .propose(&Command::CollectAllocs { alloc_ids: ids })
            .await
        {
            Ok(_) => tracing::info!(count, "dropped finished allocations"),
            Err(e) => {
                tracing::warn!(error = %e.message(), "collecting finished allocations failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{AllocStatus, JobSpec};

    fn alloc(id: &str, job: &str, replica: u32, create: u64, status: AllocStatus) -> Allocation {
        let task = JobSpec::from_yaml("name: j\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        let mut a = Allocation::new(id, job, 1, replica, "n1", task);
        a.create_index = create;
        a.status = status;
        a
    }

    #[test]
    fn finished_allocations_go_after_the_last_few_per_job_and_only_once_old_enough() {
        let mut state = State::default();
        // web: one running, eight finished (older first).
        let mut all = vec![alloc("run", "web", 0, 100, AllocStatus::Running)];
        for i in 0..8 {
            all.push(alloc(
                &format!("f{i}"),
                "web",
                0,
                10 + i,
                AllocStatus::Complete,
            ));
        }
        all.push(alloc("other", "batch", 0, 5, AllocStatus::Failed));
        for a in all {
            state.allocs.insert(a.id.clone(), a);
        }
        let settings = GcSettings {
            keep_finished: 5,
            keep_for: Duration::from_secs(60),
            every: Duration::from_secs(1),
        };
        let mut seen = Seen::default();
        // Seen finished now: too young to go.
        assert!(plan(&state, &mut seen, &settings, 1_000_000).is_empty());
        // A minute later: all but the newest five of web's go.
        let mut gone = plan(&state, &mut seen, &settings, 1_060_000);
        gone.sort();
        assert_eq!(gone, ["f0", "f1", "f2"]);
        // Keeping none: all finished ones are candidates (the state keeps
        // the newest of each slot of a live job).
        let none = GcSettings {
            keep_finished: 0,
            ..settings
        };
        let mut gone = plan(&state, &mut seen, &none, 1_060_000);
        gone.sort();
        assert_eq!(gone.len(), 9);
        assert!(!gone.contains(&"run".to_string()));
        // What is gone is forgotten.
        state.allocs.retain(|id, _| id == "run");
        assert!(plan(&state, &mut seen, &none, 1_070_000).is_empty());
        assert!(seen.0.is_empty());
    }
}
