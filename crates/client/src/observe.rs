//! What the cluster did and uses: its events (`skiff events`).

use skiff_proto::pb;

use crate::{Client, ClientError};

pub use skiff_proto::pb::{ClusterEvent, EventsRequest};

/// A stream of the cluster's events.
pub struct Events {
    stream: tonic::Streaming<pb::ClusterEvent>,
}

impl Events {
    /// The next event; `None` at the end (without `follow`, once the kept
    /// events are sent).
    pub async fn next(&mut self) -> Result<Option<ClusterEvent>, ClientError> {
        Ok(self.stream.message().await?)
    }
}

impl Client {
    /// The cluster's events that match `r` (see [`EventsRequest`]); an
    /// empty namespace is this client's.
    pub async fn events(&mut self, mut r: EventsRequest) -> Result<Events, ClientError> {
        if r.namespace.is_empty() {
            r.namespace = self.namespace.clone();
        }
        let stream = self.cluster.events(r).await?.into_inner();
        Ok(Events { stream })
    }
}
