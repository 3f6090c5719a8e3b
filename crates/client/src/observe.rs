//! What the cluster did and uses: its events (`skiff events`) and what
//! nodes and allocations use now (`skiff top`).

use skiff_proto::pb;

use crate::{Client, ClientError};

pub use skiff_proto::pb::{
    AllocTop, ClusterEvent, EventsRequest, NodeTop, TopRequest, TopResponse,
};

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

    /// What nodes (and, with `r.allocs`, running allocations) use now
    /// against what they offer and asked for; an empty namespace is this
    /// client's.
    pub async fn top(&mut self, mut r: TopRequest) -> Result<TopResponse, ClientError> {
        if r.namespace.is_empty() {
            r.namespace = self.namespace.clone();
        }
        Ok(self.cluster.top(r).await?.into_inner())
    }
}
