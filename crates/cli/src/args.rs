//! Argument pieces every command shares: where the servers are and whose
//! credentials to use, and the value parsers clap uses for durations. A
//! leaf: it imports no other room of the binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skiff_client::ClientConfig;

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Server API URL (https://HOST:PORT); several may be given,
    /// comma-separated, to fail over. Default: the servers the
    /// configuration file names, else https://127.0.0.1:7700.
    #[arg(long, global = true, env = "SKIFF_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// The client configuration file: the servers, the cluster CA and your
    /// certificate (a founding server writes one as DATA_DIR/admin.conf;
    /// `skiff dev` also copies it to ~/.skiff/config). Default:
    /// ~/.skiff/config.
    #[arg(long, global = true, env = "SKIFF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Answer from the contacted server's own state, without confirming with
    /// the leader that it is current (faster; works without a quorum).
    #[arg(long, global = true)]
    pub stale: bool,
    /// The namespace of the jobs you name, and the one lists and watches
    /// show (default: `default`). For `skiff user create`: the namespaces
    /// a developer or viewer is granted, comma-separated.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "SKIFF_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
    /// Lists and watches show every namespace you may read.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

impl ClientOpts {
    /// The namespace requests name jobs in; empty with `-A` (lists show
    /// every namespace the caller may read).
    pub fn namespace(&self) -> String {
        if self.all_namespaces {
            String::new()
        } else {
            self.namespace
                .clone()
                .unwrap_or_else(|| skiff_model::DEFAULT_NAMESPACE.to_string())
        }
    }

    /// The configuration to connect with: the file (`--config`,
    /// `SKIFF_CONFIG`, or `~/.skiff/config` when it exists), its servers
    /// replaced by `--server` when given.
    pub fn client_config(&self) -> Result<ClientConfig, skiff_client::ClientError> {
        let mut config = match &self.config {
            Some(path) => ClientConfig::load(path)?,
            None => match ClientConfig::default_path().filter(|p| p.exists()) {
                Some(path) => ClientConfig::load(&path)?,
                None => ClientConfig::default(),
            },
        };
        if !self.server.is_empty() {
            config.servers = self.server.clone();
        }
        // A token in the environment acts instead of the file's
        // certificate (its CA still checks the servers).
        if let Some(token) = std::env::var("SKIFF_TOKEN").ok().filter(|t| !t.is_empty()) {
            if let Some(tls) = &mut config.tls {
                tls.identity = None;
                tls.token = Some(token);
            }
        }
        if config.servers.is_empty() {
            config.servers = vec![skiff_client::DEFAULT_SERVER.to_string()];
        }
        Ok(config)
    }
}

/// `500ms`, `10s`, `2m`, `1h`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_model::duration::parse_duration(s)
}

/// A size (a memory quantity such as `10Mi` or `50Gi`) of at least 4Ki.
pub fn parse_log_size(s: &str) -> Result<u64, String> {
    let n = skiff_model::quantity::parse_memory(s).map_err(|e| e.to_string())?;
    if n < 4096 {
        return Err(format!("{s:?} is below the minimum of 4Ki"));
    }
    Ok(n)
}
