//! Allocations in the state machine: the statuses an agent reports for
//! the allocations on its node.

use std::collections::BTreeSet;

use skiff_model::{DesiredStatus, EvalTrigger};

use super::{Outcome, State, Table};
use crate::command::AllocUpdate;

impl State {
    pub(super) fn update_alloc_status(
        &mut self,
        index: u64,
        node: &str,
        updates: &[AllocUpdate],
        at_ms: u64,
    ) -> Outcome {
        let mut applied = 0;
        let mut released = false;
        let mut moved_jobs = BTreeSet::new();
        for u in updates {
            let Some(a) = self.allocs.get_mut(&u.alloc_id) else {
                continue;
            };
            // An agent speaks only for its own node, and a terminal status
            // never changes again.
            if a.node != node || a.status.is_terminal() {
                continue;
            }
            if a.status == u.status
                && a.exit_code == u.exit_code
                && a.message == u.message
                && a.restart_count == u.restart_count
                && a.healthy == u.healthy
                && a.reason == u.reason
            {
                continue;
            }
            if a.status != u.status
                || a.healthy != u.healthy
                || a.restart_count != u.restart_count
                || a.reason != u.reason
            {
                moved_jobs.insert(a.job.clone());
            }
            if u.healthy != Some(true) {
                a.healthy_since_ms = 0;
            } else if a.healthy != Some(true) || a.restart_count != u.restart_count {
                a.healthy_since_ms = at_ms;
            }
            a.status = u.status;
            a.exit_code = u.exit_code;
            a.restart_count = u.restart_count;
            a.healthy = u.healthy;
            a.reason = u.reason.clone();
            if a.desired == DesiredStatus::Stop && !a.message.is_empty() {
                // The message says why it was stopped ("replaced by
                // version 3"); the agent's last words follow it.
                if u.status.is_terminal() && !u.message.is_empty() {
                    a.message = format!("{}; {}", a.message, u.message);
                }
            } else if !u.message.is_empty() || u.status.is_terminal() {
                a.message = u.message.clone();
            }
            a.modify_index = index;
            released |= u.status.is_terminal();
            applied += 1;
            let id = u.alloc_id.clone();
            self.touch(Table::Alloc, &id);
        }
        if released {
            self.unblock(index);
        }
        // Batch jobs and gangs react to runs ending or failing; a rollout
        // to the health of what runs.
        for job in moved_jobs {
            let watch = self.jobs.get(&job).is_some_and(|j| {
                j.spec.is_batch()
                    || j.spec.gang
                    || self.deployment(&job).is_some_and(|d| d.status.is_active())
            });
            if watch {
                self.create_eval(index, &job, EvalTrigger::AllocUpdate);
            }
        }
        Outcome::AllocsUpdated { applied }
    }
}
