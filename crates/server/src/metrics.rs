//! `GET /metrics` on the server's metrics address (`--metrics-addr`,
//! plain HTTP on loopback): the Prometheus text format (0.0.4), encoded
//! with prometheus-client. The gauges are built from the Raft status and
//! the replicated state at the scrape (nothing to keep up between
//! scrapes); the gRPC calls are counted as they are answered
//! ([`ApiMetrics`], fed by the audit wrapper every service goes
//! through). Labels are bounded: statuses, job types, the API's methods
//! and gRPC codes; no per-job or per-allocation labels.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use skiff_store::{RaftStatus, Role, State, Store};
use tokio::net::TcpListener;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a metrics address is refused.
#[derive(Debug, thiserror::Error)]
pub enum MetricsAddrError {
    #[error("--metrics-addr {0}: only a loopback address for now (127.0.0.1:PORT or [::1]:PORT); serving metrics to other hosts needs HTTPS and a metrics token, which are not there yet")]
    NotLoopback(SocketAddr),
}

/// Checks a metrics address: loopback only, for now.
pub fn check_addr(addr: SocketAddr) -> Result<(), MetricsAddrError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(MetricsAddrError::NotLoopback(addr))
    }
}

type Labels = Vec<(String, String)>;

/// The gRPC calls this server answered: by method and code, and how long
/// each took to answer (its response's head, for a stream).
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            // 0.5 ms to about 16 s.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl ApiMetrics {
    /// Counts one call of `method` (`Cluster/ApplyJob`) that ended with
    /// `code` (named `code_name`, as gRPC names it) after `took`. A method
    /// the server does not have counts as `other`, so garbage cannot make
    /// new series.
    pub fn record(
        &self,
        method: &str,
        code: tonic::Code,
        code_name: &str,
        took: std::time::Duration,
    ) {
        let method = if code == tonic::Code::Unimplemented {
            "other"
        } else {
            method
        };
        self.requests
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("code".to_string(), code_name.to_string()),
            ])
            .inc();
        self.durations
            .get_or_create(&vec![("method".to_string(), method.to_string())])
            .observe(took.as_secs_f64());
    }
}

/// A gauge family with one label, set from `counts` (every key of `all`
/// present, 0 when none).
fn by_label(label: &str, all: &[&str], counts: &BTreeMap<&str, i64>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for key in all.iter().copied().chain(counts.keys().copied()) {
        let n = counts.get(key).copied().unwrap_or(0);
        family
            .get_or_create(&vec![(label.to_string(), key.to_string())])
            .set(n);
    }
    family
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The exposition for this server's Raft `status`, `state` and calls.
pub fn render(status: &RaftStatus, state: &State, api: &ApiMetrics) -> String {
    let mut reg = Registry::with_prefix("skiff");
    reg.register(
        "grpc_requests",
        "gRPC calls answered, by method and code",
        api.requests.clone(),
    );
    reg.register(
        "grpc_request_duration_seconds",
        "Time to answer a gRPC call (to its response's head for a stream), by method",
        api.durations.clone(),
    );
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])
    .set(1);
    reg.register("build_info", "This server's version (always 1)", info);
    reg.register(
        "raft_term",
        "The Raft term this server is in",
        gauge(status.term),
    );
    reg.register(
        "raft_commit_index",
        "The highest Raft log index known committed",
        gauge(status.commit),
    );
    reg.register(
        "raft_applied_index",
        "The highest Raft log index applied to this server's state",
        gauge(status.applied),
    );
    reg.register(
        "raft_log_entries",
        "Entries in this server's Raft log (after its last compaction)",
        gauge(
            status
                .last_index
                .saturating_sub(status.first_index.saturating_sub(1)),
        ),
    );
    reg.register(
        "raft_leader",
        "1 when this server is the leader",
        gauge(u64::from(status.role == Role::Leader)),
    );
    reg.register(
        "raft_leader_known",
        "1 when this server knows a leader (it can serve writes)",
        gauge(u64::from(status.leader_id != 0)),
    );
    reg.register(
        "raft_voters",
        "Voting members of the cluster",
        gauge(status.voters.len() as u64),
    );

    let mut nodes: BTreeMap<&str, i64> = BTreeMap::new();
    for n in state.nodes.values() {
        *nodes.entry(n.status.as_str()).or_default() += 1;
    }
    reg.register(
        "nodes",
        "Nodes by status",
        by_label("status", &["ready", "down"], &nodes),
    );
    let mut allocs: BTreeMap<&str, i64> = BTreeMap::new();
    for a in state.allocs.values() {
        *allocs.entry(a.status.as_str()).or_default() += 1;
    }
    reg.register(
        "allocations",
        "Allocations by status (finished ones until they are collected)",
        by_label(
            "status",
            &["pending", "running", "complete", "failed", "lost"],
            &allocs,
        ),
    );
    let mut jobs: BTreeMap<&str, i64> = BTreeMap::new();
    for j in state.jobs.values() {
        *jobs.entry(j.spec.job_type.as_str()).or_default() += 1;
    }
    reg.register(
        "jobs",
        "Jobs by type",
        by_label("type", &["service", "batch"], &jobs),
    );
    let mut evals: BTreeMap<&str, i64> = BTreeMap::new();
    for e in state.evals.values() {
        *evals.entry(e.status.as_str()).or_default() += 1;
    }
    reg.register(
        "evaluations",
        "Evaluations by status (pending: the scheduler's queue)",
        by_label("status", &["pending", "complete", "blocked"], &evals),
    );
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = encode_registry(&mut out, &reg);
    counters_as_0_0_4(&out)
}

/// prometheus-client writes a counter's HELP and TYPE under its name
/// without `_total` (OpenMetrics); the 0.0.4 format wants them under the
/// samples' name.
fn counters_as_0_0_4(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        let renamed = counters.iter().find_map(|name| {
            for kind in ["# HELP ", "# TYPE "] {
                if let Some(rest) = line
                    .strip_prefix(kind)
                    .and_then(|r| r.strip_prefix(name))
                    .filter(|r| r.starts_with(' '))
                {
                    return Some(format!("{kind}{name}_total{rest}"));
                }
            }
            None
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    api: std::sync::Arc<ApiMetrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let store = store.clone();
            let api = api.clone();
            async move {
                let body = render(&store.status(), &store.state(), &api);
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_the_state_with_every_status_listed() {
        let mut state = State::default();
        let task = skiff_model::JobSpec::from_yaml("name: j\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        let mut a = skiff_model::Allocation::new("a".repeat(32), "j", 1, 0, "n1", task);
        a.status = skiff_model::AllocStatus::Running;
        state.allocs.insert(a.id.clone(), a);
        let status = RaftStatus {
            term: 3,
            leader_id: 1,
            role: Role::Leader,
            commit: 10,
            applied: 9,
            first_index: 1,
            last_index: 10,
            voters: vec![1],
            ..Default::default()
        };
        let api = ApiMetrics::default();
        api.record(
            "Cluster/ListJobs",
            tonic::Code::Ok,
            "OK",
            std::time::Duration::from_millis(2),
        );
        api.record(
            "Cluster/Nope",
            tonic::Code::Unimplemented,
            "UNIMPLEMENTED",
            Default::default(),
        );
        let text = render(&status, &state, &api);
        for line in [
            "# TYPE skiff_grpc_requests_total counter",
            "skiff_grpc_requests_total{method=\"Cluster/ListJobs\",code=\"OK\"} 1",
            "skiff_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 1",
            "skiff_grpc_request_duration_seconds_count{method=\"Cluster/ListJobs\"} 1",
            "# TYPE skiff_raft_term gauge",
            "skiff_raft_term 3",
            "skiff_raft_applied_index 9",
            "skiff_raft_log_entries 10",
            "skiff_raft_leader 1",
            "skiff_allocations{status=\"running\"} 1",
            "skiff_allocations{status=\"pending\"} 0",
            "skiff_nodes{status=\"down\"} 0",
            "skiff_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "0.0.4, not OpenMetrics:\n{text}");
    }

    #[test]
    fn only_loopback_addresses_serve_metrics_for_now() {
        check_addr("127.0.0.1:7710".parse().unwrap()).unwrap();
        check_addr("[::1]:7710".parse().unwrap()).unwrap();
        let e = check_addr("0.0.0.0:7710".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("--metrics-addr 0.0.0.0:7710"), "{e}");
    }
}
