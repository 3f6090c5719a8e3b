//! The other nodes and the servers, as each agent's bridge network needs
//! them, kept once for the whole server with a log of recent changes: a
//! node's allocation watch sends the whole list once, then only the nodes
//! that changed since what it sent. A node joining a cluster of N nodes
//! then costs each watch one entry instead of N (N² for the cluster).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use skiff_model::workload::host_of;
use skiff_proto::pb;

/// Most node changes the log keeps; a watch further behind gets the whole
/// list again.
const LOG_ENTRIES: usize = 16_384;

/// The nodes that changed lately, shared by every version of a list (each
/// reads the entries up to its own version).
#[derive(Debug)]
struct Log {
    /// `(version, node)`, oldest first.
    entries: VecDeque<(u64, Arc<str>)>,
    /// Every change of a version at or above this one is in `entries`.
    from: u64,
    /// Most entries kept.
    cap: usize,
}

/// Every node's subnet and host, the servers' hosts, and what changed
/// lately. Immutable but for the shared log: a change makes a new one.
#[derive(Debug)]
pub struct PeerList {
    /// Bumped on every change; 0 is never used (a watch that sent nothing).
    pub version: u64,
    /// A fingerprint of what the list was built from, to find out cheaply
    /// that nothing changed.
    print: u64,
    /// Node name -> its entry (every node, with or without a subnet).
    nodes: BTreeMap<String, pb::PeerNode>,
    /// The servers' hosts, sorted.
    hosts: Vec<String>,
    log: Arc<std::sync::Mutex<Log>>,
}

fn print_of(state: &skiff_store::State) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in state.nodes.values() {
        (&n.name, &n.subnet, host_of(&n.address)).hash(&mut h);
    }
    for s in state.servers.values() {
        (host_of(&s.api_addr), host_of(&s.peer_addr)).hash(&mut h);
    }
    h.finish()
}

fn entries_of(state: &skiff_store::State) -> (BTreeMap<String, pb::PeerNode>, Vec<String>) {
    let nodes = state
        .nodes
        .values()
        .map(|n| {
            let entry = pb::PeerNode {
                name: n.name.clone(),
                subnet: n.subnet.clone(),
                address: host_of(&n.address),
                dynamic_ports: if n.dynamic_ports.is_default() {
                    String::new()
                } else {
                    n.dynamic_ports.to_string()
                },
            };
            (n.name.clone(), entry)
        })
        .collect();
    let mut hosts = std::collections::BTreeSet::new();
    for s in state.servers.values() {
        hosts.insert(host_of(&s.api_addr));
        hosts.insert(host_of(&s.peer_addr));
    }
    hosts.remove("");
    (nodes, hosts.into_iter().collect())
}

impl PeerList {
    /// The list as of `state`, with no history.
    pub fn of(state: &skiff_store::State) -> PeerList {
        Self::logging(state, LOG_ENTRIES)
    }

    fn logging(state: &skiff_store::State, cap: usize) -> PeerList {
        let (nodes, hosts) = entries_of(state);
        PeerList {
            version: 1,
            print: print_of(state),
            nodes,
            hosts,
            log: Arc::new(std::sync::Mutex::new(Log {
                entries: VecDeque::new(),
                from: 2,
                cap,
            })),
        }
    }

    /// The list as of `state`, following `self`: `self` again when nothing
    /// changed (a fingerprint of the nodes, no copies), else a new version
    /// logging the nodes that changed.
    pub fn next(self: &Arc<Self>, state: &skiff_store::State) -> Arc<PeerList> {
        let print = print_of(state);
        if print == self.print {
            return self.clone();
        }
        let (nodes, hosts) = entries_of(state);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // A list made from an older one than the newest (two watches raced
        // to follow the same state) starts a log of its own.
        let newest = log.entries.back().map_or(self.version, |(v, _)| *v);
        if newest != self.version {
            let mut fresh = PeerList::logging(state, log.cap);
            fresh.version = newest + 1;
            fresh.log.lock().unwrap_or_else(|p| p.into_inner()).from = newest + 2;
            return Arc::new(fresh);
        }
        let version = self.version + 1;
        for (name, entry) in &nodes {
            if self.nodes.get(name) != Some(entry) {
                log.entries.push_back((version, Arc::from(name.as_str())));
            }
        }
        for name in self.nodes.keys().filter(|n| !nodes.contains_key(*n)) {
            log.entries.push_back((version, Arc::from(name.as_str())));
        }
        while log.entries.len() > log.cap {
            if let Some((v, _)) = log.entries.pop_front() {
                log.from = log.from.max(v + 1);
            }
        }
        drop(log);
        Arc::new(PeerList {
            version,
            print,
            nodes,
            hosts,
            log: self.log.clone(),
        })
    }

    /// What a watch for `node` that sent version `sent` (0: nothing yet)
    /// sends now: nothing when it is current, the changes since when the
    /// log reaches back that far, else the whole list.
    pub fn message_for(&self, node: &str, sent: u64) -> Option<pb::Peers> {
        if sent == self.version {
            return None;
        }
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if sent == 0 || sent > self.version || sent + 1 < log.from {
            return Some(pb::Peers {
                nodes: self
                    .nodes
                    .values()
                    .filter(|n| n.name != node)
                    .cloned()
                    .collect(),
                hosts: self.hosts.clone(),
                delta: false,
                removed: Vec::new(),
            });
        }
        let start = log.entries.partition_point(|(v, _)| *v <= sent);
        let changed: std::collections::BTreeSet<&str> = log
            .entries
            .range(start..)
            .take_while(|(v, _)| *v <= self.version)
            .map(|(_, name)| name.as_ref())
            .filter(|name| *name != node)
            .collect();
        let mut message = pb::Peers {
            hosts: self.hosts.clone(),
            delta: true,
            ..Default::default()
        };
        for name in changed {
            match self.nodes.get(name) {
                Some(entry) => message.nodes.push(entry.clone()),
                None => message.removed.push(name.to_string()),
            }
        }
        Some(message)
    }
}

/// A ready node with nothing but a name, a subnet and an address, for
/// tests of what the servers send about nodes.
#[cfg(test)]
pub(crate) fn test_node(name: &str, subnet: &str, address: &str) -> skiff_model::Node {
    skiff_model::Node {
        subnet: subnet.into(),
        address: address.into(),
        ..skiff_model::Node::ready(name, Default::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, subnet: &str, address: &str) -> skiff_model::Node {
        test_node(name, subnet, address)
    }

    fn with(state: &mut skiff_store::State, n: skiff_model::Node) {
        state.nodes.insert(n.name.clone(), n);
    }

    #[test]
    fn a_watch_gets_the_whole_list_once_then_only_the_nodes_that_changed() {
        let mut state = skiff_store::State::default();
        for i in 0..50 {
            let n = node(
                &format!("n{i:02}"),
                &format!("10.88.{i}.0/24"),
                &format!("192.0.2.{i}:7001"),
            );
            with(&mut state, n);
        }
        let list = Arc::new(PeerList::of(&state));
        let first = list.message_for("n00", 0).expect("nothing sent yet");
        assert!(!first.delta);
        assert_eq!(first.nodes.len(), 49, "every other node");
        assert!(list.message_for("n00", list.version).is_none());
        assert!(Arc::ptr_eq(&list, &list.next(&state)), "unchanged");

        // One node joins, one moves, one leaves: three entries, not fifty.
        with(&mut state, node("n50", "", "192.0.2.50:7001"));
        with(&mut state, node("n07", "10.88.7.0/24", "192.0.2.99:7001"));
        state.nodes.remove("n09");
        let next = list.next(&state);
        let delta = next.message_for("n00", list.version).unwrap();
        assert!(delta.delta);
        let names: Vec<&str> = delta.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n07", "n50"]);
        assert_eq!(delta.nodes[0].address, "192.0.2.99");
        assert_eq!(delta.nodes[1].subnet, "", "no subnet yet, still a host");
        assert_eq!(delta.removed, ["n09"]);
        // A node never hears of itself.
        let own = next.message_for("n07", list.version).unwrap();
        assert!(own.nodes.iter().all(|n| n.name != "n07"));
    }

    #[test]
    fn a_watch_behind_the_log_gets_the_whole_list() {
        let mut state = skiff_store::State::default();
        let mut list = Arc::new(PeerList::logging(&state, 100));
        let first = list.version;
        for i in 0..110 {
            with(&mut state, node(&format!("n{i}"), "", "192.0.2.1:7001"));
            list = list.next(&state);
        }
        let whole = list.message_for("x", first).unwrap();
        assert!(!whole.delta, "the changes since are no longer all logged");
        assert_eq!(whole.nodes.len(), 110);
        let recent = list.message_for("x", list.version - 5).unwrap();
        assert!(recent.delta);
        assert_eq!(recent.nodes.len(), 5);
    }

    #[test]
    fn two_lists_made_from_one_do_not_mix_their_changes() {
        let mut state = skiff_store::State::default();
        with(&mut state, node("a", "", "192.0.2.1:7001"));
        let base = Arc::new(PeerList::of(&state));
        with(&mut state, node("b", "", "192.0.2.2:7001"));
        let one = base.next(&state);
        with(&mut state, node("c", "", "192.0.2.3:7001"));
        let other = base.next(&state);
        assert!(other.version > one.version, "versions never repeat");
        // A watch that has `one` cannot be brought up to `other` by changes
        // it did not log: it gets the whole list.
        let m = other.message_for("a", one.version).unwrap();
        assert!(!m.delta);
        assert_eq!(m.nodes.len(), 2);
        // The older list still answers for its own version only.
        let m = one.message_for("a", base.version).unwrap();
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].name, "b");
    }
}
