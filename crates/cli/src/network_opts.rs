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
    /// an address from it, the bridge the first. Give each node its own.
    #[arg(long, default_value = "10.88.0.0/24", value_name = "CIDR")]
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
}

impl NetworkOpts {
    pub(crate) fn config(&self) -> anyhow::Result<skiff_agent::network::NetworkConfig> {
        let cfg = skiff_agent::network::NetworkConfig {
            bridge: self.bridge.clone(),
            subnet: self.network_subnet.clone(),
            cni_path: self.cni_path.clone(),
        };
        cfg.check()?;
        Ok(cfg)
    }
}
