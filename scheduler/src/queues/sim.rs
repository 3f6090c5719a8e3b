//! A deterministic cluster for driving the real admission code without
//! servers: jobs are submitted, rounds admit them (their placements start
//! at once, evictions stop at once), jobs finish when told. The queue
//! tests and `queuebench` use it; nothing here reads a clock.

use std::collections::BTreeMap;

use skiff_model::queue::{request_of, Queue};
use skiff_model::{AllocStatus, DesiredStatus, Gpu, Job, JobSpec, Node, Resources};

use super::{Decision, QueueBook, Workload};
use crate::config::Config;
use crate::view::{AllocSummary, ClusterView};

/// A simulated cluster with team queues.
#[derive(Debug, Clone)]
pub struct QueueSim {
    pub nodes: Vec<Node>,
    pub queues: Vec<Queue>,
    pub jobs: BTreeMap<String, Job>,
    pub allocs: BTreeMap<String, AllocSummary>,
    /// Admitted jobs and the index they were admitted at.
    pub admitted: BTreeMap<String, u64>,
    /// When each job (re)entered its queue, ms.
    queued_at: BTreeMap<String, u64>,
    /// The simulated clock, ms (the caller moves it).
    pub now_ms: u64,
    index: u64,
    next_id: u64,
    /// Jobs evicted to give capacity back, so far.
    pub preemptions: u64,
    pub cfg: Config,
}

impl QueueSim {
    pub fn new(nodes: Vec<Node>, queues: Vec<Queue>) -> QueueSim {
        QueueSim {
            nodes,
            queues,
            jobs: BTreeMap::new(),
            allocs: BTreeMap::new(),
            admitted: BTreeMap::new(),
            queued_at: BTreeMap::new(),
            now_ms: 0,
            index: 1,
            next_id: 0,
            preemptions: 0,
            cfg: Config::default(),
        }
    }

    /// Submits a job (its key must be new).
    pub fn submit(&mut self, spec: JobSpec) -> String {
        self.index += 1;
        let key = spec.key();
        self.jobs.insert(
            key.clone(),
            Job {
                spec,
                version: 1,
                create_index: self.index,
                modify_index: self.index,
                admitted_index: 0,
            },
        );
        self.queued_at.insert(key.clone(), self.now_ms);
        key
    }

    /// The job ends (completes or is deleted): its allocations and its
    /// admission go.
    pub fn finish(&mut self, job: &str) {
        self.allocs.retain(|_, a| a.job != job);
        self.jobs.remove(job);
        self.admitted.remove(job);
        self.queued_at.remove(job);
    }

    /// The book as the cluster stands.
    pub fn book(&self) -> QueueBook {
        let workloads = self
            .jobs
            .values()
            .filter_map(|j| {
                let queue = j.spec.queue.clone()?;
                let request = request_of(&j.spec);
                let admitted_index = self.admitted.get(&j.key()).copied().unwrap_or(0);
                Some(Workload {
                    job: j.key(),
                    queue,
                    priority: j.spec.priority,
                    create_index: j.create_index,
                    // As the servers count it: the whole request while
                    // admitted, else what of it still runs (a job waiting
                    // again after asking for more).
                    holds: if admitted_index > 0 {
                        request.clone()
                    } else {
                        let live = self.allocs.values().filter(|a| a.job == j.key()).count();
                        skiff_model::queue::scale(&request, live as u64, u64::from(j.spec.wanted()))
                    },
                    request,
                    admitted_index,
                    waited_ms: self
                        .now_ms
                        .saturating_sub(self.queued_at.get(&j.key()).copied().unwrap_or(0)),
                    refused: None,
                })
            })
            .collect();
        QueueBook::new(self.queues.iter().cloned(), workloads)
    }

    /// One admission round; what it admits starts, what it evicts stops.
    pub fn round(&mut self) -> Vec<Decision> {
        self.index += 1;
        let index = self.index;
        let mut book = self.book();
        let mut view = ClusterView::new(&self.nodes, self.allocs.values(), |name| {
            self.jobs.get(name).map(|j| j.spec.priority)
        });
        view.set_queues(|name| self.jobs.get(name).and_then(|j| j.spec.queue.clone()));
        let mut next_id = self.next_id;
        let jobs = &self.jobs;
        let decisions = book.round(
            &mut view,
            &|name| jobs.get(name),
            &self.cfg,
            &mut || {
                next_id += 1;
                format!("a{next_id:08}")
            },
            index,
        );
        self.next_id = next_id;
        for d in &decisions {
            let Some(a) = &d.admission else {
                continue;
            };
            for e in &a.plan.evictions {
                self.allocs.remove(&e.alloc_id);
            }
            for victim in &a.reclaimed {
                self.admitted.remove(victim);
                self.queued_at.insert(victim.clone(), self.now_ms);
                self.preemptions += 1;
            }
            let job = &self.jobs[&d.job];
            for (p, id) in a.plan.placements.iter().zip(&a.ids) {
                let resources = job
                    .spec
                    .task
                    .resources
                    .amount()
                    .with_gpus(p.gpus.len() as u32);
                self.allocs.insert(
                    id.clone(),
                    AllocSummary {
                        id: id.clone(),
                        job: d.job.clone(),
                        node: p.node.clone(),
                        gpus: p.gpus.clone(),
                        ports: Vec::new(),
                        resources,
                        replica: p.replica,
                        version: job.version,
                        create_index: index,
                        desired: DesiredStatus::Run,
                        status: AllocStatus::Running,
                        failures: 0,
                        succeeded: false,
                        healthy_now: true,
                        deploy_health: None,
                        modify_index: index,
                    },
                );
            }
            // Each admission its own index, as the state machine gives.
            self.index += 1;
            self.admitted.insert(d.job.clone(), self.index);
        }
        decisions
    }

    /// GPUs in use by the allocations of queue `queue`'s jobs.
    pub fn gpus_used_by(&self, queue: &str) -> u64 {
        self.allocs
            .values()
            .filter(|a| {
                self.jobs
                    .get(&a.job)
                    .is_some_and(|j| j.spec.queue.as_deref() == Some(queue))
            })
            .map(|a| a.gpus.len() as u64)
            .sum()
    }

    /// GPUs in use by every allocation.
    pub fn gpus_used(&self) -> u64 {
        self.allocs.values().map(|a| a.gpus.len() as u64).sum()
    }
}

/// A ready node of `gpus` fake GPUs (`NAME-gpuI`, model `Fake GPU`) with
/// cpu and memory to spare: GPUs are what counts.
pub fn gpu_node(name: &str, gpus: usize) -> Node {
    let mut n = Node::ready(name, Resources::new(64_000, 256 << 30));
    n.gpus = (0..gpus)
        .map(|i| Gpu {
            uuid: format!("{name}-gpu{i}"),
            model: "Fake GPU".into(),
            memory_bytes: 80 << 30,
            healthy: true,
            ..Gpu::default()
        })
        .collect();
    n
}

/// A queue owed `gpus` GPUs of any model, open to every namespace, in
/// `cohort` if given.
pub fn gpu_queue(name: &str, cohort: Option<&str>, gpus: u64) -> Queue {
    let cohort = cohort.map_or(String::new(), |c| format!("cohort: {c}\n"));
    Queue::from_yaml(&format!(
        "name: {name}\n{cohort}namespaces: ['*']\nnominal: {{gpus: {{any: {gpus}}}}}\n"
    ))
    .expect("a valid queue")
}
