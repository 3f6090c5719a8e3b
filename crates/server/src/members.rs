//! Control-plane membership: servers join as learners and are promoted
//! once they caught up; removal (of the leader too) hands leadership over
//! first; every server records its addresses in the replicated state.

use std::time::Duration;

use skiff_proto::pb;
use skiff_store::{Command, ConfChangeType, Role, ServerInfo, StoreError};
use tonic::Status;

use crate::ctx::{not_leader_status, store_status, Ctx};

/// A learner this close to the leader's last index is promoted.
const CAUGHT_UP: u64 = 20;

fn to_pb(s: &ServerInfo) -> pb::ServerAddress {
    pb::ServerAddress {
        id: s.id,
        api_addr: s.api_addr.clone(),
        peer_addr: s.peer_addr.clone(),
    }
}

fn known_servers(ctx: &Ctx) -> Vec<pb::ServerAddress> {
    let state = ctx.store.state();
    let mut v: Vec<pb::ServerAddress> = state.servers.values().map(to_pb).collect();
    if !state.servers.contains_key(&ctx.me.id) {
        v.push(to_pb(&ctx.me));
    }
    v
}

/// Carries out a membership change on the leader.
pub async fn change_at_leader(
    ctx: &Ctx,
    req: pb::MembershipRequest,
) -> Result<(Vec<pb::ServerAddress>, u64), Status> {
    let status = ctx.store.status();
    let mut index = ctx.store.state().index;
    match req.change {
        Some(pb::membership_request::Change::Add(s)) => {
            if s.id == 0 {
                return Err(Status::invalid_argument("id: must be more than 0"));
            }
            for (field, addr) in [("api_addr", &s.api_addr), ("peer_addr", &s.peer_addr)] {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(Status::invalid_argument(format!(
                        "{field}: {addr:?} must be IP:PORT"
                    )));
                }
            }
            let info = ServerInfo {
                id: s.id,
                api_addr: s.api_addr,
                peer_addr: s.peer_addr,
            };
            let member = status.voters.contains(&info.id) || status.learners.contains(&info.id);
            if member {
                let known = ctx.store.state().servers.get(&info.id).cloned();
                if known.as_ref().is_some_and(|k| *k != info) {
                    return Err(Status::already_exists(format!(
                        "server {} is already a member with other addresses; remove it first",
                        info.id
                    )));
                }
            } else {
                ctx.peers.learn(info.id, &info.peer_addr);
                tracing::info!(id = info.id, peer = %info.peer_addr, "adding a server as a learner");
                index = ctx
                    .store
                    .change_membership(vec![(info.id, ConfChangeType::AddLearnerNode)], Some(info))
                    .await
                    .map_err(membership_error)?;
            }
        }
        Some(pb::membership_request::Change::Remove(id)) => {
            if !status.voters.contains(&id) && !status.learners.contains(&id) {
                return Err(Status::not_found(format!("server {id} is not a member")));
            }
            if status.voters == [id] {
                return Err(Status::failed_precondition(
                    "cannot remove the only voter: the cluster would have no members",
                ));
            }
            if id == ctx.me.id {
                hand_over_leadership(ctx).await?;
                // Now a follower: let the new leader do the removal.
                return Err(not_leader_status());
            }
            tracing::info!(id, "removing a server");
            index = ctx
                .store
                .change_membership(vec![(id, ConfChangeType::RemoveNode)], None)
                .await
                .map_err(membership_error)?;
        }
        None => return Err(Status::invalid_argument("change: is required")),
    }
    Ok((known_servers(ctx), index))
}

fn membership_error(e: StoreError) -> Status {
    match e {
        StoreError::Indeterminate => Status::aborted(
            "the membership change did not take effect in time (another change may be in progress); check `skiff server members` and retry",
        ),
        other => store_status(other),
    }
}

/// Transfers leadership to the most up-to-date other voter and waits
/// until this server is no longer the leader.
async fn hand_over_leadership(ctx: &Ctx) -> Result<(), Status> {
    let status = ctx.store.status();
    let target = status
        .progress
        .iter()
        .filter(|(id, _)| *id != ctx.me.id && status.voters.contains(id))
        .max_by_key(|(_, matched)| *matched)
        .map(|(id, _)| *id)
        .ok_or_else(|| Status::failed_precondition("no other voter to hand leadership to"))?;
    tracing::info!(to = target, "handing leadership over before leaving");
    let mut watch = ctx.store.watch_status();
    for _ in 0..3 {
        ctx.store.transfer_leader(target);
        let moved = tokio::time::timeout(
            Duration::from_secs(3),
            watch.wait_for(|s| s.role != Role::Leader),
        )
        .await;
        if matches!(moved, Ok(Ok(_))) {
            return Ok(());
        }
    }
    Err(Status::unavailable(
        "leadership could not be handed over; retry",
    ))
}

/// Sends a membership change to the leader (or does it here).
pub async fn change(
    ctx: &Ctx,
    req: pb::MembershipRequest,
) -> Result<(Vec<pb::ServerAddress>, u64), Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = ctx.store.status();
        let attempt = if status.role == Role::Leader {
            change_at_leader(ctx, req.clone()).await
        } else if let Some(channel) = (status.leader_id != 0)
            .then(|| ctx.peers.channel(status.leader_id))
            .flatten()
        {
            pb::peer_client::PeerClient::new(channel)
                .change_membership(req.clone())
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.servers, r.index)
                })
        } else {
            Err(Status::unavailable("no leader known yet"))
        };
        match attempt {
            Ok(done) => return Ok(done),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Unavailable
                ) && s.message()
                    != "cannot remove the only voter: the cluster would have no members"
                    && !s.message().starts_with("no other voter") =>
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// On the leader: promotes learners that caught up.
pub async fn promote_learners(ctx: Ctx) {
    let mut status = ctx.store.watch_status();
    loop {
        let s = status.borrow_and_update().clone();
        if s.role == Role::Leader {
            for learner in &s.learners {
                let matched = s
                    .progress
                    .iter()
                    .find(|(id, _)| id == learner)
                    .map(|(_, m)| *m)
                    .unwrap_or(0);
                if matched + CAUGHT_UP >= s.last_index && matched > 0 {
                    tracing::info!(
                        id = learner,
                        matched,
                        "learner caught up; promoting it to voter"
                    );
                    if let Err(e) = ctx
                        .store
                        .change_membership(vec![(*learner, ConfChangeType::AddNode)], None)
                        .await
                    {
                        tracing::warn!(id = learner, error = %e, "promotion failed; will retry");
                    }
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), status.changed()).await;
    }
}

/// Keeps the transport's address book in step with the replicated state.
pub async fn keep_address_book(ctx: Ctx) {
    let mut applied = ctx.store.subscribe();
    loop {
        let servers: Vec<ServerInfo> = ctx.store.state().servers.values().cloned().collect();
        for s in servers {
            ctx.peers.learn(s.id, &s.peer_addr);
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// Records this server's addresses in the replicated state (once a leader
/// exists, and again whenever they differ).
pub async fn register_self(ctx: Ctx) {
    let mut applied = ctx.store.subscribe();
    loop {
        let recorded = ctx.store.state().servers.get(&ctx.me.id).cloned();
        let status = ctx.store.status();
        let member = status.voters.contains(&ctx.me.id) || status.learners.contains(&ctx.me.id);
        if member && recorded.as_ref() != Some(&ctx.me) && status.leader_id != 0 {
            match ctx
                .propose(&Command::RegisterServer {
                    info: ctx.me.clone(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(api = %ctx.me.api_addr, peer = %ctx.me.peer_addr, "server addresses recorded")
                }
                Err(e) => {
                    tracing::debug!(error = %e.message(), "recording addresses failed; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), applied.changed()).await;
    }
}

/// Asks an existing server to add this one, until it succeeds.
pub async fn join(ctx: Ctx, url: String) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let status = ctx.store.status();
        if status.voters.contains(&ctx.me.id) || status.learners.contains(&ctx.me.id) {
            return; // already a member (e.g. restarted after joining)
        }
        match try_join(&ctx, &url).await {
            Ok(()) => {
                tracing::info!(via = %url, "joined the cluster as a learner");
                return;
            }
            Err(e) => tracing::warn!(via = %url, error = %e, "join failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn try_join(ctx: &Ctx, url: &str) -> Result<(), String> {
    let channel = ctx
        .tls
        .to_server(crate::tls::authority(url))
        .map_err(|e| format!("{url:?} is not a URL: {}", e.message()))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let resp = pb::cluster_client::ClusterClient::new(channel)
        .add_member(pb::AddMemberRequest {
            id: ctx.me.id,
            api_addr: ctx.me.api_addr.clone(),
            peer_addr: ctx.me.peer_addr.clone(),
        })
        .await
        .map_err(|s| s.message().to_string())?;
    for s in resp.into_inner().members {
        ctx.peers.learn(s.id, &s.peer_addr);
    }
    Ok(())
}

/// Every member with its addresses, role and applied index (each member
/// is asked; one that does not answer shows as unreachable).
pub async fn list(ctx: &Ctx) -> pb::MembersResponse {
    let status = ctx.store.status();
    let servers = ctx.store.state().servers.clone();
    let mut ids: Vec<(u64, bool)> = status
        .voters
        .iter()
        .map(|v| (*v, true))
        .chain(status.learners.iter().map(|l| (*l, false)))
        .collect();
    ids.sort_unstable();
    let mut asks = Vec::new();
    for (id, voter) in ids {
        let info = servers.get(&id).cloned().unwrap_or(ServerInfo {
            id,
            api_addr: String::new(),
            peer_addr: ctx.peers.address(id).unwrap_or_default(),
        });
        let ctx = ctx.clone();
        asks.push(tokio::spawn(async move {
            let answer = if id == ctx.me.id {
                let s = ctx.store.status();
                Some((role_of(&s, id) as i32, s.applied))
            } else {
                ask_status(&ctx, &info.api_addr).await
            };
            let (role, applied) = match answer {
                Some((role, applied)) => (role, Some(applied)),
                None => (pb::ServerRole::Unreachable as i32, None),
            };
            pb::Member {
                id,
                api_addr: info.api_addr,
                peer_addr: info.peer_addr,
                role,
                applied_index: applied,
                voter,
            }
        }));
    }
    let mut members = Vec::new();
    for a in asks {
        if let Ok(m) = a.await {
            members.push(m);
        }
    }
    pb::MembersResponse {
        members,
        leader_id: status.leader_id,
    }
}

/// Server `id`'s role as `s` (its own status) says.
pub fn role_of(s: &skiff_store::RaftStatus, id: u64) -> pb::ServerRole {
    if s.learners.contains(&id) {
        return pb::ServerRole::Learner;
    }
    match s.role {
        Role::Leader => pb::ServerRole::Leader,
        Role::Follower => pb::ServerRole::Follower,
        Role::Candidate => pb::ServerRole::Candidate,
    }
}

async fn ask_status(ctx: &Ctx, api_addr: &str) -> Option<(i32, u64)> {
    if api_addr.is_empty() {
        return None;
    }
    let channel = ctx
        .tls
        .to_server(api_addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let s = pb::cluster_client::ClusterClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .ok()?
        .into_inner();
    Some((s.role, s.applied_index))
}
