//! Team queues in the state machine: jobs may name only queues that exist
//! and admit their namespace; a plan marked `admit` records the job's
//! admission; evictions across queues pass only as reclaims the plan
//! names, within one cohort, of admitted jobs, which then wait again.
//! Syncs from git, kept in the same access record, are here too.

use super::tests::{job_spec, reg, Harness};
use super::*;
use skiff_model::queue::Queue;
use skiff_model::{DesiredStatus, Stop};

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
    let Command::ApplyPlan { mut plan } = h.plan(job, &[(0, "n1")], 0) else {
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
            jobs: 1
        })
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
    // Another queue, or a bigger request, does not.
    h.apply(queued("a1", "team-b", 60));
    assert_eq!(h.state.jobs["a1"].admitted_index, 0);
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
