//! The cluster's endpoints as the agents' DNS serves them: every job's
//! ready allocations ([`Allocation::is_endpoint`]) that have an address
//! (the container's on a bridge, the node's in host network mode), with
//! their named ports. Sent on each node's allocation watch when they
//! change (`AllocationSet.endpoints`, compared by fingerprint). And the
//! containers of each namespace with who may reach them
//! (`AllocationSet.members`), for the agents' isolation rules.

use std::hash::{Hash, Hasher};

use skiff_model::{workload::host_of, Allocation, NetworkMode};
use skiff_proto::pb;

/// Where clients reach `a`, if anywhere: its container's address, or its
/// node's in host network mode (`network: none` has none).
fn address_of(state: &skiff_store::State, a: &Allocation) -> Option<String> {
    if !a.address.is_empty() {
        return Some(a.address.clone());
    }
    if a.task.network != NetworkMode::Host {
        return None;
    }
    let host = host_of(&state.nodes.get(&a.node)?.address);
    // DNS answers with IPv4 addresses only (A records).
    host.parse::<std::net::Ipv4Addr>().ok().map(|_| host)
}

/// The endpoint of `a`, if it is one.
fn endpoint(state: &skiff_store::State, a: &Allocation) -> Option<pb::Endpoint> {
    if !a.is_endpoint() {
        return None;
    }
    let address = address_of(state, a)?;
    let (namespace, job) = skiff_model::split_job_key(&a.job);
    let host_mode = a.task.network == NetworkMode::Host;
    Some(pb::Endpoint {
        namespace: namespace.to_string(),
        job: job.to_string(),
        alloc_id: a.id.clone(),
        address,
        ports: a
            .published()
            .iter()
            .map(|p| pb::EndpointPort {
                name: p.name.to_string(),
                // In host network mode the container listens on the host port.
                port: u32::from(match (host_mode, p.host) {
                    (true, Some(h)) => h,
                    _ => p.container,
                }),
                protocol: p.protocol.as_str().to_string(),
            })
            .collect(),
    })
}

/// Every endpoint in the cluster, in the state's order (by allocation id),
/// and a fingerprint of them (never 0, which means "none sent").
pub fn endpoints_of(state: &skiff_store::State) -> (pb::Endpoints, u64) {
    let endpoints: Vec<pb::Endpoint> = state
        .allocs
        .values()
        .filter_map(|a| endpoint(state, a))
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in &endpoints {
        (&e.namespace, &e.job, &e.alloc_id, &e.address).hash(&mut h);
        for p in &e.ports {
            (&p.name, p.port, &p.protocol).hash(&mut h);
        }
    }
    (pb::Endpoints { endpoints }, h.finish() | 1)
}

/// Every namespace's containers (allocations not finished that have an
/// address) and the namespaces its policy lets in, by namespace, and the
/// fixed host ports those allocations hold, in one walk over them, with a
/// fingerprint (never 0).
pub fn members_of(state: &skiff_store::State) -> (pb::NetworkMembers, u64) {
    let mut by_ns: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let mut fixed_ports = Vec::new();
    for a in state.allocs.values().filter(|a| !a.status.is_terminal()) {
        if !a.address.is_empty() {
            let ns = skiff_model::split_job_key(&a.job).0;
            by_ns.entry(ns).or_default().push(a.address.clone());
        }
        fixed_ports_of(state, a, &mut fixed_ports);
    }
    fixed_ports.sort();
    fixed_ports.dedup();
    let namespaces: Vec<pb::NamespaceMembers> = by_ns
        .into_iter()
        .map(|(ns, mut addresses)| {
            addresses.sort();
            pb::NamespaceMembers {
                namespace: ns.to_string(),
                addresses,
                network_from: state
                    .access
                    .namespaces
                    .get(ns)
                    .map(|n| n.policy.network_from.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in &namespaces {
        (&n.namespace, &n.addresses, &n.network_from).hash(&mut h);
    }
    fixed_ports.hash(&mut h);
    (
        pb::NetworkMembers {
            namespaces,
            fixed_ports,
        },
        h.finish() | 1,
    )
}

/// Adds to `out` the host ports `a` holds outside its node's dynamic
/// range (a task's fixed `host:` ports), as `HOST:PORT` of the node's
/// IPv4 address.
fn fixed_ports_of(state: &skiff_store::State, a: &Allocation, out: &mut Vec<String>) {
    if a.ports.is_empty() {
        return;
    }
    let Some(node) = state.nodes.get(&a.node) else {
        return;
    };
    let host = host_of(&node.address);
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        return;
    }
    for p in a.ports.iter().filter(|&&p| !node.dynamic_ports.contains(p)) {
        out.push(format!("{host}:{p}"));
    }
}

/// The cluster's endpoints and members with their fingerprints, as of one
/// applied index.
#[derive(Debug)]
pub struct ClusterNetwork {
    pub endpoints: std::sync::Arc<pb::Endpoints>,
    pub endpoints_print: u64,
    pub members: std::sync::Arc<pb::NetworkMembers>,
    pub members_print: u64,
    /// The other nodes and the servers, with the recent changes: a node's
    /// watch sends the whole list once, then what changed.
    pub peers: std::sync::Arc<crate::peer_list::PeerList>,
}

impl ClusterNetwork {
    /// The network as of `state`, with no history of peers.
    pub fn of(state: &skiff_store::State) -> ClusterNetwork {
        Self::after(None, state)
    }

    /// The network as of `state`, following `previous` (made at index
    /// `since`): its peer list goes on from the previous one's, and what
    /// no entry since could have changed (the state's marks) is kept, so
    /// an entry that moved no address costs no walk over every
    /// allocation.
    fn after(
        previous: Option<(u64, &ClusterNetwork)>,
        state: &skiff_store::State,
    ) -> ClusterNetwork {
        use std::sync::Arc;
        let Some((since, previous)) = previous else {
            let (endpoints, endpoints_print) = endpoints_of(state);
            let (members, members_print) = members_of(state);
            return ClusterNetwork {
                endpoints: Arc::new(endpoints),
                endpoints_print,
                members: Arc::new(members),
                members_print,
                peers: Arc::new(crate::peer_list::PeerList::of(state)),
            };
        };
        let peers = if state.nodes_changed_at() <= since {
            previous.peers.clone()
        } else {
            previous.peers.next(state)
        };
        if state.network_changed_at() <= since {
            return ClusterNetwork {
                endpoints: previous.endpoints.clone(),
                endpoints_print: previous.endpoints_print,
                members: previous.members.clone(),
                members_print: previous.members_print,
                peers,
            };
        }
        let (endpoints, endpoints_print) = endpoints_of(state);
        let (members, members_print) = members_of(state);
        ClusterNetwork {
            endpoints: Arc::new(endpoints),
            endpoints_print,
            members: Arc::new(members),
            members_print,
            peers,
        }
    }
}

/// [`ClusterNetwork`] computed once per applied index and shared by every
/// node's allocation watch (each would otherwise walk every allocation
/// after every change).
#[derive(Debug, Default)]
pub struct NetworkCache(std::sync::Mutex<Option<(u64, std::sync::Arc<ClusterNetwork>)>>);

impl NetworkCache {
    /// The cluster's network as of `state`.
    pub fn get(&self, state: &skiff_store::State) -> std::sync::Arc<ClusterNetwork> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*held {
            Some((index, net)) if *index == state.index => net.clone(),
            previous => {
                let previous = previous.as_ref().map(|(at, net)| (*at, net.as_ref()));
                let net = std::sync::Arc::new(ClusterNetwork::after(previous, state));
                *held = Some((state.index, net.clone()));
                net
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{AllocStatus, JobSpec};

    fn ready(id: &str, job: &str, yaml_task: &str, address: &str) -> Allocation {
        let task = JobSpec::from_yaml(&format!("name: j\ntask: {yaml_task}"))
            .unwrap()
            .task;
        let mut a = Allocation::new(id, job, 1, 0, "n1", task);
        a.status = AllocStatus::Running;
        a.healthy = Some(true);
        a.address = address.into();
        a
    }

    #[test]
    fn ready_replicas_with_an_address_are_endpoints_with_their_named_ports() {
        let mut state = skiff_store::State::default();
        let node = crate::peer_list::test_node("n1", "10.88.0.0/24", "192.0.2.7:7001");
        state.nodes.insert("n1".into(), node);
        let bridged = "{image: 'oci:/i', ports: [{name: http, container: 8080}]}";
        let a = ready(&"a".repeat(32), "lab/web", bridged, "10.88.0.5");
        let mut starting = ready(&"b".repeat(32), "lab/web", bridged, "10.88.0.6");
        starting.healthy = None;
        let mut host = ready(
            &"c".repeat(32),
            "db",
            "{image: 'oci:/i', network: host, ports: [{name: pg, host: 5432}]}",
            "",
        );
        host.ports = vec![5432];
        let none = ready(
            &"d".repeat(32),
            "batch",
            "{image: 'oci:/i', network: none}",
            "",
        );
        for x in [a, starting, host, none] {
            state.allocs.insert(x.id.clone(), x);
        }
        let (list, print) = endpoints_of(&state);
        let shown: Vec<String> = list
            .endpoints
            .iter()
            .map(|e| {
                let ports: Vec<String> = e
                    .ports
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.port))
                    .collect();
                format!(
                    "{}/{} {} {}",
                    e.namespace,
                    e.job,
                    e.address,
                    ports.join(",")
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "lab/web 10.88.0.5 http=8080",
                "default/db 192.0.2.7 pg=5432"
            ]
        );
        // A replica turning ready changes the fingerprint; nothing else does.
        assert_eq!(endpoints_of(&state).1, print);
        let b = "b".repeat(32);
        state.allocs.get_mut(&b).unwrap().healthy = Some(true);
        let (more, again) = endpoints_of(&state);
        assert_eq!(more.endpoints.len(), 3);
        assert_ne!(again, print);

        // Members: every container with an address, ready or not, by
        // namespace, with the policy's allow-list.
        let mut policy = skiff_model::namespace::Namespace::from_yaml(
            "name: lab\npolicy: {network_from: [default]}\n",
        )
        .unwrap();
        state.access.namespaces.insert("lab".into(), policy.clone());
        let (members, _) = members_of(&state);
        let shown: Vec<String> = members
            .namespaces
            .iter()
            .map(|n| format!("{} {:?} {:?}", n.namespace, n.addresses, n.network_from))
            .collect();
        assert_eq!(shown, [r#"lab ["10.88.0.5", "10.88.0.6"] ["default"]"#]);
        // The host-network job's fixed port 5432, on its node's address; a
        // dynamic port (inside the node's range) is not listed.
        assert_eq!(members.fixed_ports, ["192.0.2.7:5432"]);
        let b = "b".repeat(32);
        state.allocs.get_mut(&b).unwrap().ports = vec![20_005];
        assert_eq!(members_of(&state).0.fixed_ports, ["192.0.2.7:5432"]);
        let c = "c".repeat(32);
        state.allocs.get_mut(&c).unwrap().status = AllocStatus::Complete;
        let (members, print) = members_of(&state);
        assert!(members.fixed_ports.is_empty(), "{members:?}");
        policy.policy.network_from.clear();
        state.access.namespaces.insert("lab".into(), policy);
        assert_ne!(members_of(&state).1, print, "a policy change is sent");
    }

    #[test]
    fn every_watch_shares_one_computation_per_applied_index() {
        let mut state = skiff_store::State::default();
        state.index = 7;
        let cache = NetworkCache::default();
        let first = cache.get(&state);
        assert!(std::sync::Arc::ptr_eq(&first, &cache.get(&state)));
        state.index = 8;
        assert!(!std::sync::Arc::ptr_eq(&first, &cache.get(&state)));
    }
}
