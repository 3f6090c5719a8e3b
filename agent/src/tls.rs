//! The node's credentials and the TLS it speaks. An agent proves which
//! node it is with a certificate naming `node NAME`, signed by the cluster
//! CA; it gets one by joining with a node token (`--token`, once), keeps it
//! in `DATA_DIR/tls/` (0600) and uses it from then on. Its own API takes
//! only servers (the relays of logs, exec and GPU resets), by certificate.
//! `--insecure` turns it all off, loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_pki::Identity;
use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};
use tonic::{Request, Status};

const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a first start waits for servers that are starting to take the
/// join, before it gives up.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);

/// How the agent secures itself.
#[derive(Clone, Default)]
pub struct Security {
    /// Plaintext, every caller trusted: `--insecure`.
    pub insecure: bool,
    /// A node join token, needed once, when the node has no credentials.
    pub join_token: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("insecure", &self.insecure)
            .field("join_token", &self.join_token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// The node's CA, certificate and key, PEM.
#[derive(Clone)]
pub struct NodeCreds {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCreds { key: <secret> }")
    }
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Why the node has no credentials; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

fn creds_error(why: impl std::fmt::Display) -> CredentialsError {
    CredentialsError(why.to_string())
}

impl NodeCreds {
    /// Reads `tls/{ca,node}.crt` and `tls/node.key`; `None` before the
    /// node has joined.
    pub fn load(data_dir: &Path) -> Result<Option<NodeCreds>, CredentialsError> {
        let d = dir(data_dir);
        if !d.join("node.crt").exists() {
            return Ok(None);
        }
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .map_err(|e| creds_error(format!("{}: {e}", d.join(f).display())))
        };
        Ok(Some(NodeCreds {
            ca_pem: read("ca.crt")?,
            cert_pem: read("node.crt")?,
            key_pem: read("node.key")?,
        }))
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), CredentialsError> {
        let d = dir(data_dir);
        let w = |f: &str, text: &str| {
            skiff_pki::files::write_private(&d.join(f), text.as_bytes()).map_err(creds_error)
        };
        skiff_pki::files::private_dir(&d).map_err(creds_error)?;
        w("ca.crt", &self.ca_pem)?;
        w("node.crt", &self.cert_pem)?;
        w("node.key", &self.key_pem)
    }

    /// When to renew the certificate (two thirds into its lifetime), and
    /// whether that is past.
    pub fn renew_in(&self) -> Result<Duration, CredentialsError> {
        let at = skiff_pki::ca::renew_at(&self.cert_pem).map_err(creds_error)?;
        let now = (crate::clock::now_ms() / 1000) as i64;
        Ok(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
    }

    /// A new certificate for the same node, with a new key, signed by the
    /// server behind `channel` (which checks the current one is still
    /// valid and the node not removed).
    pub async fn renewed(
        &self,
        channel: tonic::transport::Channel,
    ) -> Result<NodeCreds, CredentialsError> {
        let (key_pem, csr_pem) = skiff_pki::ca::request().map_err(creds_error)?;
        let r = skiff_proto::pb::access_client::AccessClient::new(channel)
            .renew_certificate(skiff_proto::pb::RenewCertificateRequest { csr_pem })
            .await
            .map_err(|s| creds_error(format!("renewing the certificate: {}", s.message())))?
            .into_inner();
        let renewed = NodeCreds {
            ca_pem: self.ca_pem.clone(),
            cert_pem: r.cert_pem,
            key_pem,
        };
        if renewed.node()? != self.node()? {
            return Err(creds_error("the renewed certificate names another node"));
        }
        Ok(renewed)
    }

    /// The node the certificate names.
    pub fn node(&self) -> Result<String, CredentialsError> {
        let der = skiff_pki::ca::der_of(&self.cert_pem).map_err(creds_error)?;
        match Identity::of_certificate(&der).map_err(creds_error)? {
            Identity::Node(n) => Ok(n),
            other => Err(creds_error(format!(
                "the certificate names {other}, not a node"
            ))),
        }
    }
}

/// TLS, or `--insecure` plaintext.
#[derive(Clone, Debug)]
pub enum AgentTls {
    Off,
    On(Arc<NodeCreds>),
}

impl AgentTls {
    /// For calls to the servers: TLS to `server.skiff`, presenting the
    /// node's certificate.
    pub fn to_servers(&self) -> Option<ClientTlsConfig> {
        let AgentTls::On(c) = self else {
            return None;
        };
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&c.ca_pem))
                .identity(tonic::transport::Identity::from_pem(
                    &c.cert_pem,
                    &c.key_pem,
                ))
                .domain_name(skiff_pki::SERVER_DNS)
                .timeout(HANDSHAKE),
        )
    }

    /// For the agent's own API: the node's certificate, and callers must
    /// present one from the cluster CA.
    pub fn listener(&self) -> Option<ServerTlsConfig> {
        let AgentTls::On(c) = self else {
            return None;
        };
        Some(
            ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    &c.cert_pem,
                    &c.key_pem,
                ))
                .client_ca_root(Certificate::from_pem(&c.ca_pem))
                .timeout(HANDSHAKE),
        )
    }
}

/// Only servers may call the agent's API (a node or a user with a
/// certificate from the same CA may not). Without TLS everyone may.
pub fn only_servers(req: Request<()>) -> Result<Request<()>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(req);
    };
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    match Identity::of_certificate(leaf.as_ref()) {
        Ok(Identity::Server(_)) => Ok(req),
        Ok(other) => Err(Status::permission_denied(format!(
            "{other} may not call a node's agent; only servers relay to it"
        ))),
        Err(e) => Err(Status::unauthenticated(e.to_string())),
    }
}

/// The node's credentials at start: found in `DATA_DIR/tls`, or got by
/// joining through the first server that takes the token.
pub async fn credentials(
    security: &Security,
    data_dir: &Path,
    name: &str,
    servers: &[String],
) -> Result<AgentTls, CredentialsError> {
    if security.insecure {
        tracing::warn!("INSECURE: --insecure: the agent's port is plaintext and takes any caller; anyone who reaches it can run commands in every container");
        return Ok(AgentTls::Off);
    }
    if let Some(creds) = NodeCreds::load(data_dir)? {
        let named = creds.node()?;
        if named != name {
            return Err(creds_error(format!(
                "{} holds the credentials of node {named:?}, not {name:?}: start with --name {named}, or remove the directory and join again with a token",
                dir(data_dir).display()
            )));
        }
        let (_, until) = skiff_pki::ca::validity(&creds.cert_pem).map_err(creds_error)?;
        let now = (crate::clock::now_ms() / 1000) as i64;
        if until <= now {
            return Err(creds_error(format!(
                "the certificate of node {name:?} in {} expired (the agent renews it while it runs; it was stopped too long): remove that directory and join again with a token",
                dir(data_dir).display()
            )));
        }
        return Ok(AgentTls::On(Arc::new(creds)));
    }
    let token = security.join_token.as_deref().ok_or_else(|| {
        creds_error(format!(
            "node {name:?} has no credentials in {}: join once with --token (an admin makes one with `skiff token create --role node`)",
            dir(data_dir).display()
        ))
    })?;
    let who = skiff_client::join::Joiner::Node(name.to_string());
    let (via, j) = skiff_client::join::join_any(servers, token, &who, JOIN_PATIENCE)
        .await
        .map_err(creds_error)?;
    let creds = NodeCreds {
        ca_pem: j.ca_pem,
        cert_pem: j.cert_pem,
        key_pem: j.key_pem,
    };
    creds.save(data_dir)?;
    tracing::info!(node = %name, via = %via, "joined the cluster; credentials in {}", dir(data_dir).display());
    Ok(AgentTls::On(Arc::new(creds)))
}
