//! The gRPC surfaces, in-process: one server (one-member cluster, under
//! `--insecure`, with its Raft log and state on disk) and one agent
//! service (the recording fake runtime) are started once per process, and
//! each input becomes one call to the real service implementation.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message;
use skiff_proto::pb;
use tokio_stream::StreamExt as _;
use tonic::Request;

/// What one call may take; a call past it is a hang, which the fuzzer is
/// after too. Above the longest wait a call makes on purpose: a watch from
/// an index the server has not reached waits up to 10 s for it.
const CALL_LIMIT: Duration = Duration::from_secs(15);
/// How long a streaming answer is read.
const STREAM_READ: Duration = Duration::from_millis(50);

/// An allocation id the agent has a log and a running container for.
pub const AGENT_ALLOC: &str = "0123456789abcdef0123456789abcdef";

struct Harness {
    rt: tokio::runtime::Runtime,
    cluster: skiff_server::api::ClusterApi,
    access: skiff_server::access::AccessService,
    nodes: skiff_server::nodes::NodeService,
    peer: skiff_server::peer::PeerService,
    agent: skiff_agent::service::AgentService<skiff_agent::runtime::fake::FakeRuntime>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(start)
}

fn start() -> Harness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cfg = skiff_server::ServerConfig {
        data_dir: dir.path().join("server"),
        api_addr: "127.0.0.1:0".parse().expect("address"),
        peer_addr: "127.0.0.1:0".parse().expect("address"),
        advertise_api: None,
        advertise_peer: None,
        peers: Default::default(),
        join: None,
        security: skiff_server::bootstrap::Security {
            insecure: true,
            ..Default::default()
        },
        raft: Default::default(),
        scheduler: Default::default(),
        liveness: Default::default(),
        gc: Default::default(),
        // Inputs name any host: no registry is ever contacted.
        registries: skiff_registry::AccessConfig {
            offline: true,
            ..Default::default()
        },
        node_subnets: skiff_model::subnet::Subnet::parse("10.88.0.0/16").ok(),
        metrics_addr: None,
        metrics_appendix: Default::default(),
    };
    let ctx = rt.block_on(async {
        let running = skiff_server::start(&cfg).await.expect("the server starts");
        let ctx = running.ctx.clone();
        tokio::spawn(skiff_server::serve(running, std::future::pending()));
        for _ in 0..200 {
            if ctx.store.is_leader() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ctx.store.is_leader(), "the one server leads");
        ctx
    });
    // The agent: a log and a running container for one allocation.
    let paths = skiff_agent::paths::Paths::new(dir.path().join("agent"));
    let log_dir = paths.log_dir(AGENT_ALLOC).expect("an allocation id");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    std::fs::write(
        log_dir.join("container.log"),
        "2026-01-01T00:00:00.000000000Z stdout F hello\n",
    )
    .expect("a log line");
    let runtime = Arc::new(skiff_agent::runtime::fake::FakeRuntime::new());
    runtime.set_state(&skiff_agent::paths::container_id(AGENT_ALLOC), "running");
    // Its image calls, offline: a pull fails before any request is made.
    let offline = skiff_registry::RegistryAccess::load(&skiff_registry::AccessConfig {
        offline: true,
        ..Default::default()
    })
    .expect("offline registry access");
    let images = skiff_agent::service::ImageTools {
        puller: Arc::new(
            skiff_agent::image::registry::Puller::new(
                &paths.images().join("content"),
                Arc::new(offline),
            )
            .expect("a content store"),
        ),
        store: skiff_agent::image::ImageStore::new(paths.images()),
        in_use: Default::default(),
    };
    let agent = skiff_agent::service::AgentService::new(
        paths,
        runtime,
        Arc::new(skiff_agent::gpu::GpuNode::empty()),
    )
    .with_images(images);
    Harness {
        cluster: skiff_server::api::ClusterApi::new(ctx.clone()),
        access: skiff_server::access::AccessService::new(ctx.clone()),
        nodes: skiff_server::nodes::NodeService::new(ctx.clone()),
        peer: skiff_server::peer::PeerService { ctx },
        agent,
        rt,
        _dir: dir,
    }
}

/// Runs one call to its end (or its limit).
fn run<F: Future<Output = ()>>(h: &Harness, f: F) {
    h.rt.block_on(async {
        if tokio::time::timeout(CALL_LIMIT, f).await.is_err() {
            panic!("a call did not answer within {CALL_LIMIT:?}");
        }
    });
}

/// The request in `data`, or `None` when it is not one (the decoder's
/// refusal is all there is to test then).
fn decode<M: Message + Default>(data: &[u8]) -> Option<Request<M>> {
    M::decode(data).ok().map(Request::new)
}

/// Reads a streamed answer for a moment, then drops it.
async fn drain<S, T, E>(answer: Result<tonic::Response<S>, E>)
where
    S: tokio_stream::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    if let Ok(resp) = answer {
        let mut stream = resp.into_inner();
        let _ = tokio::time::timeout(STREAM_READ, async {
            while let Some(item) = stream.next().await {
                if item.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

macro_rules! unary {
    ($h:expr, $svc:expr, $method:ident, $msg:ty, $data:expr) => {
        if let Some(req) = decode::<$msg>($data) {
            run($h, async {
                let _ = $svc.$method(req).await;
            });
        }
    };
}

macro_rules! streaming {
    ($h:expr, $svc:expr, $method:ident, $msg:ty, $data:expr) => {
        if let Some(req) = decode::<$msg>($data) {
            run($h, async {
                drain($svc.$method(req).await).await;
            });
        }
    };
}

/// The API port: the Cluster service (first byte 0-18, 34, 35, 39 and 40)
/// and the Access service (19-33, 36-38), modulo 41.
pub fn cluster_api(data: &[u8]) {
    use pb::access_server::Access as _;
    use pb::cluster_server::Cluster as _;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let (c, a) = (&h.cluster, &h.access);
    match pick % 49 {
        0 => unary!(h, c, apply_job, pb::ApplyJobRequest, rest),
        1 => unary!(h, c, delete_job, pb::DeleteJobRequest, rest),
        2 => unary!(h, c, get_job, pb::GetJobRequest, rest),
        3 => unary!(h, c, list_jobs, pb::ListJobsRequest, rest),
        4 => unary!(h, c, list_allocs, pb::ListAllocsRequest, rest),
        5 => unary!(h, c, list_nodes, pb::ListNodesRequest, rest),
        6 => unary!(
            h,
            c,
            set_node_eligibility,
            pb::SetNodeEligibilityRequest,
            rest
        ),
        7 => unary!(h, c, reset_node_gpu, pb::ResetNodeGpuRequest, rest),
        8 => streaming!(h, c, logs, pb::LogsRequest, rest),
        9 => unary!(h, c, exec, pb::ExecRequest, rest),
        10 => unary!(h, c, status, pb::StatusRequest, rest),
        11 => streaming!(h, c, watch, pb::WatchRequest, rest),
        12 => unary!(h, c, members, pb::MembersRequest, rest),
        13 => unary!(h, c, add_member, pb::AddMemberRequest, rest),
        14 => unary!(h, c, remove_member, pb::RemoveMemberRequest, rest),
        15 => unary!(h, c, get_rollout, pb::GetRolloutRequest, rest),
        16 => unary!(h, c, control_rollout, pb::ControlRolloutRequest, rest),
        17 => unary!(h, c, undo_rollout, pb::UndoRolloutRequest, rest),
        18 => unary!(h, c, scale_job, pb::ScaleJobRequest, rest),
        19 => unary!(h, a, join, pb::JoinRequest, rest),
        20 => unary!(h, a, renew_certificate, pb::RenewCertificateRequest, rest),
        21 => unary!(h, a, create_token, pb::CreateTokenRequest, rest),
        22 => unary!(h, a, list_tokens, pb::ListTokensRequest, rest),
        23 => unary!(h, a, revoke_token, pb::RevokeTokenRequest, rest),
        24 => unary!(h, a, remove_node, pb::RemoveNodeRequest, rest),
        25 => unary!(h, a, create_user, pb::CreateUserRequest, rest),
        26 => unary!(h, a, list_users, pb::ListUsersRequest, rest),
        27 => unary!(h, a, revoke_user, pb::RevokeUserRequest, rest),
        28 => unary!(h, a, read_audit, pb::ReadAuditRequest, rest),
        29 => unary!(h, a, create_user_token, pb::CreateUserTokenRequest, rest),
        30 => unary!(h, a, revoke_user_token, pb::RevokeUserTokenRequest, rest),
        31 => unary!(h, a, apply_namespace, pb::ApplyNamespaceRequest, rest),
        32 => unary!(h, a, list_namespaces, pb::ListNamespacesRequest, rest),
        33 => unary!(h, a, delete_namespace, pb::DeleteNamespaceRequest, rest),
        34 => unary!(h, c, list_node_images, pb::ListNodeImagesRequest, rest),
        35 => unary!(h, c, pull_node_image, pb::PullNodeImageRequest, rest),
        36 => unary!(h, a, set_registry_login, pb::SetRegistryLoginRequest, rest),
        37 => unary!(
            h,
            a,
            list_registry_logins,
            pb::ListRegistryLoginsRequest,
            rest
        ),
        38 => unary!(
            h,
            a,
            delete_registry_login,
            pb::DeleteRegistryLoginRequest,
            rest
        ),
        39 => streaming!(h, c, events, pb::EventsRequest, rest),
        41 => unary!(h, a, apply_queue, pb::ApplyQueueRequest, rest),
        42 => unary!(h, a, list_queues, pb::ListQueuesRequest, rest),
        43 => unary!(h, a, describe_queue, pb::DescribeQueueRequest, rest),
        44 => unary!(h, a, delete_queue, pb::DeleteQueueRequest, rest),
        45 => unary!(h, c, plan_job, pb::PlanJobRequest, rest),
        46 => unary!(h, a, apply_sync, pb::ApplySyncRequest, rest),
        47 => unary!(h, a, list_syncs, pb::ListSyncsRequest, rest),
        48 => unary!(h, a, delete_sync, pb::DeleteSyncRequest, rest),
        _ => unary!(h, c, top, pb::TopRequest, rest),
    }
}

/// The API port's NodeApi: what agents call.
pub fn node_api(data: &[u8]) {
    use pb::node_api_server::NodeApi as _;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let n = &h.nodes;
    match pick % 5 {
        0 => unary!(h, n, register, pb::RegisterRequest, rest),
        1 => unary!(h, n, heartbeat, pb::HeartbeatRequest, rest),
        2 => streaming!(h, n, watch_allocations, pb::WatchAllocationsRequest, rest),
        3 => unary!(
            h,
            n,
            update_alloc_status,
            pb::UpdateAllocStatusRequest,
            rest
        ),
        _ => unary!(
            h,
            n,
            check_metrics_token,
            pb::CheckMetricsTokenRequest,
            rest
        ),
    }
}

/// The peer port: Raft messages (as a member sends them on the stream, or
/// as a snapshot), relayed heartbeats, heartbeat ages, membership changes.
pub fn peer(data: &[u8]) {
    use pb::peer_server::Peer as _;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let p = &h.peer;
    match pick % 6 {
        0 | 1 => {
            if let Some(req) = decode::<pb::RaftEnvelope>(rest) {
                let taken = if pick % 6 == 0 {
                    p.take_message(0, req.get_ref())
                } else {
                    p.take_snapshot(0, req.get_ref())
                };
                if taken.is_ok() {
                    raft_survived(h);
                }
            }
        }
        2 => unary!(h, p, heartbeat, pb::HeartbeatRequest, rest),
        3 => unary!(h, p, heartbeat_ages, pb::HeartbeatAgesRequest, rest),
        4 => unary!(h, p, secrets_key, pb::SecretsKeyRequest, rest),
        _ => unary!(h, p, change_membership, pb::MembershipRequest, rest),
    }
}

/// Raft runs on its own thread: once it has handled what was stepped in
/// (a read barrier queues behind it), it must still be running, or have
/// stopped saying why.
fn raft_survived(h: &Harness) {
    let store = &h.peer.ctx.store;
    let barrier =
        h.rt.block_on(store.read_barrier(Duration::from_millis(200)));
    if let Err(skiff_store::StoreError::Stopped) = barrier {
        let status = store.status();
        match status.fatal {
            None => panic!("the Raft driver died without a word (a panic)"),
            Some(why) => panic!("a peer message stopped the server: {why}"),
        }
    }
}

/// An agent's port: logs, exec, images and GPU resets, as the servers
/// relay them.
pub fn agent_api(data: &[u8]) {
    use pb::agent_api_server::AgentApi as _;
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let a = &h.agent;
    match pick % 5 {
        0 => streaming!(h, a, logs, pb::AgentLogsRequest, rest),
        1 => unary!(h, a, exec, pb::AgentExecRequest, rest),
        2 => unary!(h, a, list_images, pb::ListImagesRequest, rest),
        3 => unary!(h, a, pull_image, pb::PullImageRequest, rest),
        _ => unary!(h, a, reset_gpu, pb::ResetGpuRequest, rest),
    }
}
