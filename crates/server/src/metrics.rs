//! `GET /metrics` on the server's metrics address (`--metrics-addr`,
//! plain HTTP on loopback): the Prometheus text format (0.0.4), encoded
//! with prometheus-client. The gauges are built from the Raft status and
//! the replicated state at the scrape (nothing to keep up between
//! scrapes); the gRPC calls are counted as they are answered
//! ([`ApiMetrics`], fed by the audit wrapper every service goes
//! through). Labels are bounded: statuses, job types, the API's methods
//! and gRPC codes; no per-job or per-allocation labels.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use skiff_store::{RaftStatus, Role, State, Store};
use std::collections::BTreeMap;
use tokio::net::TcpListener;

pub use skiff_metrics::MetricsAddrError;
use skiff_metrics::{gauge, Labels};

/// The gRPC calls this server answered: by method and code, and how long
/// each took to answer (its response's head, for a stream).
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            // 0.5 ms to about 16 s.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl ApiMetrics {
    /// Counts one call of `method` (`Cluster/ApplyJob`) that ended with
    /// `code` (named `code_name`, as gRPC names it) after `took`. A method
    /// the server does not have counts as `other`, so garbage cannot make
    /// new series.
    pub fn record(
        &self,
        method: &str,
        code: tonic::Code,
        code_name: &str,
        took: std::time::Duration,
    ) {
        let method = if code == tonic::Code::Unimplemented {
            "other"
        } else {
            method
        };
        self.requests
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("code".to_string(), code_name.to_string()),
            ])
            .inc();
        self.durations
            .get_or_create(&vec![("method".to_string(), method.to_string())])
            .observe(took.as_secs_f64());
    }
}

/// What this server counted since it started: its writes, the scheduler's
/// work, heartbeats and liveness. Always kept (atomics; cheap), served
/// when `/metrics` is.
#[derive(Debug)]
pub struct ServerMetrics {
    /// Writes proposed (by the API and the scheduler), by result.
    pub proposals: Family<Labels, Counter>,
    /// From a write's proposal to its application here.
    pub proposal_seconds: Histogram,
    /// Evaluations the scheduler planned, and how long each took.
    pub scheduling_seconds: Histogram,
    /// How long a batch held the state's read lock to bring the
    /// scheduler's copy up to date (the Raft thread waits for it).
    pub planning_lock_seconds: Histogram,
    /// Allocations the scheduler's plans placed.
    pub placements: Counter,
    /// Placements the state machine refused (the plan raced a change).
    pub plan_rejections: Counter,
    /// Evaluations planned, by planner (`--planners`).
    pub planned_evaluations: Family<Labels, Counter>,
    /// Allocations stopped to make room for higher-priority work.
    pub preemptions: Counter,
    /// Heartbeats this server took (relayed ones included).
    pub heartbeats: Counter,
    /// Nodes this server, leading, declared down.
    pub nodes_declared_down: Counter,
    /// Times the leader this server knows changed.
    pub leader_changes: Counter,
    /// Jobs this server, leading, admitted from each queue.
    pub queue_admissions: Family<Labels, Counter>,
    /// Jobs evicted to give lent capacity back to each queue.
    pub queue_preempted: Family<Labels, Counter>,
    /// How long admitted jobs waited in each queue (as the leader saw).
    pub queue_admission_wait_seconds: Family<Labels, Histogram>,
    /// Since when each job waits in its queue, as the leader saw it (for
    /// the backfill window and `skiff queue describe`).
    pub queue_waiting: std::sync::Mutex<crate::queue_book::WaitingSince>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            proposals: Family::default(),
            // 0.5 ms to about 16 s.
            proposal_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 0.1 ms to about 3 s.
            scheduling_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            planning_lock_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            placements: Counter::default(),
            plan_rejections: Counter::default(),
            planned_evaluations: Family::default(),
            preemptions: Counter::default(),
            heartbeats: Counter::default(),
            nodes_declared_down: Counter::default(),
            leader_changes: Counter::default(),
            queue_admissions: Family::default(),
            queue_preempted: Family::default(),
            // 1 s to about 4.5 days.
            queue_admission_wait_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 19))
            }),
            queue_waiting: Default::default(),
        }
    }
}

impl ServerMetrics {
    /// A copy of since when each job waits in its queue (what a trial
    /// admission round on this server reads).
    pub fn waiting_since(&self) -> crate::queue_book::WaitingSince {
        self.queue_waiting.lock().expect("waiting map").clone()
    }

    /// Planner `planner` planned `evals` evaluations.
    pub fn planned(&self, planner: usize, evals: usize) {
        let labels = vec![("planner".to_string(), planner.to_string())];
        self.planned_evaluations
            .get_or_create(&labels)
            .inc_by(evals as u64);
    }

    /// A job admitted from `queue` after `waited` seconds, evicting the
    /// jobs of `preempted` (one entry per job: why it went).
    pub fn queue_admitted(&self, queue: &str, waited: f64, preempted: &[Preempted]) {
        let labels = vec![("queue".to_string(), queue.to_string())];
        self.queue_admissions.get_or_create(&labels).inc();
        for why in preempted {
            let labels = vec![
                ("queue".to_string(), queue.to_string()),
                ("reason".to_string(), why.as_str().to_string()),
            ];
            self.queue_preempted.get_or_create(&labels).inc();
        }
        self.queue_admission_wait_seconds
            .get_or_create(&labels)
            .observe(waited);
    }

    /// A write that took `took` and ended `ok` or not.
    pub fn proposed(&self, ok: bool, took: std::time::Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.proposals
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.proposal_seconds.observe(took.as_secs_f64());
    }

    fn register(&self, reg: &mut Registry) {
        reg.register(
            "raft_proposals",
            "Writes proposed to Raft from this server, by result",
            self.proposals.clone(),
        );
        reg.register(
            "raft_proposal_duration_seconds",
            "From a write's proposal to its application on this server",
            self.proposal_seconds.clone(),
        );
        reg.register(
            "raft_leader_changes",
            "Times the leader this server knows changed",
            self.leader_changes.clone(),
        );
        reg.register(
            "scheduler_evaluation_duration_seconds",
            "Time to plan and commit one evaluation (on the leader)",
            self.scheduling_seconds.clone(),
        );
        reg.register(
            "scheduler_planning_lock_seconds",
            "Time one batch of evaluations held the state's read lock to bring the scheduler's copy up to date (applies wait for it; planning holds none)",
            self.planning_lock_seconds.clone(),
        );
        reg.register(
            "scheduler_placements",
            "Allocations placed by the scheduler's plans",
            self.placements.clone(),
        );
        reg.register(
            "scheduler_plan_rejections",
            "Placements refused because the plan raced another change",
            self.plan_rejections.clone(),
        );
        reg.register(
            "scheduler_planned_evaluations",
            "Evaluations planned, by planner (a server runs --planners of them at once)",
            self.planned_evaluations.clone(),
        );
        reg.register(
            "scheduler_preemptions",
            "Allocations stopped to make room for higher-priority work",
            self.preemptions.clone(),
        );
        reg.register(
            "queue_admitted_jobs",
            "Jobs this server, leading, admitted from each team queue",
            self.queue_admissions.clone(),
        );
        reg.register(
            "queue_preempted_jobs",
            "Jobs evicted for jobs admitted from each team queue (on the leader), by reason: reclaim (lent quota taken back), fair_sharing (from a queue above the borrower's share), priority (within the queue)",
            self.queue_preempted.clone(),
        );
        reg.register(
            "queue_admission_wait_seconds",
            "How long jobs admitted from each team queue waited (as the leader saw)",
            self.queue_admission_wait_seconds.clone(),
        );
        reg.register(
            "heartbeats_received",
            "Node heartbeats this server took (relayed ones included)",
            self.heartbeats.clone(),
        );
        reg.register(
            "nodes_declared_down",
            "Nodes this server, leading, declared down for missed heartbeats",
            self.nodes_declared_down.clone(),
        );
    }
}

/// What the store holds on disk, what saving it took and the commands it
/// applied, read from the store at the scrape.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub use_: skiff_store::DiskUse,
    pub saves: skiff_store::SaveCounts,
    /// Commands applied since the store opened, by kind.
    pub applied: BTreeMap<&'static str, u64>,
}

impl Disk {
    pub fn of(store: &Store) -> Disk {
        Disk {
            use_: store.disk_use(),
            saves: store.save_counts(),
            applied: store.applied_by_kind(),
        }
    }

    fn register(&self, reg: &mut Registry) {
        reg.register(
            "raft_log_bytes",
            "Bytes of this server's Raft log segments on disk",
            gauge(self.use_.log_bytes),
        );
        reg.register(
            "state_db_bytes",
            "Bytes of this server's state database on disk (what snapshots are made from)",
            gauge(self.use_.state_bytes),
        );
        let applied = Family::<Labels, Counter>::default();
        for (kind, n) in &self.applied {
            applied
                .get_or_create(&vec![("kind".to_string(), kind.to_string())])
                .inc_by(*n);
        }
        reg.register(
            "raft_applied_entries",
            "Commands this server applied since it started, by kind",
            applied,
        );
        let saves = Counter::<u64>::default();
        saves.inc_by(self.saves.saves);
        reg.register(
            "state_saves",
            "Saves of the applied state to the state database",
            saves,
        );
        let records = Counter::<u64>::default();
        records.inc_by(self.saves.records);
        reg.register("state_saved_records", "Records the saves wrote", records);
        let seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        seconds.inc_by(self.saves.total.as_secs_f64());
        reg.register(
            "state_save_seconds",
            "Time the saves took (writing and flushing), all together",
            seconds,
        );
        reg.register(
            "state_last_save_duration_seconds",
            "How long the last save took",
            skiff_metrics::gauge_f64(self.saves.last.as_secs_f64()),
        );
    }
}

/// Counts the leader changes this server sees, for as long as the store
/// runs.
pub async fn follow_leader(store: Store, metrics: std::sync::Arc<ServerMetrics>) {
    let mut status = store.watch_status();
    let mut leader = status.borrow().leader_id;
    while status.changed().await.is_ok() {
        let now = status.borrow().leader_id;
        if now != leader && now != 0 {
            metrics.leader_changes.inc();
        }
        if now != 0 {
            leader = now;
        }
    }
}

/// A gauge family with one label, set from `counts` (every key of `all`
/// present, 0 when none).
fn by_label(label: &str, all: &[&str], counts: &BTreeMap<&str, i64>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for key in all.iter().copied().chain(counts.keys().copied()) {
        let n = counts.get(key).copied().unwrap_or(0);
        family
            .get_or_create(&vec![(label.to_string(), key.to_string())])
            .set(n);
    }
    family
}

/// `skiff_sync_*`: every sync's standing, from the replicated status (the
/// same on every server).
fn register_sync_gauges(
    reg: &mut prometheus_client::registry::Registry,
    state: &skiff_store::State,
) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let in_sync = Family::<skiff_metrics::Labels, Gauge>::default();
    let applied = Family::<skiff_metrics::Labels, Gauge>::default();
    let jobs = Family::<skiff_metrics::Labels, Gauge>::default();
    for r in state.access.syncs.values() {
        let labels = vec![
            ("sync".to_string(), r.source.name.clone()),
            ("namespace".to_string(), r.source.namespace.clone()),
        ];
        let ok = r.status.error.is_empty()
            && !r.status.commit.is_empty()
            && r.status.commit == r.status.head;
        in_sync.get_or_create(&labels).set(i64::from(ok));
        applied
            .get_or_create(&labels)
            .set((r.status.applied_at_ms / 1000) as i64);
        jobs.get_or_create(&labels).set(r.status.jobs.len() as i64);
    }
    reg.register(
        "sync_in_sync",
        "1 when a sync's branch head is applied, 0 while it is pending or refused (skiff sync status says why)",
        in_sync,
    );
    reg.register(
        "sync_applied_timestamp_seconds",
        "When the commit a sync's namespace runs was applied (Unix seconds; 0 before the first)",
        applied,
    );
    reg.register(
        "sync_jobs",
        "Jobs the commit a sync applied describes",
        jobs,
    );
}

/// The exposition for this server's Raft `status`, `state` and calls.
pub fn render(
    status: &RaftStatus,
    state: &State,
    api: &ApiMetrics,
    server: &ServerMetrics,
    disk: &Disk,
) -> String {
    let mut reg = Registry::with_prefix("skiff");
    server.register(&mut reg);
    disk.register(&mut reg);
    crate::queue_book::register_gauges(&mut reg, state);
    register_sync_gauges(&mut reg, state);
    reg.register(
        "raft_snapshot_index",
        "The Raft index of this server's latest snapshot",
        gauge(status.snapshot_index),
    );
    let mut rollouts: BTreeMap<&str, i64> = BTreeMap::new();
    for d in state.deployments.values().flatten() {
        *rollouts.entry(d.status.as_str()).or_default() += 1;
    }
    reg.register(
        "rollouts",
        "Rollouts the cluster keeps, by state",
        by_label(
            "state",
            &[
                "running",
                "paused",
                "successful",
                "failed",
                "rolled_back",
                "cancelled",
            ],
            &rollouts,
        ),
    );
    reg.register(
        "grpc_requests",
        "gRPC calls answered, by method and code",
        api.requests.clone(),
    );
    reg.register(
        "grpc_request_duration_seconds",
        "Time to answer a gRPC call (to its response's head for a stream), by method",
        api.durations.clone(),
    );
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])
    .set(1);
    reg.register("build_info", "This server's version (always 1)", info);
    reg.register(
        "raft_term",
        "The Raft term this server is in",
        gauge(status.term),
    );
    reg.register(
        "raft_commit_index",
        "The highest Raft log index known committed",
        gauge(status.commit),
    );
    reg.register(
        "raft_applied_index",
        "The highest Raft log index applied to this server's state",
        gauge(status.applied),
    );
    reg.register(
        "raft_log_entries",
        "Entries in this server's Raft log (after its last compaction)",
        gauge(
            status
                .last_index
                .saturating_sub(status.first_index.saturating_sub(1)),
        ),
    );
    reg.register(
        "raft_leader",
        "1 when this server is the leader",
        gauge(u64::from(status.role == Role::Leader)),
    );
    reg.register(
        "raft_leader_known",
        "1 when this server knows a leader (it can serve writes)",
        gauge(u64::from(status.leader_id != 0)),
    );
    reg.register(
        "raft_voters",
        "Voting members of the cluster",
        gauge(status.voters.len() as u64),
    );

    let mut nodes: BTreeMap<&str, i64> = BTreeMap::new();
    for n in state.nodes.values() {
        *nodes.entry(n.status.as_str()).or_default() += 1;
    }
    reg.register(
        "nodes",
        "Nodes by status",
        by_label("status", &["ready", "down"], &nodes),
    );
    let mut allocs: BTreeMap<&str, i64> = BTreeMap::new();
    for a in state.allocs.values_any_order() {
        *allocs.entry(a.status.as_str()).or_default() += 1;
    }
    reg.register(
        "allocations",
        "Allocations by status (finished ones until they are collected)",
        by_label(
            "status",
            &["pending", "running", "complete", "failed", "lost"],
            &allocs,
        ),
    );
    let mut jobs: BTreeMap<&str, i64> = BTreeMap::new();
    for j in state.jobs.values() {
        *jobs.entry(j.spec.job_type.as_str()).or_default() += 1;
    }
    reg.register(
        "jobs",
        "Jobs by type",
        by_label("type", &["service", "batch"], &jobs),
    );
    let mut evals: BTreeMap<&str, i64> = BTreeMap::new();
    for e in state.evals.values() {
        *evals.entry(e.status.as_str()).or_default() += 1;
    }
    reg.register(
        "evaluations",
        "Evaluations by status (pending: the scheduler's queue)",
        by_label("status", &["pending", "complete", "blocked"], &evals),
    );
    skiff_metrics::encode(&reg)
}

/// Why an admission evicted a job (Kueue's preemption reasons, in our
/// words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preempted {
    /// Another queue's borrowed work, for a job within its own quota.
    Reclaim,
    /// Another queue's borrowed work, for a job that borrows too (that
    /// queue's share stays at least the borrower's).
    FairSharing,
    /// Lower-priority work of the admitted job's own queue.
    Priority,
}

impl Preempted {
    pub fn as_str(self) -> &'static str {
        match self {
            Preempted::Reclaim => "reclaim",
            Preempted::FairSharing => "fair_sharing",
            Preempted::Priority => "priority",
        }
    }
}

/// Every series a server serves, with made-up values: what the metrics
/// reference in the docs is made from.
pub fn example() -> String {
    let api = ApiMetrics::default();
    api.record(
        "Cluster/ListJobs",
        tonic::Code::Ok,
        "OK",
        std::time::Duration::from_millis(1),
    );
    let server = ServerMetrics::default();
    server.proposed(true, std::time::Duration::from_millis(1));
    server.queue_admitted("team-a", 30.0, &[Preempted::Reclaim]);
    server.planned(0, 3);
    let mut state = State::default();
    let queue = skiff_model::queue::Queue::from_yaml(
        "name: team-a\ncohort: lab\nnamespaces: ['*']\nnominal: {gpus: {any: 4}}\n",
    )
    .expect("the example queue");
    state.access.queues.insert(queue.name.clone(), queue);
    let mut sync = skiff_model::sync::SyncRecord {
        source: skiff_model::sync::SyncSource::new("lab", "/srv/git/lab.git", "default"),
        status: Default::default(),
    };
    sync.status.commit = "4f1c2a9d03be".into();
    sync.status.head = sync.status.commit.clone();
    sync.status.applied_at_ms = 1_764_900_000_000;
    sync.status.jobs = vec!["web".into()];
    state.access.syncs.insert("lab".into(), sync);
    render(
        &RaftStatus::default(),
        &state,
        &api,
        &server,
        &Disk {
            applied: [("apply_plan", 1)].into_iter().collect(),
            ..Disk::default()
        },
    )
}

/// The agents' metrics addresses as Prometheus' HTTP service discovery
/// wants them: one target group per node that serves metrics, labelled
/// with the node's name and status (`[]` when there are none).
pub fn agent_targets(state: &State) -> String {
    let groups: Vec<serde_json::Value> = state
        .nodes
        .values()
        .filter(|n| !n.metrics_address.is_empty())
        .map(|n| {
            serde_json::json!({
                "targets": [n.metrics_address],
                "labels": {
                    "node": n.name,
                    "__meta_skiff_node_status": n.status.as_str(),
                    "__meta_skiff_agent_version": n.agent_version,
                },
            })
        })
        .collect();
    serde_json::Value::Array(groups).to_string()
}

/// The path of the agents' service discovery on a server's metrics
/// address.
pub const AGENTS_SD_PATH: &str = "/v1/sd/agents";

/// What a scrape of a server reads.
pub struct Served {
    pub store: Store,
    pub api: std::sync::Arc<ApiMetrics>,
    pub server: std::sync::Arc<ServerMetrics>,
    /// More exposition after the server's (`skiff dev`'s agent).
    pub appendix: skiff_metrics::Appendix,
}

/// Serves `GET /metrics` and the agents' service discovery
/// ([`AGENTS_SD_PATH`]) on `listener` until `stop` resolves: plain HTTP to
/// everyone, or, with `secured`, HTTPS to the callers its access lets in.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    secured: Option<(
        skiff_metrics::Access,
        std::sync::Arc<skiff_metrics::CurrentTls>,
    )>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let access = secured
        .as_ref()
        .map_or(skiff_metrics::Access::Open, |(a, _)| a.clone());
    let Served {
        store,
        api,
        server,
        appendix,
    } = served;
    let scrape = store.clone();
    let app = skiff_metrics::guarded_get(
        axum::Router::new(),
        "/metrics",
        skiff_metrics::CONTENT_TYPE,
        access.clone(),
        move || {
            let disk = Disk::of(&scrape);
            render(&scrape.status(), &scrape.state(), &api, &server, &disk) + &appendix.render()
        },
    );
    let app =
        skiff_metrics::guarded_get(app, AGENTS_SD_PATH, "application/json", access, move || {
            agent_targets(&store.state())
        });
    match secured {
        Some((_, tls)) => skiff_metrics::serve_tls(listener, tls, app, stop).await,
        None => skiff_metrics::serve(listener, app, stop).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_the_state_with_every_status_listed() {
        let mut state = State::default();
        let task = skiff_model::JobSpec::from_yaml("name: j\ntask: {image: 'oci:/i'}")
            .unwrap()
            .task;
        let mut a = skiff_model::Allocation::new("a".repeat(32), "j", 1, 0, "n1", task);
        a.status = skiff_model::AllocStatus::Running;
        state.allocs.insert(a.id.clone(), a);
        let status = RaftStatus {
            term: 3,
            leader_id: 1,
            role: Role::Leader,
            commit: 10,
            applied: 9,
            first_index: 1,
            last_index: 10,
            voters: vec![1],
            ..Default::default()
        };
        let api = ApiMetrics::default();
        api.record(
            "Cluster/ListJobs",
            tonic::Code::Ok,
            "OK",
            std::time::Duration::from_millis(2),
        );
        api.record(
            "Cluster/Nope",
            tonic::Code::Unimplemented,
            "UNIMPLEMENTED",
            Default::default(),
        );
        let text = render(
            &status,
            &state,
            &api,
            &ServerMetrics::default(),
            &Disk {
                applied: [("apply_plan", 2)].into_iter().collect(),
                ..Disk::default()
            },
        );
        for line in [
            "# TYPE skiff_grpc_requests_total counter",
            "skiff_grpc_requests_total{method=\"Cluster/ListJobs\",code=\"OK\"} 1",
            "skiff_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 1",
            "skiff_grpc_request_duration_seconds_count{method=\"Cluster/ListJobs\"} 1",
            "# TYPE skiff_raft_term gauge",
            "skiff_raft_term 3",
            "skiff_raft_applied_index 9",
            "skiff_raft_log_entries 10",
            "skiff_raft_leader 1",
            "skiff_raft_applied_entries_total{kind=\"apply_plan\"} 2",
            "skiff_allocations{status=\"running\"} 1",
            "skiff_allocations{status=\"pending\"} 0",
            "skiff_nodes{status=\"down\"} 0",
            "skiff_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "0.0.4, not OpenMetrics:\n{text}");
    }
}
