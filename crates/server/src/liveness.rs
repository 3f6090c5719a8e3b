//! Node liveness, on the leader: heartbeats are kept in memory (never in the
//! Raft log), and a node whose heartbeat deadline passes is declared down
//! through Raft, which marks its allocations lost so they are replaced.
//!
//! The TTL handed to agents grows with the cluster, as Nomad's does: the
//! larger of a minimum and `nodes / max heartbeats per second`, plus a
//! random jitter so heartbeats spread out. A new leader knows no heartbeat
//! yet, so it gives every node a grace window before any can be declared
//! down.

use std::time::Instant;

use skiff_model::NodeStatus;
use skiff_store::Command;

use crate::ctx::Ctx;
use crate::heartbeats::LivenessConfig;

/// Runs forever; declares nodes down while this server leads.
pub async fn run(ctx: Ctx, cfg: LivenessConfig) {
    let mut leading = false;
    loop {
        tokio::time::sleep(cfg.check_every).await;
        if !ctx.store.is_leader() {
            leading = false;
            continue;
        }
        let (ready, total): (Vec<String>, usize) = {
            let state = ctx.store.state();
            (
                state
                    .nodes
                    .values()
                    .filter(|n| n.status == NodeStatus::Ready)
                    .map(|n| n.name.clone())
                    .collect(),
                state.nodes.len(),
            )
        };
        if !leading {
            // Just elected: nobody's heartbeat reached us yet.
            leading = true;
            let grace = cfg.grace(total);
            tracing::info!(
                nodes = total,
                ?grace,
                "leading: giving every node a grace window before any can be declared down"
            );
            ctx.heartbeats.grant_until(&ready, Instant::now() + grace);
            continue;
        }
        for (node, age) in ctx.heartbeats.expired(&ready, cfg.grace(total)) {
            let reason = format!("no heartbeat for {:.1}s", age.as_secs_f64());
            tracing::warn!(%node, %reason, "declaring the node down");
            let cmd = Command::SetNodeStatus {
                name: node.clone(),
                status: NodeStatus::Down,
                reason,
            };
            match ctx.propose(&cmd).await {
                Ok(_) => {
                    ctx.metrics.nodes_declared_down.inc();
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e.message(), "could not declare the node down; will retry")
                }
            }
        }
    }
}

/// On the leader: a heartbeat from a node that was declared down brings it
/// back (its lost allocations stay lost and are stopped by its agent).
pub fn revive_if_down(ctx: &Ctx, node: &str) {
    let down = ctx
        .store
        .state()
        .nodes
        .get(node)
        .is_some_and(|n| n.status == NodeStatus::Down);
    if !down {
        return;
    }
    let ctx = ctx.clone();
    let node = node.to_string();
    tokio::spawn(async move {
        tracing::info!(%node, "heartbeat from a node that was down: marking it ready");
        let cmd = Command::SetNodeStatus {
            name: node.clone(),
            status: NodeStatus::Ready,
            reason: String::new(),
        };
        if let Err(e) = ctx.propose(&cmd).await {
            tracing::warn!(%node, error = %e.message(), "could not mark the node ready");
        }
    });
}
