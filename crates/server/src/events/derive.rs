//! What happened, from what changed: each applied change of a job, an
//! allocation, a node or a rollout is compared with what this server saw
//! of the record before ([`Seen`], a few fields per record), and the
//! difference named in words ([`Happened`]). Pure: no clock, no I/O.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use skiff_model::alloc::reason;
use skiff_model::{AllocStatus, DeploymentStatus, DesiredStatus, NodeStatus};
use skiff_store::{Event, State, Table};

// What a change is read for: only the fields an event needs, so reading
// skips the rest of the record (a task spec, a node's GPU inventory).

#[derive(Deserialize)]
struct JobView {
    version: u64,
    #[serde(default)]
    admitted_index: u64,
    #[serde(default)]
    spec: JobSpecView,
}

#[derive(Deserialize, Default)]
struct JobSpecView {
    #[serde(default)]
    queue: Option<String>,
}

#[derive(Deserialize)]
struct AllocView {
    id: String,
    job: String,
    #[serde(default)]
    replica: u32,
    #[serde(default)]
    job_version: u64,
    node: String,
    #[serde(default)]
    desired: DesiredStatus,
    #[serde(default)]
    status: AllocStatus,
    #[serde(default)]
    restart_count: u32,
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct GpuView {
    uuid: String,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default)]
    health_reason: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct NodeView {
    name: String,
    #[serde(default)]
    status: NodeStatus,
    #[serde(default)]
    cordoned: bool,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    drained: bool,
    #[serde(default)]
    gpus: Vec<GpuView>,
    #[serde(default)]
    agent_version: String,
}

#[derive(Deserialize)]
struct RolloutView {
    id: String,
    job: String,
    version: u64,
    #[serde(default)]
    from_version: u64,
    #[serde(default)]
    status: DeploymentStatus,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    rollback: bool,
}

/// Normal, or worth a person's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Warning => "warning",
        }
    }
}

/// One thing that happened, before it is counted and timed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Happened {
    pub kind: Kind,
    pub reason: &'static str,
    /// `job`, `alloc`, `node` or `rollout`.
    pub object_kind: &'static str,
    pub object: String,
    pub job: String,
    pub node: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AllocSeen {
    status: AllocStatus,
    desired: DesiredStatus,
    restarts: u32,
    healthy: Option<bool>,
    backing_off: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSeen {
    status: NodeStatus,
    cordoned: bool,
    draining: bool,
    drained: bool,
    /// Unhealthy GPUs and why.
    unhealthy: BTreeMap<String, String>,
}

/// What this server saw last of each record, to compare the next change
/// with.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each job's version and whether its queue admitted it.
    jobs: HashMap<String, (u64, bool)>,
    allocs: HashMap<String, AllocSeen>,
    nodes: HashMap<String, NodeSeen>,
    rollouts: HashMap<String, DeploymentStatus>,
}

impl From<&skiff_model::Allocation> for AllocView {
    fn from(a: &skiff_model::Allocation) -> AllocView {
        AllocView {
            id: a.id.clone(),
            job: a.job.clone(),
            replica: a.replica,
            job_version: a.job_version,
            node: a.node.clone(),
            desired: a.desired,
            status: a.status,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: a.reason.clone(),
            message: String::new(),
        }
    }
}

impl From<&skiff_model::Node> for NodeView {
    fn from(n: &skiff_model::Node) -> NodeView {
        NodeView {
            name: n.name.clone(),
            status: n.status,
            cordoned: n.cordoned,
            draining: n.draining,
            drained: n.drained,
            gpus: n
                .gpus
                .iter()
                .map(|g| GpuView {
                    uuid: g.uuid.clone(),
                    healthy: g.healthy,
                    health_reason: g.health_reason.clone(),
                })
                .collect(),
            agent_version: String::new(),
        }
    }
}

fn alloc_seen(a: &AllocView) -> AllocSeen {
    AllocSeen {
        status: a.status,
        desired: a.desired,
        restarts: a.restart_count,
        healthy: a.healthy,
        backing_off: a.reason == reason::BACK_OFF,
    }
}

fn node_seen(n: &NodeView) -> NodeSeen {
    NodeSeen {
        status: n.status,
        cordoned: n.cordoned,
        draining: n.draining,
        drained: n.drained,
        unhealthy: n
            .gpus
            .iter()
            .filter(|g| !g.healthy)
            .map(|g| (g.uuid.clone(), g.health_reason.clone()))
            .collect(),
    }
}

impl Seen {
    /// Learns `state` as it is, saying nothing about it.
    pub fn learn(state: &State) -> Seen {
        Seen {
            jobs: state
                .jobs
                .iter()
                .map(|(k, j)| (k.clone(), (j.version, j.admitted_index > 0)))
                .collect(),
            allocs: state
                .allocs
                .iter()
                .map(|(k, a)| (k.clone(), alloc_seen(&AllocView::from(a))))
                .collect(),
            nodes: state
                .nodes
                .iter()
                .map(|(k, n)| (k.clone(), node_seen(&NodeView::from(n))))
                .collect(),
            rollouts: state
                .deployments
                .values()
                .flatten()
                .map(|d| (d.id.clone(), d.status))
                .collect(),
        }
    }

    /// What the change `e` means, remembering the record as it now is.
    pub fn change(&mut self, e: &Event) -> Vec<Happened> {
        let json = e.value.as_deref();
        match e.table {
            Table::Job => match json.map(serde_json::from_str::<JobView>) {
                None => self
                    .jobs
                    .remove(&e.key)
                    .map(|_| deleted_job(&e.key))
                    .into_iter()
                    .collect(),
                Some(Ok(j)) => self.job(&e.key, &j),
                Some(Err(_)) => Vec::new(),
            },
            Table::Alloc => match json.map(serde_json::from_str::<AllocView>) {
                None => {
                    self.allocs.remove(&e.key);
                    Vec::new()
                }
                Some(Ok(a)) => self.alloc(&a),
                Some(Err(_)) => Vec::new(),
            },
            Table::Node => match json.map(serde_json::from_str::<NodeView>) {
                None => {
                    self.nodes.remove(&e.key);
                    Vec::new()
                }
                Some(Ok(n)) => self.node(&n),
                Some(Err(_)) => Vec::new(),
            },
            // `JOB#SLOT` holds a rollout; the job's key the store's index.
            Table::Deployment if skiff_store::split_slot_key(&e.key).is_some() => {
                match json.map(serde_json::from_str::<RolloutView>) {
                    Some(Ok(d)) => self.rollout(&d),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn job(&mut self, key: &str, j: &JobView) -> Vec<Happened> {
        let admitted = j.admitted_index > 0;
        let before = self.jobs.insert(key.to_string(), (j.version, admitted));
        let say = |kind, reason, message: String| Happened {
            kind,
            reason,
            object_kind: "job",
            object: key.to_string(),
            job: key.to_string(),
            node: String::new(),
            message,
        };
        let mut out = Vec::new();
        if before.map(|b| b.0) != Some(j.version) {
            out.push(say(
                Kind::Normal,
                "Applied",
                match before {
                    None => format!("created at version {}", j.version),
                    Some((v, _)) => format!("version {} (was {v})", j.version),
                },
            ));
        }
        let was_admitted = before.is_some_and(|b| b.1);
        if let (Some(q), true) = (&j.spec.queue, admitted != was_admitted) {
            out.push(if admitted {
                say(
                    Kind::Normal,
                    "Admitted",
                    format!("admitted whole from queue {q}"),
                )
            } else {
                say(
                    Kind::Warning,
                    "Requeued",
                    format!("waits in queue {q} to be admitted again"),
                )
            });
        }
        out
    }

    fn alloc(&mut self, a: &AllocView) -> Vec<Happened> {
        let now = alloc_seen(a);
        let before = self.allocs.insert(a.id.clone(), now);
        let say = |kind, reason, message: String| Happened {
            kind,
            reason,
            object_kind: "alloc",
            object: a.id.clone(),
            job: a.job.clone(),
            node: a.node.clone(),
            message,
        };
        let Some(before) = before else {
            return vec![say(
                Kind::Normal,
                "Placed",
                format!(
                    "replica {} of version {} placed on node {}",
                    a.replica, a.job_version, a.node
                ),
            )];
        };
        let mut out = Vec::new();
        if before.desired == DesiredStatus::Run && now.desired == DesiredStatus::Stop {
            if a.message.starts_with("preempted") {
                out.push(say(Kind::Warning, "Preempted", a.message.clone()));
            } else if a.message.starts_with("reclaimed") {
                out.push(say(Kind::Warning, "Reclaimed", a.message.clone()));
            } else if !a.status.is_terminal() {
                out.push(say(Kind::Normal, "Stopping", a.message.clone()));
            }
        }
        if before.status != now.status {
            let m = a.message.clone();
            match now.status {
                AllocStatus::Running if before.status == AllocStatus::Pending => out.push(say(
                    Kind::Normal,
                    "Started",
                    format!("running on node {}", a.node),
                )),
                AllocStatus::Complete => out.push(say(Kind::Normal, "Completed", m)),
                AllocStatus::Failed if a.reason == reason::OOM_KILLED => {
                    out.push(say(Kind::Warning, "OOMKilled", m))
                }
                AllocStatus::Failed => out.push(say(Kind::Warning, "Failed", m)),
                AllocStatus::Lost => out.push(say(Kind::Warning, "Lost", m)),
                _ => {}
            }
        }
        if now.backing_off && !before.backing_off {
            // The agent says how the run ended ("killed by the OOM killer
            // ...; starting again in 10s").
            let reason = if a.message.contains("OOM killer") {
                "OOMKilled"
            } else {
                "BackOff"
            };
            out.push(say(Kind::Warning, reason, a.message.clone()));
        }
        if now.restarts > before.restarts {
            out.push(say(
                Kind::Normal,
                "Restarted",
                format!("started again ({} restarts)", now.restarts),
            ));
        }
        if before.healthy == Some(true) && now.healthy == Some(false) && !now.backing_off {
            out.push(say(
                Kind::Warning,
                "Unhealthy",
                if a.message.is_empty() {
                    "its readiness probe fails".to_string()
                } else {
                    a.message.clone()
                },
            ));
        }
        out
    }

    fn node(&mut self, n: &NodeView) -> Vec<Happened> {
        let now = node_seen(n);
        let before = self.nodes.insert(n.name.clone(), now.clone());
        let say = |kind, reason, message: String| Happened {
            kind,
            reason,
            object_kind: "node",
            object: n.name.clone(),
            job: String::new(),
            node: n.name.clone(),
            message,
        };
        let Some(before) = before else {
            return vec![say(
                Kind::Normal,
                "Registered",
                format!("agent {} joined", n.agent_version),
            )];
        };
        let mut out = Vec::new();
        match (before.status, now.status) {
            (NodeStatus::Ready, NodeStatus::Down) => out.push(say(
                Kind::Warning,
                "NodeDown",
                "missed its heartbeats; its allocations are lost".into(),
            )),
            (NodeStatus::Down, NodeStatus::Ready) => {
                out.push(say(Kind::Normal, "NodeReady", "heartbeats again".into()))
            }
            _ => {}
        }
        for (flag, was, is, reason, message) in [
            (
                "cordoned",
                before.cordoned,
                now.cordoned,
                "Cordoned",
                "takes no new work",
            ),
            (
                "draining",
                before.draining,
                now.draining,
                "Draining",
                "its allocations move elsewhere",
            ),
            ("drained", before.drained, now.drained, "Drained", "empty"),
        ] {
            if is && !was {
                out.push(say(Kind::Normal, reason, message.into()));
            } else if was && !is && flag == "cordoned" {
                out.push(say(Kind::Normal, "Uncordoned", "takes work again".into()));
            }
        }
        for (uuid, why) in &now.unhealthy {
            if !before.unhealthy.contains_key(uuid) {
                out.push(say(
                    Kind::Warning,
                    "GpuUnhealthy",
                    format!("GPU {uuid}: {why}"),
                ));
            }
        }
        for uuid in before.unhealthy.keys() {
            let still_there = n.gpus.iter().any(|g| &g.uuid == uuid);
            if still_there && !now.unhealthy.contains_key(uuid) {
                out.push(say(
                    Kind::Normal,
                    "GpuHealthy",
                    format!("GPU {uuid} is offered again"),
                ));
            }
        }
        out
    }

    fn rollout(&mut self, d: &RolloutView) -> Vec<Happened> {
        let before = self.rollouts.insert(d.id.clone(), d.status);
        if before == Some(d.status) {
            return Vec::new();
        }
        let say = |kind, reason, message: String| Happened {
            kind,
            reason,
            object_kind: "rollout",
            object: d.id.clone(),
            job: d.job.clone(),
            node: String::new(),
            message,
        };
        let why = |fallback: &str| {
            if d.reason.is_empty() {
                fallback.to_string()
            } else {
                d.reason.clone()
            }
        };
        let to = format!("version {} (from {})", d.version, d.from_version);
        vec![match d.status {
            DeploymentStatus::Running if before.is_none() && d.rollback => {
                say(Kind::Warning, "RollbackStarted", format!("back to {to}"))
            }
            DeploymentStatus::Running if before.is_none() => {
                say(Kind::Normal, "RolloutStarted", to)
            }
            DeploymentStatus::Running => say(Kind::Normal, "RolloutResumed", to),
            DeploymentStatus::Paused => say(Kind::Normal, "RolloutPaused", why(&to)),
            DeploymentStatus::Successful => say(
                Kind::Normal,
                "RolloutSucceeded",
                format!("{to}: every replica is healthy"),
            ),
            DeploymentStatus::Failed => say(Kind::Warning, "RolloutFailed", why(&to)),
            DeploymentStatus::RolledBack => say(Kind::Warning, "RolledBack", why(&to)),
            DeploymentStatus::Cancelled => say(Kind::Normal, "RolloutCancelled", why(&to)),
        }]
    }
}

fn deleted_job(key: &str) -> Happened {
    Happened {
        kind: Kind::Normal,
        reason: "Deleted",
        object_kind: "job",
        object: key.to_string(),
        job: key.to_string(),
        node: String::new(),
        message: "its allocations stop".into(),
    }
}
