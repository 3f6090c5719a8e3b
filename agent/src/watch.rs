//! The allocation watch's view: the node's allocations as the servers'
//! stream builds them up, and what comes with them (image paths, registry
//! logins, the other nodes, the cluster's endpoints).

use std::collections::BTreeMap;

use skiff_model::Allocation;
use skiff_proto::pb;

/// The node's allocations as the watch's messages built them up: a reset
/// starts over, each message adds, replaces and removes, and a change is
/// complete at the first message that is not `partial`.
#[derive(Debug, Default)]
pub struct AllocView {
    allocs: BTreeMap<String, Allocation>,
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
                    self.allocs.insert(id, a);
                }
                Err(e) => {
                    // Not acted on, as if not listed.
                    self.allocs.remove(&id);
                    tracing::warn!(alloc = ?id, error = %e, "ignoring a malformed allocation");
                }
            }
        }
        (!set.partial).then(|| NamespaceNews {
            peers: set.peers.map(crate::network::peers::Peers::from_wire),
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

    pub fn allocations(&self) -> Vec<Allocation> {
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
                .map(|x| x.id)
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
}
