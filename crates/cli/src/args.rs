//! Argument pieces every command shares: where the servers are, and the
//! value parsers clap uses for durations. A leaf: it imports no other room
//! of the binary.

use std::time::Duration;

use clap::Args;

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Server API address; several may be given, comma-separated, to fail over.
    #[arg(
        long,
        global = true,
        env = "SKIFF_SERVER",
        default_value = skiff_client::DEFAULT_SERVER,
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// Answer from the contacted server's own state, without confirming with
    /// the leader that it is current (faster; works without a quorum).
    #[arg(long, global = true)]
    pub stale: bool,
}

/// `500ms`, `10s`, `2m`, `1h`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_model::duration::parse_duration(s)
}
