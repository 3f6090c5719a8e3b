//! Team queues in the state machine: jobs may name only queues that exist
//! and admit their namespace; a plan marked `admit` records the job's
//! admission; evictions across queues pass only as reclaims the plan
//! names, within one cohort, of admitted jobs, which then wait again.
//! Syncs from git, kept in the same access record, are here too.

use super::tests::{job_spec, reg, Harness};
use super::*;
use crate::command::AllocUpdate;
use skiff_model::queue::Queue;
use skiff_model::{AllocStatus, DesiredStatus, Stop};

fn queue(name: &str, cohort: &str, namespaces: &str) -> Command {
    Command::PutQueue {
        queue: Queue::from_yaml(&format!(
            "name: {name}\ncohort: {cohort}\nnamespaces: [{namespaces}]\nnominal: {{cpu: 2}}\n"
        ))
        .unwrap(),
    }
}

fn queued(name: &str, queue: &str, priority: u8) -> Command {
    Command::UpsertJob {
        spec: job_spec(&format!(
            "name: {name}\nqueue: {queue}\npriority: {priority}\ntask: {{image: 'oci:/i', resources: {{cpu: 2, memory: 64Mi}}}}"
        )),
    }
}

/// `job`'s plan placing one replica on n1, marked `admit`, evicting
/// `victims` (allocation ids) and naming `reclaims`.
fn admit(h: &Harness, job: &str, victims: &[&str], reclaims: &[&str]) -> Command {
    admit_to(h, job, &[(0, "n1")], victims, reclaims)
}

/// [`admit`] with `placements` (replica, node) of its own.
fn admit_to(
    h: &Harness,
    job: &str,
    placements: &[(u32, &str)],
    victims: &[&str],
    reclaims: &[&str],
) -> Command {
    let Command::ApplyPlan { mut plan } = h.plan(job, placements, 0) else {
        unreachable!()
    };
    plan.admit = true;
    plan.evictions = victims
        .iter()
        .map(|id| Stop {
            alloc_id: id.to_string(),
            reason: "test".into(),
        })
        .collect();
    plan.reclaims = reclaims.iter().map(|r| r.to_string()).collect();
    Command::ApplyPlan { plan }
}

fn placed(o: Outcome) -> (u32, u32) {
    match o {
        Outcome::PlanApplied(r) => (r.placed, r.evicted),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_job_names_only_a_queue_that_exists_and_admits_its_namespace() {
    let mut h = Harness::new();
    let r = h.apply(queued("a1", "team-a", 50));
    assert!(
        matches!(r, Outcome::Refused(Refusal::QueueMissing { .. })),
        "{r:?}"
    );
    h.apply(queue("team-a", "lab", "lab-only"));
    let Outcome::Refused(r) = h.apply(queued("a1", "team-a", 50)) else {
        panic!("a job of namespace default was let into team-a");
    };
    assert!(
        r.to_string()
            .contains("namespace \"default\" may not submit to queue \"team-a\""),
        "{r}"
    );
    h.apply(queue("team-a", "lab", "'*'"));
    assert!(matches!(
        h.apply(queued("a1", "team-a", 50)),
        Outcome::JobUpserted { .. }
    ));
    let r = h.apply(Command::DeleteQueue {
        name: "team-a".into(),
    });
    assert_eq!(
        r,
        Outcome::Refused(Refusal::QueueInUse {
            name: "team-a".into(),
            jobs: 1,
            named: vec!["a1".into()],
        })
    );
    let Outcome::Refused(why) = &r else {
        panic!("{r:?}")
    };
    assert!(
        why.to_string()
            .contains("queue \"team-a\" is still named by 1 job(s) (a1); delete them"),
        "{why}"
    );
    h.apply(Command::DeleteJob { name: "a1".into() });
    let r = h.apply(Command::DeleteQueue {
        name: "team-a".into(),
    });
    assert_eq!(r, Outcome::AccessChanged);
    assert!(h.state.access.queues.is_empty());
}

#[test]
fn an_admission_is_recorded_and_a_reclaim_clears_the_victims() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    h.apply(queue("other", "elsewhere", "'*'"));
    h.apply(queued("a1", "team-a", 90));
    assert_eq!(placed(h.apply(admit(&h, "a1", &[], &[]))), (1, 0));
    let admitted_at = h.state.jobs["a1"].admitted_index;
    assert!(admitted_at > 0);
    let victim = "a1-0-n1";

    // An eviction across queues not named as a reclaim is refused, even
    // by a job of higher priority.
    h.apply(queued("b1", "team-b", 10));
    assert_eq!(placed(h.apply(admit(&h, "b1", &[victim], &[]))), (0, 0));
    // A queue of another cohort may not reclaim it.
    h.apply(queued("o1", "other", 50));
    assert_eq!(placed(h.apply(admit(&h, "o1", &[victim], &["a1"]))), (0, 0));
    assert_eq!(h.state.allocs[victim].desired, DesiredStatus::Run);

    // Named, within the cohort: the job goes whole and waits again.
    assert_eq!(placed(h.apply(admit(&h, "b1", &[victim], &["a1"]))), (1, 1));
    let a = &h.state.allocs[victim];
    assert_eq!(a.desired, DesiredStatus::Stop);
    assert!(
        a.message.contains("reclaimed for job b1 (queue team-b)"),
        "{}",
        a.message
    );
    assert_eq!(h.state.jobs["a1"].admitted_index, 0);
    assert!(h.state.jobs["b1"].admitted_index > admitted_at);
    // Its evaluation looks for room again (and will wait in its queue).
    assert!(h
        .state
        .evals
        .values()
        .any(|e| e.job == "a1" && e.status == EvalStatus::Pending));
}

/// Team-a's gang `a1` of two ranks admitted on n1 and n2 (each node
/// 2 cores, the queues' whole nominal quota), and team-b's `b1` waiting.
fn gang_on_two_nodes() -> Harness {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(reg("n2", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    h.apply(Command::UpsertJob {
        spec: job_spec("name: a1\nqueue: team-a\ntype: batch\ngang: true\nreplicas: 2\ntask: {image: 'oci:/i', resources: {cpu: 2, memory: 64Mi}}"),
    });
    assert_eq!(
        placed(h.apply(admit_to(&h, "a1", &[(0, "n1"), (1, "n2")], &[], &[]))),
        (2, 0)
    );
    h.apply(queued("b1", "team-b", 10));
    h
}

#[test]
fn a_reclaimed_gang_stops_on_every_node_not_only_where_the_owner_lands() {
    let mut h = gang_on_two_nodes();
    // b1 goes on n1; rank 1 on n2 is evicted too (the gang goes whole).
    assert_eq!(
        placed(h.apply(admit(&h, "b1", &["a1-0-n1", "a1-1-n2"], &["a1"]))),
        (1, 2)
    );
    for id in ["a1-0-n1", "a1-1-n2"] {
        let a = &h.state.allocs[id];
        assert_eq!(a.desired, DesiredStatus::Stop, "{id} kept running");
        assert!(a.message.contains("reclaimed for job b1"), "{}", a.message);
    }
    assert_eq!(h.state.jobs["a1"].admitted_index, 0);
}

#[test]
fn an_admission_that_leaves_part_of_a_reclaimed_job_running_is_refused_whole() {
    let mut h = gang_on_two_nodes();
    // Only the rank where b1 lands: rank 1 would run on unadmitted.
    assert_eq!(
        placed(h.apply(admit(&h, "b1", &["a1-0-n1"], &["a1"]))),
        (0, 0)
    );
    assert!(h
        .state
        .allocs
        .values()
        .all(|a| a.job != "a1" || a.desired == DesiredStatus::Run));
    assert!(h.state.jobs["a1"].admitted_index > 0);
    assert_eq!(h.state.jobs["b1"].admitted_index, 0);
    // An eviction elsewhere that the victim rule refuses (not named as a
    // reclaim) refuses the admission too.
    assert_eq!(
        placed(h.apply(admit(&h, "b1", &["a1-0-n1", "a1-1-n2"], &[]))),
        (0, 0)
    );
    assert_eq!(h.state.allocs["a1-1-n2"].desired, DesiredStatus::Run);
}

#[test]
fn a_victim_in_the_admitted_jobs_own_queue_goes_only_by_priority() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queued("low", "team-a", 50));
    assert_eq!(placed(h.apply(admit(&h, "low", &[], &[]))), (1, 0));
    // Named as a reclaim, but of its own queue and not the preemption
    // gap lower: refused.
    h.apply(queued("near", "team-a", 55));
    assert_eq!(
        placed(h.apply(admit(&h, "near", &["low-0-n1"], &["low"]))),
        (0, 0)
    );
    // The gap lower: it goes, for its priority (not "lent"), and waits
    // in its queue again.
    h.apply(queued("high", "team-a", 90));
    assert_eq!(
        placed(h.apply(admit(&h, "high", &["low-0-n1"], &["low"]))),
        (1, 1)
    );
    let a = &h.state.allocs["low-0-n1"];
    assert_eq!(a.desired, DesiredStatus::Stop);
    assert!(a.message.contains("preempted by job high"), "{}", a.message);
    assert_eq!(h.state.jobs["low"].admitted_index, 0);
}

/// A victim of the job's own queue not named by the admission (so it
/// would stay admitted, holding quota with nothing running), or evicted
/// by a plain plan: refused.
#[test]
fn a_priority_victim_in_a_queue_goes_only_named_by_an_admission() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queued("low", "team-a", 10));
    assert_eq!(placed(h.apply(admit(&h, "low", &[], &[]))), (1, 0));
    h.apply(queued("high", "team-a", 90));
    assert_eq!(
        placed(h.apply(admit(&h, "high", &["low-0-n1"], &[]))),
        (0, 0),
        "not named"
    );
    assert_eq!(h.state.allocs["low-0-n1"].desired, DesiredStatus::Run);
    assert!(h.state.jobs["low"].admitted_index > 0);
    // Nor a plain plan (the planner's, not an admission).
    let Command::ApplyPlan { mut plan } = h.plan("high", &[(0, "n1")], 0) else {
        unreachable!()
    };
    plan.evictions = vec![Stop {
        alloc_id: "low-0-n1".into(),
        reason: String::new(),
    }];
    plan.reclaims = vec!["low".into()];
    assert_eq!(placed(h.apply(Command::ApplyPlan { plan })), (0, 0));
}

#[test]
fn a_victim_evicted_for_quota_alone_stops_on_its_own_node() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(reg("n2", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    h.apply(queued("a1", "team-a", 10));
    assert_eq!(
        placed(h.apply(admit_to(&h, "a1", &[(0, "n2")], &[], &[]))),
        (1, 0)
    );
    h.apply(queued("b1", "team-b", 10));
    // b1 is placed on the free n1; a1 on n2 goes to give the quota back.
    assert_eq!(
        placed(h.apply(admit(&h, "b1", &["a1-0-n2"], &["a1"]))),
        (1, 1)
    );
    assert_eq!(h.state.allocs["a1-0-n2"].desired, DesiredStatus::Stop);
    assert_eq!(h.state.jobs["a1"].admitted_index, 0);
}

#[test]
fn a_job_that_asks_for_more_or_moves_waits_to_be_admitted_again() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    h.apply(queued("a1", "team-a", 50));
    placed(h.apply(admit(&h, "a1", &[], &[])));
    // The same request at another priority keeps its admission.
    h.apply(queued("a1", "team-a", 60));
    assert!(h.state.jobs["a1"].admitted_index > 0);
    // Asking for less keeps it too (it runs on what it was admitted for).
    h.apply(Command::UpsertJob {
        spec: job_spec("name: a1\nqueue: team-a\npriority: 60\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 64Mi}}"),
    });
    assert!(h.state.jobs["a1"].admitted_index > 0);
    // A bigger request does not.
    h.apply(queued("a1", "team-a", 60));
    assert_eq!(h.state.jobs["a1"].admitted_index, 0);
    // Nor does another queue; while its allocation runs on, its
    // admission there places nothing and is recorded all the same.
    h.apply(queued("a2", "team-a", 50));
    placed(h.apply(admit(&h, "a2", &[], &[])));
    h.apply(queued("a2", "team-b", 50));
    assert_eq!(h.state.jobs["a2"].admitted_index, 0);
    let running = h.state.allocs_of("a2").filter(|a| a.is_live()).count();
    assert_eq!(running, 1);
    let Outcome::PlanApplied(r) = h.apply(admit_to(&h, "a2", &[], &[], &[])) else {
        panic!("refused");
    };
    assert_eq!((r.placed, r.rejected), (0, 0));
    assert!(h.state.jobs["a2"].admitted_index > 0, "admitted in team-b");
}

#[test]
fn a_sync_keeps_its_status_when_its_source_changes_and_reports_need_it_to_exist() {
    use skiff_model::sync::{SyncSource, SyncStatus};
    let mut h = Harness::new();
    let source = SyncSource::new("lab", "/srv/git/lab.git", "default");
    let status = SyncStatus {
        commit: "4f1c2a9d03be".into(),
        head: "4f1c2a9d03be".into(),
        jobs: vec!["web".into()],
        ..SyncStatus::default()
    };
    let report = |status: &SyncStatus| Command::ReportSync {
        name: "lab".into(),
        status: status.clone(),
    };
    assert_eq!(
        h.apply(report(&status)),
        Outcome::Refused(Refusal::SyncMissing { name: "lab".into() })
    );
    assert_eq!(
        h.apply(Command::PutSync {
            source: source.clone()
        }),
        Outcome::AccessChanged
    );
    assert_eq!(h.apply(report(&status)), Outcome::AccessChanged);
    // Another interval: the status stays.
    let mut slower = source.clone();
    slower.interval_secs = 300;
    h.apply(Command::PutSync {
        source: slower.clone(),
    });
    assert_eq!(h.state.access.syncs["lab"].status, status);
    // Another branch: what runs is no longer its commit (the next look
    // applies, and calls nothing drift); the rest of the status stays.
    let mut moved = slower;
    moved.branch = "prod".into();
    h.apply(Command::PutSync { source: moved });
    let kept = &h.state.access.syncs["lab"];
    assert_eq!(kept.source.branch, "prod");
    assert_eq!(kept.status.commit, "");
    assert_eq!(kept.status.jobs, status.jobs);
    assert_eq!(
        h.apply(Command::DeleteSync { name: "lab".into() }),
        Outcome::AccessChanged
    );
    assert!(h.state.access.syncs.is_empty());
    assert_eq!(
        h.apply(Command::DeleteSync { name: "lab".into() }),
        Outcome::Refused(Refusal::SyncMissing { name: "lab".into() })
    );
}

#[test]
fn scaling_a_queued_job_up_waits_to_be_admitted_again() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 4096));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(Command::UpsertJob {
        spec: job_spec("name: s1\nqueue: team-a\nreplicas: 1\ntask: {image: 'oci:/i', resources: {cpu: 2, memory: 64Mi}}"),
    });
    assert_eq!(placed(h.apply(admit(&h, "s1", &[], &[]))), (1, 0));
    assert!(h.state.jobs["s1"].admitted_index > 0);
    // Scale 1 -> 4: 8 cores, four times the queue's nominal 2.
    h.apply(Command::ScaleJob {
        name: "s1".into(),
        replicas: 4,
    });
    assert_eq!(h.state.jobs["s1"].spec.replicas, 4);
    assert_eq!(
        h.state.jobs["s1"].admitted_index, 0,
        "it asks for four times as much: it waits in its queue"
    );
}

#[test]
fn a_finished_batch_job_run_again_waits_in_its_queue() {
    let mut h = Harness::new();
    h.apply(reg("n1", 8000, 4096));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(Command::UpsertJob {
        spec: job_spec("name: b1\nqueue: team-a\ntype: batch\ntask: {image: 'oci:/i', resources: {cpu: 2, memory: 64Mi}}"),
    });
    assert_eq!(placed(h.apply(admit(&h, "b1", &[], &[]))), (1, 0));
    let id = "b1-0-n1".to_string();
    for (status, code) in [
        (AllocStatus::Running, None),
        (AllocStatus::Complete, Some(0)),
    ] {
        h.apply(Command::UpdateAllocStatus {
            at_ms: 0,
            node: "n1".into(),
            updates: vec![AllocUpdate {
                alloc_id: id.clone(),
                status,
                exit_code: code,
                reason: if code.is_some() {
                    skiff_model::alloc::reason::COMPLETED.into()
                } else {
                    String::new()
                },
                ..AllocUpdate::default()
            }],
        });
    }
    // Re-run with a new image: a new version that runs again.
    h.apply(Command::UpsertJob {
        spec: job_spec("name: b1\nqueue: team-a\ntype: batch\ntask: {image: 'oci:/i2', resources: {cpu: 2, memory: 64Mi}}"),
    });
    assert_eq!(
        h.state.jobs["b1"].admitted_index, 0,
        "a new run of a finished job is new work for its queue"
    );
}

#[test]
fn a_job_reclaimed_with_nothing_running_waits_to_be_admitted_again() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(reg("n2", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    // a1 (batch) admitted, then its run fails: admitted, nothing live.
    h.apply(Command::UpsertJob {
        spec: job_spec("name: a1\nqueue: team-a\ntype: batch\nbackoff_limit: 5\ntask: {image: 'oci:/i', resources: {cpu: 2, memory: 64Mi}}"),
    });
    assert_eq!(placed(h.apply(admit(&h, "a1", &[], &[]))), (1, 0));
    h.apply(Command::UpdateAllocStatus {
        at_ms: 0,
        node: "n1".into(),
        updates: vec![AllocUpdate {
            alloc_id: "a1-0-n1".into(),
            status: AllocStatus::Failed,
            exit_code: Some(1),
            ..AllocUpdate::default()
        }],
    });
    h.apply(queued("b1", "team-b", 10));
    // The leader's plan names a1 as reclaimed (for quota): nothing to evict.
    assert_eq!(
        placed(h.apply(admit_to(&h, "b1", &[(0, "n2")], &[], &["a1"]))),
        (1, 0)
    );
    assert!(h.state.jobs["b1"].admitted_index > 0);
    assert_eq!(
        h.state.jobs["a1"].admitted_index, 0,
        "reclaimed (for quota alone), it waits again, not counted twice"
    );
}

/// A job that asked for more waits to be admitted again while its
/// allocation runs on: an owner may reclaim what it runs.
#[test]
fn a_job_running_while_it_waits_again_may_be_reclaimed() {
    let mut h = Harness::new();
    h.apply(reg("n1", 2000, 1024));
    h.apply(queue("team-a", "lab", "'*'"));
    h.apply(queue("team-b", "lab", "'*'"));
    h.apply(queued("b1", "team-b", 50));
    assert_eq!(placed(h.apply(admit(&h, "b1", &[], &[]))), (1, 0));
    h.apply(Command::UpsertJob {
        spec: job_spec("name: b1\nqueue: team-b\npriority: 50\ntask: {image: 'oci:/i', resources: {cpu: 2, memory: 128Mi}}"),
    });
    assert_eq!(h.state.jobs["b1"].admitted_index, 0, "asks for more");
    h.apply(queued("a1", "team-a", 10));
    assert_eq!(
        placed(h.apply(admit(&h, "a1", &["b1-0-n1"], &["b1"]))),
        (1, 1)
    );
    assert_eq!(h.state.allocs["b1-0-n1"].desired, DesiredStatus::Stop);
}
