//! `Events`: the journal's events that match the caller's filters, then,
//! with `follow`, each new one as it is recorded.

use std::pin::Pin;
use std::sync::Arc;

use skiff_model::split_job_key;
use skiff_proto::pb;
use tokio_stream::Stream;
use tonic::Status;

use super::errors::{invalid, job_key};
use crate::auth::Scope;
use crate::events::{Journal, Recorded};

pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterEvent, Status>> + Send>>;

/// Events sent per wake-up.
const BATCH: usize = 500;

/// What a caller asked for.
struct Filter {
    job: Option<String>,
    node: Option<String>,
    types: Vec<String>,
    reasons: Vec<String>,
    scope: Scope,
}

impl Filter {
    fn new(r: &pb::EventsRequest, scope: Scope) -> Result<Filter, Status> {
        for (i, t) in r.types.iter().enumerate() {
            if !matches!(t.as_str(), "normal" | "warning") {
                return Err(invalid(
                    &format!("types[{i}]"),
                    format!("{t:?} is not an event type (normal or warning)"),
                ));
            }
        }
        Ok(Filter {
            job: if r.job.is_empty() {
                None
            } else {
                Some(job_key(&r.namespace, &r.job)?)
            },
            node: (!r.node.is_empty()).then(|| r.node.clone()),
            types: r.types.clone(),
            reasons: r.reasons.iter().map(|s| s.to_ascii_lowercase()).collect(),
            scope,
        })
    }

    fn keeps(&self, e: &Recorded) -> bool {
        let w = &e.what;
        let in_scope = w.job.is_empty() || self.scope.sees(split_job_key(&w.job).0);
        in_scope
            && self.job.as_ref().is_none_or(|j| &w.job == j)
            && self.node.as_ref().is_none_or(|n| &w.node == n)
            && (self.types.is_empty() || self.types.iter().any(|t| t == w.kind.as_str()))
            && (self.reasons.is_empty()
                || self
                    .reasons
                    .iter()
                    .any(|r| *r == w.reason.to_ascii_lowercase()))
    }
}

pub(crate) fn events(
    journal: Arc<Journal>,
    r: pb::EventsRequest,
    scope: Scope,
) -> Result<EventStream, Status> {
    let filter = Filter::new(&r, scope)?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let mut latest = journal.subscribe();
    tokio::spawn(async move {
        let mut cursor = 0;
        loop {
            // Every event up to here is in the journal as it is read.
            let known = *latest.borrow_and_update();
            let batch = journal.after(cursor, BATCH, |e| filter.keeps(e));
            let full = batch.len() == BATCH;
            if let Some(last) = batch.last() {
                cursor = last.id;
            }
            for e in &batch {
                if tx.send(Ok(pb::ClusterEvent::from(e))).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            if !r.follow {
                return;
            }
            // Nothing newer that passes: wait for the next event (the
            // cursor moves past those that do not pass, too).
            cursor = cursor.max(known);
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
