//! The servers an agent talks to: one connection to each, the one in use,
//! and failing over to the next when it stops answering.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::pb;
use tonic::transport::{Channel, Endpoint};

use crate::tls::AgentTls;

/// Why the servers' addresses cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error("server address {url:?} is not a URL: {reason}")]
    BadServer { url: String, reason: String },
    #[error("no server address given")]
    NoServers,
}

/// Each server's URL and the connection to it.
type ServerList = Vec<(String, Channel)>;

/// Rotates through the configured servers when one stops answering.
#[derive(Clone)]
pub struct Servers {
    /// Replaced whole when the node's certificate is renewed.
    channels: Arc<std::sync::RwLock<Arc<ServerList>>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
}

impl Servers {
    pub fn new(urls: &[String], tls: &AgentTls) -> Result<Servers, ServersError> {
        Ok(Servers {
            channels: Arc::new(std::sync::RwLock::new(Arc::new(Servers::channels(
                urls, tls,
            )?))),
            current: Default::default(),
        })
    }

    /// Talks first to the server [`first_server`] picks for node `name`.
    pub fn first_for(self, name: &str) -> Servers {
        let n = self.list().len();
        self.current
            .store(first_server(name, n), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// New connections with `tls` (a renewed certificate); calls under
    /// way finish on the old ones.
    pub fn refresh(&self, tls: &AgentTls) -> Result<(), ServersError> {
        let urls: Vec<String> = self.list().iter().map(|(u, _)| u.clone()).collect();
        let fresh = Arc::new(Servers::channels(&urls, tls)?);
        *self.channels.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn list(&self) -> Arc<ServerList> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn channel(&self) -> Channel {
        let list = self.list();
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % list.len();
        list[i].1.clone()
    }

    fn channels(urls: &[String], tls: &AgentTls) -> Result<ServerList, ServersError> {
        if urls.is_empty() {
            return Err(ServersError::NoServers);
        }
        let mut channels = Vec::new();
        for url in urls {
            let bad = |reason: String| ServersError::BadServer {
                url: url.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true);
            match (tls.to_servers(), url.starts_with("https://")) {
                (Some(config), true) => {
                    ep = ep.tls_config(config).map_err(|e| bad(e.to_string()))?
                }
                (None, false) => {}
                (Some(_), false) => return Err(bad("the servers speak TLS: use https://".into())),
                (None, true) => {
                    return Err(bad(
                        "--insecure speaks plaintext: use http:// (and --insecure servers)".into(),
                    ))
                }
            }
            channels.push((url.clone(), ep.connect_lazy()));
        }
        Ok(channels)
    }

    pub fn client(&self) -> pb::node_api_client::NodeApiClient<Channel> {
        pb::node_api_client::NodeApiClient::new(self.channel())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
    }

    /// Moves to the next server after an error that says this one cannot help.
    pub fn failed(&self, status: &tonic::Status) {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ) && self.list().len() > 1
        {
            let i = self
                .current
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let list = self.list();
            tracing::info!(server = %list[i % list.len()].0, "failing over");
        }
    }
}

/// Which of `n` servers node `name` talks to first: spread over them by
/// the name (FNV-1a), so the nodes of a cluster given the same list do not
/// all hold their allocation watches on the first server, and the same
/// node picks the same one after a restart.
pub fn first_server(name: &str, n: usize) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::first_server;

    #[test]
    fn nodes_are_spread_over_the_servers_and_keep_their_first_one() {
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[first_server(&format!("node-{i:04}"), 3)] += 1;
        }
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
        assert_eq!(first_server("gpu-7", 3), first_server("gpu-7", 3));
        assert_eq!(first_server("gpu-7", 1), 0);
    }
}
