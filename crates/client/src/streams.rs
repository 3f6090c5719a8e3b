//! Streams the client reads as they arrive: watch events and logs.

use skiff_proto::pb;

use crate::types::{LogStream, WatchEvent, OBJECT_KINDS};
use crate::{missing, ClientError};

/// A stream of [`WatchEvent`]s.
pub struct Watch {
    pub(crate) stream: tonic::Streaming<pb::WatchEvent>,
}

impl Watch {
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        use pb::watch_event::Object;
        let Some(e) = self.stream.message().await? else {
            return Ok(None);
        };
        let kind = OBJECT_KINDS
            .iter()
            .find(|(_, k)| *k as i32 == e.kind)
            .map_or("unknown", |(w, _)| w);
        let json = match &e.object {
            None => None,
            Some(Object::Job(o)) => Some(serde_json::to_string(o)),
            Some(Object::Node(o)) => Some(serde_json::to_string(o)),
            Some(Object::Allocation(o)) => Some(serde_json::to_string(o)),
            Some(Object::Evaluation(o)) => Some(serde_json::to_string(o)),
            Some(Object::Deployment(o)) => Some(serde_json::to_string(o)),
            Some(Object::JobVersion(o)) => Some(serde_json::to_string(o)),
            Some(Object::Server(o)) => Some(serde_json::to_string(o)),
        }
        .transpose()
        .map_err(|err| missing(&format!("object ({err})")))?;
        Ok(Some(WatchEvent {
            index: e.index,
            kind: kind.to_string(),
            key: e.key,
            json: json.filter(|_| !e.deleted),
            last_in_index: e.last_in_index,
        }))
    }
}

/// Pieces of a log as they arrive.
pub struct LogReader {
    pub(crate) stream: tonic::Streaming<pb::LogsResponse>,
}

impl LogReader {
    pub async fn next(&mut self) -> Result<Option<(LogStream, Vec<u8>)>, ClientError> {
        Ok(self.stream.message().await?.map(|c| {
            let which = if c.stream == pb::logs_response::Stream::Stderr as i32 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            (which, c.data)
        }))
    }

    /// Reads everything (for a log that is not followed).
    pub async fn collect(mut self) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some((which, data)) = self.next().await? {
            match which {
                LogStream::Stdout => out.extend(data),
                LogStream::Stderr => err.extend(data),
            }
        }
        Ok((out, err))
    }
}
