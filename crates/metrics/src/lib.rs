//! What servers and agents share to export Prometheus metrics: the 0.0.4
//! text of a registry built at each scrape, the rule for where a metrics
//! listener may bind, and the HTTP listener that serves `GET /metrics`
//! (and whatever other routes the process adds, like the servers'
//! service discovery).
//!
//! Families are built from what the process holds at the scrape: nothing
//! to keep up between scrapes, and a series whose subject is gone (an
//! allocation, a node) is simply not there at the next one, so the number
//! of series stays bounded by what exists.

use std::net::SocketAddr;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use prometheus_client;

/// The content type of the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A series' labels, in the order they are written.
pub type Labels = Vec<(String, String)>;

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A gauge set to `v` (saturating at `i64::MAX`).
pub fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// An `f64` gauge set to `v`.
pub fn gauge_f64(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    g
}

/// A family of `f64` gauges.
pub type GaugesF64 = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// The registry in the Prometheus text format 0.0.4 (what `promtool check
/// metrics` and every Prometheus read; counters' HELP and TYPE name the
/// `_total` samples).
pub fn encode(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, reg);
    out
}

/// More exposition served after a process's own: `skiff dev` serves its
/// agent's metrics on its server's address this way. Empty until set.
#[derive(Clone, Default)]
pub struct Appendix(std::sync::Arc<std::sync::OnceLock<Render>>);

type Render = Box<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for Appendix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Appendix")
            .field(&self.0.get().is_some())
            .finish()
    }
}

impl Appendix {
    /// Sets what is appended (once; later calls do nothing).
    pub fn set(&self, render: impl Fn() -> String + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(render));
    }

    /// The text to append (empty until set).
    pub fn render(&self) -> String {
        self.0.get().map(|r| r()).unwrap_or_default()
    }
}

/// The file in a data directory that names the bound metrics address
/// (for port 0).
pub const ADDR_FILE: &str = "metrics.addr";

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

/// `GET /metrics` answered with `render()`'s text.
pub fn route<F>(render: F) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
        }),
    )
}

/// Serves `app` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
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
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn counters_are_written_in_the_0_0_4_format() {
        let mut reg = Registry::with_prefix("skiff");
        let c: Family<Labels, Counter> = Family::default();
        c.get_or_create(&labels(&[("code", "OK")])).inc_by(3);
        reg.register("calls", "Calls answered", c);
        reg.register("up", "Always 1", gauge(1));
        let text = encode(&reg);
        for line in [
            "# HELP skiff_calls_total Calls answered.",
            "# TYPE skiff_calls_total counter",
            "skiff_calls_total{code=\"OK\"} 3",
            "skiff_up 1",
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
