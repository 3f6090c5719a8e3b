//! A server's credentials at start: found in `DATA_DIR/tls` (a restart),
//! got by joining with a token (`--join URL --token T`: the CA is found by
//! the token's pin, then a certificate for `server ID` is signed for a key
//! that never leaves this server), or made here by a founding server (a
//! one-server cluster makes its CA; the founding servers of a static
//! cluster share one made with `skiff ca create`). A founding server also
//! writes `admin.conf`, the administrator's credentials, and records the CA
//! in Raft once it can.

use std::path::Path;
use std::time::Duration;

use skiff_pki::{Ca, Identity, CA_LIFETIME};
use skiff_store::command::{CaRecord, Command};
use skiff_store::{Outcome, ServerInfo};

use crate::ctx::Ctx;
use crate::tls::{authority, tls_dir, ServerCreds, Tls};

/// The administrator's credentials a founding server writes.
pub const ADMIN_CONF: &str = "admin.conf";

/// How a server secures itself (from its flags).
#[derive(Clone, Default)]
pub struct Security {
    /// Plaintext, nobody checked: `--insecure`.
    pub insecure: bool,
    /// The CA founding servers of a static cluster share.
    pub ca: Option<Ca>,
    /// The join token of a server joining with `--join`.
    pub join_token: Option<String>,
    /// How long the certificates this server signs are valid.
    pub leaf_lifetime: Duration,
    /// How long the CA a founding server makes, and each renewal of it,
    /// is valid (zero: [`CA_LIFETIME`]).
    pub ca_lifetime: Duration,
}

impl Security {
    /// The CA's lifetime, the default when none was set.
    pub fn ca_lifetime(&self) -> Duration {
        if self.ca_lifetime.is_zero() {
            CA_LIFETIME
        } else {
            self.ca_lifetime
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("insecure", &self.insecure)
            .field("ca", &self.ca.is_some())
            .field("join_token", &self.join_token.is_some())
            .field("leaf_lifetime", &self.leaf_lifetime)
            .field("ca_lifetime", &self.ca_lifetime)
            .finish()
    }
}

/// What start-up found or made.
pub(crate) struct Credentials {
    pub tls: Tls,
    /// The CA this server founded the cluster with, to record in Raft.
    pub founding_ca: Option<Ca>,
}

/// Why start-up found or made no credentials; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

fn fail(why: impl std::fmt::Display) -> CredentialsError {
    CredentialsError(why.to_string())
}

/// What start-up needs to know of the server's configuration.
pub(crate) struct Start<'a> {
    pub data_dir: &'a Path,
    /// `--join URL`.
    pub join: Option<&'a str>,
    /// No `--peers`: a cluster of one, which may make its own CA.
    pub alone: bool,
    pub security: &'a Security,
}

pub(crate) async fn credentials(
    cfg: &Start<'_>,
    me: &ServerInfo,
) -> Result<Credentials, CredentialsError> {
    if cfg.security.insecure {
        tracing::warn!("INSECURE: --insecure: every port is plaintext and every caller is trusted; anyone who reaches a port owns the cluster and its nodes");
        return Ok(Credentials {
            tls: Tls::Off,
            founding_ca: None,
        });
    }
    let dir = tls_dir(cfg.data_dir);
    if let Some(creds) = ServerCreds::load(cfg.data_dir).map_err(fail)? {
        let founding_ca = read_ca(&dir)?;
        return Ok(Credentials {
            tls: Tls::from(creds),
            founding_ca,
        });
    }
    if let Some(url) = cfg.join {
        let token = cfg
            .security
            .join_token
            .as_deref()
            .ok_or_else(|| fail("--join needs a server join token (--token); an admin makes one with `skiff token create --role server`"))?;
        let creds = join(url, token, me.id).await?;
        creds.save(cfg.data_dir).map_err(fail)?;
        tracing::info!(via = %url, "joined with a token; credentials in {}", dir.display());
        return Ok(Credentials {
            tls: Tls::from(creds),
            founding_ca: None,
        });
    }
    let ca = match &cfg.security.ca {
        Some(ca) => ca.clone(),
        None if cfg.alone => Ca::generate(cfg.security.ca_lifetime()).map_err(fail)?,
        None => {
            return Err(fail(
                "the founding servers of a cluster share one CA: make it once with `skiff ca create --dir DIR` and give each server --ca-cert DIR/ca.crt --ca-key DIR/ca.key (or join servers one by one with --join and a token)",
            ))
        }
    };
    // The founding server's own certificate and admin.conf get the
    // default lifetime; `leaf_lifetime` is for what it signs later (joins,
    // renewals).
    let leaf = ca
        .issue(&Identity::Server(me.id), skiff_pki::LEAF_LIFETIME)
        .map_err(fail)?;
    let creds = ServerCreds {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    };
    creds.save(cfg.data_dir).map_err(fail)?;
    skiff_pki::files::write_private(&dir.join("ca.key"), ca.0.key_pem.as_bytes()).map_err(fail)?;
    write_admin_conf(
        cfg.data_dir,
        &ca,
        &format!("https://{}", me.api_addr),
        skiff_pki::LEAF_LIFETIME,
    )?;
    tracing::info!(
        "made this cluster's credentials: {} (the CA and this server's certificate) and {} (the administrator's)",
        dir.display(),
        cfg.data_dir.join(ADMIN_CONF).display()
    );
    Ok(Credentials {
        tls: Tls::from(creds),
        founding_ca: Some(ca),
    })
}

fn read_ca(dir: &Path) -> Result<Option<Ca>, CredentialsError> {
    let key = dir.join("ca.key");
    if !key.exists() {
        return Ok(None);
    }
    Ok(Some(Ca(skiff_pki::CertKey {
        cert_pem: std::fs::read_to_string(dir.join("ca.crt")).map_err(fail)?,
        key_pem: std::fs::read_to_string(key).map_err(fail)?,
    })))
}

/// Writes `admin.conf` (0600): the servers, the CA, and a certificate for
/// the `admin` user. The CLI reads it with `--config`, `SKIFF_CONFIG`, or
/// from `~/.skiff/config`.
pub fn write_admin_conf(
    data_dir: &Path,
    ca: &Ca,
    server_url: &str,
    lifetime: Duration,
) -> Result<(), CredentialsError> {
    let admin = ca
        .issue(&Identity::User(crate::auth::ADMIN.into()), lifetime)
        .map_err(fail)?;
    let text = admin_conf_text(
        &[server_url.to_string()],
        ca.cert_pem(),
        &admin.cert_pem,
        &admin.key_pem,
    );
    skiff_pki::files::write_private(&data_dir.join(ADMIN_CONF), text.as_bytes()).map_err(fail)
}

/// The administrator's client configuration file (`admin.conf`).
pub fn admin_conf_text(servers: &[String], ca: &str, cert: &str, key: &str) -> String {
    skiff_client::config::config_text(
        "Skiff client credentials: the administrator (user \"admin\").\nKeep this file private (mode 0600); anyone who reads it owns the cluster.",
        servers,
        ca,
        cert,
        key,
    )
}

/// Joins through the server at `url` (its CA found by the token's pin)
/// as `server id`.
async fn join(url: &str, token: &str, id: u64) -> Result<ServerCreds, CredentialsError> {
    let url = format!("https://{}", authority(url));
    let who = skiff_client::join::Joiner::Server(id);
    let (_, joined) = skiff_client::join::join_any(&[url], token, &who, Duration::from_secs(120))
        .await
        .map_err(fail)?;
    Ok(ServerCreds {
        ca_pem: joined.ca_pem,
        cert_pem: joined.cert_pem,
        key_pem: joined.key_pem,
    })
}

/// Records the CA this server founded the cluster with, once a leader
/// takes writes (every founding server tries; the same CA twice changes
/// nothing).
pub(crate) async fn record_ca(ctx: Ctx, ca: Ca) {
    let record = CaRecord {
        cert_pem: ca.0.cert_pem.clone(),
        key_pem: ca.0.key_pem.clone(),
    };
    loop {
        if ctx.store.state().access.ca.as_ref() == Some(&record) {
            return;
        }
        match ctx.propose(&Command::SetCa { ca: record.clone() }).await {
            Ok(Outcome::AccessChanged) => {
                tracing::info!("the cluster CA is recorded");
                return;
            }
            Ok(Outcome::Refused(why)) => {
                tracing::error!(%why, "this server's CA is not the cluster's");
                return;
            }
            Ok(other) => tracing::warn!(?other, "unexpected outcome recording the CA"),
            Err(e) => tracing::debug!(error = %e.message(), "cannot record the CA yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Renews this server's certificate two thirds into its lifetime, signed
/// with the cluster CA from the replicated state (every server holds it),
/// for `ctx.leaf_lifetime`: saved, then used by new connections and the
/// listeners. Retries every 30 s while it cannot (no CA recorded yet, a
/// write error).
pub(crate) async fn renew(ctx: Ctx, data_dir: std::path::PathBuf) {
    let Tls::On(cell) = ctx.tls.clone() else {
        return; // --insecure
    };
    loop {
        let creds = cell.current();
        let at = match skiff_pki::ca::renew_at(&creds.cert_pem) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this server's certificate; it will not be renewed");
                return;
            }
        };
        let now = crate::ctx::now_ms() as i64 / 1000;
        let wait = Duration::from_secs(at.saturating_sub(now).max(1) as u64);
        tokio::time::sleep(wait).await;
        match renewed(&ctx, &creds) {
            Ok(fresh) => match fresh.save(&data_dir) {
                Ok(()) => {
                    cell.replace(fresh);
                    ctx.peers.forget_channels();
                    tracing::info!("server certificate renewed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the renewed certificate; retrying in 30s")
                }
            },
            Err(e) => tracing::warn!(error = %e, "certificate not renewed; retrying in 30s"),
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

fn renewed(ctx: &Ctx, creds: &ServerCreds) -> Result<ServerCreds, String> {
    let record = ctx
        .store
        .state()
        .access
        .ca
        .clone()
        .ok_or("the cluster CA is not recorded yet")?;
    if ctx
        .store
        .state()
        .access
        .removed_servers
        .contains(&ctx.me.id)
    {
        return Err("this server was removed from the cluster".into());
    }
    let ca = Ca(skiff_pki::CertKey {
        cert_pem: record.cert_pem,
        key_pem: record.key_pem,
    });
    let leaf = ca
        .issue(&Identity::Server(ctx.me.id), ctx.leaf_lifetime)
        .map_err(|e| e.to_string())?;
    Ok(ServerCreds {
        ca_pem: creds.ca_pem.clone(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
    })
}

/// Renews the cluster CA's certificate two thirds into its life: the
/// leader signs the same key and name with new dates
/// ([`Ca::renewed`]) and proposes it; the state machine takes it only
/// with the same key. Everything the CA signed stays valid, the pin in
/// join tokens is unchanged, and holders of the old certificate keep
/// trusting what it signs (a trust anchor is its name and key, not its
/// dates); joins and new users get the new one.
pub(crate) async fn renew_ca(ctx: Ctx, lifetime: Duration) {
    if !ctx.tls.is_on() {
        return;
    }
    loop {
        let Some(record) = ctx.store.state().access.ca.clone() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let at = match skiff_pki::ca::renew_at(&record.cert_pem) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cluster CA's certificate; it will not be renewed");
                return;
            }
        };
        let now = crate::ctx::now_ms() as i64 / 1000;
        if now < at {
            // Looked at again now and then: another server may renew it.
            tokio::time::sleep(Duration::from_secs((at - now).clamp(1, 60) as u64)).await;
            continue;
        }
        if ctx.store.status().role != skiff_store::Role::Leader {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let ca = Ca(skiff_pki::CertKey {
            cert_pem: record.cert_pem,
            key_pem: record.key_pem,
        });
        let renewed = match ca.renewed(lifetime) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the cluster CA; retrying in 30s");
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
        };
        let command = Command::RenewCa {
            ca: CaRecord {
                cert_pem: renewed.0.cert_pem,
                key_pem: renewed.0.key_pem,
            },
        };
        match ctx.commit(&command).await {
            Ok(_) => tracing::info!("cluster CA certificate renewed (same key)"),
            Err(e) => {
                tracing::warn!(error = %e.message(), "cluster CA not renewed; retrying in 30s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}
