//! How the servers agree on one secrets key (`secrets.rs`): the first
//! key id committed is the cluster's; a server holding another fetches the
//! cluster's key from a peer (over the peer port, which takes server
//! certificates only) and keeps it in its data directory.

use std::time::Duration;

use skiff_pki::secrets::SecretsKey;
use skiff_proto::pb;
use skiff_store::command::Command;
use skiff_store::Outcome;

use crate::ctx::Ctx;

/// Agrees on the cluster's key: proposes this server's when the state
/// names none, fetches the cluster's from a peer when it names another.
/// Ends once this server holds the cluster's key.
pub async fn agree(ctx: Ctx, data_dir: std::path::PathBuf) {
    loop {
        let mine = ctx.secrets.current();
        let cluster = ctx.store.state().access.secrets_key.clone();
        match cluster {
            Some(id) if id == mine.id() => return,
            None => match ctx
                .propose(&Command::SetSecretsKey {
                    key_id: mine.id().to_string(),
                })
                .await
            {
                Ok(Outcome::AccessChanged) => {
                    tracing::info!(key = mine.id(), "the servers' secrets key is agreed on");
                }
                Ok(other) => tracing::debug!(?other, "secrets key not recorded; looking again"),
                Err(e) => {
                    tracing::debug!(error = %e.message(), "cannot record the secrets key yet")
                }
            },
            Some(id) => {
                if let Some(key) = fetch(&ctx, &id).await {
                    match key.save(&data_dir) {
                        Ok(()) => {
                            ctx.secrets.replace(key);
                            tracing::info!(key = %id, "took the cluster's secrets key from a peer");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot save the cluster's secrets key")
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The key `id` from any peer that holds it.
async fn fetch(ctx: &Ctx, id: &str) -> Option<SecretsKey> {
    let peers: Vec<u64> = ctx
        .store
        .state()
        .servers
        .keys()
        .copied()
        .filter(|p| *p != ctx.me.id)
        .collect();
    for peer in peers {
        let Some(channel) = ctx.peers.channel(peer) else {
            continue;
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            pb::peer_client::PeerClient::new(channel).secrets_key(pb::SecretsKeyRequest {}),
        )
        .await;
        match answer {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                match SecretsKey::from_slice(&r.key) {
                    Some(k) if k.id() == id => return Some(k),
                    _ => tracing::debug!(peer, "peer holds another secrets key"),
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(peer, error = %e.message(), "cannot fetch the secrets key")
            }
            Err(_) => tracing::debug!(peer, "no answer fetching the secrets key"),
        }
    }
    None
}
