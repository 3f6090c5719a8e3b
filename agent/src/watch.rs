//! The allocation watch's view: the node's allocations as the servers'
//! stream builds them up, and what comes with them (image paths, registry
//! logins, the other nodes, the cluster's endpoints).

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_model::Allocation;
use skiff_proto::pb;

/// The node's allocations as the watch's messages built them up: a reset
/// starts over, each message adds, replaces and removes, and a change is
/// complete at the first message that is not `partial`.
#[derive(Debug, Default)]
pub struct AllocView {
    /// Shared with the sets handed to the reconciler: a new set costs a
    /// reference per allocation, not a copy.
    allocs: BTreeMap<String, Arc<Allocation>>,
    /// The other nodes as the servers listed them (whole, then changes).
    peers: BTreeMap<String, pb::PeerNode>,
}

impl AllocView {
    /// Takes one message; returns what the servers say of the namespaces
    /// once the change it belongs to is complete.
    pub fn apply(&mut self, set: pb::AllocationSet) -> Option<NamespaceNews> {
        if set.reset {
            self.allocs.clear();
        }
        for id in &set.removed {
            self.allocs.remove(id);
        }
        for a in set.allocs {
            let id = a.id.clone();
            match Allocation::try_from(a) {
                Ok(a) => {
                    self.allocs.insert(id, Arc::new(a));
                }
                Err(e) => {
                    // Not acted on, as if not listed.
                    self.allocs.remove(&id);
                    tracing::warn!(alloc = ?id, error = %e, "ignoring a malformed allocation");
                }
            }
        }
        let peers = set.peers.map(|p| self.follow_peers(p));
        (!set.partial).then(|| NamespaceNews {
            peers,
            endpoints: set.endpoints,
            members: set
                .members
                .map(crate::network::firewall::Members::from_wire),
            image_paths: set
                .image_paths
                .into_iter()
                .map(|(ns, p)| (ns, p.paths))
                .collect(),
            logins: set
                .registry_logins
                .into_iter()
                .map(|(ns, l)| {
                    (
                        ns,
                        l.logins
                            .into_iter()
                            .map(crate::image::grants::login_from_wire)
                            .collect(),
                    )
                })
                .collect(),
        })
    }

    /// Takes a peer list (whole, or the changes since the last) and
    /// returns the whole as the network needs it.
    fn follow_peers(&mut self, p: pb::Peers) -> crate::network::peers::Peers {
        if !p.delta {
            self.peers.clear();
        }
        for name in &p.removed {
            self.peers.remove(name);
        }
        for n in p.nodes {
            self.peers.insert(n.name.clone(), n);
        }
        crate::network::peers::Peers::from_list(self.peers.values(), &p.hosts)
    }

    /// The node's allocations, in id order.
    pub fn allocations(&self) -> Vec<Arc<Allocation>> {
        self.allocs.values().cloned().collect()
    }
}

/// What the servers say of the namespaces of the node's allocations.
#[derive(Debug, Default)]
pub struct NamespaceNews {
    /// Where each may read `oci:` layouts besides the node's roots.
    pub image_paths: BTreeMap<String, Vec<String>>,
    /// The registry logins each holds.
    pub logins: BTreeMap<String, Vec<skiff_registry::Login>>,
    /// The other nodes and servers, when they changed.
    pub peers: Option<crate::network::peers::Peers>,
    /// The cluster's endpoints (for the node's DNS), when they changed.
    pub endpoints: Option<pb::Endpoints>,
    /// The cluster's containers by namespace, when they changed.
    pub members: Option<crate::network::firewall::Members>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_alloc(id: &str) -> pb::Allocation {
        let task = skiff_model::JobSpec::from_yaml("name: j\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        (&Allocation::new(id, "j", 1, 0, "n", task)).into()
    }

    #[test]
    fn the_view_follows_resets_changes_removals_and_acts_only_on_whole_changes() {
        let mut view = AllocView::default();
        let (a, b, c) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
        let part = pb::AllocationSet {
            reset: true,
            partial: true,
            allocs: vec![pb_alloc(&a)],
            ..Default::default()
        };
        assert!(view.apply(part).is_none(), "more of the change follows");
        let rest = pb::AllocationSet {
            allocs: vec![pb_alloc(&b)],
            image_paths: [(
                "ns".to_string(),
                pb::ImagePaths {
                    paths: vec!["/srv".into()],
                },
            )]
            .into(),
            registry_logins: [(
                "ns".to_string(),
                pb::RegistryLogins {
                    logins: vec![pb::RegistryLogin {
                        registry: "r.lab:5000".into(),
                        username: "u".into(),
                        password: "p".into(),
                    }],
                },
            )]
            .into(),
            ..Default::default()
        };
        let news = view.apply(rest).expect("the change is whole");
        assert_eq!(news.image_paths["ns"], ["/srv"]);
        assert_eq!(news.logins["ns"][0].username, "u");
        assert_eq!(news.logins["ns"][0].password, "p");
        let ids = |v: &AllocView| {
            v.allocations()
                .into_iter()
                .map(|x| x.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&view), [a.clone(), b.clone()]);
        // A change: one removed, one added.
        view.apply(pb::AllocationSet {
            removed: vec![a.clone()],
            allocs: vec![pb_alloc(&c)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ids(&view), [b.clone(), c.clone()]);
        // A new stream starts over.
        view.apply(pb::AllocationSet {
            reset: true,
            allocs: vec![pb_alloc(&a)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ids(&view), [a]);
    }

    #[test]
    fn the_view_keeps_the_peer_list_whole_from_a_first_list_and_changes() {
        let peer = |name: &str, subnet: &str, last: u8| pb::PeerNode {
            name: name.into(),
            subnet: subnet.into(),
            address: format!("192.0.2.{last}"),
            ..Default::default()
        };
        let mut view = AllocView::default();
        let whole = pb::AllocationSet {
            reset: true,
            peers: Some(pb::Peers {
                nodes: vec![peer("a", "10.88.1.0/24", 1), peer("b", "10.88.2.0/24", 2)],
                hosts: vec!["192.0.2.100".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let peers = view.apply(whole).unwrap().peers.unwrap();
        assert_eq!(peers.nodes.len(), 2);
        assert_eq!(peers.hosts.len(), 3);
        let change = pb::AllocationSet {
            peers: Some(pb::Peers {
                nodes: vec![peer("c", "", 3), peer("a", "10.88.1.0/24", 9)],
                hosts: vec!["192.0.2.100".into()],
                delta: true,
                removed: vec!["b".into()],
            }),
            ..Default::default()
        };
        let peers = view.apply(change).unwrap().peers.unwrap();
        let routes: Vec<(String, String)> = peers
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.via.to_string()))
            .collect();
        assert_eq!(routes, [("a".to_string(), "192.0.2.9".to_string())]);
        let hosts: Vec<String> = peers.hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(hosts, ["192.0.2.3", "192.0.2.9", "192.0.2.100"]);
        // A list that is not a change replaces what was held.
        let again = pb::AllocationSet {
            peers: Some(pb::Peers {
                nodes: vec![peer("d", "10.88.4.0/24", 4)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let peers = view.apply(again).unwrap().peers.unwrap();
        assert_eq!(peers.nodes.len(), 1);
        assert_eq!(peers.nodes[0].name, "d");
    }
}
