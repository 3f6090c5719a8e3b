//! Nodes and servers: listing nodes with their heartbeats and use,
//! cordon/drain, the answering server's status, and the members.

use skiff_proto::pb;
use skiff_store::{Command, Outcome};
use tonic::Status;

use super::errors::{check_name, invalid, not_done};
use super::pages::PageRequest;
use crate::ctx::{now_ms, Ctx};

pub(crate) async fn list_nodes(
    ctx: &Ctx,
    r: pb::ListNodesRequest,
) -> Result<pb::ListNodesResponse, Status> {
    let page = PageRequest::parse(r.page_size, &r.page_token)?;
    ctx.read_barrier(r.stale).await?;
    let view = heartbeat_view(ctx).await;
    let state = ctx.store.state();
    let (nodes, next_page_token) =
        page.take(state.nodes.iter().map(|(k, n)| (k.as_str(), n)), |n| {
            let name = &n.name;
            let (gpu_metrics, gpu_age) = match view.gpu.get(name) {
                Some(s) => (s.metrics.clone(), Some(s.age_ms)),
                None => (Vec::new(), None),
            };
            pb::NodeListItem {
                node: Some(n.into()),
                heartbeat_age_ms: view.age_ms.get(name).copied(),
                used: Some(skiff_model::fit::used_on(name, state.allocs_on_node(name)).into()),
                gpu_metrics,
                gpu_metrics_age_ms: gpu_age,
            }
        });
    Ok(pb::ListNodesResponse {
        nodes,
        next_page_token,
        index: state.index,
    })
}

pub(crate) async fn set_eligibility(
    ctx: &Ctx,
    r: pb::SetNodeEligibilityRequest,
) -> Result<pb::SetNodeEligibilityResponse, Status> {
    check_name("name", &r.name)?;
    let applied = ctx
        .commit(&Command::SetNodeEligibility {
            name: r.name.clone(),
            cordoned: r.cordoned,
            draining: r.draining,
            drain_deadline_ms: r.draining.then(|| {
                let secs = match r.drain_deadline_seconds {
                    0 => 3600,
                    s => s.min(365 * 24 * 3600),
                };
                now_ms() + secs * 1000
            }),
        })
        .await?;
    match applied.outcome {
        Outcome::NodeEligibilitySet { stopped } => {
            tracing::info!(node = %r.name, cordoned = r.cordoned, draining = r.draining, stopped, "node eligibility set");
            Ok(pb::SetNodeEligibilityResponse {
                stopped,
                index: applied.index,
            })
        }
        other => Err(not_done(other)),
    }
}

pub(crate) fn status(ctx: &Ctx) -> pb::StatusResponse {
    let (digest, applied) = {
        let state = ctx.store.state();
        (state.digest(), state.index)
    };
    let s = ctx.store.status();
    pb::StatusResponse {
        id: s.id,
        leader_id: s.leader_id,
        term: s.term,
        commit_index: s.commit,
        applied_index: applied,
        version: env!("CARGO_PKG_VERSION").to_string(),
        role: crate::members::role_of(&s, s.id) as i32,
        first_index: s.first_index,
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        voters: s.voters.clone(),
        learners: s.learners.clone(),
        state_digest: digest,
    }
}

pub(crate) async fn add_member(
    ctx: &Ctx,
    r: pb::AddMemberRequest,
) -> Result<pb::AddMemberResponse, Status> {
    let (servers, index) = crate::members::change(
        ctx,
        pb::MembershipRequest {
            change: Some(pb::membership_request::Change::Add(pb::ServerAddress {
                id: r.id,
                api_addr: r.api_addr,
                peer_addr: r.peer_addr,
            })),
        },
    )
    .await?;
    Ok(pb::AddMemberResponse {
        members: servers
            .into_iter()
            .map(|s| pb::Member {
                id: s.id,
                api_addr: s.api_addr,
                peer_addr: s.peer_addr,
                ..Default::default()
            })
            .collect(),
        index,
    })
}

pub(crate) async fn remove_member(
    ctx: &Ctx,
    r: pb::RemoveMemberRequest,
) -> Result<pb::RemoveMemberResponse, Status> {
    if r.id == 0 {
        return Err(invalid("id", "must be more than 0"));
    }
    let (_, index) = crate::members::change(
        ctx,
        pb::MembershipRequest {
            change: Some(pb::membership_request::Change::Remove(r.id)),
        },
    )
    .await?;
    Ok(pb::RemoveMemberResponse { index })
}

/// Heartbeat ages and GPU samples, as the leader (which tracks them) sees
/// them; this server's own view when the leader cannot be asked.
pub(super) async fn heartbeat_view(ctx: &Ctx) -> pb::HeartbeatAgesResponse {
    let local = || ctx.heartbeat_ages();
    let status = ctx.store.status();
    if status.role == skiff_store::Role::Leader || status.leader_id == 0 {
        return local();
    }
    let Some(channel) = ctx.peers.channel(status.leader_id) else {
        return local();
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        pb::peer_client::PeerClient::new(channel).heartbeat_ages(pb::HeartbeatAgesRequest {}),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        _ => local(),
    }
}
