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
