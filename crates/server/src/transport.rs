//! Server-to-server traffic out: the peers' addresses and one link task per
//! peer that carries Raft messages over a client-streaming gRPC call,
//! reconnecting with backoff and telling Raft when a peer is unreachable.
//! The inbound side is the `Peer` service in `peer.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use skiff_proto::pb;
use skiff_store::{RaftMessage, Store, Transport};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::tls::Tls;

/// Messages queued for one peer before new ones are dropped (Raft resends).
const LINK_QUEUE: usize = 4096;
/// Largest message on the peer port's Raft stream and other calls: an
/// append carries about 1 MiB of entries, or one entry as large as the
/// leader made it (a plan for a very large job).
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest snapshot (the whole state), taken only by the snapshot service.
pub const MAX_SNAPSHOT_MESSAGE: usize = 1024 * 1024 * 1024;

/// The peers' addresses and one outbound link per peer.
pub struct PeerTransport {
    id: u64,
    /// Addresses given on the command line; they win over learned ones
    /// (an operator may route peers through a proxy or another interface).
    fixed: HashMap<u64, String>,
    learned: RwLock<HashMap<u64, String>>,
    links: Mutex<HashMap<u64, mpsc::Sender<RaftMessage>>>,
    channels: Mutex<HashMap<String, Channel>>,
    store: OnceLock<Store>,
    runtime: tokio::runtime::Handle,
    tls: Tls,
}

impl PeerTransport {
    pub fn new(
        id: u64,
        fixed: HashMap<u64, String>,
        runtime: tokio::runtime::Handle,
        tls: Tls,
    ) -> Arc<Self> {
        Arc::new(PeerTransport {
            id,
            fixed,
            learned: RwLock::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
            runtime,
            tls,
        })
    }

    /// Connects the transport to the store it reports delivery failures to.
    pub fn attach(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Records addresses learned from the replicated state or a join.
    pub fn learn(&self, id: u64, peer_addr: &str) {
        if id == self.id || peer_addr.is_empty() {
            return;
        }
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        if learned.get(&id).map(String::as_str) != Some(peer_addr) {
            tracing::debug!(peer = id, addr = peer_addr, "peer address learned");
            learned.insert(id, peer_addr.to_string());
        }
    }

    pub fn address(&self, id: u64) -> Option<String> {
        self.fixed.get(&id).cloned().or_else(|| {
            self.learned
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned()
        })
    }

    /// Drops the cached channels, so the next links connect with this
    /// server's renewed certificate (streams under way finish on theirs).
    pub fn forget_channels(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A (cached, lazily connecting) channel to a peer's `Peer` service.
    pub fn channel(&self, id: u64) -> Option<Channel> {
        let addr = self.address(id)?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&addr) {
            return Some(c.clone());
        }
        let ep = self
            .tls
            .to_server(&addr)
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let c = ep.connect_lazy();
        channels.insert(addr, c.clone());
        Some(c)
    }

    fn report_unreachable(&self, peer: u64) {
        if let Some(s) = self.store.get() {
            s.report_unreachable(peer);
        }
    }

    fn report_snapshot(&self, peer: u64, ok: bool) {
        if let Some(s) = self.store.get() {
            s.report_snapshot(peer, ok);
        }
    }

    fn spawn_link(self: &Arc<Self>, to: u64) -> mpsc::Sender<RaftMessage> {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let me = self.clone();
        self.runtime.spawn(async move { me.run_link(to, rx).await });
        tx
    }

    /// Keeps one client stream open to `to`, feeding it queued messages;
    /// reconnects with backoff and reports the peer unreachable meanwhile.
    async fn run_link(self: Arc<Self>, to: u64, mut queue: mpsc::Receiver<RaftMessage>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            let Some(channel) = self.channel(to) else {
                tracing::debug!(peer = to, "no address for peer yet");
                self.report_unreachable(to);
                tokio::time::sleep(backoff).await;
                continue;
            };
            let mut snapshots = pb::peer_snapshot_client::PeerSnapshotClient::new(channel.clone())
                .max_encoding_message_size(MAX_SNAPSHOT_MESSAGE);
            let client = pb::peer_client::PeerClient::new(channel)
                .max_encoding_message_size(MAX_PEER_MESSAGE);
            let (stream_tx, stream_rx) = mpsc::channel::<pb::RaftEnvelope>(256);
            let call = tokio::spawn({
                let mut client = client.clone();
                async move {
                    client
                        .raft(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                        .await
                }
            });
            let mut next = Some(first);
            let failed = loop {
                let msg = match next.take() {
                    Some(m) => m,
                    None => match queue.recv().await {
                        Some(m) => m,
                        None => return,
                    },
                };
                if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                    let ok = send_snapshot(&mut snapshots, &msg).await;
                    self.report_snapshot(to, ok);
                    if !ok {
                        break true;
                    }
                    continue;
                }
                let bytes = match msg.write_to_bytes() {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                if stream_tx
                    .send(pb::RaftEnvelope { message: bytes })
                    .await
                    .is_err()
                {
                    break true; // the call ended: the peer went away
                }
                if call.is_finished() {
                    break true;
                }
            };
            if failed {
                drop(stream_tx);
                let _ = call.await;
                self.report_unreachable(to);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    }
}

async fn send_snapshot(
    client: &mut pb::peer_snapshot_client::PeerSnapshotClient<Channel>,
    msg: &RaftMessage,
) -> bool {
    let Ok(bytes) = msg.write_to_bytes() else {
        return false;
    };
    match tokio::time::timeout(
        Duration::from_secs(60),
        client.snapshot(pb::RaftEnvelope { message: bytes }),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(to = msg.to, error = %e.message(), "snapshot not delivered");
            false
        }
        Err(_) => false,
    }
}

impl PeerTransport {
    /// Queues a message on the link to its peer; never blocks.
    pub fn deliver(self: &Arc<Self>, msg: RaftMessage) {
        let to = msg.to;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.entry(to).or_insert_with(|| self.spawn_link(to));
        match link.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                let snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
                drop(links);
                self.report_unreachable(to);
                if snapshot {
                    self.report_snapshot(to, false);
                }
            }
            Err(mpsc::error::TrySendError::Closed(m)) => {
                *link = self.spawn_link(to);
                let _ = link.try_send(m);
            }
        }
    }
}

/// Wraps the shared transport for the store's `Transport` parameter.
pub struct StoreTransport(pub Arc<PeerTransport>);

impl Transport for StoreTransport {
    fn send(&self, msg: RaftMessage) {
        self.0.deliver(msg)
    }
}
