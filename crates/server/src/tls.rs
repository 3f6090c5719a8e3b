//! How this server talks TLS: its certificate (naming `server ID`), the
//! cluster CA, and the configurations its listeners and its outgoing calls
//! use. Every port is mutual TLS 1.3 (rustls on ring); the client API port
//! also takes a connection without a client certificate, for joins with a
//! token (the caller's identity is then checked per call). `--insecure`
//! turns all of it off, loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_pki::identity::node_dns;
use skiff_pki::SERVER_DNS;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::Status;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// This server's credentials, PEM.
#[derive(Clone)]
pub struct ServerCreds {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCreds { key: <secret> }")
    }
}

/// Where a server keeps its credentials: `DATA_DIR/tls/`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

impl ServerCreds {
    /// Reads `tls/{ca,server}.crt` and `tls/server.key`; `None` when this
    /// server has none yet.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<ServerCreds>> {
        let dir = tls_dir(data_dir);
        if !dir.join("server.crt").exists() {
            return Ok(None);
        }
        Ok(Some(ServerCreds {
            ca_pem: std::fs::read_to_string(dir.join("ca.crt"))?,
            cert_pem: std::fs::read_to_string(dir.join("server.crt"))?,
            key_pem: std::fs::read_to_string(dir.join("server.key"))?,
        }))
    }

    /// Writes them (directory 0700, files 0600).
    pub fn save(&self, data_dir: &Path) -> Result<(), skiff_pki::PkiError> {
        let dir = tls_dir(data_dir);
        skiff_pki::files::private_dir(&dir)?;
        skiff_pki::files::write_private(&dir.join("ca.crt"), self.ca_pem.as_bytes())?;
        skiff_pki::files::write_private(&dir.join("server.crt"), self.cert_pem.as_bytes())?;
        skiff_pki::files::write_private(&dir.join("server.key"), self.key_pem.as_bytes())
    }

    /// The identity listeners present: the certificate and the CA after it,
    /// so a joiner can find the CA and check its pin.
    fn presented(&self) -> Identity {
        Identity::from_pem(format!("{}{}", self.cert_pem, self.ca_pem), &self.key_pem)
    }
}

/// `host:port` of a URL (`https://host:port/` or `host:port`).
pub fn authority(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
}

/// This server's current credentials, replaced when it renews its
/// certificate; the listeners watch for that to serve with the new one.
pub struct CredsCell {
    current: std::sync::RwLock<Arc<ServerCreds>>,
    renewed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for CredsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredsCell { .. }")
    }
}

impl CredsCell {
    pub fn current(&self) -> Arc<ServerCreds> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Uses `creds` from now on: new connections, and the listeners after
    /// they restart.
    pub fn replace(&self, creds: ServerCreds) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(creds);
        self.renewed.send_modify(|n| *n += 1);
    }

    /// Changes each time the credentials are replaced.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewed.subscribe()
    }
}

/// TLS, or `--insecure` plaintext.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Plaintext, every caller trusted: for a lab's own throwaway cluster.
    Off,
    On(Arc<CredsCell>),
}

impl From<ServerCreds> for Tls {
    fn from(creds: ServerCreds) -> Tls {
        Tls::On(Arc::new(CredsCell {
            current: std::sync::RwLock::new(Arc::new(creds)),
            renewed: tokio::sync::watch::channel(0).0,
        }))
    }
}

impl Tls {
    /// The credentials in use now (`None` with `--insecure`).
    pub fn creds(&self) -> Option<Arc<ServerCreds>> {
        match self {
            Tls::Off => None,
            Tls::On(cell) => Some(cell.current()),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self, Tls::On(_))
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Tls::Off => "http",
            Tls::On(_) => "https",
        }
    }

    /// The client API port: mutual TLS, a client certificate optional (a
    /// join brings a token instead; every other call needs an identity).
    pub fn api_listener(&self) -> Option<ServerTlsConfig> {
        self.listener(true)
    }

    /// The peer port: mutual TLS, a client certificate required.
    pub fn peer_listener(&self) -> Option<ServerTlsConfig> {
        self.listener(false)
    }

    fn listener(&self, client_optional: bool) -> Option<ServerTlsConfig> {
        let c = self.creds()?;
        Some(
            ServerTlsConfig::new()
                .identity(c.presented())
                .client_ca_root(Certificate::from_pem(&c.ca_pem))
                .client_auth_optional(client_optional)
                .timeout(HANDSHAKE),
        )
    }

    /// An endpoint for another server's API or peer port (`host:port`),
    /// presenting this server's certificate.
    pub fn to_server(&self, addr: &str) -> Result<Endpoint, Status> {
        self.endpoint(addr, SERVER_DNS)
    }

    /// An endpoint for a node's agent (`host:port`), which must present
    /// the certificate of `node`.
    pub fn to_agent(&self, addr: &str, node: &str) -> Result<Endpoint, Status> {
        self.endpoint(addr, &node_dns(node))
    }

    fn endpoint(&self, addr: &str, name: &str) -> Result<Endpoint, Status> {
        let ep = Endpoint::from_shared(format!("{}://{addr}", self.scheme()))
            .map_err(|e| Status::internal(format!("bad address {addr:?}: {e}")))?;
        match self.creds() {
            None => Ok(ep),
            Some(c) => ep
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&c.ca_pem))
                        .identity(Identity::from_pem(&c.cert_pem, &c.key_pem))
                        .domain_name(name)
                        .timeout(HANDSHAKE),
                )
                .map_err(|e| Status::internal(format!("TLS for {addr}: {e}"))),
        }
    }
}
