//! The rest of the cluster, as the node's bridge network needs it: routes
//! to the other nodes' subnets via their addresses (the host-gateway
//! habit: nodes share a network), and the addresses containers may reach
//! only at published ports. The servers send the list on the allocation
//! watch when it changes.

use std::net::Ipv4Addr;

use serde::Deserialize;
use skiff_model::subnet::Subnet;
use skiff_proto::pb;

/// The routing protocol number the agent marks its routes with (`ip route
/// show proto 83`), so it removes its own and nothing else.
pub const ROUTE_PROTO: &str = "83";

/// Another node's subnet and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    pub subnet: Subnet,
    pub via: Ipv4Addr,
}

/// The other nodes and the cluster's hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    pub nodes: Vec<PeerNode>,
    /// Every other node's and every server's address: containers open
    /// only published ports there...
    pub hosts: Vec<Ipv4Addr>,
    /// ...the ports of the nodes' dynamic ranges (sorted, each once; the
    /// default range when none is known).
    pub ports: Vec<skiff_model::ports::PortRange>,
}

impl Peers {
    /// The list the servers sent (every other node, and the servers'
    /// hosts): a route for each node with a subnet, and every IPv4
    /// address among the nodes' and servers' as a host. Entries that are
    /// not IPv4 (a node on IPv6 or a hostname) are left out, with one
    /// warning naming the first.
    pub fn from_list<'a>(
        list: impl IntoIterator<Item = &'a pb::PeerNode>,
        servers: &[String],
    ) -> Peers {
        let mut nodes = Vec::new();
        let mut hosts = std::collections::BTreeSet::new();
        let mut unusable: Option<(&pb::PeerNode, usize)> = None;
        let mut ports = std::collections::BTreeSet::new();
        for n in list {
            ports
                .insert(skiff_model::ports::PortRange::parse(&n.dynamic_ports).unwrap_or_default());
            let via = n.address.parse::<Ipv4Addr>();
            if let Ok(via) = via {
                hosts.insert(via);
            }
            if n.subnet.is_empty() {
                continue; // no subnet yet: a host, no route
            }
            match (Subnet::parse(&n.subnet), via) {
                (Ok(subnet), Ok(via)) => nodes.push(PeerNode {
                    name: n.name.clone(),
                    subnet,
                    via,
                }),
                _ => match &mut unusable {
                    Some((_, count)) => *count += 1,
                    None => unusable = Some((n, 1)),
                },
            }
        }
        if let Some((n, count)) = unusable {
            tracing::warn!(
                node = %n.name,
                subnet = %n.subnet,
                address = %n.address,
                nodes = count,
                "no route to these nodes' subnets: a subnet or IPv4 address is unusable"
            );
        }
        hosts.extend(servers.iter().filter_map(|h| h.parse::<Ipv4Addr>().ok()));
        Peers {
            nodes,
            hosts: hosts.into_iter().collect(),
            ports: ports.into_iter().collect(),
        }
    }

    /// The routes to install: `(subnet, via)`, leaving out nodes this
    /// host cannot route to through the network (an address of its own or
    /// loopback: several agents on one machine) and subnets that overlap
    /// this node's.
    pub fn routes(&self, own: Option<&Subnet>) -> Vec<(String, Ipv4Addr)> {
        self.nodes
            .iter()
            .filter(|n| !n.via.is_loopback() && !n.via.is_unspecified() && !is_local(n.via))
            .filter(|n| own.is_none_or(|o| !o.overlaps(&n.subnet)))
            .map(|n| (n.subnet.to_string(), n.via))
            .collect()
    }
}

/// An address of this host (binding to it works only then).
fn is_local(ip: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[derive(Deserialize)]
struct RouteEntry {
    dst: String,
    #[serde(default)]
    gateway: String,
}

async fn ip(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run ip (apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes the host's routes marked [`ROUTE_PROTO`] exactly `wanted`.
pub async fn sync_routes(wanted: &[(String, Ipv4Addr)]) -> Result<(), String> {
    let listed = ip(&["-4", "-j", "route", "show", "proto", ROUTE_PROTO]).await?;
    let current: Vec<RouteEntry> = if listed.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        serde_json::from_slice(&listed).map_err(|e| format!("ip -j route: {e}"))?
    };
    for r in &current {
        let kept = wanted
            .iter()
            .any(|(dst, via)| *dst == r.dst && via.to_string() == r.gateway);
        if !kept {
            ip(&["-4", "route", "del", &r.dst, "proto", ROUTE_PROTO]).await?;
        }
    }
    for (dst, via) in wanted {
        let present = current
            .iter()
            .any(|r| r.dst == *dst && r.gateway == via.to_string());
        if !present {
            let via = via.to_string();
            ip(&[
                "-4",
                "route",
                "replace",
                dst,
                "via",
                &via,
                "proto",
                ROUTE_PROTO,
            ])
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_leave_out_this_hosts_own_addresses_and_its_subnet() {
        let wire = pb::Peers {
            nodes: vec![
                pb::PeerNode {
                    name: "far".into(),
                    subnet: "10.88.1.0/24".into(),
                    address: "192.0.2.9".into(),
                    dynamic_ports: "40000-40010".into(),
                },
                pb::PeerNode {
                    name: "same-machine".into(),
                    subnet: "10.88.2.0/24".into(),
                    address: "127.0.0.1".into(),
                    ..Default::default()
                },
                pb::PeerNode {
                    name: "clash".into(),
                    subnet: "10.88.0.0/23".into(),
                    address: "192.0.2.10".into(),
                    ..Default::default()
                },
                pb::PeerNode {
                    name: "v6".into(),
                    subnet: "10.88.3.0/24".into(),
                    address: "2001:db8::1".into(),
                    ..Default::default()
                },
                pb::PeerNode {
                    name: "joining".into(),
                    subnet: String::new(),
                    address: "192.0.2.11".into(),
                    ..Default::default()
                },
            ],
            hosts: vec!["192.0.2.1".into(), "server.lab".into()],
            ..Default::default()
        };
        let peers = Peers::from_list(&wire.nodes, &wire.hosts);
        assert_eq!(peers.nodes.len(), 3, "the IPv6 node has no route");
        let host = |d| Ipv4Addr::new(192, 0, 2, d);
        assert_eq!(
            peers.hosts,
            [Ipv4Addr::LOCALHOST, host(1), host(9), host(10), host(11)],
            "the nodes' and the servers' IPv4 addresses, sorted"
        );
        assert_eq!(
            peers
                .ports
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
            ["20000-32000", "40000-40010"],
            "every node's dynamic range, once each"
        );
        let own = Subnet::parse("10.88.0.0/24").unwrap();
        assert_eq!(
            peers.routes(Some(&own)),
            [("10.88.1.0/24".to_string(), Ipv4Addr::new(192, 0, 2, 9))]
        );
    }
}
