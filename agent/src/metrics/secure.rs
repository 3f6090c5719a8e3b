//! An agent's metrics off loopback: HTTPS with the node's certificate
//! (which also names [`skiff_pki::AGENT_DNS`], the one name Prometheus can
//! check for every agent), answered only to a bearer token of a `metrics`
//! user. The agent does not hold the users' tokens: it asks the servers
//! (`NodeApi/CheckMetricsToken`) and keeps each answer a little while, so
//! a scrape every few seconds costs the servers one call a minute, and a
//! revoked token is refused within [`REMEMBER_YES`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use skiff_proto::pb;
use tokio::sync::watch;

use crate::servers::Servers;
use crate::tls::AgentTls;

/// How long a token the servers accepted is taken without asking again.
pub const REMEMBER_YES: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
const REMEMBER_NO: Duration = Duration::from_secs(5);
/// Answers kept at most (a scraper trying many tokens cannot grow it).
const REMEMBERED: usize = 256;

type Answers = Arc<Mutex<HashMap<[u8; 32], (Instant, Result<(), String>)>>>;

async fn ask(servers: &Servers, header: String) -> Result<(), String> {
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        servers
            .client()
            .check_metrics_token(pb::CheckMetricsTokenRequest {
                authorization: header,
            }),
    )
    .await;
    match asked {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            if r.allowed {
                Ok(())
            } else {
                Err(r.reason)
            }
        }
        Ok(Err(status)) => {
            servers.failed(&status);
            Err(format!(
                "the servers could not check the token: {}",
                status.message()
            ))
        }
        Err(_) => Err("the servers did not answer in time to check the token".into()),
    }
}

/// Who may read the agent's metrics off loopback, and its TLS
/// configuration of the moment.
pub fn security(
    servers: Servers,
    tls: watch::Receiver<AgentTls>,
) -> (skiff_metrics::Access, Arc<skiff_metrics::CurrentTls>) {
    let answers: Answers = Arc::default();
    let check = move |header: Option<String>| -> skiff_metrics::CheckFuture {
        let (servers, answers) = (servers.clone(), answers.clone());
        Box::pin(async move {
            let header = header.ok_or(
                "this address needs `Authorization: Bearer TOKEN` (a `skiff user token` of a user made with --role metrics)",
            )?;
            let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
            let lock = || answers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, said)) = lock().get(&key) {
                let keep = if said.is_ok() {
                    REMEMBER_YES
                } else {
                    REMEMBER_NO
                };
                if at.elapsed() < keep {
                    return said.clone();
                }
            }
            let said = ask(&servers, header).await;
            let mut held = lock();
            if held.len() >= REMEMBERED {
                held.clear();
            }
            held.insert(key, (Instant::now(), said.clone()));
            said
        })
    };
    let current = skiff_metrics::follow_creds(
        move || match &*tls.borrow() {
            AgentTls::On(creds) => Some(creds.clone()),
            AgentTls::Off => None,
        },
        |c: &crate::tls::NodeCreds| (c.cert_pem.as_str(), c.key_pem.as_str()),
    );
    (skiff_metrics::Access::Guarded(Arc::new(check)), current)
}
