//! The credentials a load generator uses: mutual TLS as production runs
//! (the default; a founding server's admin.conf, or a CA the bench makes
//! for a static cluster) or `--insecure` plaintext, to measure what TLS
//! costs.

use std::path::Path;

use anyhow::Context;
use skiff_client::{Client, ClientConfig, ClientError, ClientTls, JoinRole};
use skiff_pki::{Ca, Identity, CA_LIFETIME};

#[derive(Clone, Debug, Default)]
pub struct Creds {
    /// `None`: `--insecure`.
    pub tls: Option<ClientTls>,
}

impl Creds {
    pub fn insecure() -> Creds {
        Creds { tls: None }
    }

    /// The administrator's credentials a founding server wrote.
    pub fn from_admin_conf(server_dir: &Path) -> anyhow::Result<Creds> {
        let path = server_dir.join("admin.conf");
        let config = ClientConfig::load(&path)?;
        Ok(Creds { tls: config.tls })
    }

    /// A CA for the founding servers of a static cluster, written under
    /// `dir`, and an administrator certificate; the server arguments that
    /// hand it to each server.
    pub fn shared_ca(dir: &Path) -> anyhow::Result<(Creds, Vec<String>)> {
        let ca = Ca::generate(CA_LIFETIME)?;
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        skiff_pki::files::write_private(&cert, ca.cert_pem().as_bytes())?;
        skiff_pki::files::write_private(&key, ca.0.key_pem.as_bytes())?;
        let admin = ca.issue(
            &Identity::User("admin".into()),
            std::time::Duration::from_secs(24 * 3600),
        )?;
        let creds = Creds {
            tls: Some(ClientTls {
                token: None,
                ca_pem: ca.cert_pem().to_string(),
                identity: Some((admin.cert_pem, admin.key_pem)),
            }),
        };
        let args = vec![
            "--ca-cert".to_string(),
            cert.display().to_string(),
            "--ca-key".to_string(),
            key.display().to_string(),
        ];
        Ok((creds, args))
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `SCHEME://addr`.
    pub fn url(&self, addr: &str) -> String {
        format!("{}://{}", self.scheme(), addr.trim())
    }

    pub async fn connect(&self, url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, self.tls.as_ref()).await
    }

    /// What an agent needs to join the server at `url`: `--token T` made
    /// with these credentials, or `--insecure`.
    pub async fn agent_args(&self, url: &str) -> anyhow::Result<Vec<String>> {
        if self.tls.is_none() {
            return Ok(vec!["--insecure".into()]);
        }
        let token = self
            .connect(url)
            .await?
            .create_token(JoinRole::Node, 3600, "bench")
            .await
            .context("making a node join token")?;
        Ok(vec!["--token".into(), token.token])
    }
}

static GLOBAL: std::sync::OnceLock<Creds> = std::sync::OnceLock::new();

/// Sets the credentials every client of this load generator uses (once,
/// before the first client).
pub fn set_global(creds: Creds) {
    let _ = GLOBAL.set(creds);
}

/// The credentials [`set_global`] set.
pub fn global() -> &'static Creds {
    GLOBAL
        .get()
        .expect("credentials are set before the first client")
}
