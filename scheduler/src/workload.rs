//! What a plan does for each kind of work, before placement:
//!
//! - **services** keep `replicas` running. A new version rolls out: new
//!   allocations are added while at most `replicas + max_surge` run, and
//!   old ones stop only while at least `replicas - max_unavailable` stay
//!   available (old ones healthy now, new ones healthy now and proved
//!   healthy for the rollout). Old allocations that are not healthy serve
//!   nobody and stop at once. Canaries are placed beside the old version
//!   and nothing else moves until they are promoted; a paused or failed
//!   rollout moves nothing (a paused one only fills a slot left with no
//!   allocation at all). Gangs are replaced whole.
//! - **batch jobs** run `completions` slots to success, at most
//!   `parallelism` at once, placing a slot again after a failed run, until
//!   the failures pass `backoff_limit`.
//! - **gangs** of a batch job run every rank together; when one fails, the
//!   whole gang stops and starts again (`restart_gang`) or the job fails
//!   (`fail`).

use std::collections::{BTreeMap, BTreeSet};

use skiff_model::workload::{batch_progress, BatchState};
use skiff_model::{AllocStatus, Deployment, DeploymentStatus, GangFailure, Plan};

use crate::ctx::{stop, Ctx};
use crate::view::{AllocRec, NodeIdx, NO_NODE};

/// Allocations of the job's current version, and the rest.
struct Split<'r, 'a> {
    /// Current version by replica slot (lost ones excluded); the first
    /// allocation of a slot wins.
    filled: BTreeMap<u32, &'r AllocRec<'a>>,
    /// Live allocations of other versions, or of an earlier job of the
    /// same name.
    old: Vec<&'r AllocRec<'a>>,
}

fn split<'r, 'a>(ctx: &Ctx<'_, '_>, own: &[&'r AllocRec<'a>], plan: &mut Plan) -> Split<'r, 'a> {
    let job = ctx.job;
    let mut s = Split {
        filled: BTreeMap::new(),
        old: Vec::new(),
    };
    for &a in own {
        if a.version != job.version || a.create_index < job.create_index {
            if !a.status.is_terminal() {
                s.old.push(a);
            }
        } else if a.status != AllocStatus::Lost {
            match s.filled.entry(a.replica) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(a);
                }
                // Never two live allocations for one slot: a live one
                // takes the place of an ended run (a batch retry), a
                // second live one is stopped.
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    if !a.status.is_terminal() {
                        if slot.get().status.is_terminal() {
                            slot.insert(a);
                        } else {
                            plan.stops.push(stop(a, "duplicate replica"));
                        }
                    }
                }
            }
        }
    }
    s
}

fn live_nodes<'r>(allocs: impl Iterator<Item = &'r &'r AllocRec<'r>>) -> Vec<NodeIdx> {
    allocs
        .filter(|a| !a.status.is_terminal() && a.node != NO_NODE)
        .map(|a| a.node)
        .collect()
}

pub(crate) fn service(
    ctx: &Ctx<'_, '_>,
    own: &[&AllocRec<'_>],
    deployment: Option<&Deployment>,
    plan: &mut Plan,
) {
    let spec = &ctx.job.spec;
    let version = ctx.job.version;
    let r = spec.replicas;
    let s = split(ctx, own, plan);
    // Scale down: stop the highest replica slots.
    for (&replica, a) in s.filled.iter().rev() {
        if replica >= r && !a.status.is_terminal() {
            plan.stops.push(stop(a, "job scaled down"));
        }
    }
    let missing: Vec<u32> = (0..r).filter(|x| !s.filled.contains_key(x)).collect();
    let kept: Vec<NodeIdx> = live_nodes(s.filled.range(..r).map(|(_, a)| a));
    if s.old.is_empty() || !spec.rolls_out() {
        for a in &s.old {
            plan.stops.push(stop(a, "job updated"));
        }
        ctx.place(plan, &missing, &kept);
        return;
    }

    // A rolling update.
    let rollout = deployment.filter(|d| d.version == version);
    if rollout.is_some_and(|d| d.status == DeploymentStatus::Paused) {
        // Frozen: nothing of either version moves, but a slot left with
        // no allocation at all (lost with its node, say) is filled again,
        // with the new version, so the job keeps its size.
        let old_slots: BTreeSet<u32> = s.old.iter().map(|a| a.replica).collect();
        let live = s.old.len()
            + s.filled
                .range(..r)
                .filter(|(_, a)| !a.status.is_terminal())
                .count();
        let empty: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|x| !old_slots.contains(x))
            .collect();
        let want = (r as usize).saturating_sub(live).min(empty.len());
        ctx.place(plan, &empty[..want], &kept);
        return;
    }
    if rollout.is_some_and(|d| d.status == DeploymentStatus::Failed) {
        return;
    }
    let active = rollout.is_some_and(|d| d.status.is_active());
    let to = format!("replaced by version {version}");
    if let Some(d) = rollout.filter(|d| active && d.awaiting_promotion()) {
        // Canaries run beside the old version until promoted.
        let placed = s.filled.range(..r).count() as u32;
        let want = d.canary.min(r).saturating_sub(placed) as usize;
        ctx.place(plan, &missing[..want.min(missing.len())], &kept);
        return;
    }
    let (max_unavailable, max_surge) = spec.rolling_limits();
    let new_live = s
        .filled
        .range(..r)
        .filter(|(_, a)| !a.status.is_terminal())
        .count() as u32;
    // New allocations count as available once proved healthy for an
    // active rollout (healthy now is enough without one).
    let new_available = s
        .filled
        .range(..r)
        .filter(|(_, a)| a.healthy_now && (!active || a.deploy_health == Some(true)))
        .count() as u32;
    let (mut healthy_old, sick_old): (Vec<&AllocRec<'_>>, Vec<&AllocRec<'_>>) =
        s.old.iter().copied().partition(|a| a.healthy_now);
    for a in &sick_old {
        plan.stops.push(stop(a, &to));
    }
    let available = healthy_old.len() as u32 + new_available;
    let may_stop = available.saturating_sub(r.saturating_sub(max_unavailable)) as usize;
    // The highest slots of the oldest versions go first.
    healthy_old.sort_by(|a, b| (a.version, b.replica, &b.id).cmp(&(b.version, a.replica, &a.id)));
    let stopping = may_stop.min(healthy_old.len());
    for a in &healthy_old[..stopping] {
        plan.stops.push(stop(a, &to));
    }
    let running = (healthy_old.len() - stopping) as u32 + new_live;
    let room = (r + max_surge).saturating_sub(running) as usize;
    ctx.place(plan, &missing[..room.min(missing.len())], &kept);
}

pub(crate) fn batch(
    ctx: &Ctx<'_, '_>,
    all: &[&AllocRec<'_>],
    own: &[&AllocRec<'_>],
    plan: &mut Plan,
) {
    let job = ctx.job;
    let spec = &job.spec;
    let s = split(ctx, own, plan);
    for a in &s.old {
        plan.stops.push(stop(a, "job updated"));
    }
    let progress = batch_progress(job, all.iter().copied());
    let current: Vec<&AllocRec<'_>> = own
        .iter()
        .copied()
        .filter(|a| a.version == job.version && a.create_index >= job.create_index)
        .collect();
    let live: Vec<&AllocRec<'_>> = current
        .iter()
        .copied()
        .filter(|a| !a.status.is_terminal())
        .collect();
    match progress.state {
        BatchState::Failed => {
            let why = if spec.gang && spec.gang_failure == GangFailure::Fail {
                "job failed: a replica of the gang failed (gang_failure: fail)".to_string()
            } else {
                format!(
                    "job failed: {} failed runs, more than backoff_limit {}",
                    progress.failed,
                    spec.backoff_limit()
                )
            };
            for a in &live {
                plan.stops.push(stop(a, &why));
            }
            return;
        }
        BatchState::Complete => {
            for a in &live {
                plan.stops.push(stop(a, "job complete"));
            }
            return;
        }
        BatchState::Running => {}
    }
    let kept = live_nodes(live.iter());
    if spec.gang {
        // A rank that failed (or was lost with its node) restarts the gang:
        // every rank stops now, and the next evaluation places it whole.
        if let Some(f) = current
            .iter()
            .find(|a| a.failures > 0 || a.status == AllocStatus::Lost)
        {
            let why = format!(
                "gang restart: replica {} {}",
                f.replica,
                if f.status == AllocStatus::Lost {
                    "was lost"
                } else {
                    "failed"
                }
            );
            for a in &current {
                plan.stops.push(stop(a, &why));
            }
            return;
        }
        let taken: BTreeSet<u32> = current.iter().map(|a| a.replica).collect();
        let missing: Vec<u32> = (0..spec.replicas).filter(|x| !taken.contains(x)).collect();
        if !missing.is_empty() && !live.is_empty() {
            // A rank is gone (lost with its node, or stopped from outside)
            // while others run: they cannot go on without it, so the gang
            // restarts whole (as after a failure, without counting one).
            let why = format!("gang restart: replica {} is gone", missing[0]);
            for a in &current {
                plan.stops.push(stop(a, &why));
            }
            return;
        }
        ctx.place(plan, &missing, &kept);
        return;
    }
    // Slots that succeeded or run now are done or busy; the others wait
    // their turn, lowest first, while fewer than `parallelism` run.
    let completions = spec.completions();
    let busy: BTreeSet<u32> = current
        .iter()
        .filter(|a| !a.status.is_terminal() || a.succeeded)
        .map(|a| a.replica)
        .collect();
    let want = spec
        .parallelism()
        .min(completions.saturating_sub(progress.succeeded));
    let room = want.saturating_sub(live.len() as u32) as usize;
    let next: Vec<u32> = (0..completions)
        .filter(|x| !busy.contains(x))
        .take(room)
        .collect();
    ctx.place(plan, &next, &kept);
}
