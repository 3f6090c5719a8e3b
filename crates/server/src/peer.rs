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

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn raft(
        &self,
        req: Request<Streaming<pb::RaftEnvelope>>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let from = caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "send Raft messages")?;
        let mut stream = req.into_inner();
        while let Some(env) = stream.message().await? {
            let msg = decode(&env)?;
            self.check_sender(from, &msg)?;
            self.ctx.store.step(msg);
        }
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<pb::RaftEnvelope>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let from = caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "send snapshots")?;
        let msg = decode(req.get_ref())?;
        self.check_sender(from, &msg)?;
        self.ctx.store.step(msg);
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "relay heartbeats")?;
        if !self.ctx.store.is_leader() {
            return Err(not_leader_status());
        }
        let r = req.into_inner();
        let metrics = crate::nodes::check_gpu_metrics(r.gpu_metrics)?;
        Ok(Response::new(
            crate::nodes::heartbeat(&self.ctx, &r.name, metrics).await,
        ))
    }

    async fn heartbeat_ages(
        &self,
        req: Request<pb::HeartbeatAgesRequest>,
    ) -> Result<Response<pb::HeartbeatAgesResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require_server(&self.ctx, "read heartbeats")?;
        Ok(Response::new(self.ctx.heartbeat_ages()))
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
