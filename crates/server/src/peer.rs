//! Server-to-server traffic in: the `Peer` gRPC service that steps Raft
//! messages into the store, takes snapshots, relays heartbeats and
//! membership changes to the leader. The outbound links are in
//! `transport.rs`.

use protobuf::Message as _;
use skiff_proto::pb;
use skiff_store::RaftMessage;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::ctx::{not_leader_status, Ctx};

/// The inbound side of the peer port.
pub struct PeerService {
    pub ctx: Ctx,
}

impl PeerService {
    /// Takes one message of the Raft stream from member `from` (0 under
    /// `--insecure`): decoded, of a kind servers send there, from its
    /// sender and for this server, then handed to Raft.
    pub fn take_message(&self, from: u64, env: &pb::RaftEnvelope) -> Result<(), Status> {
        let msg = decode(env)?;
        streamable(&msg)?;
        self.check_sender(from, &msg)?;
        self.ctx.store.step(msg);
        Ok(())
    }

    /// Takes one snapshot message from member `from`.
    pub fn take_snapshot(&self, from: u64, env: &pb::RaftEnvelope) -> Result<(), Status> {
        let msg = decode(env)?;
        if msg.get_msg_type() != skiff_store::RaftMessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "message: only MsgSnapshot is taken here",
            ));
        }
        self.check_sender(from, &msg)?;
        self.ctx.store.step(msg);
        Ok(())
    }

    /// A Raft message must come from the server whose certificate carried
    /// it, and be for this server: a member cannot speak for another.
    fn check_sender(&self, from: u64, msg: &RaftMessage) -> Result<(), Status> {
        if from == 0 {
            return Ok(()); // --insecure
        }
        if msg.from != from || msg.to != self.ctx.me.id {
            tracing::warn!(
                cert = from,
                claimed = msg.from,
                to = msg.to,
                "a Raft message with a forged sender or for another server; connection closed"
            );
            return Err(Status::permission_denied(format!(
                "server {from} sent a message from {} to {}",
                msg.from, msg.to
            )));
        }
        Ok(())
    }
}

fn decode(env: &pb::RaftEnvelope) -> Result<RaftMessage, Status> {
    RaftMessage::parse_from_bytes(&env.message)
        .map_err(|e| Status::invalid_argument(format!("message: not a Raft message: {e}")))
}

/// Refuses, before any message body is read, a call whose certificate is
/// not a current member server's: a node or user certificate of the same
/// CA cannot make a peer decode even one large message.
pub fn members_only(ctx: Ctx) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        caller(&req, &ctx.tls)?.require_server(&ctx, "use the peer port")?;
        Ok(req)
    }
}

/// The kinds of Raft message a peer may send on the Raft stream: what
/// raft-rs sends between servers, except snapshots (their own service).
/// Votes and pre-votes (and their answers) always carry a term: raft-rs
/// takes a term of 0 for a local message and stops the process when it
/// would answer one.
fn streamable(msg: &RaftMessage) -> Result<(), Status> {
    use skiff_store::RaftMessageType as T;
    let kind = msg.get_msg_type();
    if msg.term == 0
        && matches!(
            kind,
            T::MsgRequestVote
                | T::MsgRequestVoteResponse
                | T::MsgRequestPreVote
                | T::MsgRequestPreVoteResponse
        )
    {
        return Err(Status::invalid_argument(format!(
            "message: a {kind:?} must carry a term (more than 0)"
        )));
    }
    match kind {
        T::MsgAppend
        | T::MsgAppendResponse
        | T::MsgRequestVote
        | T::MsgRequestVoteResponse
        | T::MsgRequestPreVote
        | T::MsgRequestPreVoteResponse
        | T::MsgHeartbeat
        | T::MsgHeartbeatResponse
        | T::MsgPropose
        | T::MsgReadIndex
        | T::MsgReadIndexResp
        | T::MsgTransferLeader
        | T::MsgTimeoutNow => Ok(()),
        other => Err(Status::invalid_argument(format!(
            "message: {other:?} is not sent between servers on the Raft stream"
        ))),
    }
}

/// The snapshot side of the peer port: the one service that takes
/// messages as large as the whole state.
pub struct PeerSnapshotService {
    pub peer: PeerService,
}

#[tonic::async_trait]
impl pb::peer_snapshot_server::PeerSnapshot for PeerSnapshotService {
    async fn snapshot(
        &self,
        req: Request<pb::RaftEnvelope>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let ctx = &self.peer.ctx;
        let from = caller(&req, &ctx.tls)?.require_server(ctx, "send snapshots")?;
        self.peer.take_snapshot(from, req.get_ref())?;
        Ok(Response::new(pb::PeerAck {}))
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn raft(
        &self,
        req: Request<Streaming<pb::RaftEnvelope>>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let from = caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "send Raft messages")?;
        let mut stream = req.into_inner();
        while let Some(env) = stream.message().await? {
            self.take_message(from, &env)?;
        }
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "relay heartbeats")?;
        let r = req.into_inner();
        skiff_model::registration::check_node_name(&r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.ctx.store.is_leader() {
            return Err(not_leader_status());
        }
        let metrics = crate::nodes::check_gpu_metrics(r.gpu_metrics)?;
        let usage = crate::nodes::check_usage(r.usage)?;
        Ok(Response::new(
            crate::nodes::heartbeat(&self.ctx, &r.name, metrics, usage).await,
        ))
    }

    async fn heartbeat_ages(
        &self,
        req: Request<pb::HeartbeatAgesRequest>,
    ) -> Result<Response<pb::HeartbeatAgesResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "read heartbeats")?;
        Ok(Response::new(self.ctx.heartbeat_ages()))
    }

    async fn secrets_key(
        &self,
        req: Request<pb::SecretsKeyRequest>,
    ) -> Result<Response<pb::SecretsKeyResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "read the secrets key")?;
        let key = self.ctx.secrets.current();
        Ok(Response::new(pb::SecretsKeyResponse {
            key: key.bytes().to_vec(),
            key_id: key.id().to_string(),
        }))
    }

    async fn change_membership(
        &self,
        req: Request<pb::MembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "change the membership")?;
        if !self.ctx.store.is_leader() {
            return Err(not_leader_status());
        }
        let (servers, index) =
            crate::members::change_at_leader(&self.ctx, req.into_inner()).await?;
        Ok(Response::new(pb::MembershipResponse { servers, index }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_store::RaftMessageType as T;

    #[test]
    fn a_vote_without_a_term_is_refused_before_raft_sees_it() {
        // raft-rs stops the process when it would answer one (the peer
        // fuzzer found it).
        for kind in [
            T::MsgRequestVote,
            T::MsgRequestVoteResponse,
            T::MsgRequestPreVote,
            T::MsgRequestPreVoteResponse,
        ] {
            let mut m = RaftMessage::default();
            m.set_msg_type(kind);
            let e = streamable(&m).unwrap_err();
            assert!(e.message().contains("must carry a term"), "{}", e.message());
            m.term = 3;
            streamable(&m).unwrap();
        }
        // A follower's forwarded proposal has no term, as raft-rs sends it.
        let mut m = RaftMessage::default();
        m.set_msg_type(T::MsgPropose);
        streamable(&m).unwrap();
    }
}
