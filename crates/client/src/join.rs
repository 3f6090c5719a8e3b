//! Joining a cluster with a token (`skiff1.PIN.ID.SECRET`): read the chain
//! the server presents and keep the CA whose public key matches the
//! token's pin (so a server that is not the cluster's learns nothing), make
//! a key that never leaves this machine, and ask the server, now over a
//! verified TLS connection, to sign it for the identity the token allows.

use std::time::Duration;

use skiff_proto::pb;

use crate::config::ClientTls;
use crate::{ClientError, JoinRole};

/// What a joiner gets: the CA, its certificate, and its key.
#[derive(Clone)]
pub struct Joined {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The servers' API addresses as the cluster knows them.
    pub servers: Vec<String>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Who is joining.
#[derive(Clone, Debug)]
pub enum Joiner {
    Node(String),
    Server(u64),
}

fn fail(why: impl std::fmt::Display) -> ClientError {
    ClientError::Join(why.to_string())
}

/// Joins through the server at `url` (`https://host:port`).
pub async fn join(url: &str, token: &str, who: &Joiner) -> Result<Joined, ClientError> {
    let token = skiff_pki::JoinToken::parse(token).map_err(fail)?;
    let addr = url
        .strip_prefix("https://")
        .ok_or_else(|| fail(format!("{url:?}: a join goes to an https:// server")))?
        .trim_end_matches('/');
    let chain = tokio_timeout(skiff_pki::discover::presented_chain(addr))
        .await
        .map_err(|reason| ClientError::Connect {
            url: url.to_string(),
            reason,
        })?;
    let ca_pem = skiff_pki::discover::pinned_ca(&chain, &token.pin).map_err(fail)?;
    let (key_pem, csr_pem) = skiff_pki::ca::request().map_err(fail)?;
    let tls = ClientTls {
        token: None,
        ca_pem: ca_pem.clone(),
        identity: None,
    };
    let channel = crate::channel(url, Some(&tls)).await?;
    let (role, node, server_id) = match who {
        Joiner::Node(name) => (JoinRole::Node, name.clone(), 0),
        Joiner::Server(id) => (JoinRole::Server, String::new(), *id),
    };
    let resp = pb::access_client::AccessClient::new(channel)
        .join(pb::JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            role: role.wire() as i32,
            node,
            server_id,
            csr_pem,
        })
        .await
        .map_err(|s| match s.code() {
            // The cluster is starting or has no leader: worth another try.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ClientError::Status(s),
            _ => fail(format!("{url} refused the join: {}", s.message())),
        })?
        .into_inner();
    Ok(Joined {
        ca_pem,
        cert_pem: resp.cert_pem,
        key_pem,
        servers: resp
            .servers
            .into_iter()
            .map(|m| format!("https://{}", m.api_addr))
            .collect(),
    })
}

/// Joins through the first of `urls` that takes the token (returning its
/// URL too), trying again while every failure is one that may pass (the
/// servers are starting, or have no leader yet) until `patience` is spent.
/// A refusal (a bad, expired or revoked token; a name taken; a server whose
/// CA is not the token's) ends it at once.
pub async fn join_any(
    urls: &[String],
    token: &str,
    who: &Joiner,
    patience: Duration,
) -> Result<(String, Joined), ClientError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(200);
    loop {
        let mut last = None;
        for url in urls {
            match join(url, token, who).await {
                Ok(j) => return Ok((url.clone(), j)),
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let Some(e) = last else {
            return Err(fail("no server address given"));
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(e);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

async fn tokio_timeout<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no TLS handshake within 10s".into()),
    }
}
