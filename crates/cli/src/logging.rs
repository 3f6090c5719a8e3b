//! How the daemons (`skiff server`, `skiff agent`, `skiff dev`) report:
//! where a server serves its metrics, and how they log: to
//! standard error, filtered by `SKIFF_LOG` (an `EnvFilter`, default
//! `info`), as text for people or as one JSON object per line for log
//! collectors (`--log-format json`).

use clap::{Args, ValueEnum};

/// The lines' format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// `2026-12-04T21:15:02.123Z  INFO serving id=1 api=...`, coloured on a
    /// terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`) and the span's fields; for journald, Loki, Elasticsearch.
    Json,
}

#[derive(Args, Clone)]
pub(crate) struct LogOpts {
    /// How log lines are written to standard error: `text` for people,
    /// `json` (one object per line) for log collectors. Filter with
    /// SKIFF_LOG (e.g. SKIFF_LOG=debug, or info,skiff_agent=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
}

impl LogOpts {
    /// Starts logging (once per process; later calls do nothing).
    pub(crate) fn init(&self) {
        use std::io::IsTerminal;
        // raft-rs logs through slog, bridged to the `slog` target; its
        // routine lines are noise at info level.
        let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,slog=warn"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init(),
            LogFormat::Json => builder.json().with_ansi(false).try_init(),
        };
    }
}

/// Where a server (or `skiff dev`, for its server and agent) serves
/// `GET /metrics`.
#[derive(Args, Clone)]
pub(crate) struct MetricsOpts {
    /// Where `GET /metrics` (Prometheus text format) and the agents'
    /// service discovery (`/v1/sd/agents`) are served: on loopback plain
    /// HTTP to anyone on the machine; elsewhere HTTPS with the server's
    /// certificate, to a bearer token of a `metrics` user (`skiff user
    /// create prom --role metrics`, `skiff user token prom`). Port 0 picks
    /// a free one (written to DATA_DIR/metrics.addr); `none` turns it off.
    #[arg(long, default_value = "127.0.0.1:7710", value_name = "HOST:PORT|none")]
    metrics_addr: String,
}

impl MetricsOpts {
    pub(crate) fn addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        parse_metrics_addr(&self.metrics_addr)
    }
}

/// `--metrics-addr`: HOST:PORT, or `none`.
fn parse_metrics_addr(text: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if text == "none" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        anyhow::anyhow!("--metrics-addr {text:?}: HOST:PORT (e.g. 127.0.0.1:7710) or none")
    })?;
    Ok(Some(addr))
}

/// Where an agent serves `GET /metrics`.
#[derive(Args, Clone)]
pub(crate) struct AgentMetricsOpts {
    /// Where `GET /metrics` (Prometheus text format: allocations' cpu,
    /// memory, restarts and OOM kills, image pulls, container starts, GPUs
    /// under DCGM's names) is served: on loopback plain HTTP to anyone on
    /// the machine; elsewhere HTTPS with the node's certificate (name
    /// `agent.skiff`), to a bearer token of a `metrics` user. Port 0 picks
    /// a free one (written to DATA_DIR/metrics.addr); `none` turns it off.
    /// The servers list it for Prometheus' service discovery.
    #[arg(long, default_value = "127.0.0.1:7712", value_name = "HOST:PORT|none")]
    metrics_addr: String,
    /// Keep NVIDIA dcgm-exporter's HPC job-mapping files in DIR (its
    /// `--hpc-job-mapping-dir`): one file per GPU index listing the jobs
    /// on it, so its series carry `hpc_job`.
    #[arg(long, value_name = "DIR")]
    dcgm_job_mapping_dir: Option<std::path::PathBuf>,
}

impl AgentMetricsOpts {
    pub(crate) fn addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        parse_metrics_addr(&self.metrics_addr)
    }

    pub(crate) fn job_mapping_dir(&self) -> Option<std::path::PathBuf> {
        self.dcgm_job_mapping_dir.clone()
    }
}
