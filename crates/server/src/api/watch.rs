//! `Watch`: the store's record changes as clients' events. Each changed
//! record becomes the public object it stores (a `Job`, an `Allocation`,
//! ...); the store's own bookkeeping records (the index of a job's kept
//! versions and rollouts) are not sent. Filters (kinds, a job, a node) are
//! applied here, so a client gets only what it asked for.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::time::Duration;

use skiff_proto::pb;
use skiff_store::{Event, State, Store, Table};
use tokio_stream::Stream;
use tonic::Status;

use super::errors::{invalid, job_key};
use crate::auth::Scope;
use skiff_model::split_job_key;

/// Events sent per wake-up of a watch stream.
const WATCH_BATCH: usize = 1000;

pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// What a watch asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Empty: every kind.
    kinds: BTreeSet<i32>,
    /// The job's key.
    job: Option<String>,
    node: Option<String>,
    /// The namespaces whose jobs' objects pass (nodes and servers are in
    /// none, and always pass).
    scope: Scope,
    /// Allocations and evaluations the watch may send, by key, when it
    /// filters by job or node: a deleted record no longer says whose it
    /// was, so its deletion is sent when the watch knew the record.
    known: HashSet<String>,
}

impl Filter {
    pub(crate) fn new(r: &pb::WatchRequest, scope: Scope) -> Result<Filter, Status> {
        let mut kinds = BTreeSet::new();
        for (i, k) in r.kinds.iter().enumerate() {
            match pb::ObjectKind::try_from(*k) {
                Ok(pb::ObjectKind::Unspecified) | Err(_) => {
                    return Err(invalid(
                        &format!("kinds[{i}]"),
                        format!("{k} is not an object kind"),
                    ))
                }
                Ok(kind) => {
                    kinds.insert(kind as i32);
                }
            }
        }
        Ok(Filter {
            kinds,
            job: if r.job.is_empty() {
                None
            } else {
                Some(job_key(&r.namespace, &r.job)?)
            },
            node: (!r.node.is_empty()).then(|| r.node.clone()),
            scope,
            known: HashSet::new(),
        })
    }

    /// Learns the allocations and evaluations that match, from the state a
    /// watch starts at.
    fn learn(&mut self, state: &State) {
        if !self.filtered() {
            return;
        }
        for a in state.allocs.values_any_order() {
            if self.wants_owner(Some(&a.job), Some(&a.node)) {
                self.known.insert(a.id.clone());
            }
        }
        for e in state.evals.values() {
            if self.wants_owner(Some(&e.job), None) {
                self.known.insert(e.id.clone());
            }
        }
    }

    /// Whether the watch sends only some jobs' or nodes' objects.
    fn filtered(&self) -> bool {
        self.job.is_some() || self.node.is_some() || self.scope != Scope::All
    }

    /// Whether an object of `job` on `node` (`None`: it belongs to no job,
    /// or to no node) passes the job, namespace and node filters.
    fn wants_owner(&self, job: Option<&str>, node: Option<&str>) -> bool {
        let job_ok = match &self.job {
            Some(j) => job == Some(j.as_str()),
            None => true,
        } && job.is_none_or(|j| self.scope.sees(split_job_key(j).0));
        let node_ok = match &self.node {
            Some(n) => node == Some(n.as_str()),
            None => true,
        };
        job_ok && node_ok
    }

    /// The event to send for a store change, if any.
    fn event(&mut self, e: &Event) -> Option<pb::WatchEvent> {
        let (kind, key, object) = public(e)?;
        if !self.kinds.is_empty() && !self.kinds.contains(&(kind as i32)) {
            return None;
        }
        let filtered = self.filtered();
        let pass = match &object {
            None => match kind {
                pb::ObjectKind::Job => self.wants_owner(Some(&key), None),
                pb::ObjectKind::Node => self.wants_owner(None, Some(&key)),
                pb::ObjectKind::Allocation | pb::ObjectKind::Evaluation => {
                    !filtered || self.known.remove(&key)
                }
                _ => !filtered,
            },
            Some(o) => {
                let (job, node) = owner(o);
                let pass = self.wants_owner(job.as_deref(), node);
                if pass && filtered && matches!(o, Obj::Allocation(_) | Obj::Evaluation(_)) {
                    self.known.insert(key.clone());
                }
                pass
            }
        };
        pass.then(|| pb::WatchEvent {
            index: e.index,
            kind: kind as i32,
            key,
            deleted: object.is_none(),
            last_in_index: false,
            object: object.map(Obj::into_wire),
        })
    }
}

/// A public object decoded from its stored record.
enum Obj {
    Job(Box<skiff_model::Job>),
    Node(Box<skiff_model::Node>),
    Allocation(Box<skiff_model::Allocation>),
    Evaluation(skiff_model::Evaluation),
    Deployment(Box<skiff_model::Deployment>),
    JobVersion(String, Box<skiff_model::JobVersion>),
    Server(skiff_store::ServerInfo),
}

impl Obj {
    fn into_wire(self) -> pb::watch_event::Object {
        use pb::watch_event::Object;
        match self {
            Obj::Job(j) => Object::Job(j.as_ref().into()),
            Obj::Node(n) => Object::Node(n.as_ref().into()),
            Obj::Allocation(a) => Object::Allocation(a.as_ref().into()),
            Obj::Evaluation(e) => Object::Evaluation((&e).into()),
            Obj::Deployment(d) => Object::Deployment(d.as_ref().into()),
            Obj::JobVersion(_, v) => Object::JobVersion(v.as_ref().into()),
            Obj::Server(s) => Object::Server(pb::Member {
                id: s.id,
                api_addr: s.api_addr,
                peer_addr: s.peer_addr,
                ..Default::default()
            }),
        }
    }
}

/// The job and node an object belongs to, for the filters.
fn owner(o: &Obj) -> (Option<Cow<'_, str>>, Option<&str>) {
    match o {
        Obj::Job(j) => (Some(Cow::Owned(j.key())), None),
        Obj::Node(n) => (None, Some(&n.name)),
        Obj::Allocation(a) => (Some(Cow::Borrowed(&a.job)), Some(&a.node)),
        Obj::Evaluation(e) => (Some(Cow::Borrowed(&e.job)), None),
        Obj::Deployment(d) => (Some(Cow::Borrowed(&d.job)), None),
        Obj::JobVersion(job, _) => (Some(Cow::Borrowed(job)), None),
        Obj::Server(_) => (None, None),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    value: &Option<std::sync::Arc<str>>,
) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(json) => match serde_json::from_str(json) {
            Ok(v) => Some(Some(v)),
            Err(e) => {
                tracing::warn!(error = %e, "a record a watch could not read; skipped");
                None
            }
        },
    }
}

/// The public kind, key and object of a store change; `None` for the
/// store's own bookkeeping, and for the removal of a record whose public
/// key the change no longer says (a rollout or kept version that fell out
/// of the kept window goes with its job).
fn public(e: &Event) -> Option<(pb::ObjectKind, String, Option<Obj>)> {
    use pb::ObjectKind as K;
    Some(match e.table {
        // The CA's key and token hashes are never sent to anyone.
        Table::Access => return None,
        Table::Job => (
            K::Job,
            e.key.clone(),
            decode(&e.value)?.map(|j| Obj::Job(Box::new(j))),
        ),
        Table::Node => (
            K::Node,
            e.key.clone(),
            decode(&e.value)?.map(|n| Obj::Node(Box::new(n))),
        ),
        Table::Alloc => (
            K::Allocation,
            e.key.clone(),
            decode(&e.value)?.map(|a| Obj::Allocation(Box::new(a))),
        ),
        Table::Eval => (
            K::Evaluation,
            e.key.clone(),
            decode(&e.value)?.map(Obj::Evaluation),
        ),
        Table::Server => (K::Server, e.key.clone(), decode(&e.value)?.map(Obj::Server)),
        Table::Deployment => {
            // `JOB#SLOT` holds a rollout; `JOB` the store's index of them.
            skiff_store::split_slot_key(&e.key)?;
            let d: skiff_model::Deployment = decode(&e.value)??;
            (
                K::Deployment,
                d.id.clone(),
                Some(Obj::Deployment(Box::new(d))),
            )
        }
        Table::History => {
            let (job, _slot) = skiff_store::split_slot_key(&e.key)?;
            let v: skiff_model::JobVersion = decode(&e.value)??;
            (
                K::JobVersion,
                format!("{job}/{}", v.version),
                Some(Obj::JobVersion(job.to_string(), Box::new(v))),
            )
        }
    })
}

pub(crate) async fn watch(
    store: Store,
    r: pb::WatchRequest,
    scope: Scope,
) -> Result<WatchStream, Status> {
    let mut filter = Filter::new(&r, scope)?;
    let mut cursor = match r.from_index {
        0 => store.state().index,
        from => from,
    };
    // A client resuming here after a failover may have seen entries this
    // server has not applied yet: wait for them rather than go back.
    let mut applied = store.subscribe();
    match tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|a| *a >= cursor)).await {
        Ok(Ok(_)) => {}
        _ => {
            return Err(Status::unavailable(format!(
                "this server has not reached index {cursor} yet; retry"
            )))
        }
    }
    if let Err(c) = store.events_after(cursor, 0) {
        return Err(Status::out_of_range(format!(
            "this server's watch history starts after index {}; list again and watch from the index of the listing",
            c.first
        )));
    }
    filter.learn(&store.state());
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            match store.events_after(cursor, WATCH_BATCH) {
                Ok(events) if !events.is_empty() => {
                    // A batch holds whole indexes: the last event this
                    // watch sends of each index says the index is complete.
                    let mut out: Vec<pb::WatchEvent> = Vec::new();
                    for e in &events {
                        if let Some(event) = filter.event(e) {
                            if let Some(prev) = out.last_mut() {
                                prev.last_in_index = prev.index != event.index;
                            }
                            out.push(event);
                        }
                    }
                    if let Some(last) = out.last_mut() {
                        last.last_in_index = true;
                    }
                    cursor = events.last().map_or(cursor, |e| e.index);
                    for event in out {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(c) => {
                    let _ = tx
                        .send(Err(Status::out_of_range(format!(
                            "the watch fell behind this server's history (now starting after index {}); list again and watch from there",
                            c.first
                        ))))
                        .await;
                    return;
                }
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() {
                    let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                    return;
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
