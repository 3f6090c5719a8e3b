//! The agent's (and `skiff dev`'s) flags about `network: bridge`: the
//! node's bridge, its subnet, and where the CNI plugins are.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct NetworkOpts {
    /// The node's bridge for `network: bridge` allocations (made by the
    /// CNI bridge plugin when first needed; at most 15 characters).
    #[arg(long, default_value = "skiff0", value_name = "NAME")]
    bridge: String,
    /// The node's IPv4 subnet for `network: bridge` allocations: each gets
    /// an address from it, the bridge the first. Default: a /24 the
    /// servers assign from their --node-subnets when the node registers
    /// (kept from then on). No two nodes' subnets may overlap.
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        value_name = "CIDR"
    )]
    network_subnet: String,
    /// Directories holding the CNI plugins (bridge, host-local, loopback;
    /// Debian's containernetworking-plugins), comma-separated.
    #[arg(
        long,
        default_value = "/usr/lib/cni,/opt/cni/bin",
        value_delimiter = ',',
        value_name = "DIRS"
    )]
    cni_path: Vec<PathBuf>,
    /// Where the node's DNS (which answers bridged containers' questions
    /// for JOB.NAMESPACE.skiff) sends other names: `host` (the resolvers
    /// of the host's /etc/resolv.conf), `none` (only cluster
    /// names resolve), or resolvers as IP or IP:PORT, comma-separated.
    #[arg(long, default_value = "host", value_name = "host|none|IP[:PORT],...")]
    dns_upstream: String,
    /// The node's range of host ports for `ports: [{host: 0}]`, both ends
    /// included: the scheduler picks each published port from it and
    /// never gives one twice on the node. Keep it clear of the ports the
    /// machine's own services and the kernel's ephemeral range
    /// (/proc/sys/net/ipv4/ip_local_port_range) use.
    #[arg(long, default_value = "20000-32000", value_name = "FIRST-LAST")]
    dynamic_ports: String,
}

impl NetworkOpts {
    pub(crate) fn config(&self) -> anyhow::Result<skiff_agent::network::NetworkConfig> {
        let cfg = skiff_agent::network::NetworkConfig {
            bridge: self.bridge.clone(),
            subnet: self.network_subnet.clone(),
            cni_path: self.cni_path.clone(),
            dns_upstream: skiff_agent::network::dns::Upstream::parse(&self.dns_upstream)
                .map_err(anyhow::Error::msg)?,
            dynamic_ports: skiff_model::ports::PortRange::parse(&self.dynamic_ports)
                .map_err(|rule| anyhow::anyhow!("--dynamic-ports: {rule}"))?,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// The servers' flag: where nodes' subnets come from.
#[derive(Args, Clone)]
pub(crate) struct NodeSubnetsOpts {
    /// The IPv4 range each node's `network: bridge` subnet (a /24) is
    /// assigned from, when its agent names none; `none`: agents must
    /// name their own (--network-subnet).
    #[arg(long, default_value = "10.88.0.0/16", value_name = "CIDR|none")]
    node_subnets: String,
}

impl NodeSubnetsOpts {
    pub(crate) fn range(&self) -> anyhow::Result<Option<skiff_model::subnet::Subnet>> {
        if self.node_subnets == "none" {
            return Ok(None);
        }
        skiff_model::subnet::Subnet::parse(&self.node_subnets)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--node-subnets: {e}"))
    }
}

/// What `skiff dev` and the servers assign from by default.
pub(crate) fn default_node_subnets() -> Option<skiff_model::subnet::Subnet> {
    skiff_model::subnet::Subnet::parse("10.88.0.0/16").ok()
}
