//! Allocations in the state machine: the statuses an agent reports for
//! the allocations on its node.

use std::collections::BTreeSet;

use skiff_model::alloc::reason;
use skiff_model::registry_ref::check_digest;
use skiff_model::{AllocStatus, DesiredStatus, EvalTrigger};

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
        let mut returned = Vec::new();
        let mut pins = Vec::new();
        for u in updates {
            let Some(a) = self.allocs.get_mut(&u.alloc_id) else {
                continue;
            };
            // Its node was declared down while it ran: the node is back
            // and says how it is (see `reconnect`).
            if a.node == node && a.status == AllocStatus::Lost && a.desired == DesiredStatus::Run {
                returned.push(u);
                continue;
            }
            // An agent speaks only for its own node, and a terminal status
            // never changes again.
            if a.node != node || a.status.is_terminal() {
                continue;
            }
            // The servers could not resolve the tag at apply; the first
            // node to pull it names the bytes for the whole version.
            if let Some(image) = a.task.image.registry.as_mut() {
                if image.digest.is_none() && check_digest(&u.image_digest).is_ok() {
                    image.digest = Some(u.image_digest.clone());
                    a.modify_index = index;
                    pins.push((
                        u.alloc_id.clone(),
                        a.job.clone(),
                        a.job_version,
                        u.image_digest.clone(),
                    ));
                }
            }
            if a.status == u.status
                && a.exit_code == u.exit_code
                && a.message == u.message
                && a.restart_count == u.restart_count
                && a.healthy == u.healthy
                && a.reason == u.reason
                && (u.address.is_empty() || a.address == u.address)
            {
                continue;
            }
            // The latest run's address is kept after it ends (`describe`).
            if !u.address.is_empty() {
                a.address = u.address.clone();
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
            // Pull progress is said in the message; it ends with the pull.
            let was_pulling = a.reason == reason::PULLING && u.reason != reason::PULLING;
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
            } else if !u.message.is_empty() || u.status.is_terminal() || was_pulling {
                a.message = u.message.clone();
            }
            a.modify_index = index;
            released |= u.status.is_terminal();
            applied += 1;
            let id = u.alloc_id.clone();
            self.touch(Table::Alloc, &id);
        }
        for u in returned {
            self.reconnect(index, node, u, at_ms);
            applied += 1;
        }
        for (id, job, version, digest) in pins {
            self.touch(Table::Alloc, &id);
            self.pin_image(index, &job, version, &digest);
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

    /// Pins version `version` of `job` (when it is still the job's
    /// version and names its registry image by tag only) to `digest`:
    /// allocations placed from now on, and an undo to it, use those bytes.
    fn pin_image(&mut self, index: u64, job: &str, version: u64, digest: &str) {
        let Some(j) = self.jobs.get_mut(job) else {
            return;
        };
        if j.version != version {
            return;
        }
        let Some(image) = j.spec.task.image.registry.as_mut() else {
            return;
        };
        if image.digest.is_some() {
            return;
        }
        image.digest = Some(digest.to_string());
        j.modify_index = index;
        let pinned = j.clone();
        self.touch(Table::Job, job);
        self.record_version(index, &pinned, "");
    }

    /// Drops the listed allocations that are finished, except the newest
    /// allocation of each replica slot of a job that still exists: a batch
    /// job's finished runs say which of its replicas are done, and a
    /// gang's say how it ended.
    pub(super) fn collect_allocs(&mut self, ids: &[String]) -> Outcome {
        let jobs: BTreeSet<&str> = ids
            .iter()
            .filter_map(|id| self.allocs.get(id))
            .map(|a| a.job.as_str())
            .filter(|j| self.jobs.contains_key(*j))
            .collect();
        let mut newest: std::collections::HashMap<(&str, u32), u64> = Default::default();
        for a in jobs.iter().flat_map(|j| self.allocs_of(j)) {
            let at = newest.entry((a.job.as_str(), a.replica)).or_default();
            *at = (*at).max(a.create_index);
        }
        let drop: Vec<String> = ids
            .iter()
            .filter(|id| {
                self.allocs.get(*id).is_some_and(|a| {
                    a.status.is_terminal()
                        && newest
                            .get(&(a.job.as_str(), a.replica))
                            .is_none_or(|&n| n > a.create_index)
                })
            })
            .cloned()
            .collect();
        for id in &drop {
            self.remove_alloc(id);
            self.touch(Table::Alloc, id);
        }
        Outcome::AllocsCollected {
            removed: drop.len() as u32,
        }
    }

    /// An allocation whose node was declared down (so it was marked lost
    /// and replaced) is reported again by that node, which came back.
    /// Nomad's disconnect rule: when it still runs, is not unhealthy, and
    /// no replacement is healthy yet, the original is kept and the
    /// replacements are stopped, so a node's short absence never restarts
    /// work that was fine. Otherwise (it ended, a replacement already
    /// serves, the job changed (a new version), a batch or gang job, or
    /// it no longer fits where it is) it stays lost and is stopped.
    fn reconnect(&mut self, index: u64, node: &str, u: &AllocUpdate, at_ms: u64) {
        let Some(a) = self.allocs.get(&u.alloc_id) else {
            return;
        };
        // A report that beats the node's return (its heartbeat) waits:
        // the agent sends it again.
        if self
            .nodes
            .get(node)
            .is_none_or(|n| n.status != skiff_model::NodeStatus::Ready)
        {
            return;
        }
        let still_runs =
            u.status == AllocStatus::Running && u.reason.is_empty() && u.healthy != Some(false);
        let job_same = self
            .jobs
            .get(&a.job)
            .is_some_and(|j| !j.spec.is_batch() && !j.spec.gang && j.version == a.job_version);
        let replacements: Vec<&skiff_model::Allocation> = self
            .allocs_of(&a.job)
            .filter(|r| r.replica == a.replica && r.id != a.id && r.is_live())
            .collect();
        let replaced = replacements
            .iter()
            .any(|r| r.status == AllocStatus::Running && r.healthy == Some(true));
        // It holds its resources again: they must still be free, leaving
        // out what its replacements on the same node hold. (A cordon does
        // not matter: it keeps new work away, not what runs.)
        let fits = self.nodes.get(node).is_some_and(|n| {
            let usage = skiff_model::fit::usage_on(
                n,
                self.allocs_on_node(node)
                    .into_iter()
                    .filter(|o| o.node == node && !replacements.iter().any(|r| r.id == o.id)),
            );
            let mut ask = a.task.resources.clone();
            ask.gpus = 0; // its own GPUs, by mask below
            ask.ports = a.ports.clone(); // and its own ports, picked ones too
            usage.gpus & n.gpu_mask(&a.gpus) == 0
                && skiff_model::fit::fits_free(
                    n.allocatable,
                    usage.amount,
                    0,
                    &usage.ports,
                    n.dynamic_ports,
                    &ask,
                )
                .is_ok()
        });
        let replacement_ids: Vec<String> = replacements.iter().map(|r| r.id.clone()).collect();
        let keep = still_runs && job_same && !replaced && fits;
        let a = self.allocs.get_mut(&u.alloc_id).expect("looked up above");
        a.modify_index = index;
        if !keep {
            // It stays lost; the agent stops it.
            a.desired = DesiredStatus::Stop;
            let why = if !still_runs {
                "it was no longer running"
            } else if replaced {
                "a replacement already runs"
            } else if !job_same {
                "its job changed meanwhile"
            } else {
                "its resources were given to other work"
            };
            a.message = format!("{}; node {node} came back, but {why}", a.message);
            let id = a.id.clone();
            self.touch(Table::Alloc, &id);
            return;
        }
        a.status = u.status;
        a.exit_code = u.exit_code;
        a.restart_count = u.restart_count;
        a.healthy = u.healthy;
        a.healthy_since_ms = if u.healthy == Some(true) { at_ms } else { 0 };
        a.reason = u.reason.clone();
        let short = a.short_id().to_string();
        a.message = if replacement_ids.is_empty() {
            format!("node {node} came back while it still ran; kept")
        } else {
            format!("node {node} came back while it still ran; kept, its replacement stopped")
        };
        let id = a.id.clone();
        self.touch(Table::Alloc, &id);
        for rid in replacement_ids {
            let r = self.allocs.get_mut(&rid).expect("listed above");
            r.desired = DesiredStatus::Stop;
            r.message = format!("not needed: {short} kept running on node {node}, which came back");
            r.modify_index = index;
            self.touch(Table::Alloc, &rid);
        }
    }
}
