//! The leader's deployment controller. For every running rollout it reads
//! the allocations of the version being rolled out and decides, with the
//! wall clock that only the leader reads here:
//!
//! - an allocation that stayed healthy for `min_healthy` is proved
//!   healthy (progress: the progress deadline counts again);
//! - one that crashed (a restart, a back-off, a failed end, an exit) or is
//!   not healthy `healthy_deadline` after it was planned fails the rollout;
//! - a rollout with no progress for `progress_deadline` fails (replicas
//!   that cannot be placed end here);
//! - a rollout whose replicas all run the new version, proved healthy, with
//!   nothing of another version left, has succeeded.
//!
//! Decisions go through Raft as `Command::UpdateDeployment`, with the time
//! as data; the state machine records them, rolls back to the last stable
//! version when a rollout fails (if the job allows it), and checks success
//! itself. [`decide`] is a pure function of the state and the time, so the
//! controller is idempotent: after a crash or a change of leader the next
//! leader decides the same from the same state.
//!
//! Work in proportion to change: a rollout is looked at again only when
//! its job, its rollout or one of its allocations changed since the last
//! look (the state's per-job marks), or when the clock reaches the next
//! time one of its deadlines could fire ([`Looks`]). A cluster filling
//! with 1,500 rollouts of 100 replicas otherwise re-read all 150,000
//! allocations every 50 ms.

use std::collections::HashMap;
use std::time::Duration;

use skiff_model::duration::format_duration;
use skiff_model::workload::rollout_counts;
use skiff_model::{
    AllocFacts, AllocStatus, Allocation, Deployment, DeploymentStatus, DesiredStatus, Job,
};
use skiff_store::command::DeploymentUpdate;
use skiff_store::{Command, Outcome, State, Store};

/// How often the controller looks when nothing is applied.
const TICK: Duration = Duration::from_millis(250);
/// Least time between two looks (many applied entries in a row).
const MIN_GAP: Duration = Duration::from_millis(50);

/// Runs forever; does work only while this server leads.
pub async fn run(store: Store) {
    let mut applied = store.subscribe();
    let mut looks = Looks::default();
    loop {
        if !store.is_leader() {
            looks = Looks::default();
        } else {
            let updates = {
                let state = store.state();
                looks.decide(&state, crate::ctx::now_ms())
            };
            for update in updates {
                if !store.is_leader() {
                    break;
                }
                let job = update.job.clone();
                match store.propose(&Command::UpdateDeployment { update }).await {
                    Ok(Outcome::DeploymentUpdated { deployment }) => {
                        if !deployment.status.is_active() || deployment.rollback {
                            tracing::info!(
                                job = %job, version = deployment.version, status = deployment.status.as_str(),
                                reason = %deployment.reason, "rollout moved"
                            );
                        }
                    }
                    Ok(other) => {
                        tracing::debug!(job = %job, ?other, "deployment update not applied")
                    }
                    Err(e) => {
                        tracing::warn!(job = %job, error = %e, "deployment update failed; will retry");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(MIN_GAP).await;
        let _ = tokio::time::timeout(TICK, applied.changed()).await;
    }
}

/// What the controller saw of one rollout at its last look.
#[derive(Debug, Clone, Copy)]
struct Looked {
    /// `State::job_changed_at` then.
    changed_at: u64,
    /// When the clock alone may change the decision (ms).
    due_ms: u64,
}

/// The controller's memory between looks: which rollouts decided nothing,
/// at which change of their job, until when.
#[derive(Debug, Default)]
pub struct Looks {
    seen: HashMap<String, Looked>,
    /// Rollouts decided so far (the work done, for tests).
    pub decided: u64,
}

impl Looks {
    /// The updates the running rollouts need at `now_ms`, deciding again
    /// only those whose job changed since the last look or whose next
    /// deadline has come. A rollout that gets an update is looked at
    /// again next time (its update may not apply).
    pub fn decide(&mut self, state: &State, now_ms: u64) -> Vec<DeploymentUpdate> {
        self.seen
            .retain(|name, _| state.deployments.contains_key(name));
        let mut out = Vec::new();
        for name in state.deployments.keys() {
            let changed_at = state.job_changed_at(name);
            let fresh = self
                .seen
                .get(name)
                .is_some_and(|l| l.changed_at == changed_at && now_ms < l.due_ms);
            if fresh {
                continue;
            }
            let (Some(job), Some(d)) = (state.jobs.get(name), state.deployment(name)) else {
                continue;
            };
            self.decided += 1;
            match look(state, job, d, now_ms) {
                (Some(update), _) => {
                    self.seen.remove(name);
                    out.push(update);
                }
                (None, due_ms) => {
                    self.seen
                        .insert(name.clone(), Looked { changed_at, due_ms });
                }
            }
        }
        out
    }
}

/// What the controller says about one rollout at `now_ms`; `None` when
/// there is nothing new.
pub fn decide(state: &State, job: &Job, d: &Deployment, now_ms: u64) -> Option<DeploymentUpdate> {
    look(state, job, d, now_ms).0
}

/// [`decide`], and the earliest time at which, with nothing else
/// changed, the clock alone could change what it says (`u64::MAX`:
/// never).
fn look(state: &State, job: &Job, d: &Deployment, now_ms: u64) -> (Option<DeploymentUpdate>, u64) {
    let mut due = u64::MAX;
    if d.status != DeploymentStatus::Running || d.version != job.version {
        return (None, due);
    }
    let u = &job.spec.update;
    let started = if d.started_ms == 0 {
        now_ms
    } else {
        d.started_ms
    };
    let key = job.key();
    let mut out = DeploymentUpdate {
        job: key.clone(),
        deployment_id: d.id.clone(),
        at_ms: now_ms,
        ..DeploymentUpdate::default()
    };
    let mut say = d.started_ms == 0;
    let allocs = state.allocs_of_job(&key);
    let mut failure: Option<String> = None;
    for a in allocs.iter().filter(|a| {
        a.job_version == d.version
            && a.desired == DesiredStatus::Run
            && a.create_index >= job.create_index
            && a.deploy_health.is_none()
    }) {
        if a.failures() > 0 || (a.status.is_terminal() && a.status != AllocStatus::Lost) {
            out.unhealthy.push(a.id.clone());
            failure.get_or_insert_with(|| crashed(a));
        } else if a.healthy_now() {
            let since = if a.healthy_since_ms == 0 {
                started
            } else {
                a.healthy_since_ms
            };
            if now_ms.saturating_sub(since) >= ms(u.min_healthy) {
                out.healthy.push(a.id.clone());
            } else {
                due = due.min(since.saturating_add(ms(u.min_healthy)));
            }
        } else {
            let born = a.create_time_ms.max(started);
            due = due.min(born.saturating_add(ms(u.healthy_deadline)));
            if now_ms.saturating_sub(born) >= ms(u.healthy_deadline) {
                out.unhealthy.push(a.id.clone());
                failure.get_or_insert_with(|| {
                    format!(
                        "allocation {} of version {} was not healthy within healthy_deadline ({}){}",
                        a.short_id(),
                        a.job_version,
                        format_duration(u.healthy_deadline),
                        if a.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.message)
                        }
                    )
                });
            }
        }
    }
    out.progress = !out.healthy.is_empty();
    let counts = rollout_counts(job, allocs.iter().copied());
    // Canaries that all proved healthy wait for an operator, without a
    // deadline.
    let waiting = d.awaiting_promotion() && counts.healthy >= d.canary.min(counts.desired);
    if waiting {
        let reason = format!(
            "waiting for promotion: {} canar{} healthy; `skiff rollout promote {}` goes on, `skiff rollout undo {}` abandons",
            counts.healthy,
            if counts.healthy == 1 { "y" } else { "ies" },
            promote_args(&job.spec),
            promote_args(&job.spec)
        );
        if d.reason != reason {
            out.reason = Some(reason);
        }
    }
    if failure.is_none() && !out.progress && !waiting {
        let since = if d.progress_ms == 0 {
            started
        } else {
            d.progress_ms
        };
        due = due.min(since.saturating_add(ms(u.progress_deadline)));
        if now_ms.saturating_sub(since) >= ms(u.progress_deadline) {
            let mut why = format!(
                "no allocation proved healthy within progress_deadline ({})",
                format_duration(u.progress_deadline)
            );
            if let Some(e) = state.latest_eval(&key) {
                if !e.message.is_empty() {
                    why.push_str(&format!("; {}", e.message));
                }
            }
            failure = Some(why);
        }
    }
    out.fail = failure;
    // Success is checked by the state machine on any update: send one when
    // this snapshot already shows it.
    if counts.done() && !d.awaiting_promotion() {
        say = true;
    }
    let moved = say
        || out.progress
        || !out.unhealthy.is_empty()
        || out.fail.is_some()
        || out.reason.is_some();
    (moved.then_some(out), due)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Why an allocation failed the rollout, in words.
fn crashed(a: &Allocation) -> String {
    let what = match a.status {
        AllocStatus::Failed => "failed",
        AllocStatus::Complete => "exited",
        _ if a.restart_count > 0 => "restarted",
        _ => "crashed",
    };
    let detail = if a.message.is_empty() {
        a.exit_code
            .map(|c| format!("exit code {c}"))
            .unwrap_or_default()
    } else {
        a.message.clone()
    };
    format!(
        "allocation {} of version {} {what}{}",
        a.short_id(),
        a.job_version,
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    )
}

/// How the CLI names a job: `NAME`, with `-n NAMESPACE` outside the
/// default namespace.
fn promote_args(spec: &skiff_model::JobSpec) -> String {
    if spec.namespace == skiff_model::DEFAULT_NAMESPACE {
        spec.name.clone()
    } else {
        format!("{} -n {}", spec.name, spec.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{JobSpec, Placement, Resources};
    use skiff_store::command::{AllocUpdate, NewAlloc, NodeRegistration, PlanCommand};

    struct H {
        state: State,
    }

    impl H {
        fn new(update: &str) -> H {
            let mut h = H {
                state: State::default(),
            };
            h.apply(Command::RegisterNode {
                registration: NodeRegistration {
                    metrics_address: String::new(),
                    image_roots: Vec::new(),
                    dynamic_ports: Default::default(),
                    subnet: String::new(),
                    name: "n1".into(),
                    labels: Default::default(),
                    capacity: Resources::new(8000, 8 << 30),
                    reserved: Resources::ZERO,
                    address: "127.0.0.1:7702".into(),
                    agent_version: "t".into(),
                    gpus: vec![],
                    gpu_links: vec![],
                    gpu_driver: Default::default(),
                },
            });
            h.apply(Command::UpsertJob {
                spec: JobSpec::from_yaml(&format!(
                    "name: web\nreplicas: 2\nupdate: {update}\ntask: {{image: 'oci:/i', resources: {{cpu: 100m, memory: 16Mi}}}}"
                ))
                .unwrap(),
            });
            h
        }
        fn apply(&mut self, c: Command) -> Outcome {
            let i = self.state.index + 1;
            self.state.apply(i, &c)
        }
        fn place(&mut self, ids: &[&str], at_ms: u64, unplaced: u32) {
            let j = self.state.jobs["web"].clone();
            let eval = self.state.latest_eval("web").unwrap().id.clone();
            self.apply(Command::ApplyPlan {
                plan: PlanCommand {
                    admit: false,
                    reclaims: Vec::new(),
                    eval_id: eval,
                    job: "web".into(),
                    job_version: j.version,
                    job_modify_index: j.modify_index,
                    snapshot_index: self.state.index,
                    placements: ids
                        .iter()
                        .enumerate()
                        .map(|(r, id)| NewAlloc {
                            id: id.to_string(),
                            placement: Placement {
                                replica: r as u32,
                                node: "n1".into(),
                                gpus: vec![],
                                ports: vec![],
                            },
                        })
                        .collect(),
                    stops: vec![],
                    evictions: vec![],
                    unplaced,
                    explanation: if unplaced > 0 {
                        "0/1 nodes: 1 insufficient memory".into()
                    } else {
                        String::new()
                    },
                    at_ms,
                },
            });
        }
        fn report(&mut self, id: &str, healthy: Option<bool>, reason: &str, at_ms: u64) {
            self.apply(Command::UpdateAllocStatus {
                node: "n1".into(),
                updates: vec![AllocUpdate {
                    alloc_id: id.into(),
                    status: AllocStatus::Running,
                    healthy,
                    reason: reason.into(),
                    message: if reason.is_empty() {
                        String::new()
                    } else {
                        "exited with code 1; starting again in 10s".into()
                    },
                    ..AllocUpdate::default()
                }],
                at_ms,
            });
        }
        fn decide(&self, now: u64) -> Option<DeploymentUpdate> {
            let job = &self.state.jobs["web"];
            decide(&self.state, job, self.state.deployment("web").unwrap(), now)
        }
        fn commit(&mut self, now: u64) -> Option<DeploymentUpdate> {
            let u = self.decide(now)?;
            self.apply(Command::UpdateDeployment { update: u.clone() });
            Some(u)
        }
    }

    const FAST: &str = "{min_healthy: 2s, healthy_deadline: 10s, progress_deadline: 30s}";

    #[test]
    fn an_allocation_is_proved_healthy_after_min_healthy_and_then_the_rollout_succeeds() {
        let mut h = H::new(FAST);
        let first = h.commit(1_000).unwrap();
        assert_eq!(first.at_ms, 1_000, "the first look records the start");
        h.place(&["a", "b"], 1_000, 0);
        h.report("a", Some(true), "", 2_000);
        h.report("b", Some(true), "", 2_500);
        assert!(h.decide(3_999).is_none(), "healthy for less than 2s");
        let u = h.commit(4_000).unwrap();
        assert_eq!(
            (u.healthy.as_slice(), u.progress),
            (&["a".to_string()][..], true)
        );
        assert_eq!(
            h.state.deployment("web").unwrap().status,
            DeploymentStatus::Running
        );
        h.commit(4_500).unwrap();
        let d = h.state.deployment("web").unwrap();
        assert_eq!(d.status, DeploymentStatus::Successful, "{d:?}");
        assert!(h.decide(60_000).is_none(), "nothing more to say");
    }

    #[test]
    fn a_rollout_is_looked_at_again_only_when_its_job_changes_or_a_deadline_comes() {
        let mut h = H::new(FAST);
        let mut looks = Looks::default();
        let first = looks.decide(&h.state, 1_000);
        assert_eq!(first.len(), 1, "the start is recorded");
        h.apply(Command::UpdateDeployment {
            update: first[0].clone(),
        });
        h.place(&["a", "b"], 1_000, 0);
        h.report("a", Some(true), "", 2_000);
        h.report("b", Some(true), "", 2_500);
        // A look decides nothing (healthy for less than min_healthy);
        // the next ones, with nothing changed, do no work at all.
        assert!(looks.decide(&h.state, 3_000).is_empty());
        let decided = looks.decided;
        for now in [3_100, 3_500, 3_999] {
            assert!(looks.decide(&h.state, now).is_empty());
        }
        assert_eq!(looks.decided, decided, "nothing changed, no deadline");
        // An allocation's change is looked at at once...
        h.report("b", None, "", 3_200);
        assert!(looks.decide(&h.state, 3_300).is_empty());
        assert_eq!(looks.decided, decided + 1);
        // ...and the clock at the first deadline (a healthy since 2s +
        // min_healthy 2s), which proves it.
        let u = looks.decide(&h.state, 4_000);
        assert_eq!(looks.decided, decided + 2);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].healthy, ["a"]);
    }

    #[test]
    fn a_crash_fails_the_rollout_and_says_which_allocation_and_why() {
        let mut h = H::new(FAST);
        h.commit(1_000);
        h.place(&["a", "b"], 1_000, 0);
        h.report("a", Some(false), "back_off", 1_500);
        let u = h.decide(1_600).unwrap();
        assert_eq!(u.unhealthy, ["a"]);
        assert_eq!(
            u.fail.as_deref(),
            Some("allocation a of version 1 crashed: exited with code 1; starting again in 10s")
        );
    }

    #[test]
    fn an_allocation_never_healthy_misses_its_deadline() {
        let mut h = H::new(FAST);
        h.commit(1_000);
        h.place(&["a", "b"], 1_000, 0);
        h.report("a", Some(false), "", 1_500);
        assert!(h.decide(10_999).is_none());
        let u = h.decide(11_000).unwrap();
        assert_eq!(u.unhealthy, ["a", "b"]);
        assert_eq!(
            u.fail.as_deref(),
            Some("allocation a of version 1 was not healthy within healthy_deadline (10s)")
        );
    }

    #[test]
    fn no_progress_within_the_progress_deadline_fails_and_says_what_waits() {
        let mut h = H::new("{min_healthy: 1s, healthy_deadline: 10s, progress_deadline: 20s}");
        h.commit(1_000);
        h.place(&[], 1_000, 2);
        assert!(h.decide(20_999).is_none());
        let u = h.decide(21_000).unwrap();
        assert_eq!(
            u.fail.as_deref(),
            Some("no allocation proved healthy within progress_deadline (20s); 2 replica(s) not placed: 0/1 nodes: 1 insufficient memory")
        );
    }
}
