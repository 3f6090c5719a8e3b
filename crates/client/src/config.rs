//! Where the servers are and who the client is: the client configuration
//! file a founding server writes as `admin.conf` (YAML: `servers`, and the
//! PEM blocks `ca`, `cert`, `key`), and the TLS a connection uses.
//!
//! The CLI finds the file with `--config`, then `SKIFF_CONFIG`, then
//! `~/.skiff/config`; `--server` (or `SKIFF_SERVER`) overrides its
//! servers. An `https://` server needs the CA; `http://` is plaintext,
//! for clusters started with `--insecure` only.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// The name the servers' certificates carry.
pub const SERVER_NAME: &str = "server.skiff";

/// The cluster CA, and the client's own certificate and key (absent for a
/// joiner, who brings a token instead).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
    /// A user's bearer token (`skiff user token`), sent with every call
    /// instead of a certificate.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "<cert and key>"),
            )
            .field("token", &self.token.as_ref().map(|_| "<token>"))
            .finish()
    }
}

impl ClientTls {
    /// The rustls settings tonic uses: TLS to a server of this CA,
    /// presenting the client's certificate when it has one.
    pub(crate) fn tonic(&self) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(SERVER_NAME);
        match &self.identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }
}

/// A parsed client configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Server API URLs, tried in order.
    pub servers: Vec<String>,
    pub tls: Option<ClientTls>,
    /// Where it was read from, for error messages.
    pub source: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    servers: Vec<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    token: Option<String>,
}

fn bad(path: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Config {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

impl ClientConfig {
    /// Parses the YAML text of a configuration file; `path` names it in errors.
    pub fn from_yaml(text: &str, path: &str) -> Result<ClientConfig, ClientError> {
        let f: File = serde_yaml_ng::from_str(text).map_err(|e| bad(path, e))?;
        for (i, s) in f.servers.iter().enumerate() {
            if !(s.starts_with("https://") || s.starts_with("http://")) {
                return Err(bad(
                    path,
                    format!("servers[{i}]: {s:?} must be a URL such as https://10.0.0.1:7700"),
                ));
            }
        }
        let pem_field = |name: &str, v: &Option<String>| -> Result<(), ClientError> {
            match v {
                Some(t) if !t.contains("-----BEGIN ") => {
                    Err(bad(path, format!("{name}: must be a PEM block")))
                }
                _ => Ok(()),
            }
        };
        pem_field("ca", &f.ca)?;
        pem_field("cert", &f.cert)?;
        pem_field("key", &f.key)?;
        let identity = match (f.cert, f.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad(path, "cert and key: give both or neither")),
        };
        if f.token.is_some() && identity.is_some() {
            return Err(bad(path, "token: give a certificate or a token, not both"));
        }
        let tls = match f.ca {
            Some(ca_pem) => Some(ClientTls {
                ca_pem,
                identity,
                token: f.token,
            }),
            None if identity.is_some() || f.token.is_some() => {
                return Err(bad(
                    path,
                    "ca: a certificate or token needs the cluster CA beside it",
                ))
            }
            None => None,
        };
        Ok(ClientConfig {
            servers: f.servers,
            tls,
            source: Some(PathBuf::from(path)),
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| bad(&shown, e))?;
        Self::from_yaml(&text, &shown)
    }

    /// The file the CLI reads when neither `--config` nor `SKIFF_CONFIG`
    /// names one: `~/.skiff/config`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".skiff").join("config"))
    }
}

/// A client configuration file's text: `header` as comment lines, then
/// `servers`, `ca`, `cert` and `key` (what [`ClientConfig::load`] reads).
pub fn config_text(header: &str, servers: &[String], ca: &str, cert: &str, key: &str) -> String {
    let block = |pem: &str| pem.lines().map(|l| format!("  {l}\n")).collect::<String>();
    let mut out: String = header.lines().map(|l| format!("# {l}\n")).collect();
    out.push_str("servers:\n");
    for s in servers {
        out.push_str(&format!("  - {s}\n"));
    }
    out.push_str("ca: |\n");
    out.push_str(&block(ca));
    out.push_str("cert: |\n");
    out.push_str(&block(cert));
    out.push_str("key: |\n");
    out.push_str(&block(key));
    out
}

/// A client configuration file holding a bearer token instead of a
/// certificate: `header` as comments, then `servers`, `ca` and `token`.
pub fn token_config_text(header: &str, servers: &[String], ca: &str, token: &str) -> String {
    let block = |pem: &str| pem.lines().map(|l| format!("  {l}\n")).collect::<String>();
    let mut out: String = header.lines().map(|l| format!("# {l}\n")).collect();
    out.push_str("servers:\n");
    for s in servers {
        out.push_str(&format!("  - {s}\n"));
    }
    out.push_str("ca: |\n");
    out.push_str(&block(ca));
    out.push_str(&format!("token: {token}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_configuration_names_servers_a_ca_and_an_identity() {
        let block = |pem: &str| pem.lines().map(|l| format!("  {l}\n")).collect::<String>();
        let text = format!(
            "servers:\n  - https://10.0.0.1:7700\nca: |\n{}cert: |\n{}key: |\n{}",
            block(PEM),
            block(PEM),
            block(PEM)
        );
        let c = ClientConfig::from_yaml(&text, "f").unwrap();
        assert_eq!(c.servers, ["https://10.0.0.1:7700"]);
        let tls = c.tls.unwrap();
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.identity.is_some());
        assert!(!format!("{tls:?}").contains("BEGIN"), "no PEM in Debug");
    }

    #[test]
    fn mistakes_name_the_field() {
        let e = |t: &str| ClientConfig::from_yaml(t, "conf").unwrap_err().to_string();
        assert!(e("servers: [10.0.0.1:7700]\n").contains("servers[0]"));
        assert!(e("ca: nope\n").contains("ca: must be a PEM block"));
        assert!(e(&format!("ca: \"{PEM}\"\ncert: \"{PEM}\"\n")).contains("give both or neither"));
        assert!(e("server: [https://a:1]\n").contains("unknown field"));
        let plain = ClientConfig::from_yaml("servers: [http://127.0.0.1:7700]\n", "c").unwrap();
        assert!(plain.tls.is_none());
    }
}
