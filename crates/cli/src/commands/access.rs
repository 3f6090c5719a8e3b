//! `skiff token` (join tokens), `skiff ca create` (the CA the founding
//! servers of a static cluster share), `skiff node remove`, `skiff audit`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use skiff_client::JoinRole;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{age, emit, print_list, utc, Format};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a join token. A node's agent joins once with
    /// `skiff agent --token T`; a new server with `skiff server --join URL
    /// --token T`. The token is printed this once: the cluster keeps only
    /// a hash of its secret.
    #[command(after_help = "Examples:\n  \
        skiff token create --role node --ttl 1h --description rack-2\n  \
        skiff agent --server https://10.0.0.1:7700 --token \"$(skiff token create --role node)\"")]
    Create(CreateTokenArgs),
    /// List join tokens (never their secrets).
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Revoke a join token by its id (the second-to-last part of the token,
    /// as `skiff token ls` shows it): it cannot be used to join any more.
    /// Nodes and servers that joined with it keep their certificates.
    Revoke {
        /// The token's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
pub struct CreateTokenArgs {
    /// What the token lets its holder become: `node` (an agent) or
    /// `server` (a control-plane server).
    #[arg(long, value_parser = parse_role)]
    role: JoinRole,
    /// How long the token can be used (e.g. 1h, 30m; at most a year).
    #[arg(long, default_value = "24h", value_parser = crate::args::parse_duration)]
    ttl: Duration,
    /// A note for `skiff token ls` (what the token is for).
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    client: ClientOpts,
}

fn parse_role(s: &str) -> Result<JoinRole, String> {
    s.parse()
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Make a cluster CA for the founding servers of a static cluster (every
    /// `skiff server --peers ...` of the first start gets --ca-cert and
    /// --ca-key). A single server, `skiff dev`, and servers joining with a
    /// token need none: the first makes its own, the others get it.
    #[command(after_help = "Example:\n  \
        skiff ca create --dir ./ca\n  \
        skiff server --id 1 --peers 1=10.0.0.1:7701,2=10.0.0.2:7701,3=10.0.0.3:7701 \\\n    \
        --ca-cert ./ca/ca.crt --ca-key ./ca/ca.key")]
    Create {
        /// Where to write ca.crt and ca.key (0600); an existing CA there is
        /// never overwritten.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Serialize)]
struct TokenOut<'a> {
    id: &'a str,
    role: &'a str,
    expires_ms: u64,
    revoked: bool,
    uses: u32,
    description: &'a str,
    create_index: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => {
            let ttl = a.ttl.as_secs();
            if ttl == 0 {
                anyhow::bail!("--ttl must be at least 1s");
            }
            let t = connect(&a.client)
                .await?
                .create_token(a.role, ttl, &a.description)
                .await?;
            eprintln!(
                "join token {} for a {}, valid for {} (shown once; revoke with `skiff token revoke {}`)",
                t.id,
                a.role.as_str(),
                age(a.ttl),
                t.id
            );
            emit(&format!("{}\n", t.token));
        }
        TokenCmd::Ls { output, client } => {
            let tokens = connect(&client).await?.list_tokens().await?;
            let now = now_ms();
            let out: Vec<TokenOut> = tokens
                .iter()
                .map(|t| TokenOut {
                    id: &t.id,
                    role: t.role.map_or("?", JoinRole::as_str),
                    expires_ms: t.expires_ms,
                    revoked: t.revoked,
                    uses: t.uses,
                    description: &t.description,
                    create_index: t.create_index,
                })
                .collect();
            print_list(
                output,
                &out,
                &["ID", "ROLE", "STATE", "EXPIRES IN", "USES", "DESCRIPTION"],
                6,
                |t| {
                    let state = if t.revoked {
                        "revoked"
                    } else if t.expires_ms <= now {
                        "expired"
                    } else {
                        "valid"
                    };
                    let left = if t.expires_ms > now {
                        age(Duration::from_millis(t.expires_ms - now))
                    } else {
                        "-".into()
                    };
                    vec![
                        t.id.to_string(),
                        t.role.to_string(),
                        state.to_string(),
                        left,
                        t.uses.to_string(),
                        t.description.to_string(),
                    ]
                },
            )?;
        }
        TokenCmd::Revoke { id, client } => {
            connect(&client).await?.revoke_token(&id).await?;
            emit(&format!("token/{id} revoked\n"));
        }
    }
    Ok(())
}

pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    let CaCmd::Create { dir } = cmd;
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if key.exists() || cert.exists() {
        anyhow::bail!(
            "{} already holds a CA; remove it first to make a new one",
            dir.display()
        );
    }
    let ca = skiff_pki::Ca::generate(skiff_pki::CA_LIFETIME)?;
    skiff_pki::files::private_dir(&dir)?;
    skiff_pki::files::write_private(&cert, ca.cert_pem().as_bytes())?;
    skiff_pki::files::write_private(&key, ca.0.key_pem.as_bytes())?;
    emit(&format!(
        "wrote {} and {} (keep the key secret)\npin: {}\n",
        cert.display(),
        key.display(),
        ca.pin()?
    ));
    Ok(())
}

/// `skiff node remove NAME`.
pub async fn remove_node(name: &str, client: &ClientOpts) -> anyhow::Result<()> {
    connect(client).await?.remove_node(name).await?;
    emit(&format!(
        "node/{name} removed (its certificate no longer works; the name may join again with a new token)\n"
    ));
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    skiff audit --since 1h\n  \
    skiff audit --since 24h -o json | jq 'select(.outcome != \"OK\")'")]
pub struct AuditArgs {
    /// Only records of the last DURATION (e.g. 30m, 24h); all kept ones
    /// when left out.
    #[arg(long, value_parser = crate::args::parse_duration)]
    since: Option<Duration>,
    /// At most this many records from each server (its newest).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    client: ClientOpts,
}

/// `skiff audit`: every server's audit records, merged by time. A server
/// that cannot be reached is named on stderr, and the rest still shown.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let config = args.client.client_config()?;
    let since_ms = args
        .since
        .map_or(0, |d| now_ms().saturating_sub(d.as_millis() as u64));
    let (members, _) = connect(&args.client).await?.members().await?;
    let secure = config.servers.iter().all(|u| u.starts_with("https://"));
    let scheme = if secure { "https" } else { "http" };
    let mut records = Vec::new();
    for m in &members {
        let url = format!("{scheme}://{}", m.api_addr);
        let got = async {
            let mut c = skiff_client::Client::connect_with(&url, config.tls.as_ref()).await?;
            c.read_audit(since_ms, args.limit).await
        }
        .await;
        match got {
            Ok((mut r, truncated)) => {
                if truncated {
                    eprintln!(
                        "server {}: older records left out (--limit {}; narrow --since)",
                        m.id, args.limit
                    );
                }
                records.append(&mut r);
            }
            Err(e) => eprintln!("server {} ({}): not read: {e}", m.id, m.api_addr),
        }
    }
    records.sort_by_key(|r| (r.time_ms, r.server));
    print_list(
        args.output,
        &records,
        &[
            "TIME", "SERVER", "IDENTITY", "METHOD", "OBJECT", "OUTCOME", "PEER",
        ],
        6,
        |r| {
            vec![
                utc(r.time_ms),
                r.server.to_string(),
                r.identity.clone(),
                r.method.clone(),
                if r.object.is_empty() {
                    "-".into()
                } else {
                    r.object.clone()
                },
                r.outcome.clone(),
                r.peer.clone(),
            ]
        },
    )
}
