use super::*;
use crate::command::{AllocUpdate, NewAlloc, NodeRegistration, PlanCommand};
use skiff_model::fit::used_on;
use skiff_model::{
    AllocStatus, DesiredStatus, Gpu, JobSpec, NodeStatus, Placement, Resources, Stop,
};

pub(super) fn spec(name: &str, replicas: u32, mem: &str) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "name: {name}\nreplicas: {replicas}\ntask: {{image: 'oci:/i', resources: {{cpu: 500m, memory: {mem}}}}}"
    ))
    .unwrap()
}

pub(super) fn reg(name: &str, cpu: u64, mem_mi: u64) -> Command {
    Command::RegisterNode {
        registration: NodeRegistration {
            metrics_address: String::new(),
            image_roots: Vec::new(),
            dynamic_ports: Default::default(),
            subnet: String::new(),
            name: name.into(),
            labels: Default::default(),
            capacity: Resources::new(cpu, mem_mi << 20),
            reserved: Resources::ZERO,
            address: "127.0.0.1:7702".into(),
            agent_version: "test".into(),
            gpus: vec![],
            gpu_links: vec![],
            gpu_driver: Default::default(),
        },
    }
}

/// A node with `gpus` GPUs named `NAME-gpuI`; the last one unhealthy when
/// `one_sick`.
fn gpu_reg(name: &str, gpus: usize, one_sick: bool) -> Command {
    let Command::RegisterNode { mut registration } = reg(name, 8000, 8192) else {
        unreachable!()
    };
    registration.gpus = (0..gpus)
        .map(|i| Gpu {
            uuid: format!("{name}-gpu{i}"),
            model: "A100".into(),
            memory_bytes: 80 << 30,
            healthy: !(one_sick && i + 1 == gpus),
            ..Gpu::default()
        })
        .collect();
    Command::RegisterNode { registration }
}

pub(super) fn job_spec(yaml: &str) -> JobSpec {
    JobSpec::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// Applies commands at consecutive indexes, like Raft would.
pub(super) struct Harness {
    pub(super) state: State,
}

impl Harness {
    pub(super) fn new() -> Self {
        Harness {
            state: State::default(),
        }
    }
    pub(super) fn apply(&mut self, c: Command) -> Outcome {
        let i = self.state.index + 1;
        self.state.apply(i, &c)
    }
    pub(super) fn pending_eval(&self, job: &str) -> String {
        self.state
            .evals
            .values()
            .find(|e| e.job == job && e.status == EvalStatus::Pending)
            .map(|e| e.id.clone())
            .expect("a pending eval")
    }
    pub(super) fn plan(&self, job: &str, placements: &[(u32, &str)], unplaced: u32) -> Command {
        let j = &self.state.jobs[job];
        Command::ApplyPlan {
            plan: PlanCommand {
                at_ms: 0,
                admit: false,
                reclaims: Vec::new(),
                eval_id: self.pending_eval(job),
                job: job.into(),
                job_version: j.version,
                job_modify_index: j.modify_index,
                snapshot_index: self.state.index,
                placements: placements
                    .iter()
                    .map(|(r, n)| NewAlloc {
                        id: format!("{job}-{r}-{n}"),
                        placement: Placement {
                            replica: *r,
                            node: n.to_string(),
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
            },
        }
    }
}

#[test]
fn upserting_a_job_creates_version_one_and_an_evaluation() {
    let mut h = Harness::new();
    let out = h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    let Outcome::JobUpserted { job, changed } = out else {
        panic!("{out:?}")
    };
    assert!(changed);
    assert_eq!(job.version, 1);
    assert_eq!(job.create_index, 1);
    assert_eq!(h.state.evals.len(), 1);
    assert!(h.state.changes.contains(&(Table::Job, "web".into())));
}

#[test]
fn reapplying_the_same_spec_changes_nothing() {
    let mut h = Harness::new();
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    h.state.changes.clear();
    let out = h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    assert!(matches!(out, Outcome::JobUpserted { changed: false, .. }));
    assert!(h.state.changes.is_empty());
}

#[test]
fn only_a_task_change_bumps_the_version() {
    let mut h = Harness::new();
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    let Outcome::JobUpserted { job, .. } = h.apply(Command::UpsertJob {
        spec: spec("web", 5, "64Mi"),
    }) else {
        panic!()
    };
    assert_eq!(job.version, 1, "scaling keeps the version");
    let Outcome::JobUpserted { job, .. } = h.apply(Command::UpsertJob {
        spec: spec("web", 5, "128Mi"),
    }) else {
        panic!()
    };
    assert_eq!(job.version, 2);
    assert_eq!(job.create_index, 1);
}

#[test]
fn a_plan_places_allocations_that_fit() {
    let mut h = Harness::new();
    h.apply(reg("n1", 1000, 1024));
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    let out = h.apply(h.plan("web", &[(0, "n1"), (1, "n1")], 0));
    let Outcome::PlanApplied(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!((r.placed, r.rejected), (2, 0));
    assert_eq!(r.eval_status, Some(EvalStatus::Complete));
    let allocs = h.state.allocs_of_job("web");
    assert_eq!(allocs.len(), 2);
    assert!(allocs
        .iter()
        .all(|a| a.status == AllocStatus::Pending && a.node == "n1"));
}

#[test]
fn the_plan_check_refuses_what_no_longer_fits() {
    // Two plans made from the same snapshot race: each alone fits, together
    // they would overcommit n1's cpu. The second is cut down at commit.
    let mut h = Harness::new();
    h.apply(reg("n1", 1000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("a", 2, "64Mi"),
    });
    h.apply(Command::UpsertJob {
        spec: spec("b", 2, "64Mi"),
    });
    let plan_a = h.plan("a", &[(0, "n1"), (1, "n1")], 0);
    let plan_b = h.plan("b", &[(0, "n1"), (1, "n1")], 0);
    let Outcome::PlanApplied(ra) = h.apply(plan_a) else {
        panic!()
    };
    let Outcome::PlanApplied(rb) = h.apply(plan_b) else {
        panic!()
    };
    assert_eq!((ra.placed, ra.rejected), (2, 0));
    assert_eq!((rb.placed, rb.rejected), (0, 2));
    assert_eq!(
        rb.eval_status,
        Some(EvalStatus::Pending),
        "re-evaluated later"
    );
    let used = used_on("n1", h.state.allocs.values());
    assert!(used.cpu_millis <= 1000);
}

#[test]
fn a_plan_for_a_job_that_changed_since_the_snapshot_is_dropped() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    let stale = h.plan("web", &[(0, "n1")], 0);
    h.apply(Command::UpsertJob {
        spec: spec("web", 3, "64Mi"),
    });
    let Outcome::PlanApplied(r) = h.apply(stale) else {
        panic!()
    };
    assert_eq!((r.placed, r.rejected), (0, 1));
    assert!(h.state.allocs.is_empty());
    assert_eq!(r.eval_status, Some(EvalStatus::Pending));
}

#[test]
fn unplaced_replicas_block_the_eval_until_a_node_joins() {
    let mut h = Harness::new();
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    let out = h.apply(h.plan("web", &[], 1));
    let Outcome::PlanApplied(r) = out else {
        panic!()
    };
    assert_eq!(r.eval_status, Some(EvalStatus::Blocked));
    let e = h.state.latest_eval("web").unwrap();
    assert_eq!(
        e.message,
        "1 replica(s) not placed: 0/1 nodes: 1 insufficient memory"
    );
    h.apply(reg("n1", 1000, 1024));
    assert_eq!(
        h.state.latest_eval("web").unwrap().status,
        EvalStatus::Pending
    );
}

#[test]
fn a_node_joining_while_the_scheduler_ran_is_not_missed() {
    let mut h = Harness::new();
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    let plan = h.plan("web", &[], 1); // made before n1 joined
    h.apply(reg("n1", 1000, 1024));
    let Outcome::PlanApplied(r) = h.apply(plan) else {
        panic!()
    };
    assert_eq!(r.eval_status, Some(EvalStatus::Pending));
}

#[test]
fn agents_update_only_their_own_allocations_and_terminal_is_final() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    let id = "web-0-n1".to_string();
    let upd = |status, code| AllocUpdate {
        alloc_id: id.clone(),
        status,
        exit_code: code,
        ..AllocUpdate::default()
    };
    let out = h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n2".into(),
        updates: vec![upd(AllocStatus::Failed, Some(1))],
    });
    assert_eq!(out, Outcome::AllocsUpdated { applied: 0 });
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![upd(AllocStatus::Running, None)],
    });
    assert_eq!(h.state.allocs[&id].status, AllocStatus::Running);
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![upd(AllocStatus::Failed, Some(3))],
    });
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![upd(AllocStatus::Running, None)],
    });
    let a = &h.state.allocs[&id];
    assert_eq!((a.status, a.exit_code), (AllocStatus::Failed, Some(3)));
}

#[test]
fn the_first_node_to_pull_an_unresolved_tag_pins_the_version() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    let tagged = JobSpec::from_yaml(
        "name: web\ntask: {image: 'registry.lab:5000/a:1', resources: {cpu: 500m, memory: 64Mi}}",
    )
    .unwrap();
    h.apply(Command::UpsertJob { spec: tagged });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    let id = "web-0-n1".to_string();
    let report = |digest: &str| Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: id.clone(),
            status: AllocStatus::Running,
            image_digest: digest.into(),
            ..AllocUpdate::default()
        }],
    };
    let digest = format!("sha256:{}", "ab".repeat(32));
    // Not a digest: ignored.
    h.apply(report("sha256:nothex"));
    assert_eq!(
        h.state.jobs["web"]
            .spec
            .task
            .image
            .registry
            .as_ref()
            .unwrap()
            .digest,
        None
    );
    h.apply(report(&digest));
    let pinned = |s: &State| {
        s.jobs["web"]
            .spec
            .task
            .image
            .registry
            .as_ref()
            .unwrap()
            .digest
            .clone()
    };
    assert_eq!(pinned(&h.state), Some(digest.clone()));
    assert_eq!(h.state.jobs["web"].version, 1, "the same version, pinned");
    let kept = h.state.histories["web"].get(1).unwrap();
    assert_eq!(
        kept.spec.task.image.registry.as_ref().unwrap().digest,
        Some(digest.clone()),
        "an undo to this version gets the same bytes"
    );
    assert_eq!(
        h.state.allocs[&id]
            .task
            .image
            .registry
            .as_ref()
            .unwrap()
            .digest,
        Some(digest.clone())
    );
    // A later report of another digest changes nothing.
    h.apply(report(&format!("sha256:{}", "cd".repeat(32))));
    assert_eq!(pinned(&h.state), Some(digest));
}

#[test]
fn pull_progress_is_shown_while_pending_and_gone_once_running() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    let id = "web-0-n1".to_string();
    let update = |status, reason: &str, message: &str| Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: id.clone(),
            status,
            reason: reason.into(),
            message: message.into(),
            ..AllocUpdate::default()
        }],
    };
    let pulling = "pulling lab/a:1: 1.0 MiB of 8.0 MiB (2 blobs left)";
    h.apply(update(AllocStatus::Pending, "pulling", pulling));
    let a = &h.state.allocs[&id];
    assert_eq!(
        (a.status, a.reason.as_str(), a.message.as_str()),
        (AllocStatus::Pending, "pulling", pulling)
    );
    h.apply(update(AllocStatus::Running, "", ""));
    let a = &h.state.allocs[&id];
    assert_eq!(
        (a.status, a.message.as_str()),
        (AllocStatus::Running, ""),
        "the progress does not outlive the pull"
    );
}

#[test]
fn restarts_health_and_reasons_are_recorded_while_running() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    let id = "web-0-n1".to_string();
    let update = |restart_count, healthy, reason: &str| Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: id.clone(),
            status: AllocStatus::Running,
            exit_code: Some(1),
            restart_count,
            healthy,
            reason: reason.into(),
            ..AllocUpdate::default()
        }],
    };
    h.apply(update(0, Some(true), ""));
    let out = h.apply(update(2, Some(false), "back_off"));
    assert_eq!(out, Outcome::AllocsUpdated { applied: 1 });
    let a = &h.state.allocs[&id];
    assert_eq!(
        (a.status, a.restart_count, a.healthy, a.reason.as_str()),
        (AllocStatus::Running, 2, Some(false), "back_off")
    );
    assert_eq!(
        h.apply(update(2, Some(false), "back_off")),
        Outcome::AllocsUpdated { applied: 0 },
        "an identical update changes nothing"
    );
}

#[test]
fn deleting_a_job_queues_an_eval_and_unknown_jobs_are_refused() {
    let mut h = Harness::new();
    assert_eq!(
        h.apply(Command::DeleteJob {
            name: "nope".into()
        }),
        Outcome::Refused(Refusal::job_not_found("nope"))
    );
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    assert_eq!(
        h.apply(Command::DeleteJob { name: "web".into() }),
        Outcome::JobDeleted
    );
    assert!(!h.state.jobs.contains_key("web"));
    assert_eq!(
        h.state.latest_eval("web").unwrap().status,
        EvalStatus::Pending
    );
}

#[test]
fn deleting_a_job_marks_its_failed_allocations_desired_stop_too() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1"), (1, "n1")], 0));
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "web-0-n1".into(),
            status: AllocStatus::Failed,
            exit_code: Some(1),
            ..AllocUpdate::default()
        }],
    });
    h.apply(Command::DeleteJob { name: "web".into() });
    assert_eq!(
        h.state.allocs["web-0-n1"].desired,
        DesiredStatus::Stop,
        "a failed allocation of a deleted job no longer says run"
    );
}

#[test]
fn stops_mark_allocations_desired_stop() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    h.apply(Command::DeleteJob { name: "web".into() });
    let plan = Command::ApplyPlan {
        plan: PlanCommand {
            at_ms: 0,
            eval_id: h.pending_eval("web"),
            job: "web".into(),
            job_version: 0,
            job_modify_index: 0,
            snapshot_index: h.state.index,
            placements: vec![],
            stops: vec![Stop {
                alloc_id: "web-0-n1".into(),
                reason: "job deleted".into(),
            }],
            evictions: vec![],
            unplaced: 0,
            explanation: String::new(),
            admit: false,
            reclaims: Vec::new(),
        },
    };
    let eval = h.pending_eval("web");
    let Outcome::PlanApplied(r) = h.apply(plan) else {
        panic!()
    };
    assert_eq!(r.stopped, 1);
    // The delete's evaluation is done: a plan for a job that is gone
    // places nothing, and that is no refusal (it was planned again and
    // again, for ever).
    assert_eq!(r.rejected, 0);
    assert_eq!(h.state.evals[&eval].status, EvalStatus::Complete);
    let a = &h.state.allocs["web-0-n1"];
    assert_eq!(
        (a.desired, a.message.as_str()),
        (DesiredStatus::Stop, "job deleted")
    );
    // The agent's reports while it stops keep the reason; its last words
    // follow it.
    for (status, message) in [
        (
            AllocStatus::Running,
            "restarted 1 time; the last run exited with code 1",
        ),
        (AllocStatus::Complete, "stopped (exited with code 0)"),
    ] {
        h.apply(Command::UpdateAllocStatus {
            at_ms: 0,
            node: "n1".into(),
            updates: vec![AllocUpdate {
                alloc_id: "web-0-n1".into(),
                status,
                message: message.into(),
                ..AllocUpdate::default()
            }],
        });
    }
    assert_eq!(
        h.state.allocs["web-0-n1"].message,
        "job deleted; stopped (exited with code 0)"
    );
}

#[test]
fn apply_is_deterministic() {
    let script = |h: &mut Harness| {
        h.apply(reg("n1", 2000, 2048));
        h.apply(reg("n2", 2000, 2048));
        h.apply(Command::UpsertJob {
            spec: spec("web", 3, "64Mi"),
        });
        h.apply(h.plan("web", &[(0, "n1"), (1, "n2"), (2, "n1")], 0));
        h.apply(Command::UpsertJob {
            spec: spec("web", 1, "64Mi"),
        });
    };
    let (mut a, mut b) = (Harness::new(), Harness::new());
    script(&mut a);
    script(&mut b);
    assert_eq!(a.state, b.state);
    assert_eq!(a.state.digest(), b.state.digest());
}

#[test]
fn applying_owned_commands_without_a_reply_changes_the_state_the_same_way() {
    let script = [
        reg("n1", 2000, 2048),
        Command::UpsertJob {
            spec: spec("web", 3, "64Mi"),
        },
        Command::UpsertJob {
            spec: spec("web", 3, "64Mi"),
        },
        Command::UpsertJob {
            spec: spec("web", 5, "64Mi"),
        },
        Command::UpsertJob {
            spec: spec("web", 5, "128Mi"),
        },
        Command::UpsertJob {
            spec: spec("web", 5, "64Mi"),
        },
        Command::DeleteJob { name: "web".into() },
    ];
    let (mut a, mut b) = (State::default(), State::default());
    for (i, c) in script.into_iter().enumerate() {
        let index = i as u64 + 1;
        let answered = a.apply(index, &c);
        let unanswered = b.apply_owned(index, c.clone(), false);
        assert_eq!(a.changes, b.changes, "same records changed at {index}");
        if matches!(c, Command::UpsertJob { .. }) {
            assert!(matches!(answered, Outcome::JobUpserted { .. }));
            assert_eq!(unanswered, Outcome::Unanswered, "no copy for nobody");
            // With a reply wanted, the owned path answers like `apply`.
            let mut c2 = State::default();
            let mut d2 = State::default();
            c2.apply(1, &reg("n1", 2000, 2048));
            d2.apply(1, &reg("n1", 2000, 2048));
            assert_eq!(
                c2.apply(2, &c),
                d2.apply_owned(2, c.clone(), true),
                "answered the same"
            );
        } else {
            assert_eq!(answered, unanswered);
        }
    }
    assert_eq!(a, b);
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn recreating_a_deleted_job_drops_the_old_finished_allocations() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "web-0-n1".into(),
            status: AllocStatus::Complete,
            exit_code: Some(0),
            ..AllocUpdate::default()
        }],
    });
    h.apply(Command::DeleteJob { name: "web".into() });
    assert_eq!(h.state.allocs.len(), 1, "kept while the job is gone");
    h.state.changes.clear();
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    assert!(h.state.allocs.is_empty());
    assert!(h.state.changes.contains(&(Table::Alloc, "web-0-n1".into())));
}

#[test]
fn each_nodes_allocations_are_found_through_the_index_as_they_come_and_go() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(reg("n2", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 3, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1"), (1, "n2"), (2, "n1")], 0));
    let on = |s: &State, node: &str| -> Vec<String> {
        let mut ids: Vec<String> = s
            .allocs_on_node(node)
            .iter()
            .map(|a| a.id.clone())
            .collect();
        ids.sort();
        // The same as looking at every allocation.
        let mut scan: Vec<String> = s
            .allocs
            .values()
            .filter(|a| a.node == node)
            .map(|a| a.id.clone())
            .collect();
        scan.sort();
        assert_eq!(ids, scan, "{node}");
        ids
    };
    assert_eq!(on(&h.state, "n1"), ["web-0-n1", "web-2-n1"]);
    assert_eq!(on(&h.state, "n2"), ["web-1-n2"]);
    // Finished, the job deleted and made again: the old ones are gone.
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "web-0-n1".into(),
            status: AllocStatus::Complete,
            exit_code: Some(0),
            ..AllocUpdate::default()
        }],
    });
    h.apply(Command::DeleteJob { name: "web".into() });
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    assert_eq!(on(&h.state, "n1"), ["web-2-n1"]);
    // A state loaded (or a snapshot installed) rebuilds the index.
    let mut loaded: State =
        serde_json::from_str(&serde_json::to_string(&h.state).unwrap()).unwrap();
    assert!(loaded.allocs_on_node("n1").is_empty(), "not serialized");
    loaded.rebuild_indexes();
    assert_eq!(on(&loaded, "n1"), ["web-2-n1"]);
    assert_eq!(on(&loaded, "n2"), ["web-1-n2"]);
}

/// A plan for `job` placing `(replica, node, gpus)` and evicting `evict`.
fn plan_gpus(
    h: &Harness,
    job: &str,
    placements: &[(u32, &str, &[&str])],
    evict: &[&str],
) -> Command {
    let Command::ApplyPlan { mut plan } = h.plan(job, &[], 0) else {
        unreachable!()
    };
    plan.placements = placements
        .iter()
        .map(|(r, n, g)| NewAlloc {
            id: format!("{job}-{r}-{n}"),
            placement: Placement {
                replica: *r,
                node: n.to_string(),
                gpus: g.iter().map(|s| s.to_string()).collect(),
                ports: vec![],
            },
        })
        .collect();
    plan.evictions = evict
        .iter()
        .map(|id| Stop {
            alloc_id: id.to_string(),
            reason: "made up by the plan".into(),
        })
        .collect();
    Command::ApplyPlan { plan }
}

fn applied(out: Outcome) -> PlanResult {
    match out {
        Outcome::PlanApplied(r) => r,
        other => panic!("{other:?}"),
    }
}

const GPU_JOB: &str =
    "replicas: 2\ntask: {image: 'oci:/i', resources: {cpu: 100m, memory: 64Mi, gpus: 1}}";

#[test]
fn a_registered_node_offers_only_its_healthy_gpus() {
    let mut h = Harness::new();
    h.apply(gpu_reg("g", 4, true));
    let n = &h.state.nodes["g"];
    assert_eq!((n.capacity.gpus, n.allocatable.gpus), (4, 3));
    assert_eq!(n.gpus.len(), 4);
}

#[test]
fn mig_instances_count_as_gpus_and_their_parent_does_not() {
    let mut h = Harness::new();
    let Command::RegisterNode { mut registration } = reg("m", 8000, 8192) else {
        unreachable!()
    };
    registration.gpus = vec![
        Gpu {
            mig_enabled: true,
            ..Gpu::new("GPU-p", "A100", 80 << 30)
        },
        Gpu {
            mig_profile: Some("3g.40gb".into()),
            parent: Some("GPU-p".into()),
            ..Gpu::new("MIG-a", "A100", 40 << 30)
        },
        Gpu {
            mig_profile: Some("3g.40gb".into()),
            parent: Some("GPU-p".into()),
            healthy: false,
            ..Gpu::new("MIG-b", "A100", 40 << 30)
        },
        Gpu::new("GPU-w", "A100", 80 << 30),
    ];
    h.apply(Command::RegisterNode { registration });
    let n = &h.state.nodes["m"];
    assert_eq!((n.capacity.gpus, n.allocatable.gpus), (3, 2));
}

#[test]
fn allocations_on_a_gpu_that_turns_unhealthy_are_flagged_until_it_recovers() {
    let mut h = Harness::new();
    h.apply(gpu_reg("g", 2, false));
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!("name: a\n{GPU_JOB}")),
    });
    let p = plan_gpus(
        &h,
        "a",
        &[(0, "g", &["g-gpu0"]), (1, "g", &["g-gpu1"])],
        &[],
    );
    assert_eq!(applied(h.apply(p)).placed, 2);
    let Command::RegisterNode { mut registration } = gpu_reg("g", 2, false) else {
        unreachable!()
    };
    registration.gpus[1].healthy = false;
    registration.gpus[1].health_reason = "XID 79: fell off the bus".into();
    h.apply(Command::RegisterNode {
        registration: registration.clone(),
    });
    assert!(h.state.allocs["a-0-g"].unhealthy_gpus.is_empty());
    assert_eq!(
        h.state.allocs["a-1-g"].unhealthy_gpus,
        ["g-gpu1: XID 79: fell off the bus"]
    );
    assert_eq!(h.state.nodes["g"].allocatable.gpus, 1);
    // The allocation keeps running: only the flag says what happened.
    assert_eq!(h.state.allocs["a-1-g"].desired, DesiredStatus::Run);
    registration.gpus[1].healthy = true;
    registration.gpus[1].health_reason.clear();
    h.apply(Command::RegisterNode { registration });
    assert!(h.state.allocs["a-1-g"].unhealthy_gpus.is_empty());
    assert_eq!(h.state.nodes["g"].allocatable.gpus, 2);
}

#[test]
fn racing_plans_never_give_one_gpu_twice() {
    let mut h = Harness::new();
    h.apply(gpu_reg("g", 2, false));
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!("name: a\n{GPU_JOB}")),
    });
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!("name: b\n{GPU_JOB}")),
    });
    // Both made from the same snapshot, both chose g-gpu0.
    let pa = plan_gpus(&h, "a", &[(0, "g", &["g-gpu0"])], &[]);
    let pb = plan_gpus(&h, "b", &[(0, "g", &["g-gpu0"])], &[]);
    assert_eq!(applied(h.apply(pa)).placed, 1);
    let rb = applied(h.apply(pb));
    assert_eq!((rb.placed, rb.rejected), (0, 1));
    // A GPU the node does not have, or too few GPUs, are refused too.
    let bad = plan_gpus(&h, "b", &[(0, "g", &["g-gpu7"]), (1, "g", &[])], &[]);
    let r = applied(h.apply(bad));
    assert_eq!((r.placed, r.rejected), (0, 2));
    let good = plan_gpus(&h, "b", &[(0, "g", &["g-gpu1"])], &[]);
    assert_eq!(applied(h.apply(good)).placed, 1);
    assert_eq!(h.state.allocs["b-0-g"].gpus, ["g-gpu1"]);
}

#[test]
fn racing_plans_never_give_one_port_twice() {
    let mut h = Harness::new();
    h.apply(reg("n", 8000, 8192));
    let ported =
        "replicas: 1\ntask: {image: 'oci:/i', resources: {cpu: 100m, memory: 64Mi, ports: [8080]}}";
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!("name: a\n{ported}")),
    });
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!("name: b\n{ported}")),
    });
    let pa = h.plan("a", &[(0, "n")], 0);
    let pb = h.plan("b", &[(0, "n")], 0);
    assert_eq!(applied(h.apply(pa)).placed, 1);
    assert_eq!(h.state.allocs["a-0-n"].ports, [8080]);
    assert_eq!(applied(h.apply(pb)).rejected, 1);
}

#[test]
fn a_plan_picking_a_held_or_missing_port_is_refused() {
    let mut h = Harness::new();
    h.apply(reg("n", 8000, 8192));
    h.apply(Command::UpsertJob {
        spec: job_spec("name: a\nreplicas: 2\ntask: {image: 'oci:/i', network: bridge, resources: {cpu: 100m, memory: 64Mi}, ports: [{name: http, container: 80, host: 0}]}"),
    });
    let with_ports = |h: &Harness, picks: &[&[u16]]| {
        let mut c = h.plan("a", &[(0, "n"), (1, "n")], 0);
        let Command::ApplyPlan { plan } = &mut c else {
            unreachable!()
        };
        for (new, ports) in plan.placements.iter_mut().zip(picks) {
            new.placement.ports = ports.to_vec();
        }
        c
    };
    // Twice the same port, a replica without its port, or a port outside
    // the node's dynamic range (20000-32000 here): refused.
    let r = applied(h.apply(with_ports(&h, &[&[20001], &[20001]])));
    assert_eq!((r.placed, r.rejected), (0, 2));
    let r = applied(h.apply(with_ports(&h, &[&[20001], &[40000]])));
    assert_eq!((r.placed, r.rejected), (0, 2));
    let r = applied(h.apply(with_ports(&h, &[&[20001], &[]])));
    assert_eq!((r.placed, r.rejected), (0, 2));
    let r = applied(h.apply(with_ports(&h, &[&[20001], &[20002]])));
    assert_eq!(r.placed, 2);
    assert_eq!(h.state.allocs["a-0-n"].ports, [20001]);
    assert_eq!(h.state.allocs["a-1-n"].ports, [20002]);
}

fn preemption_setup(victim_priority: u8) -> Harness {
    let mut h = Harness::new();
    h.apply(gpu_reg("g", 2, false));
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!(
            "name: low\npriority: {victim_priority}\nreplicas: 1\ntask: {{image: 'oci:/i', resources: {{cpu: 100m, memory: 64Mi, gpus: 2}}}}"
        )),
    });
    let p = plan_gpus(&h, "low", &[(0, "g", &["g-gpu0", "g-gpu1"])], &[]);
    assert_eq!(applied(h.apply(p)).placed, 1);
    h.apply(Command::UpsertJob {
        spec: job_spec("name: high\npriority: 60\nreplicas: 1\ntask: {image: 'oci:/i', resources: {cpu: 100m, memory: 64Mi, gpus: 1}}"),
    });
    h
}

#[test]
fn an_eviction_frees_the_victims_gpus_in_the_same_command() {
    let mut h = preemption_setup(50);
    let p = plan_gpus(&h, "high", &[(0, "g", &["g-gpu1"])], &["low-0-g"]);
    let r = applied(h.apply(p));
    assert_eq!((r.placed, r.evicted, r.rejected), (1, 1, 0));
    let victim = &h.state.allocs["low-0-g"];
    assert_eq!(victim.desired, DesiredStatus::Stop);
    assert_eq!(victim.message, "preempted by job high (priority 60)");
    // The victim's job is evaluated again, to find room elsewhere.
    assert_eq!(
        h.state.latest_eval("low").map(|e| (e.status, e.trigger)),
        Some((EvalStatus::Pending, EvalTrigger::Preemption))
    );
}

#[test]
fn an_eviction_of_work_less_than_ten_points_lower_is_refused_with_its_node() {
    let mut h = preemption_setup(51);
    let p = plan_gpus(&h, "high", &[(0, "g", &["g-gpu1"])], &["low-0-g"]);
    let r = applied(h.apply(p));
    assert_eq!((r.placed, r.evicted, r.rejected), (0, 0, 1));
    assert_eq!(h.state.allocs["low-0-g"].desired, DesiredStatus::Run);
}

#[test]
fn without_an_eviction_the_victims_gpus_stay_taken() {
    let mut h = preemption_setup(0);
    let p = plan_gpus(&h, "high", &[(0, "g", &["g-gpu1"])], &[]);
    assert_eq!(applied(h.apply(p)).rejected, 1);
}

#[test]
fn a_gang_plan_is_committed_whole_or_not_at_all() {
    let mut h = Harness::new();
    h.apply(reg("n1", 1000, 4096));
    h.apply(reg("n2", 1000, 4096));
    h.apply(Command::UpsertJob {
        spec: job_spec(
            "name: other\nreplicas: 1\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 64Mi}}",
        ),
    });
    h.apply(Command::UpsertJob {
        spec: job_spec("name: gang\ngang: true\nreplicas: 2\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 64Mi}}"),
    });
    // Made from a snapshot where n2 was empty; `other` took it since.
    let stale = h.plan("gang", &[(0, "n1"), (1, "n2")], 0);
    applied(h.apply(h.plan("other", &[(0, "n2")], 0)));
    let r = applied(h.apply(stale));
    assert_eq!((r.placed, r.rejected), (0, 2));
    assert!(h.state.allocs_of_job("gang").is_empty());
}

#[test]
fn cordon_survives_reregistration_and_a_drain_moves_work_then_finishes() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    applied(h.apply(h.plan("web", &[(0, "n1")], 0)));
    let out = h.apply(Command::SetNodeEligibility {
        name: "n1".into(),
        cordoned: true,
        draining: false,
        drain_deadline_ms: None,
    });
    assert_eq!(out, Outcome::NodeEligibilitySet { stopped: 0 });
    h.apply(reg("n1", 4000, 4096));
    assert!(h.state.nodes["n1"].cordoned, "kept across registration");
    assert_eq!(h.state.allocs["web-0-n1"].desired, DesiredStatus::Run);
    // Draining marks the node; the leader's drainer moves the work.
    h.apply(Command::SetNodeEligibility {
        name: "n1".into(),
        cordoned: false,
        draining: true,
        drain_deadline_ms: Some(1_000),
    });
    let n = &h.state.nodes["n1"];
    assert!(n.cordoned && n.draining && !n.schedulable());
    assert_eq!(n.drain_deadline_ms, Some(1_000));
    assert_eq!(h.state.allocs["web-0-n1"].desired, DesiredStatus::Run);
    // Not empty yet: a drain cannot finish.
    assert!(matches!(
        h.apply(Command::FinishDrain { node: "n1".into() }),
        Outcome::Refused(Refusal::NodeNotDrained { .. })
    ));
    let out = h.apply(Command::MigrateAllocs {
        node: "n1".into(),
        alloc_ids: vec!["web-0-n1".into()],
        reason: "node n1 draining".into(),
    });
    assert_eq!(out, Outcome::AllocsMigrated { moved: 1 });
    let a = &h.state.allocs["web-0-n1"];
    assert_eq!(
        (a.desired, a.message.as_str()),
        (DesiredStatus::Stop, "node n1 draining")
    );
    assert_eq!(
        h.state.latest_eval("web").map(|e| e.status),
        Some(EvalStatus::Pending)
    );
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "web-0-n1".into(),
            status: AllocStatus::Complete,
            exit_code: Some(0),
            message: String::new(),
            ..Default::default()
        }],
    });
    h.apply(Command::FinishDrain { node: "n1".into() });
    let n = &h.state.nodes["n1"];
    assert!(n.drained && n.cordoned && !n.draining);
    assert_eq!(n.status_text(), "ready,drained");
    // Only a draining node's allocations can be moved this way.
    assert!(matches!(
        h.apply(Command::MigrateAllocs {
            node: "n1".into(),
            alloc_ids: vec![],
            reason: String::new(),
        }),
        Outcome::Refused(Refusal::NodeNotDraining { .. })
    ));
    h.apply(Command::SetNodeEligibility {
        name: "n1".into(),
        cordoned: false,
        draining: false,
        drain_deadline_ms: None,
    });
    assert!(h.state.nodes["n1"].schedulable() && !h.state.nodes["n1"].drained);
    assert!(matches!(
        h.apply(Command::SetNodeEligibility {
            name: "nope".into(),
            cordoned: true,
            draining: false,
            drain_deadline_ms: None,
        }),
        Outcome::Refused(r) if r.is_not_found()
    ));
}

#[test]
fn uncordoning_a_node_unblocks_waiting_work() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::SetNodeEligibility {
        name: "n1".into(),
        cordoned: true,
        draining: false,
        drain_deadline_ms: None,
    });
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    let r = applied(h.apply(h.plan("web", &[], 1)));
    assert_eq!(r.eval_status, Some(EvalStatus::Blocked));
    h.apply(Command::SetNodeEligibility {
        name: "n1".into(),
        cordoned: false,
        draining: false,
        drain_deadline_ms: None,
    });
    assert_eq!(
        h.state.latest_eval("web").map(|e| e.status),
        Some(EvalStatus::Pending)
    );
}

#[test]
fn changing_constraints_makes_a_new_version_but_priority_does_not() {
    let mut h = Harness::new();
    let base = "name: web\nreplicas: 1\ntask: {image: 'oci:/i'}";
    h.apply(Command::UpsertJob {
        spec: job_spec(base),
    });
    let version = |h: &Harness| h.state.jobs["web"].version;
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!(
            "{base}\npriority: 90\naffinities: [{{label: z, op: exists, weight: 5}}]"
        )),
    });
    assert_eq!(version(&h), 1);
    h.apply(Command::UpsertJob {
        spec: job_spec(&format!(
            "{base}\npriority: 90\nconstraints: [{{label: z, op: exists}}]"
        )),
    });
    assert_eq!(version(&h), 2);
}

#[test]
fn a_job_with_nothing_to_run_needs_no_evaluation_until_it_does() {
    let mut h = Harness::new();
    h.apply(Command::UpsertJob {
        spec: spec("idle", 0, "64Mi"),
    });
    assert!(h.state.latest_eval("idle").is_none(), "nothing to schedule");
    h.apply(Command::UpsertJob {
        spec: spec("idle", 2, "64Mi"),
    });
    assert_eq!(
        h.state.latest_eval("idle").unwrap().status,
        EvalStatus::Pending
    );
}

#[test]
fn a_node_going_down_loses_its_allocations_and_queues_their_replacement() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(reg("n2", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1"), (1, "n2")], 0));
    let out = h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: NodeStatus::Down,
        reason: "no heartbeat for 6s".into(),
    });
    assert_eq!(out, Outcome::NodeStatusSet { lost: 1 });
    let a = &h.state.allocs["web-0-n1"];
    assert_eq!(
        (a.status, a.desired),
        (AllocStatus::Lost, DesiredStatus::Run),
        "lost, and still wanted should the node come back with it"
    );
    assert_eq!(a.message, "node n1 is down: no heartbeat for 6s");
    assert!(
        !h.state.allocs["web-1-n2"].status.is_terminal(),
        "other nodes are untouched"
    );
    assert_eq!(
        h.state.latest_eval("web").unwrap().status,
        EvalStatus::Pending
    );
    assert!(!h.state.nodes["n1"].schedulable());
    // A report while the node is still down changes nothing.
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "web-0-n1".into(),
            status: AllocStatus::Running,
            exit_code: None,
            message: String::new(),
            ..Default::default()
        }],
    });
    assert_eq!(h.state.allocs["web-0-n1"].status, AllocStatus::Lost);
    // Coming back makes the node schedulable again; twice is a no-op.
    h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: NodeStatus::Ready,
        reason: String::new(),
    });
    assert!(h.state.nodes["n1"].schedulable());
    let again = h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: NodeStatus::Ready,
        reason: String::new(),
    });
    assert_eq!(again, Outcome::NodeStatusSet { lost: 0 });
}

#[test]
fn a_change_while_the_scheduler_ran_makes_its_evaluation_run_again() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 2, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1"), (1, "n1")], 0));
    let fail = |h: &mut Harness, replica: u32| {
        h.apply(Command::UpdateAllocStatus {
            at_ms: 0,
            node: "n1".into(),
            updates: vec![AllocUpdate {
                alloc_id: format!("web-{replica}-n1"),
                status: AllocStatus::Failed,
                exit_code: Some(1),
                ..AllocUpdate::default()
            }],
        })
    };
    fail(&mut h, 0);
    let eval = h.pending_eval("web");
    // The scheduler plans from this snapshot; meanwhile replica 1 fails.
    let plan = h.plan("web", &[], 0);
    fail(&mut h, 1);
    assert_eq!(h.pending_eval("web"), eval, "still one evaluation");
    let Outcome::PlanApplied(r) = h.apply(plan) else {
        panic!()
    };
    assert_eq!(
        r.eval_status,
        Some(EvalStatus::Pending),
        "the plan did not see replica 1 fail, so the evaluation runs again"
    );
    let Outcome::PlanApplied(r) = h.apply(h.plan("web", &[], 0)) else {
        panic!()
    };
    assert_eq!(r.eval_status, Some(EvalStatus::Complete));
}

#[test]
fn jobs_queued_by_one_entry_get_an_evaluation_each() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    for name in ["a", "b", "c"] {
        h.apply(Command::UpsertJob {
            spec: spec(name, 1, "64Mi"),
        });
        h.apply(h.plan(name, &[(0, "n1")], 0));
    }
    h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: skiff_model::NodeStatus::Down,
        reason: "missed heartbeats".into(),
    });
    let pending: BTreeSet<(String, String)> = h
        .state
        .evals
        .values()
        .filter(|e| e.status == EvalStatus::Pending)
        .map(|e| (e.job.clone(), e.id.clone()))
        .collect();
    let jobs: Vec<&str> = pending.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(jobs, ["a", "b", "c"], "{pending:?}");
    for name in ["a", "b", "c"] {
        let ids = &h.state.evals_by_job[name];
        assert!(
            ids.iter().all(|id| h.state.evals[id].job == name),
            "{name}: {ids:?}"
        );
    }
}

#[test]
fn an_entry_that_breaks_a_rule_changes_nothing_but_the_index_whoever_proposed_it() {
    // What a forged MsgPropose (or an older server) could put in the log:
    // a spec the API would have refused, and a node name that is a path.
    let mut s = State::default();
    let mut bad = spec("web", 1, "64Mi");
    bad.task.security.cap_add = vec!["NOT A CAPABILITY".into()];
    let out = s.apply(1, &Command::UpsertJob { spec: bad.clone() });
    match out {
        Outcome::Refused(r) => {
            assert!(r.is_invalid(), "{r}");
            assert!(r.to_string().contains("cap_add"), "{r}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let out = s.apply_owned(2, Command::UpsertJob { spec: bad }, true);
    assert!(matches!(out, Outcome::Refused(Refusal::Invalid { .. })));
    let out = s.apply(3, &reg("../../etc", 1000, 1024));
    assert!(matches!(out, Outcome::Refused(Refusal::Invalid { .. })));
    assert!(s.jobs.is_empty() && s.nodes.is_empty());
    assert_eq!(s.index, 3);
    // The same commands with good values apply.
    assert!(!matches!(
        s.apply(
            4,
            &Command::UpsertJob {
                spec: spec("web", 1, "64Mi")
            }
        ),
        Outcome::Refused(_)
    ));
    assert!(!matches!(
        s.apply(5, &reg("n1", 1000, 1024)),
        Outcome::Refused(_)
    ));
}

#[test]
fn a_snapshot_or_saved_state_with_an_allocation_id_that_names_a_path_is_refused() {
    let mut h = Harness::new();
    h.apply(reg("n1", 1000, 1024));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    assert_eq!(h.state.check_loaded(), Ok(()));
    let mut forged = h.state.allocs.values().next().unwrap().clone();
    forged.id = "../../../victim".into();
    let mut bad = h.state.clone();
    bad.allocs.insert(forged.id.clone(), forged.clone());
    let (key, why) = bad.check_loaded().unwrap_err();
    assert_eq!(
        (key.as_str(), why.as_str()),
        ("../../../victim", "not an allocation id")
    );
    // Filed under a good key but carrying a forged id.
    let mut bad = h.state.clone();
    bad.allocs
        .insert("0123456789abcdef0123456789abcdef".into(), forged);
    assert!(bad
        .check_loaded()
        .unwrap_err()
        .1
        .contains("filed under another id"));
    // The snapshot a leader sends is decoded through the same check.
    let mut snap = raft::prelude::Snapshot::default();
    snap.set_data(serde_json::to_vec(&bad).unwrap().into());
    snap.mut_metadata().index = 7;
    let e = crate::driver::decode_state(&snap).unwrap_err().to_string();
    assert!(e.contains("filed under another id"), "{e}");
}

#[test]
fn a_node_that_comes_back_keeps_what_still_runs_unless_a_replacement_already_serves() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(reg("n2", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 3, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1"), (1, "n1"), (2, "n1")], 0));
    let report =
        |h: &mut Harness, node: &str, id: &str, status: AllocStatus, healthy: Option<bool>| {
            h.apply(Command::UpdateAllocStatus {
                at_ms: 1,
                node: node.into(),
                updates: vec![AllocUpdate {
                    alloc_id: id.into(),
                    status,
                    healthy,
                    ..Default::default()
                }],
            })
        };
    for r in 0..3 {
        report(
            &mut h,
            "n1",
            &format!("web-{r}-n1"),
            AllocStatus::Running,
            Some(true),
        );
    }
    // Its first rollout is done.
    let d = h.state.deployment("web").unwrap().clone();
    h.apply(Command::UpdateDeployment {
        update: crate::command::DeploymentUpdate {
            job: "web".into(),
            deployment_id: d.id,
            at_ms: 5_000,
            healthy: (0..3).map(|r| format!("web-{r}-n1")).collect(),
            unhealthy: vec![],
            progress: true,
            fail: None,
            reason: None,
        },
    });
    assert!(!h.state.deployment("web").unwrap().status.is_active());
    h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: NodeStatus::Down,
        reason: "no heartbeat for 6s".into(),
    });
    // Replacements on n2; replica 1's is already serving.
    h.apply(h.plan("web", &[(0, "n2"), (1, "n2"), (2, "n2")], 0));
    report(&mut h, "n2", "web-1-n2", AllocStatus::Running, Some(true));
    // n1 is back: it still runs replicas 0 and 1; replica 2 had exited.
    h.apply(Command::SetNodeStatus {
        name: "n1".into(),
        status: NodeStatus::Ready,
        reason: String::new(),
    });
    report(&mut h, "n1", "web-0-n1", AllocStatus::Running, Some(true));
    report(&mut h, "n1", "web-1-n1", AllocStatus::Running, Some(true));
    report(&mut h, "n1", "web-2-n1", AllocStatus::Failed, None);
    let at = |id: &str| {
        let a = &h.state.allocs[id];
        (a.status, a.desired, a.message.clone())
    };
    let (status, desired, message) = at("web-0-n1");
    assert_eq!(
        (status, desired),
        (AllocStatus::Running, DesiredStatus::Run),
        "{message}"
    );
    assert!(
        message.contains("came back while it still ran; kept"),
        "{message}"
    );
    let (_, desired, message) = at("web-0-n2");
    assert_eq!(desired, DesiredStatus::Stop, "the replacement is stopped");
    assert!(message.contains("kept running on node n1"), "{message}");
    let (status, desired, message) = at("web-1-n1");
    assert_eq!((status, desired), (AllocStatus::Lost, DesiredStatus::Stop));
    assert!(message.contains("a replacement already runs"), "{message}");
    assert_eq!(at("web-1-n2").1, DesiredStatus::Run);
    let (status, desired, message) = at("web-2-n1");
    assert_eq!((status, desired), (AllocStatus::Lost, DesiredStatus::Stop));
    assert!(message.contains("no longer running"), "{message}");
    assert_eq!(at("web-2-n2").1, DesiredStatus::Run);
    // Three replicas count, one per slot.
    let live: Vec<u32> = {
        let mut v: Vec<u32> = h
            .state
            .allocs
            .values()
            .filter(|a| a.is_live())
            .map(|a| a.replica)
            .collect();
        v.sort();
        v
    };
    assert_eq!(live, [0, 1, 2]);
}

#[test]
fn a_removed_node_s_lost_allocations_are_stopped_for_good() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    h.apply(Command::RemoveNode { name: "n1".into() });
    let a = &h.state.allocs["web-0-n1"];
    assert_eq!(
        (a.status, a.desired),
        (AllocStatus::Lost, DesiredStatus::Stop)
    );
}

#[test]
fn collecting_drops_finished_allocations_but_keeps_the_newest_of_each_slot_of_a_live_job() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    h.apply(h.plan("web", &[(0, "n1")], 0));
    let first = "web-0-n1".to_string();
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: first.clone(),
            status: AllocStatus::Failed,
            ..Default::default()
        }],
    });
    // Only finished, and the newest of its slot: kept.
    let out = h.apply(Command::CollectAllocs {
        alloc_ids: vec![first.clone(), "no-such".into()],
    });
    assert_eq!(out, Outcome::AllocsCollected { removed: 0 });
    // A newer allocation of the slot: the old one may go; a live one never.
    let mut newer = h.state.allocs[&first].clone();
    newer.id = "0123456789abcdef0123456789abcdef".into();
    newer.status = AllocStatus::Running;
    newer.create_index = h.state.index + 1;
    h.state.insert_alloc(newer.clone());
    let out = h.apply(Command::CollectAllocs {
        alloc_ids: vec![first.clone(), newer.id.clone()],
    });
    assert_eq!(out, Outcome::AllocsCollected { removed: 1 });
    assert!(!h.state.allocs.contains_key(&first));
    assert!(h.state.allocs.contains_key(&newer.id));
    // A deleted job's finished allocations all go.
    h.state.allocs.get_mut(&newer.id).unwrap().status = AllocStatus::Complete;
    h.apply(Command::DeleteJob { name: "web".into() });
    let out = h.apply(Command::CollectAllocs {
        alloc_ids: vec![newer.id.clone()],
    });
    assert_eq!(out, Outcome::AllocsCollected { removed: 1 });
    assert!(h.state.allocs.is_empty());
    // Nothing of it is left, so neither is its change mark.
    assert_eq!(h.state.job_changed_at("web"), 0);
}

#[test]
fn a_nodes_subnet_is_kept_and_never_overlaps_another_nodes() {
    let with_subnet = |name: &str, subnet: &str| {
        let Command::RegisterNode { mut registration } = reg(name, 1000, 1024) else {
            unreachable!()
        };
        registration.subnet = subnet.into();
        Command::RegisterNode { registration }
    };
    let mut s = State::default();
    assert_eq!(
        s.apply(1, &with_subnet("a", "10.88.0.0/24")),
        Outcome::NodeRegistered
    );
    // Registering again without one keeps it.
    s.apply(2, &with_subnet("a", ""));
    assert_eq!(s.nodes["a"].subnet, "10.88.0.0/24");
    // Another node may not take an overlapping one; the refusal names both.
    let Outcome::Refused(why) = s.apply(3, &with_subnet("b", "10.88.0.0/16")) else {
        panic!("an overlapping subnet was taken")
    };
    assert!(
        why.to_string().contains("10.88.0.0/16") && why.to_string().contains("\"a\""),
        "{why}"
    );
    assert!(!s.nodes.contains_key("b"));
    assert_eq!(
        s.apply(4, &with_subnet("b", "10.88.1.0/24")),
        Outcome::NodeRegistered
    );
    // A subnet that is not one is refused by the command's rules.
    let Outcome::Refused(why) = s.apply(5, &with_subnet("c", "10.88.2.1/24")) else {
        panic!("a bad subnet was taken")
    };
    assert!(why.to_string().contains("subnet:"), "{why}");
}

#[test]
fn marks_say_which_nodes_and_views_an_entry_changed() {
    let mut h = Harness::new();
    h.apply(reg("n1", 4000, 4096));
    h.apply(reg("n2", 4000, 4096));
    let joined = h.state.index;
    assert_eq!(h.state.nodes_changed_at(), joined);
    h.apply(Command::UpsertJob {
        spec: spec("web", 1, "64Mi"),
    });
    let plan = h.plan("web", &[(0, "n1")], 0);
    h.apply(plan);
    let placed = h.state.index;
    assert_eq!(h.state.allocs_changed_on("n1"), placed);
    assert_eq!(h.state.allocs_changed_on("n2"), 0, "nothing of n2's");
    assert_eq!(h.state.nodes_changed_at(), joined);
    assert_eq!(h.state.job_changed_at("web"), placed);
    h.apply(Command::UpsertJob {
        spec: spec("other", 1, "64Mi"),
    });
    assert_eq!(h.state.job_changed_at("web"), placed, "another job's entry");
    let id = h.state.allocs.keys().next().unwrap().clone();
    // Running without an address: n1's watch wakes, the network view does
    // not change.
    let network = h.state.network_changed_at();
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: id.clone(),
            status: AllocStatus::Running,
            ..AllocUpdate::default()
        }],
    });
    assert_eq!(h.state.allocs_changed_on("n1"), h.state.index);
    assert_eq!(
        h.state.job_changed_at("web"),
        h.state.index,
        "its allocation"
    );
    assert_eq!(h.state.network_changed_at(), network);
    // With an address, it does.
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: id.clone(),
            status: AllocStatus::Running,
            address: "10.88.0.5".into(),
            healthy: Some(true),
            ..AllocUpdate::default()
        }],
    });
    assert_eq!(h.state.network_changed_at(), h.state.index);
    assert_eq!(h.state.allocs_changed_on("n2"), 0);
    // A loaded state knows nothing before its index: everything is new to
    // a watcher that has seen less.
    let at = h.state.index;
    h.state.rebuild_indexes();
    assert_eq!(h.state.allocs_changed_on("n2"), at);
    assert_eq!(h.state.access_changed_at(), at);
}
