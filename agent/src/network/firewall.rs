//! The rules that keep bridged containers away from the host: a table of
//! Skiff's own per bridge (`table inet skiff_<bridge>`, nftables), made
//! whole in one transaction each time it is ensured. Its input chain drops
//! every new connection that arrives from the bridge, so a container
//! reaches no port on the host (the Skiff server, peer, agent and metrics
//! ports, and anything else listening on 0.0.0.0 or on the bridge's
//! gateway address) but the node's DNS (port 53 of the gateway
//! address); answers to connections the host made pass. Its
//! forward chain drops new connections routed into the bridge from
//! elsewhere (another host that routes the node's subnet to it): only
//! answers, what a port mapping forwarded (DNAT), and connections from the
//! other nodes' containers (their subnets, `@peer_subnets`) get in; and it
//! lets containers open only published ports (the nodes' dynamic ranges,
//! 20000-32000 unless an agent's --dynamic-ports says, TCP or UDP) on
//! the other nodes and the servers (`@cluster_hosts`). Its postrouting chain is the
//! outbound NAT: what leaves the subnet for anywhere but the subnet and
//! the other nodes' subnets is masqueraded (containers reach each other
//! across nodes by their own addresses), and what the node itself sends
//! from loopback to a published port (DNAT) leaves with the bridge's
//! address. A drop is final in nftables
//! whatever other tables accept (iptables-nft's included); the table stays
//! while the node runs bridged allocations.

use std::net::Ipv4Addr;
use std::process::Stdio;

use skiff_proto::pb;
use tokio::io::AsyncWriteExt as _;

use super::peers::Peers;

/// One namespace's containers and the namespaces it lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceMembers {
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
    /// `policy.network_from`: other namespaces whose containers may open
    /// connections to these (`*`: all).
    pub from: Vec<String>,
}

/// The cluster's containers by namespace, as the servers last sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub namespaces: Vec<NamespaceMembers>,
    /// Fixed host ports published on the cluster's nodes (outside their
    /// dynamic ranges), which containers may open too.
    pub fixed_ports: Vec<(Ipv4Addr, u16)>,
}

impl Members {
    /// What the servers sent (addresses that are not IPv4 left out).
    pub fn from_wire(m: pb::NetworkMembers) -> Members {
        Members {
            namespaces: m
                .namespaces
                .into_iter()
                .map(|n| NamespaceMembers {
                    name: n.namespace,
                    addresses: n.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    from: n.network_from,
                })
                .collect(),
            fixed_ports: m
                .fixed_ports
                .iter()
                .filter_map(|hp| {
                    let (host, port) = hp.rsplit_once(':')?;
                    Some((host.parse().ok()?, port.parse().ok()?))
                })
                .collect(),
        }
    }

    /// For each namespace: its containers, and every container allowed to
    /// open connections to them (its own namespace's and those of the
    /// namespaces its policy names).
    fn allowed(&self) -> Vec<(Vec<String>, Vec<String>)> {
        let shown = |ips: &[Ipv4Addr]| ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>();
        self.namespaces
            .iter()
            .filter(|n| !n.addresses.is_empty())
            .map(|n| {
                let mut from: Vec<String> = self
                    .namespaces
                    .iter()
                    .filter(|m| m.name == n.name || n.from.iter().any(|f| f == "*" || *f == m.name))
                    .flat_map(|m| shown(&m.addresses))
                    .collect();
                from.sort();
                from.dedup();
                (shown(&n.addresses), from)
            })
            .collect()
    }
}

/// The table's name for `bridge` (letters, digits and `_`).
pub fn table(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("skiff_{safe}")
}

/// `elements = { a, b };` or nothing for an empty set.
fn elements(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}; ", items.join(", "))
    }
}

/// The ruleset for `bridge` whose containers have addresses of `subnet`,
/// replacing any earlier one atomically: the `inet` table (the host, the
/// routed traffic, NAT) and the `bridge` table (between containers of
/// this bridge, which never reaches the inet hooks).
pub fn ruleset(bridge: &str, subnet: &str, peers: &Peers, members: &Members) -> String {
    let t = table(bridge);
    let subnets: Vec<String> = peers.nodes.iter().map(|n| n.subnet.to_string()).collect();
    let hosts: Vec<String> = peers.hosts.iter().map(|h| h.to_string()).collect();
    // The published ports every node's range allows (the default range
    // when none is known).
    let ranges: Vec<String> = if peers.ports.is_empty() {
        vec![skiff_model::ports::PortRange::default().to_string()]
    } else {
        peers.ports.iter().map(|r| r.to_string()).collect()
    };
    let published = format!("{{ {} }}", ranges.join(", "));
    // Fixed host ports published on the nodes: open too, on their node.
    let fixed: Vec<String> = members
        .fixed_ports
        .iter()
        .map(|(host, port)| format!("{host} . {port}"))
        .collect();
    // The node's DNS, on the bridge's gateway address: the one port of
    // the host containers may reach.
    let dns = match skiff_model::subnet::Subnet::parse(subnet) {
        Ok(s) => format!(
            "\t\tiifname \"{bridge}\" ip daddr {gw} udp dport 53 accept\n\
             \t\tiifname \"{bridge}\" ip daddr {gw} tcp dport 53 accept\n",
            gw = s.gateway()
        ),
        Err(_) => String::new(),
    };
    // Per namespace with containers: `m<i>` its containers, `f<i>` those
    // that may open connections to them.
    let allowed = members.allowed();
    let mut sets = String::new();
    let (mut inbound, mut allow, mut answers) = (String::new(), String::new(), String::new());
    for (i, (inside, from)) in allowed.iter().enumerate() {
        sets.push_str(&format!(
            "\tset m{i} {{ type ipv4_addr; {} }}\n\tset f{i} {{ type ipv4_addr; {} }}\n",
            elements(inside),
            elements(from)
        ));
        inbound.push_str(&format!(
            "\t\toifname \"{bridge}\" ip daddr @m{i} ip saddr @f{i} accept\n"
        ));
        allow.push_str(&format!("\t\tip daddr @m{i} ip saddr @f{i} accept\n"));
        answers.push_str(&format!("\t\tip saddr @m{i} ip daddr @f{i} accept\n"));
    }
    format!(
        "table inet {t} {{}}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tset peer_subnets {{ type ipv4_addr; flags interval; {} }}\n\
         \tset cluster_hosts {{ type ipv4_addr; {} }}\n\
         \tset fixed_ports {{ type ipv4_addr . inet_service; {} }}\n\
         {sets}\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" ct state established,related accept\n\
         {dns}\
         \t\tiifname \"{bridge}\" drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\toifname \"{bridge}\" ct state established,related accept\n\
         \t\toifname \"{bridge}\" ct status dnat accept\n\
         {inbound}\
         \t\toifname \"{bridge}\" iifname != \"{bridge}\" drop\n\
         \t\tiifname \"{bridge}\" ct state new ip daddr . tcp dport @fixed_ports accept\n\
         \t\tiifname \"{bridge}\" ct state new ip daddr . udp dport @fixed_ports accept\n\
         \t\tiifname \"{bridge}\" ct state new ip daddr @cluster_hosts tcp dport != {published} drop\n\
         \t\tiifname \"{bridge}\" ct state new ip daddr @cluster_hosts udp dport != {published} drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr != {subnet} ip daddr != @peer_subnets masquerade\n\
         \t\toifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade\n\
         \t}}\n\
         }}\n\
         table bridge {t} {{}}\n\
         delete table bridge {t}\n\
         table bridge {t} {{\n\
         {sets}\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {subnet} ip daddr {subnet} jump between\n\
         \t}}\n\
         \tchain between {{\n\
         {allow}\
         \t\ttcp flags & (syn | ack) == syn drop\n\
         {answers}\
         \t\tdrop\n\
         \t}}\n\
         }}\n",
        elements(&subnets),
        elements(&hosts),
        elements(&fixed),
    )
}

/// Loads [`ruleset`] with `nft`.
pub async fn ensure(
    bridge: &str,
    subnet: &str,
    peers: &Peers,
    members: &Members,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot run nft (apt-get install nftables) to isolate containers from the host: {e}")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(bridge, subnet, peers, members).as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the isolation rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_what_comes_from_the_bridge_and_replaces_itself() {
        assert_eq!(table("skiff0"), "skiff_skiff0");
        assert_eq!(table("br-lab.1"), "skiff_br_lab_1");
        let r = ruleset(
            "skiff0",
            "10.88.0.0/24",
            &Peers::default(),
            &Members::default(),
        );
        let dns = r
            .find("iifname \"skiff0\" ip daddr 10.88.0.1 udp dport 53 accept")
            .unwrap();
        // Made, deleted and made again in one transaction: idempotent.
        assert!(r.starts_with("table inet skiff_skiff0 {}\ndelete table inet skiff_skiff0\n"));
        let drop = r.find("iifname \"skiff0\" drop").unwrap();
        let answers = r.find("ct state established,related accept").unwrap();
        assert!(answers < drop, "answers pass before the drop: {r}");
        assert!(dns < drop, "the node's DNS is reachable: {r}");
        assert!(r.contains("ip daddr 10.88.0.1 tcp dport 53 accept"), "{r}");
        let routed_in = r
            .find("oifname \"skiff0\" iifname != \"skiff0\" drop")
            .unwrap();
        let mapped = r.find("ct status dnat accept").unwrap();
        assert!(mapped < routed_in, "mapped ports pass before the drop: {r}");
        // Between the bridge's containers: the bridge table, which drops
        // all with no namespaces known.
        assert!(r.contains("delete table bridge skiff_skiff0\n"), "{r}");
        assert!(r.contains("ip saddr 10.88.0.0/24 ip daddr 10.88.0.0/24 jump between"));
        // To the cluster's hosts, only the default range with no node's
        // known; every node's range once known.
        assert!(
            r.contains("ip daddr @cluster_hosts tcp dport != { 20000-32000 } drop"),
            "{r}"
        );
        let peers = Peers {
            ports: vec![
                skiff_model::ports::PortRange::parse("20000-32000").unwrap(),
                skiff_model::ports::PortRange::parse("40000-40010").unwrap(),
            ],
            ..Peers::default()
        };
        let r = ruleset("skiff0", "10.88.0.0/24", &peers, &Members::default());
        assert!(
            r.contains("ip daddr @cluster_hosts udp dport != { 20000-32000, 40000-40010 } drop"),
            "{r}"
        );
        // A fixed port published on a node: open on that node, before the
        // drop of ports outside the ranges.
        let members = Members::from_wire(pb::NetworkMembers {
            fixed_ports: vec!["192.0.2.7:8080".into(), "bad".into()],
            ..Default::default()
        });
        assert_eq!(members.fixed_ports, [("192.0.2.7".parse().unwrap(), 8080)]);
        let r = ruleset("skiff0", "10.88.0.0/24", &peers, &members);
        assert!(
            r.contains("set fixed_ports { type ipv4_addr . inet_service; elements = { 192.0.2.7 . 8080 }; "),
            "{r}"
        );
        let open = r.find("ip daddr . tcp dport @fixed_ports accept").unwrap();
        let drop = r
            .find("tcp dport != { 20000-32000, 40000-40010 } drop")
            .unwrap();
        assert!(open < drop, "{r}");
    }

    #[test]
    fn containers_reach_their_own_namespace_and_those_that_let_them_in() {
        let ns = |name: &str, ips: &[&str], from: &[&str]| NamespaceMembers {
            name: name.into(),
            addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            from: from.iter().map(|s| s.to_string()).collect(),
        };
        let members = Members {
            namespaces: vec![
                ns("db", &["10.88.0.2"], &["web"]),
                ns("web", &["10.88.0.3", "10.88.1.3"], &[]),
                ns("lab", &["10.88.0.4"], &["*"]),
            ],
            ..Members::default()
        };
        let allowed = members.allowed();
        // db: its own and web's; web: only its own; lab: everyone's.
        assert_eq!(allowed[0].1, ["10.88.0.2", "10.88.0.3", "10.88.1.3"]);
        assert_eq!(allowed[1].1, ["10.88.0.3", "10.88.1.3"]);
        assert_eq!(allowed[2].1.len(), 4);
        let r = ruleset("skiff0", "10.88.0.0/24", &Peers::default(), &members);
        assert!(
            r.contains("set m0 { type ipv4_addr; elements = { 10.88.0.2 }; "),
            "{r}"
        );
        // From another node (routed), and on this bridge: allowed pairs
        // pass; a new connection otherwise is dropped before answers to
        // allowed ones pass.
        assert!(
            r.contains("oifname \"skiff0\" ip daddr @m1 ip saddr @f1 accept"),
            "{r}"
        );
        let allow = r.find("\t\tip daddr @m2 ip saddr @f2 accept").unwrap();
        let syn = r.find("tcp flags & (syn | ack) == syn drop").unwrap();
        let answer = r.find("\t\tip saddr @m0 ip daddr @f0 accept").unwrap();
        assert!(allow < syn && syn < answer, "{r}");
    }
}
