//! `Top`: what nodes and running allocations use now against what they
//! offer and asked for, from the agents' latest heartbeats (as the leader
//! holds them) and the replicated state.

use std::collections::HashMap;

use skiff_model::{split_job_key, AllocStatus, DesiredStatus};
use skiff_proto::pb;
use tonic::Status;

use super::errors::job_key;
use crate::auth::Scope;
use crate::ctx::Ctx;

/// Allocations one answer lists at most.
pub(crate) const MAX_TOP_ALLOCS: usize = 10_000;

/// The mean utilisation and summed memory of the GPUs `uuids` that have a
/// sample.
fn gpu_use<'a>(
    uuids: impl Iterator<Item = &'a str>,
    samples: &HashMap<&str, &pb::GpuMetrics>,
) -> (u32, u64) {
    let (mut n, mut util, mut mem) = (0u32, 0u32, 0u64);
    for u in uuids {
        if let Some(s) = samples.get(u) {
            n += 1;
            util += s.utilization_pct;
            mem += s.memory_used_bytes;
        }
    }
    (util.checked_div(n).unwrap_or(0), mem)
}

pub(crate) async fn top(
    ctx: &Ctx,
    r: pb::TopRequest,
    scope: Scope,
) -> Result<pb::TopResponse, Status> {
    let job = if r.job.is_empty() {
        None
    } else {
        Some(job_key(&r.namespace, &r.job)?)
    };
    let view = super::admin::heartbeat_view(ctx).await;
    let samples: HashMap<&str, &pb::GpuMetrics> = view
        .gpu
        .values()
        .flat_map(|s| &s.metrics)
        .map(|m| (m.uuid.as_str(), m))
        .collect();
    let used: HashMap<&str, &pb::AllocUsage> = view
        .usage
        .values()
        .flat_map(|u| &u.allocs)
        .map(|a| (a.alloc_id.as_str(), a))
        .collect();
    let state = ctx.store.state();
    let wanted_node = |n: &str| r.node.is_empty() || r.node == n;
    // What the allocations that hold resources asked for, by node.
    let mut asked: HashMap<&str, (u64, u64, u32)> = HashMap::new();
    let mut allocs = Vec::new();
    let mut truncated = false;
    for a in state.allocs.values() {
        if a.status.is_terminal() || a.desired != DesiredStatus::Run || !wanted_node(&a.node) {
            continue;
        }
        let want = a.task.resources.amount();
        let e = asked.entry(a.node.as_str()).or_default();
        e.0 += want.cpu_millis;
        e.1 += want.memory_bytes;
        e.2 += a.gpus.len() as u32;
        let listed = r.allocs
            && a.status == AllocStatus::Running
            && job.as_ref().is_none_or(|j| &a.job == j)
            && scope.sees(split_job_key(&a.job).0);
        if !listed {
            continue;
        }
        if allocs.len() == MAX_TOP_ALLOCS {
            truncated = true;
            continue;
        }
        let (gpu_util, gpu_mem) = gpu_use(a.gpus.iter().map(String::as_str), &samples);
        let u = used.get(a.id.as_str());
        allocs.push(pb::AllocTop {
            alloc_id: a.id.clone(),
            job: a.job.clone(),
            node: a.node.clone(),
            cpu_millis: u.map_or(0, |u| u.cpu_millis),
            cpu_requested_millis: want.cpu_millis,
            memory_bytes: u.map_or(0, |u| u.memory_bytes),
            memory_requested_bytes: want.memory_bytes,
            gpus: a.gpus.len() as u32,
            gpu_utilization_pct: gpu_util,
            gpu_memory_used_bytes: gpu_mem,
            sampled: u.is_some(),
        });
    }
    allocs.sort_by(|a, b| (&a.node, &a.alloc_id).cmp(&(&b.node, &b.alloc_id)));
    let nodes = state
        .nodes
        .values()
        .filter(|n| wanted_node(&n.name))
        .map(|n| {
            let u = view.usage.get(&n.name);
            let (cpu, mem, held) = asked.get(n.name.as_str()).copied().unwrap_or_default();
            let (gpu_util, gpu_mem) = gpu_use(
                n.gpus
                    .iter()
                    .filter(|g| g.parent.is_none())
                    .map(|g| g.uuid.as_str()),
                &samples,
            );
            pb::NodeTop {
                node: n.name.clone(),
                status: n.status.as_str().to_string(),
                cpu_millis: u.map_or(0, |u| u.cpu_millis),
                cpu_allocatable_millis: n.allocatable.cpu_millis,
                cpu_requested_millis: cpu,
                memory_bytes: u.map_or(0, |u| u.memory_bytes),
                memory_allocatable_bytes: n.allocatable.memory_bytes,
                memory_requested_bytes: mem,
                gpus: n.capacity.gpus,
                gpus_held: held,
                gpu_utilization_pct: gpu_util,
                gpu_memory_used_bytes: gpu_mem,
                age_ms: u.map(|u| u.age_ms),
            }
        })
        .collect();
    Ok(pb::TopResponse {
        nodes,
        allocs,
        truncated,
    })
}
