//! `network: bridge`: each allocation's own network namespace on the
//! node's bridge, set up by the standard CNI plugins (loopback, then
//! bridge with host-local addresses and outbound NAT) and torn down when
//! its run is cleaned up. Everything lives under `DATA_DIR/network`:
//! `netns/<alloc>` (the namespaces), `cni/<alloc>.json` (what was sent to
//! each plugin and what it answered, written before the first call so a
//! crash mid-setup can still be undone), `ipam/` (host-local's leases).
//! Setup and teardown are idempotent; what a crash leaves is torn down
//! when the agent starts again (`orphans`). Before the first setup the
//! node's isolation rules are loaded (`firewall.rs`): containers reach no
//! port on the host.

pub mod cni;
pub mod dns;
pub mod firewall;
pub mod netns;
pub mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The network's name in CNI configurations (and host-local's leases).
const NETWORK: &str = "skiff";

/// How the node's bridge network is made (the agent's flags).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// `--bridge`: the bridge's name (at most 15 characters).
    pub bridge: String,
    /// `--network-subnet`: the node's IPv4 subnet, `A.B.C.D/N`; empty:
    /// the one the servers assign when the node registers.
    pub subnet: String,
    /// `--cni-path`: where the CNI plugins are.
    pub cni_path: Vec<PathBuf>,
    /// `--dns-upstream`: where the node's DNS sends names outside the
    /// cluster.
    pub dns_upstream: dns::Upstream,
    /// `--dynamic-ports`: where the scheduler picks this node's `host: 0`
    /// ports from.
    pub dynamic_ports: skiff_model::ports::PortRange,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "skiff0".into(),
            subnet: String::new(),
            cni_path: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            dns_upstream: dns::Upstream::Host,
            dynamic_ports: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("--bridge {0:?}: 1 to 15 letters, digits, '-', '_' or '.'")]
    Bridge(String),
    #[error(
        "--network-subnet {0:?}: an IPv4 subnet A.B.C.D/N with N from 8 to 30, its host bits zero"
    )]
    Subnet(String),
}

impl NetworkConfig {
    pub fn check(&self) -> Result<(), NetworkError> {
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return Err(NetworkError::Bridge(b.clone()));
        }
        if !self.subnet.is_empty() && skiff_model::subnet::Subnet::parse(&self.subnet).is_err() {
            return Err(NetworkError::Subnet(self.subnet.clone()));
        }
        Ok(())
    }
}

/// A published port: the node's `host` port forwards to the container's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub host: u16,
    pub container: u16,
    pub protocol: skiff_model::ports::Protocol,
}

/// What a set-up allocation has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The namespace the container joins.
    pub netns: PathBuf,
    /// Its IPv4 address on the bridge.
    pub address: Option<String>,
    /// Its `/etc/resolv.conf`, naming the node's DNS (none when the node
    /// cannot serve it: the host's then).
    pub resolv_conf: Option<PathBuf>,
    /// Its published ports, still to be forwarded ([`Network::publish`]).
    pub publish: Option<Publish>,
}

/// The portmap call that forwards an allocation's published ports, chained
/// after its bridge: it changes only the node's rules, never the
/// container's namespace, so it runs while the container starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    id: String,
    /// The allocation's cache as setup saved it, the portmap step's
    /// result still empty.
    cached: Cached,
}

/// One interface's plugin call as sent, and what it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Step {
    ifname: String,
    config: Value,
    #[serde(default)]
    result: Value,
}

/// `cni/<alloc>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    container_id: String,
    netns: PathBuf,
    steps: Vec<Step>,
}

/// The node's bridge network.
#[derive(Debug)]
pub struct Network {
    cfg: NetworkConfig,
    /// The node's subnet (the flag's, else the servers' once registered).
    subnet: std::sync::RwLock<String>,
    dir: PathBuf,
    prepared: AtomicBool,
    /// The isolation rules are loaded.
    firewalled: AtomicBool,
    /// The rest of the cluster, as the servers last said.
    peers: Mutex<peers::Peers>,
    /// The cluster's containers by namespace, as the servers last said.
    members: Mutex<firewall::Members>,
    applying: tokio::sync::Mutex<()>,
    /// One setup or teardown at a time per allocation.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The node's DNS for its containers.
    dns: dns::Dns,
    /// A failure to serve DNS was logged (once is enough).
    dns_warned: AtomicBool,
}

impl Network {
    pub fn new(data_dir: &Path, cfg: NetworkConfig) -> Result<Network, NetworkError> {
        cfg.check()?;
        Ok(Network {
            dns: dns::Dns::new(cfg.dns_upstream.clone()),
            dns_warned: AtomicBool::new(false),
            subnet: std::sync::RwLock::new(cfg.subnet.clone()),
            cfg,
            dir: data_dir.join("network"),
            prepared: AtomicBool::new(false),
            firewalled: AtomicBool::new(false),
            peers: Mutex::default(),
            members: Mutex::default(),
            applying: tokio::sync::Mutex::default(),
            locks: Mutex::default(),
        })
    }

    /// The node's subnet as the servers recorded it (its flag's, or the
    /// one they assigned); ignored when empty.
    pub fn set_subnet(&self, subnet: &str) {
        if !subnet.is_empty() {
            *self.subnet.write().unwrap_or_else(|p| p.into_inner()) = subnet.to_string();
        }
    }

    /// The node's subnet, once known.
    pub fn subnet(&self) -> String {
        self.subnet
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// On the agent's stop: its namespaces' directory unmounted if no
    /// allocation holds a namespace there any more (see
    /// [`netns::release_dir`]).
    pub fn release(&self) {
        match netns::release_dir(&self.netns_dir()) {
            Ok(true) => tracing::debug!("network namespaces' directory unmounted"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot unmount the network namespaces' directory")
            }
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir().join(id)
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        self.dir.join("cni").join(format!("{id}.json"))
    }

    fn resolv_path(&self, id: &str) -> PathBuf {
        self.dir.join("resolv").join(format!("{id}.conf"))
    }

    /// Where the node's DNS listens: the bridge's gateway address, port 53.
    fn dns_addr(&self) -> Option<std::net::SocketAddr> {
        let subnet = skiff_model::subnet::Subnet::parse(&self.subnet()).ok()?;
        Some((subnet.gateway(), 53).into())
    }

    /// The servers sent the cluster's endpoints: the node's DNS answers
    /// with them. Serves DNS if the bridge is already there (an agent
    /// restarted under running containers); otherwise the first setup does.
    pub async fn set_endpoints(&self, endpoints: &skiff_proto::pb::Endpoints) {
        self.dns.set_endpoints(endpoints);
        if let Some(addr) = self.dns_addr() {
            if let Err(e) = self.dns.serve(addr).await {
                tracing::debug!(error = %e, "no DNS until the bridge is made");
            }
        }
    }

    /// Serves the node's DNS (the bridge is there now) and writes the
    /// container's resolv.conf naming it; `None` when DNS cannot be served
    /// (logged once: the container resolves as the host does).
    async fn resolv_conf(&self, id: &str, namespace: &str) -> Result<Option<PathBuf>, String> {
        let Some(addr) = self.dns_addr() else {
            return Ok(None);
        };
        let served = match self.dns.serve(addr).await {
            Ok(at) => at,
            Err(e) => {
                if !self.dns_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "containers resolve names as the host does: no cluster names");
                }
                return Ok(None);
            }
        };
        let std::net::IpAddr::V4(ip) = served.ip() else {
            return Ok(None);
        };
        let path = self.resolv_path(id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a parent"))?;
            std::fs::write(&path, dns::resolv_conf(ip, namespace))
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(Some(path))
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The plugins' configurations, each with the interface it works on:
    /// loopback, the bridge, then (with published ports) portmap chained
    /// after the bridge.
    fn plan(&self, subnet: &str, published: &[Mapping]) -> Vec<(&'static str, Value)> {
        let ipam_dir = self.dir.join("ipam");
        let mut plan = vec![
            ("lo", json!({"type": "loopback"})),
            (
                "eth0",
                json!({
                    "type": "bridge",
                    "bridge": self.cfg.bridge,
                    "isGateway": true,
                    // Outbound NAT is the node's table's (firewall.rs):
                    // it leaves the other nodes' subnets alone.
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir,
                    },
                }),
            ),
        ];
        if !published.is_empty() {
            let mappings: Vec<Value> = published
                .iter()
                .map(|m| {
                    json!({"hostPort": m.host, "containerPort": m.container, "protocol": m.protocol.as_str()})
                })
                .collect();
            plan.push((
                "eth0",
                json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "runtimeConfig": {"portMappings": mappings},
                    // Reachable from the node itself (127.0.0.1 too).
                    "snat": true,
                }),
            ));
        }
        plan
    }

    /// Gives allocation `id` (of a job in `namespace`) its namespace on
    /// the bridge, publishing `published` on the node (tearing down first
    /// whatever an earlier run left).
    pub async fn setup(
        &self,
        id: &str,
        namespace: &str,
        published: &[Mapping],
    ) -> Result<Attachment, String> {
        if !crate::paths::valid_alloc_id(id) {
            return Err(crate::paths::bad_alloc_id(id).to_string());
        }
        let subnet = self.subnet();
        if subnet.is_empty() {
            return Err("this node has no subnet yet: the servers assign one when it registers (--node-subnets), or give the agent --network-subnet".into());
        }
        if !self.firewalled.load(Ordering::Relaxed) {
            // Set first: peers arriving meanwhile are applied after this.
            self.firewalled.store(true, Ordering::Relaxed);
            if let Err(e) = self.apply_peers(&subnet).await {
                self.firewalled.store(false, Ordering::Relaxed);
                return Err(e);
            }
        }
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.teardown_locked(id).await?;
        let netns = self.netns_path(id);
        let dir = self.netns_dir();
        let prepared = self.prepared.load(Ordering::Relaxed);
        let ns = netns.clone();
        tokio::task::spawn_blocking(move || {
            if !prepared {
                netns::prepare_dir(&dir)?;
            }
            netns::create(&ns)
        })
        .await
        .map_err(|e| format!("making the network namespace: {e}"))?
        .map_err(|e| format!("making the network namespace {}: {e}", netns.display()))?;
        self.prepared.store(true, Ordering::Relaxed);
        let mut cached = Cached {
            container_id: crate::paths::container_id(id),
            netns: netns.clone(),
            steps: self
                .plan(&subnet, published)
                .into_iter()
                .map(|(ifname, plugin)| Step {
                    ifname: ifname.to_string(),
                    config: cni::with_network(&plugin, NETWORK, None),
                    result: Value::Null,
                })
                .collect(),
        };
        // Written before any plugin runs: a crash from here on is undone
        // from it.
        self.save(id, &cached)?;
        // Each interface is a network of its own (loopback, the bridge):
        // their ADDs do not depend on each other and run at once.
        let (cid, steps) = (&cached.container_id, &cached.steps);
        let added = tokio::join!(
            self.add(cid, &netns, &steps[0]),
            self.add(cid, &netns, &steps[1])
        );
        let added = match added {
            (Ok(lo), Ok(eth0)) => Ok(vec![lo, eth0]),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let results = match added {
            Ok(results) => results,
            Err(e) => {
                if let Err(undo) = self.teardown_locked(id).await {
                    tracing::warn!(alloc = %id, error = %undo, "undoing a failed network setup");
                }
                return Err(e);
            }
        };
        for (step, result) in cached.steps.iter_mut().zip(results) {
            step.result = result;
        }
        self.save(id, &cached)?;
        let address = cached
            .steps
            .iter()
            .filter(|s| s.ifname != "lo")
            .find_map(|s| cni::first_ipv4(&s.result));
        let publish = (cached.steps.len() > 2).then(|| Publish {
            id: id.to_string(),
            cached: cached.clone(),
        });
        let resolv_conf = self.resolv_conf(id, namespace).await?;
        Ok(Attachment {
            netns,
            address,
            resolv_conf,
            publish,
        })
    }

    /// Forwards the published ports of a set-up allocation (its portmap
    /// ADD). A failure leaves the call recorded for the allocation's
    /// teardown to undo.
    pub async fn publish(&self, p: &Publish) -> Result<(), String> {
        let lock = self.lock(&p.id);
        let _held = lock.lock().await;
        let mut cached = p.cached.clone();
        let (Some(bridge), Some(portmap)) = (cached.steps.get(1), cached.steps.get(2)) else {
            return Ok(());
        };
        // Portmap is chained after the bridge: it takes the bridge's
        // result and passes it on.
        let chained = Step {
            config: cni::with_network(&portmap.config, NETWORK, Some(&bridge.result)),
            ..portmap.clone()
        };
        let result = self
            .add(&cached.container_id, &cached.netns, &chained)
            .await?;
        cached.steps[2].result = result;
        self.save(&p.id, &cached)
    }

    /// The rest of the cluster changed: routes and rules follow (once the
    /// node has set up a bridged allocation; until then they are kept for
    /// it).
    pub async fn set_peers(&self, peers: peers::Peers) {
        let changed = {
            let mut held = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *held != peers;
            *held = peers;
            changed
        };
        if changed && self.rules_wanted() {
            if let Err(e) = self.apply_peers(&self.subnet()).await {
                tracing::warn!(error = %e, "updating the routes to the other nodes");
            }
        }
    }

    /// The cluster's containers by namespace changed: the rules between
    /// containers follow (once the node has set up a bridged allocation).
    pub async fn set_members(&self, members: firewall::Members) {
        self.dns.set_members(&members);
        let changed = {
            let mut held = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *held != members;
            *held = members;
            changed
        };
        if changed && self.rules_wanted() {
            if let Err(e) = self.apply_peers(&self.subnet()).await {
                tracing::warn!(error = %e, "updating the rules between containers");
            }
        }
    }

    /// Whether the node's rules are loaded and kept: since its first
    /// bridged setup, or at once when an agent restarts under bridged
    /// containers.
    fn rules_wanted(&self) -> bool {
        if self.firewalled.load(Ordering::Relaxed) {
            return true;
        }
        let adopted = !self.attached().is_empty() && !self.subnet().is_empty();
        if adopted {
            self.firewalled.store(true, Ordering::Relaxed);
        }
        adopted
    }

    /// Loads the node's rules and routes for the peers and members held
    /// (one load at a time, each with the latest).
    async fn apply_peers(&self, subnet: &str) -> Result<(), String> {
        let _one = self.applying.lock().await;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // This node's own range too: its containers reach its published
        // ports by the node's address.
        if !peers.ports.contains(&self.cfg.dynamic_ports) {
            peers.ports.push(self.cfg.dynamic_ports);
            peers.ports.sort();
        }
        let members = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        firewall::ensure(&self.cfg.bridge, subnet, &peers, &members).await?;
        let own = skiff_model::subnet::Subnet::parse(subnet).ok();
        peers::sync_routes(&peers.routes(own.as_ref())).await
    }

    /// One plugin's ADD for `step`.
    async fn add(&self, container_id: &str, netns: &Path, step: &Step) -> Result<Value, String> {
        cni::run(
            &self.cfg.cni_path,
            cni::Call {
                command: "ADD",
                container_id,
                netns,
                ifname: &step.ifname,
                config: &step.config,
            },
        )
        .await
    }

    fn save(&self, id: &str, cached: &Cached) -> Result<(), String> {
        let path = self.cache_path(id);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a parent"))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(cached)?)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Undoes allocation `id`'s network: each plugin's DEL in reverse
    /// order with what it was sent and answered, then the namespace.
    /// Nothing set up is not an error; a failed DEL keeps what it needs
    /// to be tried again.
    pub async fn teardown(&self, id: &str) -> Result<(), String> {
        if !crate::paths::valid_alloc_id(id) {
            return Err(crate::paths::bad_alloc_id(id).to_string());
        }
        // Every run's cleanup calls this; most runs have nothing here.
        if !self.cache_path(id).exists() && !self.netns_path(id).exists() {
            return Ok(());
        }
        let lock = self.lock(id);
        let _held = lock.lock().await;
        let done = self.teardown_locked(id).await;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        done
    }

    async fn teardown_locked(&self, id: &str) -> Result<(), String> {
        let path = self.cache_path(id);
        if let Ok(bytes) = std::fs::read(&path) {
            let cached: Cached =
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            for step in cached.steps.iter().rev() {
                let prev = (!step.result.is_null()).then_some(&step.result);
                let config = cni::with_network(&step.config, NETWORK, prev);
                cni::run(
                    &self.cfg.cni_path,
                    cni::Call {
                        command: "DEL",
                        container_id: &cached.container_id,
                        netns: &cached.netns,
                        ifname: &step.ifname,
                        config: &config,
                    },
                )
                .await?;
            }
        }
        let ns = self.netns_path(id);
        tokio::task::spawn_blocking(move || netns::remove(&ns))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("releasing the network namespace: {e}"))?;
        for path in [self.resolv_path(id), path] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("removing {}: {e}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The host ports allocation `id`'s network forwards (its portmap
    /// step's mappings; none when nothing is set up).
    pub fn host_ports(&self, id: &str) -> Vec<u16> {
        let Ok(bytes) = std::fs::read(self.cache_path(id)) else {
            return Vec::new();
        };
        let Ok(cached) = serde_json::from_slice::<Cached>(&bytes) else {
            return Vec::new();
        };
        cached
            .steps
            .iter()
            .filter_map(|s| {
                s.config
                    .pointer("/runtimeConfig/portMappings")?
                    .as_array()
                    .cloned()
            })
            .flatten()
            .filter_map(|m| u16::try_from(m.get("hostPort")?.as_u64()?).ok())
            .collect()
    }

    /// The allocations with something set up here (a namespace or a
    /// cached plugin call).
    pub fn attached(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.dir.join("cni"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .chain(
                std::fs::read_dir(self.netns_dir())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string)),
            )
            .filter(|id| crate::paths::valid_alloc_id(id))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Tears down what is set up for allocations not in `keep` (what a
    /// crash left behind).
    pub async fn orphans(&self, keep: &std::collections::HashSet<String>) {
        for id in self.attached() {
            if keep.contains(&id) {
                continue;
            }
            match self.teardown(&id).await {
                Ok(()) => tracing::info!(alloc = %id, "removed a network left behind"),
                Err(e) => {
                    tracing::warn!(alloc = %id, error = %e, "cannot remove a network left behind")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_are_named() {
        let cfg = |bridge: &str, subnet: &str| NetworkConfig {
            bridge: bridge.into(),
            subnet: subnet.into(),
            ..NetworkConfig::default()
        };
        cfg("skiff0", "10.88.0.0/24").check().unwrap();
        let e = cfg("a-bridge-name-too-long", "10.88.0.0/24")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("--bridge"), "{e}");
        for bad in ["10.88.0.0", "10.88.0.0/31", "fd00::/64", "10.88.0/24"] {
            let e = cfg("skiff0", bad).check().unwrap_err();
            assert!(e.to_string().contains("--network-subnet"), "{e}");
        }
    }
}
