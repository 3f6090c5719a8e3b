//! The executor: carries out the decisions' [`Action`]s through the
//! runtime and the records, spawning a task for each start, stop, cleanup,
//! exit watch and set of probes. Each task reports its end back to the
//! reconciler as an [`Event`]; nothing here decides anything.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_model::{Allocation, NetworkMode, TaskSpec};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::decide::Action;
use super::event::{Event, Settings};
use super::gate::StartGate;
use super::records::Records;
use super::{start, stop};
use crate::image::ImageStore;
use crate::paths::{container_id, Paths};
use crate::probe::{self, ContainerChecker};
use crate::rootfs;
use crate::runtime::Runtime;
use crate::shim;

pub struct Executor<R: Runtime, X: Records> {
    runtime: Arc<R>,
    records: Arc<X>,
    paths: Paths,
    images: ImageStore,
    settings: Settings,
    events: mpsc::Sender<Event>,
    /// The probe task of each running container.
    probes: HashMap<String, AbortHandle>,
    /// Starts in flight, which cleanups let go first.
    starts: Arc<StartGate>,
}

/// How long a cleanup lets starts go first at most.
const CLEANUP_YIELDS_AT_MOST: Duration = Duration::from_secs(10);

impl<R: Runtime, X: Records> Executor<R, X> {
    pub fn new(
        runtime: Arc<R>,
        records: Arc<X>,
        paths: Paths,
        settings: Settings,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Executor {
            runtime,
            records,
            images: ImageStore::new(paths.images()),
            paths,
            settings,
            events,
            probes: HashMap::new(),
            starts: Arc::default(),
        }
    }

    pub fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.run(action);
        }
    }

    fn run(&mut self, action: Action) {
        match action {
            Action::Start { alloc, run } => self.spawn_start(*alloc, run),
            Action::Stop {
                id,
                signal,
                grace,
                delay,
            } => self.spawn_stop(id, signal, grace, delay),
            Action::Cleanup { id } => self.spawn_cleanup(id),
            Action::Watch { id } => self.spawn_exit_watch(id),
            Action::Probe { id, task, run } => {
                let handle = self.spawn_probes(&id, &task, run);
                if let Some(old) = self.probes.insert(id, handle) {
                    old.abort();
                }
            }
            Action::EndProbes { id } => {
                if let Some(p) = self.probes.remove(&id) {
                    p.abort();
                }
            }
            Action::SaveRestarts { id, restarts } => {
                if let Err(e) = self.records.save_restarts(&id, restarts) {
                    tracing::warn!(alloc = %id, error = %e, "cannot record the restart count");
                }
            }
            // The exit record has been reported; the logs stay for `skiff logs`.
            Action::Forget { id } => self.records.remove(&id),
        }
    }

    /// How many containers have probes running.
    #[cfg(test)]
    pub fn probing(&self) -> usize {
        self.probes.len()
    }

    fn spawn_exit_watch(&self, id: String) {
        let Some(exited) = self.records.shim_exit(&id) else {
            return;
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = exited.await {
                tracing::debug!(alloc = %id, error = %e, "cannot watch the shim; the resync will notice its exit");
                return;
            }
            let _ = events.send(Event::ShimExited { id }).await;
        });
    }

    /// The node's bridge network, if any.
    pub fn network(&self) -> Option<Arc<crate::network::Network>> {
        self.settings.network.clone()
    }

    fn spawn_start(&self, alloc: Allocation, run: u32) {
        let runtime = self.runtime.clone();
        let paths = self.paths.clone();
        let images = self.images.clone();
        let settings = self.settings.clone();
        let events = self.events.clone();
        let began = Instant::now();
        let starting = self.starts.enter(alloc.ports.clone());
        tokio::spawn(async move {
            let id = alloc.id.clone();
            let result = start::start(&*runtime, &paths, &images, &settings, &alloc).await;
            drop(starting);
            let took = began.elapsed();
            let _ = events
                .send(Event::Started {
                    id,
                    run,
                    result,
                    took,
                })
                .await;
        });
    }

    fn spawn_stop(&self, id: String, signal: String, grace: Duration, delay: Duration) {
        let runtime = self.runtime.clone();
        let records = self.records.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            stop::stop(&*runtime, &*records, &id, &signal, grace, delay).await;
            let _ = events.send(Event::StopDone { id }).await;
        });
    }

    fn spawn_cleanup(&self, id: String) {
        let runtime = self.runtime.clone();
        let paths = self.paths.clone();
        let events = self.events.clone();
        let network = self.settings.network.clone();
        let starts = self.starts.clone();
        tokio::spawn(async move {
            let forwarded = network
                .as_ref()
                .map(|n| n.host_ports(&id))
                .unwrap_or_default();
            starts.wait_clear(&forwarded, CLEANUP_YIELDS_AT_MOST).await;
            let cid = container_id(&id);
            let id2 = id.clone();
            if let Err(e) = runtime.delete(&cid, false).await {
                tracing::debug!(alloc = %id, error = %e, "delete failed; forcing");
                if let Err(e) = runtime.delete(&cid, true).await {
                    tracing::warn!(alloc = %id, error = %e, "could not delete the container");
                }
            }
            let release = move || rootfs::release(&paths, &paths.bundle(&id2)?);
            match tokio::task::spawn_blocking(release).await {
                Ok(Err(e)) => {
                    tracing::warn!(alloc = %id, error = %e, "could not remove the bundle")
                }
                Err(e) => tracing::warn!(alloc = %id, error = %e, "bundle removal panicked"),
                Ok(Ok(())) => {}
            }
            if let Some(net) = network {
                if let Err(e) = net.teardown(&id).await {
                    tracing::warn!(alloc = %id, error = %e, "could not tear down the network");
                }
            }
            let _ = events.send(Event::Cleaned { id }).await;
        });
    }

    fn spawn_probes(&self, id: &str, task: &TaskSpec, run: u32) -> AbortHandle {
        let (tx, mut rx) = mpsc::channel(8);
        let netns = match task.network {
            NetworkMode::Host => None,
            NetworkMode::None | NetworkMode::Bridge => self
                .paths
                .state_dir(id)
                .and_then(|d| std::fs::read_to_string(d.join(shim::INIT_PID)))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))),
        };
        let checker = ContainerChecker {
            runtime: self.runtime.clone(),
            container_id: container_id(id),
            netns,
        };
        let probes = task.probes.clone();
        let events = self.events.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            let forward = async {
                while let Some(event) = rx.recv().await {
                    let e = Event::Probe {
                        id: id.clone(),
                        run,
                        event,
                    };
                    if events.send(e).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(
                probe::run_probes(checker, probes, tokio::time::Instant::now(), tx),
                forward
            );
        });
        task.abort_handle()
    }
}
