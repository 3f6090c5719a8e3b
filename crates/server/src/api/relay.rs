//! Calls the servers relay to a node's agent: a container's logs, exec in
//! it, and GPU resets. The client API's messages are translated to the
//! agent API's own (agent.proto) and back.

use std::pin::Pin;

use skiff_model::Allocation;
use skiff_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::Status;

use super::errors::{check_name, invalid};
use crate::ctx::Ctx;

pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, Status>> + Send>>;
type AgentClient = pb::agent_api_client::AgentApiClient<Channel>;

pub(crate) async fn logs(ctx: &Ctx, r: pb::LogsRequest) -> Result<LogStream, Status> {
    check_name("alloc_id", &r.alloc_id)?;
    let (alloc_id, mut agent) = agent_for(ctx, &r.alloc_id).await?;
    let upstream = agent
        .logs(pb::AgentLogsRequest {
            alloc_id,
            follow: r.follow,
            tail: r.tail,
            stderr_only: r.stderr_only,
            timestamps: r.timestamps,
        })
        .await?
        .into_inner();
    let stream: LogStream = Box::pin(upstream.map(|item| {
        item.map(|c| pb::LogsResponse {
            stream: match pb::agent_logs_response::Stream::try_from(c.stream) {
                Ok(pb::agent_logs_response::Stream::Stderr) => {
                    pb::logs_response::Stream::Stderr as i32
                }
                _ => pb::logs_response::Stream::Stdout as i32,
            },
            data: c.data,
        })
    }));
    Ok(stream)
}

pub(crate) async fn exec(ctx: &Ctx, r: pb::ExecRequest) -> Result<pb::ExecResponse, Status> {
    check_name("alloc_id", &r.alloc_id)?;
    if r.command.is_empty() || r.command[0].is_empty() {
        return Err(invalid(
            "command",
            "must name a program to run in the container",
        ));
    }
    let (alloc_id, mut agent) = agent_for(ctx, &r.alloc_id).await?;
    tracing::info!(alloc = %alloc_id, program = %r.command[0], "exec relayed to the agent");
    let out = agent
        .exec(pb::AgentExecRequest {
            alloc_id,
            command: r.command,
            timeout_ms: r.timeout_ms,
        })
        .await?
        .into_inner();
    Ok(pb::ExecResponse {
        exit_code: out.exit_code,
        stdout: out.stdout,
        stderr: out.stderr,
        truncated: out.truncated,
        timed_out: out.timed_out,
    })
}

pub(crate) async fn reset_gpu(
    ctx: &Ctx,
    r: pb::ResetNodeGpuRequest,
) -> Result<pb::ResetNodeGpuResponse, Status> {
    check_name("node", &r.node)?;
    check_name("uuid", &r.uuid)?;
    let (uuid, address) = {
        let state = ctx.store.state();
        let node = state
            .nodes
            .get(&r.node)
            .ok_or_else(|| Status::not_found(format!("node {:?} not found", r.node)))?;
        let mut matches = node.gpus.iter().filter(|g| g.uuid.starts_with(&r.uuid));
        let gpu = match (matches.next(), matches.next()) {
            (Some(g), None) => g,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "uuid",
                    format!(
                        "{:?} matches several GPUs of node {}; give more characters",
                        r.uuid, r.node
                    ),
                ))
            }
            (None, _) => {
                return Err(Status::not_found(format!(
                    "node {} has no GPU {:?}",
                    r.node, r.uuid
                )))
            }
        };
        (gpu.uuid.clone(), node.address.clone())
    };
    let mut agent = agent_client(ctx, &address, &r.node).await?;
    let resp = agent
        .reset_gpu(pb::ResetGpuRequest { uuid: uuid.clone() })
        .await?
        .into_inner();
    tracing::info!(node = %r.node, gpu = %uuid, was_unhealthy = resp.was_unhealthy, "GPU reset");
    Ok(pb::ResetNodeGpuResponse {
        uuid: resp.uuid,
        was_unhealthy: resp.was_unhealthy,
        reason: resp.reason,
        index: resp.index,
    })
}

/// The full id of an allocation (given by id or prefix) and a client for
/// the agent of the node it runs on.
async fn agent_for(ctx: &Ctx, id: &str) -> Result<(String, AgentClient), Status> {
    let (alloc_id, address, node) = {
        let state = ctx.store.state();
        let alloc = resolve_alloc(&state, id)?;
        let node = state.nodes.get(&alloc.node).ok_or_else(|| {
            Status::not_found(format!("node {:?} of the allocation is gone", alloc.node))
        })?;
        (alloc.id.clone(), node.address.clone(), node.name.clone())
    };
    Ok((alloc_id, agent_client(ctx, &address, &node).await?))
}

/// A client for the agent API of `node` at `address` (`host:port`).
pub(crate) async fn agent_client(
    ctx: &Ctx,
    address: &str,
    node: &str,
) -> Result<AgentClient, Status> {
    let endpoint = ctx
        .tls
        .to_agent(address, node)?
        .connect_timeout(std::time::Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the agent at {address}: {e}")))?;
    Ok(pb::agent_api_client::AgentApiClient::new(channel)
        .max_decoding_message_size(skiff_proto::MAX_EXEC_MESSAGE_BYTES))
}

/// Finds an allocation by its id or by a unique prefix of it (as tables
/// show the first 8 characters).
pub(crate) fn resolve_alloc<'s>(
    state: &'s skiff_store::State,
    id: &str,
) -> Result<&'s Allocation, Status> {
    if let Some(a) = state.allocs.get(id) {
        return Ok(a);
    }
    let mut matches = state
        .allocs
        .range_from(id)
        .take_while(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, a)), None) => Ok(a),
        (Some(_), Some(_)) => Err(invalid(
            "alloc_id",
            format!("prefix {id:?} matches several allocations; give more characters"),
        )),
        (None, _) => Err(Status::not_found(format!("allocation {id:?} not found"))),
    }
}

/// The namespace of the job of the allocation `id` names (`default` when
/// it names none: the call then fails on the id, after the check).
pub(crate) fn alloc_namespace(ctx: &Ctx, id: &str) -> String {
    let state = ctx.store.state();
    resolve_alloc(&state, id).map_or_else(
        |_| skiff_model::DEFAULT_NAMESPACE.to_string(),
        |a| skiff_model::split_job_key(&a.job).0.to_string(),
    )
}
