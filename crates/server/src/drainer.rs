//! The leader's drainer: moves allocations off draining nodes without
//! taking too many of a job's replicas down at once.
//!
//! Each pass, for each draining node:
//! - allocations that serve nothing now (not running and healthy) move at
//!   once: moving them costs no availability;
//! - healthy ones move as the job's budget allows: at most `max_unavailable`
//!   of its replicas may be unavailable at a time (at least one, so a drain
//!   always progresses), counting the ones already down anywhere;
//! - once the drain's deadline passes, whatever is left is stopped;
//! - an empty node is marked drained.
//!
//! Moving means asking the allocation to stop (through Raft); the job's
//! evaluation places a replacement on another node.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_model::{AllocStatus, Allocation, DesiredStatus, Job};
use skiff_store::{Command, State};

use crate::ctx::{now_ms, Ctx};

const PASS_EVERY: Duration = Duration::from_millis(500);

/// How many of a job's replicas may be unavailable while a node drains.
fn budget(job: &Job) -> u32 {
    job.spec.drain_budget()
}

/// Serving: running and passing its readiness check.
fn available(a: &Allocation) -> bool {
    a.desired == DesiredStatus::Run && a.status == AllocStatus::Running && a.healthy == Some(true)
}

/// What to do for one draining node, decided from a view of the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrainStep {
    pub migrate: Vec<String>,
    pub reason: String,
    pub finished: bool,
}

/// Plans one pass of the drain of `node` at `now_ms`. Pure: the state and
/// the time are inputs.
pub fn plan(state: &State, node: &str, now_ms: u64) -> DrainStep {
    let Some(n) = state.nodes.get(node) else {
        return DrainStep::default();
    };
    let live: Vec<&Allocation> = state
        .allocs
        .values()
        .filter(|a| a.node == node && a.is_live())
        .collect();
    if live.is_empty() {
        let busy = state
            .allocs
            .values()
            .any(|a| a.node == node && a.holds_resources());
        return DrainStep {
            finished: !busy,
            ..DrainStep::default()
        };
    }
    if n.drain_deadline_ms.is_some_and(|d| now_ms >= d) {
        return DrainStep {
            migrate: live.iter().map(|a| a.id.clone()).collect(),
            reason: format!("node {node} drained: deadline reached"),
            finished: false,
        };
    }
    let mut by_job: BTreeMap<&str, Vec<&Allocation>> = BTreeMap::new();
    for a in &live {
        by_job.entry(a.job.as_str()).or_default().push(a);
    }
    let mut migrate = Vec::new();
    for (job_name, here) in by_job {
        let Some(job) = state.jobs.get(job_name) else {
            // The job is gone: its allocations stop anyway.
            migrate.extend(here.iter().map(|a| a.id.clone()));
            continue;
        };
        if job.spec.runs_to_completion() {
            continue; // batch work may finish, until the deadline
        }
        let serving = state
            .allocs_of_job(job_name)
            .into_iter()
            .filter(|a| available(a))
            .count() as u32;
        let unavailable = job.spec.replicas.saturating_sub(serving);
        let mut allowed = budget(job).saturating_sub(unavailable);
        let mut here = here;
        here.sort_by_key(|a| (a.replica, a.create_index));
        for a in here {
            if !available(a) {
                migrate.push(a.id.clone());
            } else if allowed > 0 {
                allowed -= 1;
                migrate.push(a.id.clone());
            }
        }
    }
    DrainStep {
        migrate,
        reason: format!("node {node} draining"),
        finished: false,
    }
}

/// Runs forever; drains while this server leads.
pub async fn run(ctx: Ctx) {
    loop {
        tokio::time::sleep(PASS_EVERY).await;
        if !ctx.store.is_leader() {
            continue;
        }
        let steps: Vec<(String, DrainStep)> = {
            let state = ctx.store.state();
            let now = now_ms();
            state
                .nodes
                .values()
                .filter(|n| n.draining)
                .map(|n| (n.name.clone(), plan(&state, &n.name, now)))
                .collect()
        };
        for (node, step) in steps {
            let cmd = if step.finished {
                tracing::info!(%node, "drain finished: the node is empty");
                Command::FinishDrain { node: node.clone() }
            } else if !step.migrate.is_empty() {
                tracing::info!(%node, count = step.migrate.len(), reason = %step.reason, "moving allocations off a draining node");
                Command::MigrateAllocs {
                    node: node.clone(),
                    alloc_ids: step.migrate,
                    reason: step.reason,
                }
            } else {
                continue;
            };
            if let Err(e) = ctx.propose(&cmd).await {
                tracing::warn!(%node, error = %e.message(), "drain step failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{JobSpec, Node, Resources};

    fn node(name: &str, draining: bool) -> Node {
        Node {
            cordoned: draining,
            draining,
            drain_deadline_ms: draining.then_some(10_000),
            ..Node::ready(name, Resources::new(4000, 4 << 30))
        }
    }

    fn state(replicas: u32, on_drained: &[(u32, bool)], elsewhere: &[(u32, bool)]) -> State {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a", true));
        s.nodes.insert("b".into(), node("b", false));
        let spec = JobSpec::from_yaml(&format!(
            "name: web\nreplicas: {replicas}\ntask: {{image: 'oci:/i'}}"
        ))
        .unwrap();
        s.jobs.insert(
            "web".into(),
            Job {
                spec: spec.clone(),
                version: 1,
                create_index: 1,
                modify_index: 1,
                admitted_index: 0,
            },
        );
        for (node, list) in [("a", on_drained), ("b", elsewhere)] {
            for &(replica, healthy) in list {
                let id = format!("{node}{replica}");
                s.allocs.insert(
                    id.clone(),
                    Allocation {
                        status: AllocStatus::Running,
                        healthy: Some(healthy),
                        create_index: 1,
                        modify_index: 1,
                        ..Allocation::new(id, "web", 1, replica, node, spec.task.clone())
                    },
                );
            }
        }
        s.rebuild_indexes();
        s
    }

    #[test]
    fn healthy_replicas_move_one_at_a_time() {
        let s = state(3, &[(0, true), (1, true), (2, true)], &[]);
        assert_eq!(plan(&s, "a", 0).migrate, ["a0"]);
    }

    #[test]
    fn nothing_more_moves_while_a_replica_is_down_elsewhere() {
        let s = state(3, &[(0, true), (1, true)], &[(2, false)]);
        assert!(plan(&s, "a", 0).migrate.is_empty());
        // Once the replacement serves, the next one may go.
        let s = state(3, &[(0, true), (1, true)], &[(2, true)]);
        assert_eq!(plan(&s, "a", 0).migrate, ["a0"]);
    }

    #[test]
    fn allocations_that_serve_nothing_move_at_once() {
        let s = state(3, &[(0, false), (1, false), (2, true)], &[]);
        assert_eq!(plan(&s, "a", 0).migrate, ["a0", "a1"]);
    }

    #[test]
    fn the_deadline_stops_everything_left_and_an_empty_node_is_done() {
        let s = state(3, &[(0, true), (1, true), (2, true)], &[]);
        let step = plan(&s, "a", 10_000);
        assert_eq!(step.migrate.len(), 3);
        assert!(step.reason.contains("deadline"));
        let empty = state(3, &[], &[(0, true)]);
        assert!(plan(&empty, "a", 0).finished);
    }
}
