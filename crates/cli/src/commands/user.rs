//! `skiff user create|ls|revoke`: users of the client API, each with a
//! role, identified by a certificate the cluster signs.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;
use skiff_client::UserRole;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Make a user and write its client configuration file (its own key,
    /// made here, and the certificate the cluster signs for it). Roles:
    /// admin (everything), operator (read, logs, cordon/drain/GPU
    /// reset/remove nodes), developer (read, change jobs and rollouts,
    /// logs, exec), viewer (read, logs). Give the file to the user; they
    /// point SKIFF_CONFIG or --config at it.
    /// Developers act in the namespaces `--namespace` grants
    /// (comma-separated; `default` when none is given); viewers read
    /// those, or every namespace when none is given.
    #[command(after_help = "Examples:\n  \
        skiff user create ana --role developer --namespace ml,web --out ana.conf\n  \
        SKIFF_CONFIG=ana.conf skiff get jobs -n ml")]
    Create {
        /// The user's name: host-name characters, 1 to 253; not `admin`.
        name: String,
        /// admin, operator, developer or viewer.
        #[arg(long, value_parser = parse_role)]
        role: UserRole,
        /// Where to write the configuration file (0600; never overwritten).
        /// Default: NAME.conf in the current directory.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List users and their roles (revoked ones too: names are never
    /// reused).
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Renew your own certificate (before it expires; a year by default):
    /// a new key and certificate written over the configuration file in
    /// use (--config, SKIFF_CONFIG or ~/.skiff/config). Works for
    /// admin.conf too.
    Renew {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Make a bearer token for a user, for scripts and tools that hold no
    /// certificate: they send `authorization: Bearer TOKEN` over TLS (the
    /// CLI does with SKIFF_TOKEN set, or a configuration file holding
    /// `token:`). It acts as the user, with the user's role and grants,
    /// until it expires or is revoked (or the user is). Printed once.
    #[command(after_help = "Examples:\n  \
        skiff user token ci --ttl 720h\n  \
        SKIFF_TOKEN=skiffu1.... skiff get jobs\n  \
        skiff user token ci --out ci.conf   # servers, CA and token in one file")]
    Token {
        /// The user the token acts as.
        name: String,
        /// How long it works (e.g. 24h, 720h); at most a year.
        #[arg(long, default_value = "720h", value_parser = crate::args::parse_duration)]
        ttl: std::time::Duration,
        /// Also write a client configuration file holding the servers, the
        /// CA and the token (0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a bearer token (by the id `skiff user token` printed).
    RevokeToken {
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a user: its certificate is refused from the next call on, on
    /// every server. The name is never given out again.
    Revoke {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn parse_role(s: &str) -> Result<UserRole, String> {
    s.parse()
}

#[derive(Serialize)]
struct UserOut<'a> {
    name: &'a str,
    role: &'a str,
    revoked: bool,
    create_index: u64,
    namespaces: &'a [String],
}

pub async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create {
            name,
            role,
            out,
            client,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.conf")));
            if out.exists() {
                anyhow::bail!("{} exists; choose another --out", out.display());
            }
            let config = client.client_config()?;
            let (key, csr) = skiff_pki::ca::request()?;
            // Grants come from the command line only: a SKIFF_NAMESPACE
            // exported for everyday use must not grant anything.
            let grants: Vec<String> = given_on_command_line(client.namespace.as_deref())
                .iter()
                .flat_map(|n| n.split(','))
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let made = connect(&client)
                .await?
                .create_user(&name, role, &grants, &csr)
                .await?;
            let text = skiff_client::config::config_text(
                &format!(
                    "Skiff client credentials: user {name:?}, role {}.\nKeep this file private (mode 0600).",
                    role.as_str()
                ),
                &config.servers,
                &made.ca_pem,
                &made.cert_pem,
                &key,
            );
            skiff_pki::files::write_private(&out, text.as_bytes())?;
            // What the new user can try first: a metrics user only
            // scrapes (with a token), every other role may read.
            let next = if role == UserRole::Metrics {
                format!("a metrics user only scrapes: skiff user token {name} --ttl 8760h gives Prometheus its token")
            } else {
                format!("SKIFF_CONFIG={} skiff get jobs", out.display())
            };
            emit(&format!(
                "user/{name} created ({}); credentials in {} ({next})\n",
                role.as_str(),
                out.display(),
            ));
        }
        UserCmd::Ls { output, client } => {
            let users = connect(&client).await?.list_users().await?;
            let rows: Vec<UserOut> = users
                .iter()
                .map(|u| UserOut {
                    name: &u.name,
                    role: u.role.map_or("?", UserRole::as_str),
                    revoked: u.revoked,
                    create_index: u.create_index,
                    namespaces: &u.namespaces,
                })
                .collect();
            print_list(
                output,
                &rows,
                &["NAME", "ROLE", "NAMESPACES", "STATE"],
                4,
                |u| {
                    vec![
                        u.name.to_string(),
                        u.role.to_string(),
                        match (u.role, u.namespaces.is_empty()) {
                            ("admin" | "operator", _) | ("viewer", true) => "*".to_string(),
                            ("metrics", _) => "-".to_string(),
                            _ => u.namespaces.join(","),
                        },
                        if u.revoked { "revoked" } else { "active" }.to_string(),
                    ]
                },
            )?;
        }
        UserCmd::Renew { client } => {
            let config = client.client_config()?;
            let Some(path) = config.source.clone() else {
                anyhow::bail!(
                    "no configuration file to renew: point --config or SKIFF_CONFIG at one"
                );
            };
            let Some(tls) = &config.tls else {
                anyhow::bail!("{} holds no certificate", path.display());
            };
            let (key, csr) = skiff_pki::ca::request()?;
            let cert = connect(&client).await?.renew_certificate(&csr).await?;
            // The file's own servers, not a --server given for this call.
            let servers = skiff_client::config::ClientConfig::load(&path)?.servers;
            let text = skiff_client::config::config_text(
                "Skiff client credentials (renewed with `skiff user renew`).\nKeep this file private (mode 0600).",
                &servers,
                &tls.ca_pem,
                &cert,
                &key,
            );
            skiff_pki::files::write_private(&path, text.as_bytes())?;
            let until = skiff_pki::ca::validity(&cert)?.1;
            emit(&format!(
                "renewed: {} holds a new key and a certificate valid until {}\n",
                path.display(),
                crate::output::utc(until as u64 * 1000)
            ));
        }
        UserCmd::Token {
            name,
            ttl,
            out,
            client,
        } => {
            if out.as_ref().is_some_and(|o| o.exists()) {
                anyhow::bail!("{} exists; choose another --out", out.unwrap().display());
            }
            let config = client.client_config()?;
            let (token, id, expires_ms) = connect(&client)
                .await?
                .create_user_token(&name, ttl.as_secs().max(1))
                .await?;
            if let Some(out) = out {
                let ca = config
                    .tls
                    .as_ref()
                    .map(|t| t.ca_pem.clone())
                    .unwrap_or_default();
                let text = skiff_client::config::token_config_text(
                    &format!("Skiff client credentials: a bearer token of user {name:?} (id {id}).\nKeep this file private (mode 0600)."),
                    &config.servers,
                    &ca,
                    &token,
                );
                skiff_pki::files::write_private(&out, text.as_bytes())?;
                eprintln!("wrote {}", out.display());
            }
            eprintln!(
                "token {id} of user {name}, valid until {} (revoke: skiff user revoke-token {id})",
                crate::output::utc(expires_ms)
            );
            emit(&format!("{token}\n"));
        }
        UserCmd::RevokeToken { id, client } => {
            connect(&client).await?.revoke_user_token(&id).await?;
            emit(&format!("token {id} revoked\n"));
        }
        UserCmd::Revoke { name, client } => {
            connect(&client).await?.revoke_user(&name).await?;
            emit(&format!(
                "user/{name} revoked (its certificate is refused from now on)\n"
            ));
        }
    }
    Ok(())
}

/// `value` when the command line gave it with `-n`/`--namespace` (not
/// only the environment's SKIFF_NAMESPACE).
fn given_on_command_line(value: Option<&str>) -> Option<String> {
    let value = value?;
    let given = std::env::args().any(|a| {
        a == "-n"
            || a == "--namespace"
            || a.starts_with("--namespace=")
            || (a.starts_with("-n") && a.len() > 2 && !a.starts_with("--"))
    });
    given.then(|| value.to_string())
}
