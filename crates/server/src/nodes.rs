//! The `NodeApi` service agents call, and the in-memory heartbeat table.
//!
//! Heartbeats never go through Raft: they only refresh a timestamp in the
//! memory of the server that receives them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skiff_model::registration::{check_registration, Registration};
use skiff_model::{Allocation, FieldError, Gpu, GpuLink, GpuMetrics, Resources};
use skiff_proto::pb;
use skiff_store::command::{AllocUpdate, NodeRegistration};
use skiff_store::Command;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::ctx::Ctx;
use crate::endpoints::ClusterNetwork;

/// Most status updates accepted in one request.
const MAX_UPDATES: usize = 10_000;

pub struct NodeService {
    ctx: Ctx,
    /// The cluster's endpoints and members, shared by every watch.
    network: Arc<crate::endpoints::NetworkCache>,
    /// Subnets this server handed to registrations not yet applied, and
    /// when: registrations at once (a rack of agents starting) each get
    /// another one instead of racing for the first free one.
    offered: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// What wakes each node's allocation watch (`bells.rs`).
    bells: Arc<crate::bells::Bells>,
}

/// How long a subnet offered to a registration is held back from others.
const OFFER_HELD: Duration = Duration::from_secs(30);

impl NodeService {
    pub fn new(ctx: Ctx) -> Self {
        NodeService {
            ctx,
            network: Arc::default(),
            offered: Arc::default(),
            bells: Arc::default(),
        }
    }
}

/// Records a heartbeat where it counts: on the leader, relayed there by a
/// follower. When the leader cannot be reached the heartbeat is kept here
/// and the agent is given the shortest TTL, so it tries again soon.
pub(crate) async fn heartbeat(
    ctx: &Ctx,
    node: &str,
    gpu_metrics: Vec<GpuMetrics>,
    usage: Option<pb::NodeUsage>,
) -> pb::HeartbeatResponse {
    let wire_metrics: Vec<pb::GpuMetrics> = gpu_metrics.iter().map(Into::into).collect();
    ctx.heartbeats.record_gpu_metrics(node, gpu_metrics);
    ctx.heartbeats.record_usage(node, usage.clone());
    ctx.metrics.heartbeats.inc();
    let nodes = ctx.store.state().nodes.len();
    let status = ctx.store.status();
    if status.role == skiff_store::Role::Leader {
        let ttl = ctx.liveness.ttl(nodes);
        ctx.heartbeats.beat(node, ttl);
        crate::liveness::revive_if_down(ctx, node);
        return pb::HeartbeatResponse {
            ttl_ms: ttl.as_millis() as u64,
        };
    }
    let relayed = match (status.leader_id != 0)
        .then(|| ctx.peers.channel(status.leader_id))
        .flatten()
    {
        Some(channel) => tokio::time::timeout(
            Duration::from_secs(2),
            pb::peer_client::PeerClient::new(channel).heartbeat(pb::HeartbeatRequest {
                name: node.to_string(),
                gpu_metrics: wire_metrics,
                usage,
            }),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|r| r.into_inner()),
        None => None,
    };
    match relayed {
        Some(resp) => {
            ctx.heartbeats
                .beat(node, Duration::from_millis(resp.ttl_ms));
            resp
        }
        None => {
            let ttl = ctx.liveness.min_ttl;
            ctx.heartbeats.beat(node, ttl);
            pb::HeartbeatResponse {
                ttl_ms: ttl.as_millis() as u64,
            }
        }
    }
}

/// A broken model rule, as the agent is told it.
fn refused(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Node names: host-name characters, 1 to 253 of them (the model's rule).
fn check_node_name(name: &str) -> Result<(), Status> {
    skiff_model::registration::check_node_name(name).map_err(refused)
}

/// Allocations a heartbeat may report the use of.
pub(crate) const MAX_USAGE_ALLOCS: usize = 4096;

/// The use a heartbeat reports: a bounded number of allocations, each
/// named by an id of at most 64 characters.
pub(crate) fn check_usage(usage: Option<pb::NodeUsage>) -> Result<Option<pb::NodeUsage>, Status> {
    let Some(mut u) = usage else {
        return Ok(None);
    };
    if u.allocs.len() > MAX_USAGE_ALLOCS {
        return Err(Status::invalid_argument(format!(
            "usage.allocs: {} allocations; at most {MAX_USAGE_ALLOCS}",
            u.allocs.len()
        )));
    }
    if let Some(i) = u
        .allocs
        .iter()
        .position(|a| a.alloc_id.is_empty() || a.alloc_id.len() > 64)
    {
        return Err(Status::invalid_argument(format!(
            "usage.allocs[{i}].alloc_id: must be 1 to 64 characters"
        )));
    }
    u.age_ms = 0;
    Ok(Some(u))
}

/// GPU samples from a heartbeat: at most one per reportable GPU, with
/// bounded texts.
pub(crate) fn check_gpu_metrics(metrics: Vec<pb::GpuMetrics>) -> Result<Vec<GpuMetrics>, Status> {
    use skiff_model::gpu::MAX_GPUS_PER_NODE;
    if metrics.len() > MAX_GPUS_PER_NODE {
        return Err(Status::invalid_argument(format!(
            "gpu_metrics: {} samples; at most {MAX_GPUS_PER_NODE}",
            metrics.len()
        )));
    }
    for (i, m) in metrics.iter().enumerate() {
        if m.uuid.is_empty() || m.uuid.len() > 253 {
            return Err(Status::invalid_argument(format!(
                "gpu_metrics[{i}].uuid: must be 1 to 253 characters"
            )));
        }
        if m.throttle_reasons.len() > 32 || m.throttle_reasons.iter().any(|t| t.len() > 64) {
            return Err(Status::invalid_argument(format!(
                "gpu_metrics[{i}].throttle_reasons: at most 32 of at most 64 characters"
            )));
        }
    }
    Ok(metrics.into_iter().map(Into::into).collect())
}

type AllocStream = Pin<Box<dyn Stream<Item = Result<pb::AllocationSet, Status>> + Send>>;

impl NodeService {
    /// The subnet node `name` holds, else the first free one of the
    /// range (empty when no range is set).
    fn assign_subnet(&self, name: &str) -> Result<String, Status> {
        use skiff_model::subnet::{first_free, Subnet};
        let state = self.ctx.store.state();
        if let Some(held) = state.nodes.get(name).filter(|n| !n.subnet.is_empty()) {
            return Ok(held.subnet.clone());
        }
        let Some(range) = self.ctx.node_subnets else {
            return Ok(String::new());
        };
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        offered.retain(|_, at| at.elapsed() < OFFER_HELD);
        let taken: Vec<Subnet> = state
            .nodes
            .values()
            .map(|n| n.subnet.as_str())
            .chain(offered.keys().map(String::as_str))
            .filter_map(|s| Subnet::parse(s).ok())
            .collect();
        first_free(&range, &taken)
            .map(|s| {
                let s = s.to_string();
                offered.insert(s.clone(), std::time::Instant::now());
                s
            })
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "no /24 of --node-subnets {range} is free for node {name:?}; give the servers a larger range"
                ))
            })
    }
}

#[tonic::async_trait]
impl pb::node_api_server::NodeApi for NodeService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = crate::auth::caller(&req, &self.ctx.tls)?;
        let r = req.into_inner();
        check_node_name(&r.name)?;
        who.require_node(&self.ctx, &r.name, "register")?;
        // The wire message becomes model values at the edge (a link level
        // this server does not know is refused here), then the model's
        // rules decide.
        let capacity: Resources = r
            .capacity
            .ok_or_else(|| Status::invalid_argument("capacity: is required"))?
            .into();
        let reserved: Resources = r.reserved.map(Into::into).unwrap_or_default();
        let gpus: Vec<Gpu> = r.gpus.into_iter().map(Into::into).collect();
        let gpu_links = r
            .gpu_links
            .into_iter()
            .enumerate()
            .map(|(i, l)| skiff_proto::gpu_link_from_wire(l, &format!("gpu_links[{i}]")))
            .collect::<Result<Vec<GpuLink>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        check_registration(&Registration {
            labels: &r.labels,
            capacity,
            reserved,
            address: &r.address,
            gpus: &gpus,
            gpu_links: &gpu_links,
        })
        .map_err(refused)?;
        if !r.subnet.is_empty() {
            skiff_model::subnet::Subnet::parse(&r.subnet)
                .map_err(|e| Status::invalid_argument(format!("subnet: {e}")))?;
        }
        let dynamic_ports = skiff_model::ports::PortRange::parse(&r.dynamic_ports)
            .map_err(|rule| Status::invalid_argument(format!("dynamic_ports: {rule}")))?;
        let asked = r.subnet.clone();
        let mut registration = NodeRegistration {
            dynamic_ports,
            metrics_address: r.metrics_address,
            subnet: r.subnet,
            image_roots: r.image_roots,
            name: r.name.clone(),
            labels: r.labels,
            capacity,
            reserved,
            address: r.address,
            agent_version: r.agent_version,
            gpus,
            gpu_links,
            gpu_driver: skiff_model::GpuDriver {
                driver_version: r.gpu_driver_version.chars().take(64).collect(),
                cuda_version: r.cuda_version.chars().take(32).collect(),
            },
        };
        // A subnet of the range for a node that has none (another server
        // may hand out the same one at once: the state machine refuses
        // the second, which then takes the next).
        let mut applied;
        let mut tries = 0;
        loop {
            if asked.is_empty() {
                registration.subnet = self.assign_subnet(&r.name)?;
            }
            applied = self
                .ctx
                .commit(&Command::RegisterNode {
                    registration: registration.clone(),
                })
                .await?;
            match &applied.outcome {
                skiff_store::Outcome::Refused(why @ skiff_store::Refusal::SubnetTaken { .. }) => {
                    tries += 1;
                    if !asked.is_empty() || tries >= 5 {
                        return Err(Status::already_exists(why.to_string()));
                    }
                }
                _ => break,
            }
        }
        let subnet = self
            .ctx
            .store
            .state()
            .nodes
            .get(&r.name)
            .map(|n| n.subnet.clone())
            .unwrap_or_default();
        let nodes = self.ctx.store.state().nodes.len();
        self.ctx
            .heartbeats
            .beat(&r.name, self.ctx.liveness.ttl(nodes));
        tracing::info!(node = %r.name, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            index: applied.index,
            subnet,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let who = crate::auth::caller(&req, &self.ctx.tls)?;
        let r = req.into_inner();
        let name = r.name;
        check_node_name(&name)?;
        who.require_node(&self.ctx, &name, "heartbeat")?;
        if !self.ctx.store.state().nodes.contains_key(&name) {
            return Err(Status::not_found(format!(
                "node {name:?} is not registered; register first"
            )));
        }
        let metrics = check_gpu_metrics(r.gpu_metrics)?;
        let usage = check_usage(r.usage)?;
        Ok(Response::new(
            heartbeat(&self.ctx, &name, metrics, usage).await,
        ))
    }

    type WatchAllocationsStream = AllocStream;

    async fn watch_allocations(
        &self,
        req: Request<pb::WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        let who = crate::auth::caller(&req, &self.ctx.tls)?;
        let r = req.into_inner();
        check_node_name(&r.node)?;
        who.require_node(&self.ctx, &r.node, "watch allocations")?;
        let store = self.ctx.store.clone();
        let mut applied = store.subscribe();
        // An agent resuming here after a failover has seen `min_index`:
        // never answer with an older view.
        if tokio::time::timeout(
            std::time::Duration::from_secs(10),
            applied.wait_for(|a| *a >= r.min_index),
        )
        .await
        .is_err()
        {
            return Err(Status::unavailable(format!(
                "this server has not reached index {} yet; retry",
                r.min_index
            )));
        }
        let node = r.node;
        // Subscribed before the first look at the state: no change after
        // that look goes unrung.
        let mut bell = self.bells.subscribe(&store, &node);
        let without_peers = r.without_peers;
        let secrets = self.ctx.secrets.clone();
        let network = self.network.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            // What this stream has sent. The first message resets the
            // agent's view; later ones carry changes.
            let mut sent = Sent {
                without_peers,
                ..Sent::default()
            };
            let mut first = true;
            // Peer changes go out at most once per PEER_GAP: a join storm
            // of N nodes costs each watch a few messages, not N.
            let mut peers_at = tokio::time::Instant::now();
            loop {
                let now = tokio::time::Instant::now();
                sent.hold_peers = without_peers || (!first && now < peers_at + PEER_GAP);
                let (change, pending) = {
                    let state = store.state();
                    let net = network.get(&state);
                    let change = alloc_changes(&state, &net, &node, &mut sent, first, &secrets);
                    (change, !without_peers && net.peers.version != sent.peers)
                };
                if let Some(messages) = change {
                    if messages.iter().any(|m| m.peers.is_some()) {
                        peers_at = now;
                    }
                    for m in messages {
                        if tx.send(Ok(m)).await.is_err() {
                            return; // the agent went away
                        }
                    }
                }
                first = false;
                let next = bell.changed();
                let woke = if pending {
                    tokio::time::timeout_at(peers_at + PEER_GAP, next)
                        .await
                        .unwrap_or(Ok(()))
                } else {
                    next.await
                };
                if woke.is_err() {
                    let _ = tx
                        .send(Err(Status::unavailable("the server is shutting down")))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn check_metrics_token(
        &self,
        req: Request<pb::CheckMetricsTokenRequest>,
    ) -> Result<Response<pb::CheckMetricsTokenResponse>, Status> {
        let who = crate::auth::caller(&req, &self.ctx.tls)?;
        match &who {
            crate::auth::Caller::Node(n) => {
                who.require_node(&self.ctx, n, "check metrics tokens")?
            }
            crate::auth::Caller::Trusted => {}
            _ => {
                return Err(Status::permission_denied(
                    "only nodes ask whether a metrics token holds",
                ))
            }
        }
        let r = req.into_inner();
        if r.authorization.len() > 1024 {
            return Err(Status::invalid_argument(
                "authorization: at most 1024 bytes",
            ));
        }
        let said = crate::auth::metrics_bearer(&self.ctx, Some(&r.authorization));
        Ok(Response::new(pb::CheckMetricsTokenResponse {
            allowed: said.is_ok(),
            reason: said.err().unwrap_or_default(),
        }))
    }

    async fn update_alloc_status(
        &self,
        req: Request<pb::UpdateAllocStatusRequest>,
    ) -> Result<Response<pb::UpdateAllocStatusResponse>, Status> {
        let who = crate::auth::caller(&req, &self.ctx.tls)?;
        let r = req.into_inner();
        check_node_name(&r.node)?;
        who.require_node(&self.ctx, &r.node, "report allocations")?;
        if r.updates.len() > MAX_UPDATES {
            return Err(Status::invalid_argument(format!(
                "updates: {} entries; at most {MAX_UPDATES} per request",
                r.updates.len()
            )));
        }
        let mut updates = Vec::with_capacity(r.updates.len());
        for (i, u) in r.updates.into_iter().enumerate() {
            let status =
                skiff_proto::alloc_status_from_wire(u.status, &format!("updates[{i}].status"))
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !u.image_digest.is_empty() {
                skiff_model::registry_ref::check_digest(&u.image_digest).map_err(|why| {
                    Status::invalid_argument(format!("updates[{i}].image_digest: {why}"))
                })?;
            }
            if !u.address.is_empty() && u.address.parse::<std::net::IpAddr>().is_err() {
                return Err(Status::invalid_argument(format!(
                    "updates[{i}].address: {:?} is not an IP address",
                    skiff_model::error::clipped(&u.address)
                )));
            }
            updates.push(AllocUpdate {
                image_digest: u.image_digest,
                address: u.address,
                alloc_id: u.alloc_id,
                status,
                exit_code: u.exit_code,
                message: u.message.chars().take(1024).collect(),
                restart_count: u.restart_count,
                healthy: u.healthy,
                reason: skiff_proto::reason_from_wire(u.reason, &format!("updates[{i}].reason"))
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            });
        }
        let applied = self
            .ctx
            .commit(&Command::UpdateAllocStatus {
                node: r.node,
                updates,
                at_ms: crate::ctx::now_ms(),
            })
            .await?;
        Ok(Response::new(pb::UpdateAllocStatusResponse {
            index: applied.index,
        }))
    }
}

/// Most bytes of allocations in one message of the allocation watch (an
/// agent takes messages of up to 16 MiB). Small: a stream keeps a buffer
/// the size of its largest message for as long as it lives, on every
/// node's watch.
const WATCH_MESSAGE_BYTES: usize = 64 * 1024;

/// Most nodes in one message's peer list (about 40 bytes each).
const PEERS_PER_MESSAGE: usize = 512;

/// What an allocation watch has sent.
#[derive(Debug, Default)]
pub struct Sent {
    /// Allocation id -> the modify index seen and a fingerprint of what
    /// was sent (a change the agent does not act on is not sent).
    allocs: HashMap<String, (u64, u64)>,
    /// A fingerprint of the namespaces' image paths and sealed registry
    /// logins sent: a change of either alone is sent too.
    namespaces: u64,
    /// The version of the peer list sent (`PeerList::version`); 0: none
    /// sent yet.
    peers: u64,
    /// A fingerprint of the cluster's endpoints sent; 0: none sent yet.
    endpoints: u64,
    /// A fingerprint of the namespaces' members sent; 0: none sent yet.
    members: u64,
    /// The state's index when this was last brought up to date; 0: never.
    index: u64,
    /// Leave peer changes for later (the watch paces them).
    pub hold_peers: bool,
    /// Never send the peer list (the node has no bridge network).
    pub without_peers: bool,
}

/// The least time between two peer-list messages on one watch.
const PEER_GAP: std::time::Duration = std::time::Duration::from_millis(1000);

/// The messages that bring an agent following `node` from what `sent`
/// records to the state's allocations (all of them, with a reset, when
/// `reset`); `None` when nothing changed. Updates `sent`. Only what changed
/// is converted; registry logins are opened with the ring's key (read
/// only when a namespace of the node holds some).
pub fn alloc_changes(
    state: &skiff_store::State,
    net: &ClusterNetwork,
    node: &str,
    sent: &mut Sent,
    reset: bool,
    keys: &crate::secrets::Keyring,
) -> Option<Vec<pb::AllocationSet>> {
    alloc_changes_within(state, net, node, sent, reset, keys, WATCH_MESSAGE_BYTES)
}

/// A fingerprint of what an agent acts on in `a`: all but the servers'
/// own bookkeeping (the indexes, and a rollout's verdict on the replica).
/// Every field is named, so a new one is a decision here.
fn agent_print(a: &Allocation) -> u64 {
    use std::hash::{Hash, Hasher};
    let Allocation {
        id,
        job,
        job_version,
        replica,
        node,
        task,
        gpus,
        ports,
        unhealthy_gpus,
        desired,
        status,
        exit_code,
        message,
        restart_count,
        healthy,
        reason,
        deploy_health: _,
        healthy_since_ms,
        create_time_ms,
        gang,
        address,
        create_index: _,
        modify_index: _,
    } = a;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, job, job_version, replica, node, task, gpus, ports).hash(&mut h);
    (
        unhealthy_gpus,
        desired,
        status,
        exit_code,
        message,
        restart_count,
    )
        .hash(&mut h);
    (
        healthy,
        reason,
        healthy_since_ms,
        create_time_ms,
        gang,
        address,
    )
        .hash(&mut h);
    h.finish()
}

fn alloc_changes_within(
    state: &skiff_store::State,
    net: &ClusterNetwork,
    node: &str,
    sent_all: &mut Sent,
    reset: bool,
    keys: &crate::secrets::Keyring,
    budget: usize,
) -> Option<Vec<pb::AllocationSet>> {
    use prost::Message as _;
    use std::hash::{Hash, Hasher};
    // Most entries concern other nodes: skip them without looking at this
    // node's allocations.
    let seen = std::mem::replace(&mut sent_all.index, state.index);
    if !reset
        && seen != 0
        && state.allocs_changed_on(node) <= seen
        && state.access_changed_at() <= seen
        && (sent_all.hold_peers || net.peers.version == sent_all.peers)
        && net.endpoints_print == sent_all.endpoints
        && net.members_print == sent_all.members
    {
        return None;
    }
    let allocs: Vec<&Allocation> = state.allocs_on_node(node);
    let sent = &mut sent_all.allocs;
    if reset {
        sent.clear();
    }
    let namespaces: std::collections::BTreeSet<&str> = allocs
        .iter()
        .map(|a| skiff_model::split_job_key(&a.job).0)
        .collect();
    let fingerprint = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for ns in &namespaces {
            ns.hash(&mut h);
            if let Some(n) = state.access.namespaces.get(*ns) {
                n.policy.image_paths.hash(&mut h);
            }
            for l in state.access.registry_logins.get(*ns).into_iter().flatten() {
                (&l.1.registry, &l.1.username, &l.1.sealed).hash(&mut h);
            }
        }
        h.finish()
    };
    // What changed for the agent: a rollout's verdict on a replica
    // (`deploy_health`) is the servers' business, and a write that set
    // only that is not sent (it would wake the node for nothing).
    let mut changed: Vec<pb::Allocation> = Vec::new();
    for a in allocs.iter().copied() {
        let held = sent.get(&a.id).copied();
        if held.is_some_and(|(index, _)| index == a.modify_index) {
            continue;
        }
        let print = agent_print(a);
        sent.insert(a.id.clone(), (a.modify_index, print));
        if held.is_none_or(|(_, before)| before != print) {
            let mut m: pb::Allocation = a.into();
            m.deploy_health = None;
            changed.push(m);
        }
    }
    let listed: std::collections::HashSet<&str> = allocs.iter().map(|a| a.id.as_str()).collect();
    let mut removed: Vec<String> = sent
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .cloned()
        .collect();
    removed.sort();
    if reset {
        sent_all.peers = 0;
    }
    let peers = if sent_all.without_peers || (sent_all.hold_peers && !reset) {
        None
    } else {
        net.peers.message_for(node, sent_all.peers)
    };
    let endpoints_changed = reset || net.endpoints_print != sent_all.endpoints;
    let members_changed = reset || net.members_print != sent_all.members;
    if !reset
        && changed.is_empty()
        && removed.is_empty()
        && fingerprint == sent_all.namespaces
        && peers.is_none()
        && !endpoints_changed
        && !members_changed
    {
        return None;
    }
    sent_all.namespaces = fingerprint;
    if !sent_all.hold_peers || reset {
        sent_all.peers = net.peers.version;
    }
    sent_all.endpoints = net.endpoints_print;
    sent_all.members = net.members_print;
    let sent = &mut sent_all.allocs;
    for id in &removed {
        sent.remove(id);
    }
    let image_paths: std::collections::BTreeMap<String, pb::ImagePaths> = allocs
        .iter()
        .filter_map(|a| {
            let ns = skiff_model::split_job_key(&a.job).0;
            let paths = &state.access.namespaces.get(ns)?.policy.image_paths;
            (!paths.is_empty()).then(|| {
                let paths = pb::ImagePaths {
                    paths: paths.clone(),
                };
                (ns.to_string(), paths)
            })
        })
        .collect();
    let mut messages = vec![pb::AllocationSet {
        index: state.index,
        reset,
        removed,
        ..Default::default()
    }];
    let mut bytes = 0;
    for m in changed {
        let len = m.encoded_len();
        let current = messages.last_mut().expect("one message at least");
        if bytes > 0 && bytes + len > budget {
            current.partial = true;
            messages.push(pb::AllocationSet {
                index: state.index,
                ..Default::default()
            });
            bytes = 0;
        }
        bytes += len;
        messages.last_mut().expect("just pushed").allocs.push(m);
    }
    let holding = namespaces
        .iter()
        .any(|ns| state.access.registry_logins.contains_key(*ns));
    let key = holding.then(|| keys.current());
    let registry_logins = namespaces
        .iter()
        .filter_map(|ns| {
            let logins: Vec<pb::RegistryLogin> =
                crate::registry_logins::opened(key.as_ref()?, state, ns)
                    .into_iter()
                    .map(|l| pb::RegistryLogin {
                        registry: l.registry,
                        username: l.username,
                        password: l.password,
                    })
                    .collect();
            (!logins.is_empty()).then(|| (ns.to_string(), pb::RegistryLogins { logins }))
        })
        .collect();
    // A whole peer list goes in parts, a message each, so that no message
    // (nor the buffer a stream keeps at its largest message's size) grows
    // with the cluster: the first part replaces the agent's list, the
    // others add to it.
    let mut peers = peers;
    if let Some(p) = peers.as_mut() {
        while p.nodes.len() > PEERS_PER_MESSAGE {
            let rest = p.nodes.split_off(PEERS_PER_MESSAGE);
            let part = pb::Peers {
                nodes: std::mem::replace(&mut p.nodes, rest),
                hosts: p.hosts.clone(),
                delta: p.delta,
                removed: std::mem::take(&mut p.removed),
            };
            p.delta = true;
            let current = messages.last_mut().expect("one message at least");
            current.peers = Some(part);
            current.partial = true;
            messages.push(pb::AllocationSet {
                index: state.index,
                ..Default::default()
            });
        }
    }
    let last = messages.last_mut().expect("one message at least");
    last.partial = false;
    last.image_paths = image_paths;
    last.registry_logins = registry_logins;
    last.peers = peers;
    last.endpoints = endpoints_changed.then(|| net.endpoints.as_ref().clone());
    last.members = members_changed.then(|| net.members.as_ref().clone());
    Some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::JobSpec;

    /// What node n1's watch sends, in parts of at most ~3 KB.
    fn n1_changes(
        state: &skiff_store::State,
        sent: &mut Sent,
        reset: bool,
        key: &crate::secrets::Keyring,
    ) -> Option<Vec<pb::AllocationSet>> {
        alloc_changes_within(
            state,
            &ClusterNetwork::of(state),
            "n1",
            sent,
            reset,
            key,
            3000,
        )
    }

    fn alloc(id: &str, node: &str, env_bytes: usize) -> Allocation {
        let mut task = JobSpec::from_yaml("name: j\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        task.env.insert("PAD".into(), "x".repeat(env_bytes));
        let mut a = Allocation::new(id, "j", 1, 0, node, task);
        a.modify_index = 1;
        a
    }

    #[test]
    fn the_allocation_watch_sends_changes_and_splits_large_ones() {
        let mut state = skiff_store::State::default();
        for i in 0..10 {
            let a = alloc(&format!("a{i}"), "n1", 1000);
            state.allocs.insert(a.id.clone(), a);
        }
        let other = alloc("b0", "n2", 10);
        state.allocs.insert(other.id.clone(), other);
        state.rebuild_indexes();
        let mut sent = Sent::default();
        let key = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        // The first message set is everything.
        let first = n1_changes(&state, &mut sent, true, &key).unwrap();
        assert!(first.len() >= 4, "{}", first.len());
        assert!(first[0].reset && first[1..].iter().all(|m| !m.reset));
        assert!(first[..first.len() - 1].iter().all(|m| m.partial));
        assert!(!first.last().unwrap().partial);
        let ids: Vec<&str> = first
            .iter()
            .flat_map(|m| m.allocs.iter().map(|a| a.id.as_str()))
            .collect();
        assert_eq!(ids.len(), 10, "all of n1's, none of n2's: {ids:?}");
        // Nothing changed: nothing to send.
        assert!(n1_changes(&state, &mut sent, false, &key).is_none());
        // A rollout's verdict on a replica alone: the agent is not woken.
        let a2 = state.allocs.get_mut("a2").unwrap();
        (a2.deploy_health, a2.modify_index) = (Some(true), 2);
        assert!(n1_changes(&state, &mut sent, false, &key).is_none());
        // One changes, one goes: only those.
        let a3 = state.allocs.get_mut("a3").unwrap();
        (a3.status, a3.modify_index) = (skiff_model::AllocStatus::Running, 3);
        state.allocs.remove("a7");
        let next = n1_changes(&state, &mut sent, false, &key).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].allocs.len(), 1);
        assert_eq!(next[0].allocs[0].id, "a3");
        assert_eq!(next[0].removed, ["a7"]);
        assert!(!next[0].reset && !next[0].partial);
        // A new stream starts over with everything.
        let again = alloc_changes_within(
            &state,
            &ClusterNetwork::of(&state),
            "n1",
            &mut sent,
            true,
            &key,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].allocs.len(), 9);
        assert!(again[0].reset);
    }

    #[test]
    fn the_other_nodes_subnets_are_sent_at_the_start_and_when_they_change() {
        let mut state = skiff_store::State::default();
        let node = |name: &str, subnet: &str, address: &str| {
            let n = crate::peer_list::test_node(name, subnet, address);
            (name.to_string(), n)
        };
        state.nodes.extend([
            node("n1", "10.88.0.0/24", "192.0.2.1:7001"),
            node("n2", "10.88.1.0/24", "192.0.2.2:7001"),
            node("n3", "", "192.0.2.3:7001"),
        ]);
        let mut sent = Sent::default();
        let key = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        let first = n1_changes(&state, &mut sent, true, &key).unwrap();
        let peers = first
            .last()
            .unwrap()
            .peers
            .clone()
            .expect("sent with the reset");
        // The others only, the whole list; a node without a subnet is no
        // route, but its address is a host containers may not open.
        assert!(!peers.delta);
        let listed: Vec<(&str, &str)> = peers
            .nodes
            .iter()
            .map(|n| (n.subnet.as_str(), n.address.as_str()))
            .collect();
        assert_eq!(listed, [("10.88.1.0/24", "192.0.2.2"), ("", "192.0.2.3")]);
        assert!(peers.hosts.is_empty(), "no servers in this state");
        assert!(n1_changes(&state, &mut sent, false, &key).is_none());
        // A node joins: that node alone.
        let before = ClusterNetwork::of(&state);
        state
            .nodes
            .extend([node("n4", "10.88.2.0/24", "192.0.2.4:7001")]);
        let next = alloc_changes_within(
            &state,
            &ClusterNetwork {
                peers: before.peers.next(&state),
                ..ClusterNetwork::of(&state)
            },
            "n1",
            &mut sent,
            false,
            &key,
            3000,
        )
        .unwrap();
        let delta = next.last().unwrap().peers.clone().unwrap();
        assert!(delta.delta);
        assert_eq!(delta.nodes.len(), 1);
        assert_eq!(delta.nodes[0].name, "n4");
    }

    #[test]
    fn a_namespaces_registry_login_reaches_its_nodes_alone_and_its_change_is_sent() {
        use skiff_store::command::Command;
        let mut state = skiff_store::State::default();
        let key = skiff_pki::secrets::SecretsKey::generate();
        let mut index = 0;
        let mut apply = |state: &mut skiff_store::State, cmd: Command| {
            index += 10;
            state.apply(index, &cmd)
        };
        apply(
            &mut state,
            Command::SetSecretsKey {
                key_id: key.id().into(),
            },
        );
        for (ns, node) in [("lab", "n1"), ("ops", "n2")] {
            apply(
                &mut state,
                Command::PutNamespace {
                    namespace: skiff_model::namespace::Namespace {
                        name: ns.into(),
                        ..Default::default()
                    },
                },
            );
            let mut a = alloc(&format!("{ns}-a"), node, 10);
            a.job = format!("{ns}/j");
            state.allocs.insert(a.id.clone(), a);
            let login =
                crate::secrets::seal_login(&key, ns, "r.lab:5000", ns, &format!("pw-{ns}"), 1);
            apply(
                &mut state,
                Command::PutRegistryLogin {
                    namespace: ns.into(),
                    login,
                },
            );
        }
        state.rebuild_indexes();
        let mut sent = Sent::default();
        let keys = crate::secrets::Keyring::holding(key.clone());
        let first = alloc_changes(
            &state,
            &ClusterNetwork::of(&state),
            "n1",
            &mut sent,
            true,
            &keys,
        )
        .unwrap();
        let logins = &first.last().unwrap().registry_logins;
        assert_eq!(
            logins.keys().collect::<Vec<_>>(),
            ["lab"],
            "n1 runs lab's only"
        );
        assert_eq!(logins["lab"].logins[0].password, "pw-lab");
        assert!(alloc_changes(
            &state,
            &ClusterNetwork::of(&state),
            "n1",
            &mut sent,
            false,
            &keys
        )
        .is_none());
        // A new password alone is sent.
        let login = crate::secrets::seal_login(&key, "lab", "r.lab:5000", "lab", "pw-new", 2);
        apply(
            &mut state,
            Command::PutRegistryLogin {
                namespace: "lab".into(),
                login,
            },
        );
        let next = alloc_changes(
            &state,
            &ClusterNetwork::of(&state),
            "n1",
            &mut sent,
            false,
            &keys,
        )
        .unwrap();
        assert!(next[0].allocs.is_empty());
        assert_eq!(next[0].registry_logins["lab"].logins[0].password, "pw-new");
        // Another server's key opens nothing: nothing is sent in its stead.
        let stranger = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        let again = alloc_changes(
            &state,
            &ClusterNetwork::of(&state),
            "n1",
            &mut sent,
            true,
            &stranger,
        )
        .unwrap();
        assert!(again[0].registry_logins.is_empty());
    }

    #[test]
    fn a_large_peer_list_goes_in_parts_that_rebuild_it_whole() {
        let mut state = skiff_store::State::default();
        for i in 0..1200 {
            let n = crate::peer_list::test_node(
                &format!("n{i:04}"),
                &format!("10.{}.{}.0/24", i / 256, i % 256),
                &format!("192.0.2.{}:7001", i % 250),
            );
            state.nodes.insert(n.name.clone(), n);
        }
        let key = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        let messages = alloc_changes(
            &state,
            &ClusterNetwork::of(&state),
            "n0000",
            &mut Sent::default(),
            true,
            &key,
        )
        .unwrap();
        assert_eq!(messages.len(), 3, "1,199 peers in parts of 512");
        assert!(messages[0].reset);
        let (last, parts) = messages.split_last().unwrap();
        assert!(parts.iter().all(|m| m.partial) && !last.partial);
        let peers: Vec<&pb::Peers> = messages.iter().filter_map(|m| m.peers.as_ref()).collect();
        assert!(!peers[0].delta, "the first part replaces");
        assert!(peers[1..].iter().all(|p| p.delta), "the others add");
        assert!(peers.iter().all(|p| p.nodes.len() <= PEERS_PER_MESSAGE));
        let names: std::collections::BTreeSet<&str> = peers
            .iter()
            .flat_map(|p| p.nodes.iter().map(|n| n.name.as_str()))
            .collect();
        assert_eq!(names.len(), 1199);
        assert!(!names.contains("n0000"));
    }

    #[test]
    fn a_held_peer_change_is_sent_once_the_watch_lets_it_go() {
        let mut state = skiff_store::State::default();
        let key = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        let node = |name: &str| crate::peer_list::test_node(name, "", "192.0.2.1:7001");
        state.nodes.insert("n1".into(), node("n1"));
        let net = ClusterNetwork::of(&state);
        let mut sent = Sent::default();
        assert!(alloc_changes(&state, &net, "n1", &mut sent, true, &key).is_some());
        state.index = 2;
        state.nodes.insert("n2".into(), node("n2"));
        let net = ClusterNetwork {
            peers: net.peers.next(&state),
            ..ClusterNetwork::of(&state)
        };
        sent.hold_peers = true;
        assert!(
            alloc_changes(&state, &net, "n1", &mut sent, false, &key).is_none(),
            "held"
        );
        sent.hold_peers = false;
        let m = alloc_changes(&state, &net, "n1", &mut sent, false, &key).expect("let go");
        let peers = m.last().unwrap().peers.clone().unwrap();
        assert!(peers.delta);
        assert_eq!(peers.nodes[0].name, "n2");
        assert!(alloc_changes(&state, &net, "n1", &mut sent, false, &key).is_none());
    }

    #[test]
    fn a_watch_without_peers_never_gets_the_node_list() {
        let mut state = skiff_store::State::default();
        let key = crate::secrets::Keyring::holding(skiff_pki::secrets::SecretsKey::generate());
        let node = |name: &str| crate::peer_list::test_node(name, "", "192.0.2.1:7001");
        state.nodes.insert("n1".into(), node("n1"));
        state.nodes.insert("n2".into(), node("n2"));
        let net = ClusterNetwork::of(&state);
        let mut with = Sent::default();
        let first = alloc_changes(&state, &net, "n1", &mut with, true, &key).unwrap();
        assert!(first.iter().any(|m| m.peers.is_some()), "a bridged node's");
        let mut without = Sent {
            without_peers: true,
            hold_peers: true,
            ..Sent::default()
        };
        let first = alloc_changes(&state, &net, "n1", &mut without, true, &key).unwrap();
        assert!(first.iter().all(|m| m.peers.is_none()));
        assert!(first[0].reset, "the reset is sent all the same");
        state.index = 2;
        state.nodes.insert("n3".into(), node("n3"));
        let net = ClusterNetwork {
            peers: net.peers.next(&state),
            ..ClusterNetwork::of(&state)
        };
        assert!(
            alloc_changes(&state, &net, "n1", &mut without, false, &key).is_none(),
            "a node joining is no news to it"
        );
    }
}
