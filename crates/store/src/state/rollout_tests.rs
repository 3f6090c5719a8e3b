//! Versions, rollouts, scaling, batch slots and gang ranks in the state
//! machine.

use super::tests::{job_spec, reg, Harness};
use super::*;
use crate::command::{AllocUpdate, DeploymentUpdate, NewAlloc, PlanCommand, RolloutAction};
use skiff_model::{AllocStatus, DeploymentStatus, DesiredStatus, JobSpec, Placement};

fn web(image: &str, replicas: u32) -> JobSpec {
    job_spec(&format!(
        "name: web\nreplicas: {replicas}\ntask: {{image: 'oci:/{image}', resources: {{cpu: 100m, memory: 16Mi}}}}"
    ))
}

impl Harness {
    /// Commits a plan placing `replicas` of the job's current version on
    /// `node`, with ids `PREFIX-REPLICA`.
    fn place(&mut self, job: &str, prefix: &str, replicas: &[u32], node: &str) -> Vec<String> {
        let j = &self.state.jobs[job];
        let ids: Vec<String> = replicas.iter().map(|r| format!("{prefix}-{r}")).collect();
        let cmd = Command::ApplyPlan {
            plan: PlanCommand {
                eval_id: self.pending_eval(job),
                job: job.into(),
                job_version: j.version,
                job_modify_index: j.modify_index,
                snapshot_index: self.state.index,
                placements: replicas
                    .iter()
                    .zip(&ids)
                    .map(|(r, id)| NewAlloc {
                        id: id.clone(),
                        placement: Placement {
                            replica: *r,
                            node: node.into(),
                            gpus: vec![],
                            ports: vec![],
                        },
                    })
                    .collect(),
                stops: vec![],
                evictions: vec![],
                unplaced: 0,
                explanation: String::new(),
                admit: false,
                reclaims: Vec::new(),
                at_ms: 1_000,
            },
        };
        match self.apply(cmd) {
            Outcome::PlanApplied(r) => assert_eq!(r.placed as usize, ids.len(), "{r:?}"),
            other => panic!("{other:?}"),
        }
        ids
    }

    /// The agent on `node` reports the allocations running and ready.
    fn healthy(&mut self, node: &str, ids: &[String], at_ms: u64) {
        self.report(node, ids, AllocStatus::Running, Some(true), 0, "", at_ms);
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        node: &str,
        ids: &[String],
        status: AllocStatus,
        healthy: Option<bool>,
        restarts: u32,
        reason: &str,
        at_ms: u64,
    ) {
        let updates = ids
            .iter()
            .map(|id| AllocUpdate {
                alloc_id: id.clone(),
                status,
                healthy,
                restart_count: restarts,
                reason: reason.into(),
                exit_code: status.is_terminal().then_some(0),
                ..AllocUpdate::default()
            })
            .collect();
        self.apply(Command::UpdateAllocStatus {
            node: node.into(),
            updates,
            at_ms,
        });
    }

    fn deployment(&self) -> &Deployment {
        self.state.deployment("web").unwrap()
    }

    fn decide(&mut self, healthy: &[String], unhealthy: &[String], fail: Option<&str>) -> Outcome {
        let d = self.deployment().clone();
        self.apply(Command::UpdateDeployment {
            update: DeploymentUpdate {
                job: "web".into(),
                deployment_id: d.id,
                at_ms: 5_000,
                healthy: healthy.to_vec(),
                unhealthy: unhealthy.to_vec(),
                progress: !healthy.is_empty(),
                fail: fail.map(String::from),
                reason: None,
            },
        })
    }

    /// Marks allocations stopped and finished, as a plan and the agent would.
    fn stop_and_finish(&mut self, node: &str, ids: &[String]) {
        for id in ids {
            let a = self.state.allocs.get_mut(id).unwrap();
            a.desired = DesiredStatus::Stop;
        }
        self.report(node, ids, AllocStatus::Complete, None, 0, "stopped", 9_000);
    }
}

/// web v1 with two healthy allocations whose rollout succeeded.
fn stable_v1() -> (Harness, Vec<String>) {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    h.apply(Command::UpsertJob { spec: web("a", 2) });
    let v1 = h.place("web", "v1", &[0, 1], "n1");
    h.healthy("n1", &v1, 2_000);
    h.decide(&v1, &[], None);
    assert_eq!(h.deployment().status, DeploymentStatus::Successful);
    (h, v1)
}

#[test]
fn a_rollout_succeeds_once_every_replica_proved_healthy_and_its_version_becomes_stable() {
    let (h, v1) = stable_v1();
    let d = h.deployment();
    assert_eq!((d.version, d.from_version, d.canary), (1, 0, 0));
    assert_eq!(d.reason, "2 of 2 replicas healthy");
    assert!(h.state.histories["web"].get(1).unwrap().stable);
    for id in &v1 {
        assert_eq!(h.state.allocs[id].deploy_health, Some(true));
        assert_eq!(h.state.allocs[id].healthy_since_ms, 2_000);
        assert_eq!(h.state.allocs[id].create_time_ms, 1_000);
    }
}

/// Whether the last entry asked the scheduler to look at web (a new
/// evaluation, or the pending one told to look again).
fn asked(h: &Harness) -> bool {
    h.state
        .evals
        .values()
        .any(|e| e.job == "web" && e.modify_index == h.state.index)
}

#[test]
fn a_verdict_asks_the_scheduler_only_when_the_rollout_may_place_or_stop() {
    // A new job whose replicas are all placed, of one version: its
    // verdicts and its success give the scheduler nothing to do.
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    h.apply(Command::UpsertJob { spec: web("a", 2) });
    let v1 = h.place("web", "v1", &[0, 1], "n1");
    h.healthy("n1", &v1, 2_000);
    h.decide(&v1[..1], &[], None);
    assert!(!asked(&h), "a verdict, all placed: {:?}", h.state.evals);
    h.decide(&v1[1..], &[], None);
    assert_eq!(h.deployment().status, DeploymentStatus::Successful);
    assert!(!asked(&h), "success, all placed");
    // A rolling update with the old version still running: a verdict
    // may let the next replica be replaced, so it asks.
    h.apply(Command::UpsertJob { spec: web("b", 2) });
    let v2 = h.place("web", "v2", &[0], "n1");
    h.healthy("n1", &v2, 6_000);
    h.decide(&v2, &[], None);
    assert!(asked(&h), "old replicas left");
    // A failed verdict always asks (a rollback follows).
    h.decide(&[], &[], Some("crashed"));
    assert!(asked(&h), "failed");
}

#[test]
fn a_new_task_starts_a_new_rollout_and_the_same_task_again_returns_to_its_version() {
    let (mut h, _) = stable_v1();
    h.apply(Command::UpsertJob { spec: web("b", 2) });
    assert_eq!(h.state.jobs["web"].version, 2);
    let d = h.deployment();
    assert_eq!(
        (d.version, d.from_version, d.status),
        (2, 1, DeploymentStatus::Running)
    );
    // Scaling keeps the version and the rollout.
    h.apply(Command::UpsertJob { spec: web("b", 3) });
    assert_eq!(h.state.jobs["web"].version, 2);
    assert_eq!(h.deployment().version, 2);
    // The first task again is version 1 again, not a third version.
    h.apply(Command::UpsertJob { spec: web("a", 3) });
    assert_eq!(h.state.jobs["web"].version, 1);
    let d = h.deployment();
    assert_eq!((d.version, d.from_version), (1, 2));
    h.apply(Command::UpsertJob { spec: web("c", 3) });
    assert_eq!(h.state.jobs["web"].version, 3);
    let hist = &h.state.histories["web"];
    let order: Vec<u64> = hist.versions.iter().map(|v| v.version).collect();
    assert_eq!(order, [2, 1, 3], "newest last");
    assert_eq!(hist.get(1).unwrap().spec.replicas, 3);
}

#[test]
fn the_history_keeps_versions_kept_versions_and_always_the_current_one() {
    let mut h = Harness::new();
    for (i, image) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut s = web(image, 1);
        s.versions_kept = 2;
        h.apply(Command::UpsertJob { spec: s });
        assert_eq!(h.state.jobs["web"].version, i as u64 + 1);
    }
    let kept: Vec<u64> = h.state.histories["web"]
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, [3, 4]);
    // Deleting the job forgets its history and rollout.
    h.apply(Command::DeleteJob { name: "web".into() });
    assert!(!h.state.histories.contains_key("web"));
    assert!(!h.state.deployments.contains_key("web"));
}

#[test]
fn canaries_are_asked_for_only_beside_another_version() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    let mut s = web("a", 2);
    s.update.canary = 1;
    h.apply(Command::UpsertJob { spec: s.clone() });
    assert_eq!(
        h.deployment().canary,
        0,
        "a new job has nothing to compare with"
    );
    h.place("web", "v1", &[0, 1], "n1");
    s.task.image.path = "/b".into();
    h.apply(Command::UpsertJob { spec: s });
    assert_eq!(h.deployment().canary, 1);
    assert!(h.deployment().awaiting_promotion());
    let out = h.apply(Command::ControlRollout {
        job: "web".into(),
        action: RolloutAction::Promote,
        at_ms: 7_000,
    });
    let Outcome::Rollout {
        deployment: Some(d),
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert!(d.promoted);
    assert_eq!(d.progress_ms, 7_000);
    let again = h.apply(Command::ControlRollout {
        job: "web".into(),
        action: RolloutAction::Promote,
        at_ms: 8_000,
    });
    assert!(
        matches!(
            &again,
            Outcome::Refused(Refusal::NoCanariesWaiting { version: 2 })
        ),
        "{again:?}"
    );
}

#[test]
fn a_failed_rollout_rolls_back_to_the_last_stable_version() {
    let (mut h, v1) = stable_v1();
    h.apply(Command::UpsertJob {
        spec: web("bad", 2),
    });
    let v2 = h.place("web", "v2", &[0], "n1");
    h.report(
        "n1",
        &v2,
        AllocStatus::Running,
        Some(false),
        0,
        "back_off",
        3_000,
    );
    assert_eq!(
        h.state.latest_eval("web").unwrap().status,
        EvalStatus::Pending,
        "a rollout re-plans when what runs changes health"
    );
    h.decide(&[], &v2, Some("allocation v2-0 crashed"));
    let job = &h.state.jobs["web"];
    assert_eq!(job.version, 1, "back on version 1");
    assert_eq!(job.spec.task.image.path, "/a");
    let d = h.deployment();
    assert_eq!((d.version, d.from_version), (1, 2));
    assert!(d.rollback);
    assert_eq!(d.status, DeploymentStatus::Running);
    assert_eq!(h.state.allocs[&v2[0]].deploy_health, Some(false));
    // The rollback's allocations are those of version 1, already proved:
    // once version 2's allocation is gone the rollback has succeeded.
    h.stop_and_finish("n1", &v2);
    h.decide(&[], &[], None);
    assert_eq!(h.deployment().status, DeploymentStatus::Successful);
    for id in &v1 {
        assert!(h.state.allocs[id].is_live());
    }
}

#[test]
fn the_failed_rollout_keeps_its_reason_after_the_rollback() {
    let (mut h, _) = stable_v1();
    h.apply(Command::UpsertJob {
        spec: web("bad", 2),
    });
    let v2 = h.place("web", "v2", &[0], "n1");
    h.decide(&[], &v2, Some("allocation v2-0 crashed"));
    let list = &h.state.deployments["web"];
    let statuses: Vec<(u64, DeploymentStatus)> =
        list.iter().map(|d| (d.version, d.status)).collect();
    assert_eq!(
        statuses,
        [
            (1, DeploymentStatus::Successful),
            (2, DeploymentStatus::RolledBack),
            (1, DeploymentStatus::Running)
        ]
    );
    assert_eq!(
        list[1].reason,
        "allocation v2-0 crashed; rolled back to version 1"
    );
    assert_eq!(list[1].ended_ms, 5_000);
    // Undo with no other stable version goes back to the version before,
    // as `kubectl rollout undo` does.
    let out = h.apply(Command::UndoRollout {
        job: "web".into(),
        to_version: None,
        at_ms: 9_000,
    });
    assert!(
        matches!(out, Outcome::Rollout { ref job, .. } if job.version == 2),
        "{out:?}"
    );
}

#[test]
fn without_a_stable_version_a_failed_rollout_just_fails_and_says_why() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    h.apply(Command::UpsertJob {
        spec: web("bad", 1),
    });
    let v1 = h.place("web", "v1", &[0], "n1");
    h.decide(&[], &v1, Some("allocation v1-0 crashed"));
    let d = h.deployment();
    assert_eq!(d.status, DeploymentStatus::Failed);
    assert!(
        d.reason
            .starts_with("allocation v1-0 crashed; no earlier version rolled out successfully"),
        "{}",
        d.reason
    );
    let mut s = web("worse", 1);
    s.update.auto_rollback = false;
    h.apply(Command::UpsertJob { spec: s });
    let v2 = h.place("web", "v2", &[0], "n1");
    h.decide(&[], &v2, Some("allocation v2-0 crashed"));
    assert_eq!(h.deployment().status, DeploymentStatus::Failed);
    assert!(h.deployment().reason.ends_with("auto_rollback is off"));
    assert_eq!(h.state.jobs["web"].version, 2);
}

#[test]
fn undo_returns_to_the_last_stable_version_or_the_one_named() {
    let (mut h, v1) = stable_v1();
    h.apply(Command::UpsertJob { spec: web("b", 2) });
    let out = h.apply(Command::UndoRollout {
        job: "web".into(),
        to_version: Some(7),
        at_ms: 9_000,
    });
    assert!(
        matches!(&out, Outcome::Refused(Refusal::VersionNotKept { version: 7, kept, .. }) if kept == &[1, 2]),
        "{out:?}"
    );
    let out = h.apply(Command::UndoRollout {
        job: "web".into(),
        to_version: None,
        at_ms: 9_000,
    });
    let Outcome::Rollout { job, deployment } = out else {
        panic!("{out:?}")
    };
    assert_eq!(job.version, 1);
    let d = deployment.unwrap();
    assert!(d.rollback && d.status == DeploymentStatus::Running);
    // The allocations of version 1 are the rollback's: nothing to replace.
    h.decide(&[], &[], None);
    assert_eq!(h.deployment().status, DeploymentStatus::Successful);
    assert!(v1.iter().all(|id| h.state.allocs[id].is_live()));
    let out = h.apply(Command::UndoRollout {
        job: "web".into(),
        to_version: Some(2),
        at_ms: 9_500,
    });
    assert!(
        matches!(out, Outcome::Rollout { ref job, .. } if job.version == 2),
        "{out:?}"
    );
}

#[test]
fn pause_and_resume_freeze_and_restart_the_progress_clock() {
    let (mut h, _) = stable_v1();
    h.apply(Command::UpsertJob { spec: web("b", 2) });
    let act = |h: &mut Harness, action| {
        h.apply(Command::ControlRollout {
            job: "web".into(),
            action,
            at_ms: 12_000,
        })
    };
    act(&mut h, RolloutAction::Pause);
    assert_eq!(h.deployment().status, DeploymentStatus::Paused);
    act(&mut h, RolloutAction::Resume);
    assert_eq!(h.deployment().status, DeploymentStatus::Running);
    assert_eq!(h.deployment().progress_ms, 12_000);
    h.decide(&[], &[], Some("no progress"));
    let out = act(&mut h, RolloutAction::Resume);
    assert!(
        matches!(out, Outcome::Rollout { .. }),
        "resuming a running rollout is a no-op: {out:?}"
    );
}

#[test]
fn scaling_keeps_the_version_and_batch_jobs_are_refused() {
    let (mut h, _) = stable_v1();
    let out = h.apply(Command::ScaleJob {
        name: "web".into(),
        replicas: 5,
    });
    let Outcome::Rollout { job, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!((job.version, job.spec.replicas), (1, 5));
    assert_eq!(
        h.state.latest_eval("web").unwrap().status,
        EvalStatus::Pending
    );
    h.apply(Command::UpsertJob {
        spec: job_spec("name: b\ntype: batch\ntask: {image: 'oci:/i'}"),
    });
    let out = h.apply(Command::ScaleJob {
        name: "b".into(),
        replicas: 2,
    });
    assert!(
        matches!(&out, Outcome::Refused(Refusal::BatchNotScalable { .. })),
        "{out:?}"
    );
    let out = h.apply(Command::ScaleJob {
        name: "nope".into(),
        replicas: 2,
    });
    assert!(
        matches!(&out, Outcome::Refused(r) if r.is_not_found()),
        "{out:?}"
    );
}

#[test]
fn a_batch_slot_whose_run_failed_takes_a_new_allocation_but_a_succeeded_one_does_not() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    h.apply(Command::UpsertJob {
        spec: job_spec(
            "name: b\ntype: batch\ncompletions: 2\nparallelism: 2\ntask: {image: 'oci:/i', restart: {policy: never}, resources: {cpu: 100m, memory: 16Mi}}",
        ),
    });
    assert!(
        !h.state.deployments.contains_key("b"),
        "batch jobs have no rollout"
    );
    let first = h.place("b", "r1", &[0, 1], "n1");
    h.report(
        "n1",
        &first[..1],
        AllocStatus::Failed,
        None,
        0,
        "error",
        2_000,
    );
    h.report(
        "n1",
        &first[1..],
        AllocStatus::Complete,
        None,
        0,
        "completed",
        2_000,
    );
    // Both reports ask for an evaluation (a batch job reacts to ends).
    let again = h.place("b", "r2", &[0], "n1");
    assert_eq!(again.len(), 1);
    let j = &h.state.jobs["b"];
    let cmd = Command::ApplyPlan {
        plan: PlanCommand {
            eval_id: "none".into(),
            job: "b".into(),
            job_version: j.version,
            job_modify_index: j.modify_index,
            snapshot_index: h.state.index,
            placements: vec![],
            stops: vec![],
            evictions: vec![],
            unplaced: 0,
            explanation: String::new(),
            admit: false,
            reclaims: Vec::new(),
            at_ms: 0,
        },
    };
    assert!(matches!(h.apply(cmd), Outcome::Refused(_)));
}

#[test]
fn a_gang_learns_its_ranks_and_the_address_of_rank_zeros_node() {
    gang_learns_rank_zero("", "10.1.2.3");
    // On a bridge: rank 0's DNS name (its address comes once it runs).
    gang_learns_rank_zero(", network: bridge", "g-0.train.default.skiff");
}

fn gang_learns_rank_zero(network: &str, master_addr: &str) {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 8192));
    let Command::RegisterNode { mut registration } = reg("n2", 8000, 8192) else {
        unreachable!()
    };
    registration.address = "10.1.2.3:7702".into();
    h.apply(Command::RegisterNode { registration });
    h.apply(Command::UpsertJob {
        spec: job_spec(
            &format!("name: train\ntype: batch\ngang: true\nreplicas: 3\nmaster_port: 23456\ntask: {{image: 'oci:/i', resources: {{cpu: 100m, memory: 16Mi}}{network}}}"),
        ),
    });
    let j = &h.state.jobs["train"];
    let cmd = Command::ApplyPlan {
        plan: PlanCommand {
            eval_id: h.pending_eval("train"),
            job: "train".into(),
            job_version: j.version,
            job_modify_index: j.modify_index,
            snapshot_index: h.state.index,
            placements: [(0, "n2"), (1, "n1"), (2, "n1")]
                .iter()
                .map(|(r, n)| NewAlloc {
                    id: format!("g-{r}"),
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
            unplaced: 0,
            explanation: String::new(),
            admit: false,
            reclaims: Vec::new(),
            at_ms: 0,
        },
    };
    h.apply(cmd);
    for r in 0..3u32 {
        let g = h.state.allocs[&format!("g-{r}")].gang.clone().unwrap();
        assert_eq!(g.rank, r);
        assert_eq!(g.world_size, 3);
        assert_eq!(g.master_addr, master_addr);
        assert_eq!(g.master_port, 23456);
    }
}

#[test]
fn a_batch_job_never_returns_to_an_old_version_and_a_gang_keeps_its_size() {
    let mut h = Harness::new();
    let batch = |image: &str| {
        job_spec(&format!(
            "name: b\ntype: batch\ntask: {{image: 'oci:/{image}'}}"
        ))
    };
    for (image, want) in [("one", 1), ("two", 2), ("one", 3)] {
        let out = h.apply(Command::UpsertJob { spec: batch(image) });
        let Outcome::JobUpserted { job, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(job.version, want, "applying {image}");
    }
    let out = h.apply(Command::UndoRollout {
        job: "b".into(),
        to_version: Some(1),
        at_ms: 0,
    });
    assert!(
        matches!(&out, Outcome::Refused(Refusal::BatchNotUndoable { .. })),
        "{out:?}"
    );

    let gang = |replicas: u32| {
        job_spec(&format!(
            "name: g\ntype: batch\ngang: true\nreplicas: {replicas}\ntask: {{image: 'oci:/i'}}"
        ))
    };
    h.apply(Command::UpsertJob { spec: gang(3) });
    let out = h.apply(Command::ScaleJob {
        name: "g".into(),
        replicas: 4,
    });
    assert!(
        matches!(&out, Outcome::Refused(Refusal::GangNotResizable { .. })),
        "{out:?}"
    );
    // Applying another size replaces the gang whole: a new version.
    let Outcome::JobUpserted { job, .. } = h.apply(Command::UpsertJob { spec: gang(4) }) else {
        panic!()
    };
    assert_eq!((job.version, job.spec.replicas), (2, 4));
}

#[test]
fn a_version_rolled_out_again_judges_its_failed_allocations_anew() {
    let (mut h, _) = stable_v1();
    h.apply(Command::UpsertJob {
        spec: web("bad", 2),
    });
    let v2 = h.place("web", "v2", &[0], "n1");
    h.decide(&[], &v2, Some("allocation v2-0 was not healthy"));
    assert_eq!(h.state.jobs["web"].version, 1, "rolled back");
    assert_eq!(h.state.allocs[&v2[0]].deploy_health, Some(false));
    // Before it is stopped, an operator returns to version 2.
    h.apply(Command::UndoRollout {
        job: "web".into(),
        to_version: Some(2),
        at_ms: 5_000,
    });
    assert_eq!(h.state.jobs["web"].version, 2);
    assert_eq!(
        h.state.allocs[&v2[0]].deploy_health, None,
        "its verdict belonged to the earlier rollout"
    );
}
