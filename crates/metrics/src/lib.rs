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

pub use axum::Router;
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
    #[error("--metrics-addr {0}: off loopback, metrics are served over HTTPS to a bearer token of a `metrics` user, which needs TLS; this process runs with --insecure (use a loopback address)")]
    Insecure(SocketAddr),
}

/// Whether `addr` is served over HTTPS with a token (off loopback) rather
/// than plain HTTP to anyone on the machine.
pub fn needs_tls(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Checks a metrics address for a process with or without TLS: off
/// loopback it needs TLS.
pub fn check_addr(addr: SocketAddr, insecure: bool) -> Result<(), MetricsAddrError> {
    if needs_tls(addr) && insecure {
        Err(MetricsAddrError::Insecure(addr))
    } else {
        Ok(())
    }
}

/// Who may read a metrics listener: anyone who reaches it (plain HTTP on
/// loopback), or callers whose `Authorization` header passes a check
/// (HTTPS elsewhere: a bearer token of a `metrics` user).
#[derive(Clone)]
pub enum Access {
    Open,
    Guarded(std::sync::Arc<Check>),
}

/// Checks an `Authorization` header (absent: `None`); `Err` says why not.
/// Asynchronous: an agent asks the servers.
pub type Check = dyn Fn(Option<String>) -> CheckFuture + Send + Sync;

/// What a [`Check`] answers.
pub type CheckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl Access {
    async fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), String> {
        match self {
            Access::Open => Ok(()),
            Access::Guarded(check) => {
                check(
                    headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                )
                .await
            }
        }
    }
}

/// A request `access` refuses: 401 with the reason and a `Bearer`
/// challenge.
fn refused(why: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        format!("{why}\n"),
    )
        .into_response()
}

/// `GET path` answered with `body()`'s text (of `content_type`), for
/// callers `access` lets in.
pub fn guarded_get<F>(
    router: axum::Router,
    path: &str,
    content_type: &'static str,
    access: Access,
    body: F,
) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    router.route(
        path,
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let (body, access) = (body.clone(), access.clone());
            async move {
                use axum::response::IntoResponse;
                match access.check(&headers).await {
                    Ok(()) => {
                        ([(axum::http::header::CONTENT_TYPE, content_type)], body()).into_response()
                    }
                    Err(why) => refused(why),
                }
            }
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

/// The TLS configuration of the moment (a certificate is renewed while the
/// process runs); `None` when it cannot be had.
pub type CurrentTls = dyn Fn() -> Option<std::sync::Arc<rustls::ServerConfig>> + Send + Sync;

/// A TLS server configuration for HTTPS metrics from a PEM certificate
/// (chain) and key: HTTP/1.1, no client certificate.
pub fn tls_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS configuration of the moment from credentials that are renewed
/// while the process runs: `creds()` gives the current ones (`None`: no
/// TLS), `pem` their certificate and key; a configuration is built once
/// per credentials, whenever `creds()` hands out new ones.
pub fn follow_creds<K, C, P>(creds: C, pem: P) -> std::sync::Arc<CurrentTls>
where
    K: Send + Sync + 'static,
    C: Fn() -> Option<std::sync::Arc<K>> + Send + Sync + 'static,
    P: Fn(&K) -> (&str, &str) + Send + Sync + 'static,
{
    type Cached<K> = Option<(std::sync::Arc<K>, std::sync::Arc<rustls::ServerConfig>)>;
    let cache: std::sync::Mutex<Cached<K>> = std::sync::Mutex::new(None);
    std::sync::Arc::new(move || {
        let now = creds()?;
        let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, config)) = cached.as_ref() {
            if std::sync::Arc::ptr_eq(c, &now) {
                return Some(config.clone());
            }
        }
        let (cert, key) = pem(&now);
        match tls_config(cert, key) {
            Ok(config) => {
                let config = std::sync::Arc::new(config);
                *cached = Some((now, config.clone()));
                Some(config)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot use this process's certificate");
                None
            }
        }
    })
}

/// A TCP listener whose connections are TLS (handshakes one at a time, at
/// most 10 s each; one that fails is dropped and the next taken).
struct TlsListener {
    tcp: TcpListener,
    tls: std::sync::Arc<CurrentTls>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(config) = (self.tls)() else {
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "metrics: TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "metrics: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over HTTPS on `listener` until `stop` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    tls: std::sync::Arc<CurrentTls>,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let listener = TlsListener { tcp: listener, tls };
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
    fn off_loopback_metrics_need_tls() {
        check_addr("127.0.0.1:7710".parse().unwrap(), true).unwrap();
        check_addr("[::1]:7710".parse().unwrap(), true).unwrap();
        check_addr("0.0.0.0:7710".parse().unwrap(), false).unwrap();
        let e = check_addr("0.0.0.0:7710".parse().unwrap(), true).unwrap_err();
        assert!(e.to_string().contains("--metrics-addr 0.0.0.0:7710"), "{e}");
        assert!(e.to_string().contains("--insecure"), "{e}");
    }
}
