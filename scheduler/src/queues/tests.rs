use proptest::prelude::*;

use super::sim::{gpu_node, gpu_queue as queue, QueueSim};
use super::*;
use skiff_model::queue::gpu_key;
use skiff_model::JobSpec;

/// A batch job of `ranks` x `gpus` GPUs (a gang when more than one rank).
fn job(name: &str, queue: &str, ranks: u32, gpus: u32, priority: u8) -> JobSpec {
    let gang = if ranks > 1 { "gang: true\n" } else { "" };
    JobSpec::from_yaml(&format!(
        "name: {name}\ntype: batch\nqueue: {queue}\npriority: {priority}\n{gang}replicas: {ranks}\ntask: {{image: 'oci:/i', resources: {{cpu: 1, memory: 1Gi, gpus: {gpus}}}}}\n"
    ))
    .unwrap()
}

fn lab() -> QueueSim {
    QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![
            queue("team-a", Some("lab"), 4),
            queue("team-b", Some("lab"), 4),
        ],
    )
}

fn admitted(d: &[Decision], job: &str) -> bool {
    d.iter().any(|d| d.job == job && d.admission.is_some())
}

fn reason<'d>(d: &'d [Decision], job: &str) -> &'d str {
    &d.iter().find(|d| d.job == job).expect("decided").reason
}

#[test]
fn a_team_borrows_idle_gpus_and_gives_them_back_when_the_owner_asks() {
    let mut sim = lab();
    sim.submit(job("a1", "team-a", 1, 4, 50));
    sim.submit(job("a2", "team-a", 2, 2, 55));
    let d = sim.round();
    assert!(admitted(&d, "a1") && admitted(&d, "a2"), "{d:?}");
    let a2 = d.iter().find(|d| d.job == "a2").unwrap();
    let a1 = d.iter().find(|d| d.job == "a1").unwrap();
    // The gang goes first (higher priority) within team-a's quota; the
    // other borrows team-b's idle GPUs.
    assert!(!a2.admission.as_ref().unwrap().borrowing);
    assert!(a1.admission.as_ref().unwrap().borrowing);
    assert_eq!(sim.gpus_used_by("team-a"), 8);

    // team-b asks for what it is owed: the job admitted beyond team-a's
    // quota goes, whatever its priority.
    sim.submit(job("b1", "team-b", 1, 4, 10));
    let d = sim.round();
    assert!(admitted(&d, "b1"), "{d:?}");
    let b1 = d
        .iter()
        .find(|d| d.job == "b1")
        .unwrap()
        .admission
        .as_ref()
        .unwrap();
    assert_eq!(
        b1.reclaimed,
        ["a1"],
        "the job admitted beyond a's quota: {b1:?}"
    );
    assert!(b1
        .plan
        .evictions
        .iter()
        .all(|e| e.reason.contains("reclaimed for job b1")));
    assert_eq!(sim.gpus_used_by("team-a"), 4, "team-a keeps its nominal 4");
    assert_eq!(sim.gpus_used_by("team-b"), 4);
    assert_eq!(sim.preemptions, 1);

    // The reclaimed job waits again, its reason naming the quota.
    let victim = &b1.reclaimed[0];
    let d = sim.round();
    let why = reason(&d, victim);
    assert!(
        why.contains("queue team-a uses 4/4 GPUs (any model)")
            && why.contains("cohort lab has 0 to lend"),
        "{why}"
    );
}

#[test]
fn a_queue_without_a_cohort_waits_with_a_reason_naming_its_quota() {
    let mut sim = QueueSim::new(vec![gpu_node("n1", 8)], vec![queue("solo", None, 4)]);
    sim.submit(job("big", "solo", 1, 8, 50));
    let d = sim.round();
    assert_eq!(
        reason(&d, "big"),
        "queue solo uses 0/4 GPUs (any model), job needs 8; the queue has no cohort to borrow from; it can never be admitted here: it asks for more than the queue's whole quota"
    );
    assert!(sim.allocs.is_empty());
}

#[test]
fn a_job_bigger_than_a_queue_can_ever_hold_says_so() {
    // Alone: its nominal quota is all it has.
    let mut sim = QueueSim::new(vec![gpu_node("n1", 8)], vec![queue("solo", None, 4)]);
    sim.submit(job("huge", "solo", 2, 4, 50));
    let d = sim.round();
    assert!(
        reason(&d, "huge").ends_with(
            "it can never be admitted here: it asks for more than the queue's whole quota"
        ),
        "{}",
        reason(&d, "huge")
    );
    // In a cohort: its quota and what it may borrow (a limit of 2 here).
    let mut a = queue("team-a", Some("lab"), 4);
    a.borrowing_limit = Queue::from_yaml("name: x\nnamespaces: ['*']\nnominal: {gpus: {any: 2}}\n")
        .unwrap()
        .nominal;
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 8), gpu_node("n2", 8)],
        vec![a, queue("team-b", Some("lab"), 8)],
    );
    sim.submit(job("seven", "team-a", 1, 7, 50));
    sim.submit(job("six", "team-a", 1, 6, 50));
    let d = sim.round();
    assert_eq!(
        reason(&d, "seven"),
        "queue team-a uses 0/4 GPUs (any model), job needs 7; it can never be admitted here: queue team-a can hold at most 6 GPUs (any model) (its nominal quota and what it may borrow from cohort lab)"
    );
    assert!(admitted(&d, "six"), "within the limit, borrowing: {d:?}");
    // Without the limit, what the cohort can lend bounds it: 4 + 8.
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 8), gpu_node("n2", 8)],
        vec![
            queue("team-a", Some("lab"), 4),
            queue("team-b", Some("lab"), 8),
        ],
    );
    sim.submit(job("wide", "team-a", 2, 7, 50));
    let d = sim.round();
    assert!(
        reason(&d, "wide").contains("can hold at most 12 GPUs (any model)"),
        "{}",
        reason(&d, "wide")
    );
    // One that could fit once others give back does not say never.
    sim.submit(job("b-all", "team-b", 1, 8, 50));
    sim.submit(job("a-five", "team-a", 1, 5, 50));
    let d = sim.round();
    assert!(!reason(&d, "a-five").contains("never"), "{d:?}");
}

/// team-b's service of 3 x 4 GPUs (4 borrowed) asks for 5 replicas: it
/// waits to be admitted again while its 3 run on, holding 12 GPUs with
/// no admission. That is borrowed capacity like any other: an owner gets
/// it back, and it is taken before team-b's work within its quota.
#[test]
fn a_job_running_while_it_waits_again_is_reclaimed_first() {
    let lab = || {
        QueueSim::new(
            vec![gpu_node("n1", 8), gpu_node("n2", 8)],
            vec![
                queue("team-a", Some("lab"), 8),
                queue("team-b", Some("lab"), 8),
            ],
        )
    };
    let service = |sim: &mut QueueSim| {
        let s = sim.submit(
            JobSpec::from_yaml(
                "name: s\nqueue: team-b\nreplicas: 3\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 1Gi, gpus: 4}}",
            )
            .unwrap(),
        );
        assert!(admitted(&sim.round(), &s));
        // Scaled to 5 (the store drops the admission of a job asking
        // for more).
        sim.jobs.get_mut(&s).unwrap().spec.replicas = 5;
        sim.admitted.remove(&s);
        s
    };
    // team-a asks for the 8 GPUs it is owed.
    let mut sim = lab();
    let s = service(&mut sim);
    sim.submit(job("a8", "team-a", 1, 8, 50));
    let d = sim.round();
    let a = d
        .iter()
        .find(|d| d.job == "a8")
        .and_then(|d| d.admission.as_ref())
        .unwrap_or_else(|| panic!("{}", reason(&d, "a8")));
    assert_eq!(a.reclaimed, std::slice::from_ref(&s));
    // With team-b's own job within its quota beside it, the service goes
    // first.
    let mut sim = lab();
    sim.submit(job("x", "team-b", 1, 4, 50));
    sim.round();
    let s = service(&mut sim);
    assert_eq!(sim.gpus_used(), 16);
    sim.submit(job("a4", "team-a", 1, 4, 50));
    let d = sim.round();
    let a = d
        .iter()
        .find(|d| d.job == "a4")
        .and_then(|d| d.admission.as_ref())
        .unwrap_or_else(|| panic!("{}", reason(&d, "a4")));
    assert_eq!(
        a.reclaimed,
        std::slice::from_ref(&s),
        "not x, within team-b's quota"
    );
}

#[test]
fn a_gang_that_fits_quota_but_no_node_layout_is_not_admitted() {
    // 8 GPUs of quota, 8 GPUs in the cluster, but 3 are held: a gang of
    // 2 x 4 fits the quota (8 - 3 held by another queue... within its own
    // nominal) but not the nodes; nothing of it is placed.
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![queue("a", None, 8), queue("b", None, 2)],
    );
    sim.submit(job("small", "b", 2, 1, 50));
    sim.round();
    sim.submit(job("gang", "a", 2, 4, 50));
    let d = sim.round();
    assert!(!admitted(&d, "gang"));
    assert!(
        reason(&d, "gang").starts_with("no room:"),
        "{}",
        reason(&d, "gang")
    );
    assert_eq!(sim.gpus_used_by("a"), 0);
}

/// The nodes `job`'s allocations are on.
fn on(sim: &QueueSim, job: &str) -> Vec<String> {
    sim.allocs
        .values()
        .filter(|a| a.job == job)
        .map(|a| a.node.clone())
        .collect()
}

#[test]
fn a_head_past_its_backfill_window_gets_a_node_held_while_others_backfill() {
    let mut q = queue("a", Some("lab"), 32);
    q.backfill_window = Some(std::time::Duration::from_secs(60));
    let other = queue("b", Some("lab"), 0);
    let mut sim = QueueSim::new(vec![gpu_node("n1", 8), gpu_node("n2", 8)], vec![q, other]);
    sim.submit(job("r1", "a", 1, 6, 50));
    sim.submit(job("r2", "a", 1, 6, 50));
    sim.round();
    assert_eq!(sim.gpus_used(), 12);
    sim.submit(job("head", "a", 1, 8, 55));
    sim.submit(job("small", "a", 1, 1, 50));
    // Within the window small jobs backfill past the head.
    let d = sim.round();
    assert!(!admitted(&d, "head") && admitted(&d, "small"), "{d:?}");
    assert!(reason(&d, "head").starts_with("no room:"), "{d:?}");
    // Past it, the node with the most free GPUs is held for the head:
    // small jobs (of any queue) go only to the other one.
    sim.now_ms += 61_000;
    sim.submit(job("small2", "a", 1, 1, 50));
    sim.submit(job("other", "b", 1, 4, 50));
    let d = sim.round();
    let why = reason(&d, "head");
    assert!(why.contains("held for it while they drain"), "{why}");
    let held = if why.contains("node n1") { "n1" } else { "n2" };
    assert!(admitted(&d, "small2"), "{d:?}");
    assert!(
        on(&sim, "small2").iter().all(|n| n != held),
        "{:?}",
        on(&sim, "small2")
    );
    assert!(
        reason(&d, "other").contains("reserved for a waiting queue head"),
        "{d:?}"
    );
    // The held node drains as its work ends; the head then goes there.
    let busy: Vec<String> = sim
        .allocs
        .values()
        .filter(|a| a.node == held)
        .map(|a| a.job.clone())
        .collect();
    for j in busy {
        sim.finish(&j);
    }
    let d = sim.round();
    assert!(admitted(&d, "head"), "{d:?}");
    assert_eq!(on(&sim, "head"), [held]);
}

#[test]
fn a_gang_wider_than_the_cluster_holds_no_node_and_says_so() {
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![
            queue("team-a", Some("lab"), 12),
            queue("team-b", Some("lab"), 4),
            queue("solo", None, 4),
        ],
    );
    // 3 x 4 GPUs on two nodes of 4: within team-a's quota, on no layout.
    sim.submit(job("huge", "team-a", 3, 4, 50));
    let d = sim.round();
    assert!(!admitted(&d, "huge"));
    // It says so at once, not only once its window has run out.
    assert!(
        reason(&d, "huge").contains("could not be placed even with every node empty"),
        "{}",
        reason(&d, "huge")
    );
    // Past its backfill window it holds nothing: the others still go.
    sim.now_ms += 11 * 60 * 1000;
    sim.submit(job("b1", "team-b", 1, 1, 10));
    sim.submit(job("s1", "solo", 1, 1, 10));
    let d = sim.round();
    assert!(admitted(&d, "b1"), "{d:?}");
    assert!(admitted(&d, "s1"), "{d:?}");
    let why = reason(&d, "huge");
    assert!(
        why.contains("could not be placed even with every node empty")
            && why.contains("only 2 fit")
            && why.ends_with(", so no node is held for it")
            && why.matches("every node empty").count() == 1,
        "{why}"
    );
}

#[test]
fn a_queue_borrowing_cores_keeps_its_gpu_jobs_within_its_gpu_quota() {
    let q = |name: &str, cpu: u32| {
        Queue::from_yaml(&format!(
            "name: {name}\ncohort: lab\nnamespaces: ['*']\nnominal: {{cpu: {cpu}, gpus: {{any: 4}}}}\n"
        ))
        .unwrap()
    };
    let cjob = |name: &str, queue: &str, cpu: u32, gpus: u32, priority: u8| {
        JobSpec::from_yaml(&format!(
            "name: {name}\ntype: batch\nqueue: {queue}\npriority: {priority}\ntask: {{image: 'oci:/i', resources: {{cpu: {cpu}, memory: 1Gi, gpus: {gpus}}}}}\n"
        ))
        .unwrap()
    };
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![q("team-a", 100), q("team-b", 4)],
    );
    sim.cfg.algorithm = crate::config::Algorithm::Spread;
    // team-b: a job of cores alone within its cpu quota, then two 2-GPU
    // jobs (its GPU quota exactly) that take it a core beyond its cpu.
    sim.submit(cjob("b3", "team-b", 4, 0, 90));
    sim.round();
    sim.submit(cjob("b1", "team-b", 1, 2, 10));
    sim.submit(cjob("b2", "team-b", 1, 2, 10));
    let d = sim.round();
    assert!(admitted(&d, "b1") && admitted(&d, "b2"), "{d:?}");
    // team-a, within its 4 GPUs, wants one 4-GPU replica: the GPUs it
    // lacks are team-b's own, not lent, so nothing is reclaimed for it.
    sim.submit(cjob("a1", "team-a", 1, 4, 50));
    let d = sim.round();
    assert!(!admitted(&d, "a1"), "{d:?}");
    assert_eq!(sim.preemptions, 0);
}

#[test]
fn a_job_naming_no_model_in_a_queue_owed_only_by_model_is_told_how_to_ask() {
    let q = Queue::from_yaml(
        "name: vision\ncohort: lab\nnamespaces: ['*']\nnominal: {gpus: {'NVIDIA H100 80GB HBM3': 8}}\n",
    )
    .unwrap();
    let mut sim = QueueSim::new(vec![gpu_node("n1", 8)], vec![q]);
    sim.submit(job("anygpu", "vision", 1, 1, 50));
    let d = sim.round();
    let why = reason(&d, "anygpu");
    assert!(
        why.contains("uses 0/0 GPUs (any model), job needs 1 (the queue is owed GPUs only by model: NVIDIA H100 80GB HBM3; ask for one with `gpu: {model: ...}`"),
        "{why}"
    );
}

#[test]
fn priority_preemption_stays_within_a_queue() {
    // Team b's job, priority 90, finds every GPU held by team a's
    // priority-10 work within a's nominal: it may not evict across queues.
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4)],
        vec![queue("a", Some("lab"), 4), queue("b", Some("lab"), 0)],
    );
    sim.submit(job("low", "a", 1, 4, 10));
    sim.round();
    sim.submit(job("high", "b", 1, 1, 90));
    let d = sim.round();
    assert!(!admitted(&d, "high"), "{d:?}");
    assert_eq!(sim.preemptions, 0);
    // Within a's own queue the same job may.
    sim.submit(job("high-a", "a", 1, 4, 90));
    let d = sim.round();
    assert!(admitted(&d, "high-a"), "{d:?}");
}

/// A job whose quota fits but whose room is held by lower-priority work
/// of its own queue evicts that work whole, and the victim waits in the
/// queue again: it does not stay admitted, holding quota it no longer
/// uses, with nothing running.
#[test]
fn a_job_evicted_for_priority_in_its_queue_waits_to_be_admitted_again() {
    let mut sim = QueueSim::new(vec![gpu_node("n1", 4)], vec![queue("a", None, 8)]);
    let low = sim.submit(job("low", "a", 1, 4, 10));
    sim.round();
    assert!(sim.admitted.contains_key(&low));
    let high = sim.submit(job("high", "a", 1, 4, 90));
    let d = sim.round();
    let a = d
        .iter()
        .find(|d| d.job == high)
        .and_then(|d| d.admission.as_ref())
        .unwrap_or_else(|| panic!("{d:?}"));
    assert_eq!(
        a.reclaimed,
        std::slice::from_ref(&low),
        "named, so it waits again"
    );
    assert!(!sim.admitted.contains_key(&low), "requeued");
    assert!(sim.allocs.values().all(|x| x.job != low));
    // The planner's plain plan (a replica placed again, not an
    // admission) of a job in a queue evicts nothing by priority: the
    // store would refuse it.
    let top = sim.submit(job("top", "a", 1, 4, 100));
    let mut view = crate::view::ClusterView::new(&sim.nodes, sim.allocs.values(), |n| {
        sim.jobs.get(n).map(|j| j.spec.priority)
    });
    view.set_queues(|n| sim.jobs.get(n).and_then(|j| j.spec.queue.clone()));
    let plain = crate::reconcile_job(&high, sim.jobs.get(&high), None, &view, &sim.cfg);
    assert!(plain.evictions.is_empty(), "{plain:?}");
    let plain = crate::reconcile_job(&top, sim.jobs.get(&top), None, &view, &sim.cfg);
    assert!(
        plain.evictions.is_empty() && plain.unplaced == 1,
        "{plain:?}"
    );
    sim.finish(&top);
    let status = sim.book().status();
    assert_eq!(
        status[0].usage.get(&gpu_key(None)).copied(),
        Some(4 * skiff_model::namespace::GPU_UNITS)
    );
}

#[test]
fn fair_sharing_converges_two_equal_teams_to_equal_gpu_shares() {
    // 8 GPUs, two teams owed 2 each and 4 more in a third queue nobody
    // uses: both want everything; as jobs finish, the lent GPUs split
    // evenly.
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![
            queue("a", Some("lab"), 2),
            queue("b", Some("lab"), 2),
            queue("idle", Some("lab"), 4),
        ],
    );
    for i in 0..12 {
        sim.submit(job(&format!("a{i:02}"), "a", 1, 1, 50));
    }
    sim.round();
    assert_eq!(sim.gpus_used_by("a"), 8, "a borrows everything idle");
    for i in 0..12 {
        sim.submit(job(&format!("b{i:02}"), "b", 1, 1, 50));
    }
    for _ in 0..8 {
        sim.round();
        // One of each team's oldest running jobs finishes.
        for team in ["a", "b"] {
            let done = sim.admitted.keys().find(|k| k.starts_with(team)).cloned();
            if let Some(k) = done {
                sim.finish(&k);
            }
        }
    }
    sim.round();
    assert_eq!(
        sim.gpus_used_by("a"),
        sim.gpus_used_by("b"),
        "{:?}",
        sim.admitted
    );
    assert_eq!(sim.gpus_used(), 8, "nothing idles");
}

#[test]
fn a_service_in_a_queue_is_admitted_with_every_replica_or_none() {
    let mut sim = QueueSim::new(vec![gpu_node("n1", 4)], vec![queue("infer", None, 4)]);
    let svc = |name: &str, replicas: u32| {
        JobSpec::from_yaml(&format!(
            "name: {name}
queue: infer
replicas: {replicas}
task: {{image: 'oci:/i', resources: {{cpu: 1, memory: 1Gi, gpus: 1}}}}
"
        ))
        .unwrap()
    };
    sim.submit(svc("small", 3));
    sim.submit(svc("big", 2));
    let d = sim.round();
    assert!(admitted(&d, "small"), "{d:?}");
    assert_eq!(sim.gpus_used_by("infer"), 3);
    assert!(!admitted(&d, "big"));
    assert!(
        reason(&d, "big").contains("uses 3/4 GPUs (any model), job needs 2"),
        "{d:?}"
    );
}

#[test]
fn the_book_reports_usage_borrowing_and_lending() {
    let mut sim = lab();
    sim.submit(job("a1", "team-a", 1, 4, 50));
    sim.submit(job("a2", "team-a", 1, 2, 50));
    sim.submit(job("b-wait", "team-b", 1, 8, 50));
    sim.round();
    let rows = sim.book().status();
    let any = gpu_key(None);
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!(a.usage[&any], 6 * 28);
    assert_eq!(a.borrowed[&any], 2 * 28);
    assert_eq!(b.lent[&any], 2 * 28);
    assert!(a.share > 0 && b.share == 0);
    assert_eq!((a.admitted, a.pending, b.admitted, b.pending), (2, 0, 0, 1));
}

#[test]
fn a_resource_a_queue_does_not_govern_is_neither_borrowed_nor_lent() {
    // team-a governs cores (2) and GPUs; vision only GPUs. vision's jobs
    // hold cores too, outside any pool: team-a lends it none, and its
    // own cores stay whole for it.
    let q = |yaml: &str| Queue::from_yaml(yaml).unwrap();
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 4), gpu_node("n2", 4)],
        vec![
            q("name: team-a\ncohort: lab\nnamespaces: ['*']\nnominal: {cpu: 2, gpus: {any: 4}}\n"),
            q("name: vision\ncohort: lab\nnamespaces: ['*']\nnominal: {gpus: {any: 4}}\n"),
        ],
    );
    sim.submit(job("v1", "vision", 1, 1, 50));
    sim.submit(job("v2", "vision", 1, 1, 50));
    sim.round();
    let rows = sim.book().status();
    assert!(!rows[0].lent.contains_key("cpu"), "{:?}", rows[0]);
    assert!(!rows[1].borrowed.contains_key("cpu"), "{:?}", rows[1]);
    sim.submit(job("a1", "team-a", 2, 1, 50));
    let d = sim.round();
    assert!(admitted(&d, "a1"), "{d:?}");
}

/// A random history: queues of a cohort over 4 nodes of 8 GPUs (their
/// nominal quotas sum to the 32 GPUs), jobs of 1-8 GPUs (one node each)
/// and gangs, finishing at random.
/// Each queue's nominal GPUs and borrowing limit.
type QueueSpecs = Vec<(u64, Option<u64>)>;
/// Each step: queue, job size, priority, whether the oldest admitted job
/// finishes after the round.
type Steps = Vec<(u8, u8, u8, bool)>;

fn history() -> impl Strategy<Value = (QueueSpecs, Steps)> {
    let queues = prop::sample::select(vec![
        vec![(16, None), (16, None)],
        vec![(8, Some(8)), (8, None), (16, Some(4))],
        vec![(24, None), (4, Some(0)), (4, Some(16))],
    ])
    .prop_map(|v: Vec<(u64, Option<u64>)>| v);
    let steps = prop::collection::vec((0u8..3, 0u8..4, 0u8..100, any::<bool>()), 1..40);
    (queues, steps)
}

fn cohort(spec: &[(u64, Option<u64>)]) -> QueueSim {
    let queues = spec
        .iter()
        .enumerate()
        .map(|(i, (nominal, limit))| {
            let mut q = queue(&format!("q{i}"), Some("lab"), *nominal);
            if let Some(l) = limit {
                q.borrowing_limit.gpus.insert("any".into(), *l);
            }
            q
        })
        .collect();
    QueueSim::new(
        (0..4).map(|i| gpu_node(&format!("n{i}"), 8)).collect(),
        queues,
    )
}

fn check_quota(sim: &QueueSim) -> Result<(), TestCaseError> {
    let any = gpu_key(None);
    let mut pool_used = 0;
    for q in &sim.queues {
        let used = sim.gpus_used_by(&q.name) * 28;
        let nominal = q.nominal_of(&any).unwrap();
        if let Some(limit) = q.borrowing_limit_of(&any) {
            prop_assert!(
                used <= nominal + limit,
                "{} uses {used} > {nominal} + {limit}",
                q.name
            );
        }
        pool_used += used;
    }
    let pool: u64 = sim.queues.iter().map(|q| q.nominal_of(&any).unwrap()).sum();
    prop_assert!(pool_used <= pool, "cohort uses {pool_used} of {pool}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn quota_holds_gangs_go_whole_and_owners_get_their_quota_back((queues, steps) in history()) {
        let mut sim = cohort(&queues);
        let n = queues.len() as u8;
        for (i, (q, size, prio, finish)) in steps.iter().enumerate() {
            let q = format!("q{}", q % n);
            let (ranks, gpus) = [(1, 1), (1, 2), (2, 4), (1, 8)][*size as usize];
            let key = sim.submit(job(&format!("j{i:03}"), &q, ranks, gpus, *prio));
            let before = sim.clone();
            let d = sim.round();
            // The same input gives the same decisions.
            let mut again = before.clone();
            prop_assert_eq!(&again.round(), &d);
            // No ping-pong (Kueue's lemma): a borrowing job admitted by
            // evicting another queue's work is not evicted in the next
            // round for a borrowing job of a queue it evicted from. (A
            // queue back under its nominal quota may still reclaim.)
            let queue_of = |job: &str| sim.jobs.get(job).and_then(|j| j.spec.queue.clone());
            let fair = |a: &&Admission| a.borrowing;
            let mut evicted_from: Vec<(String, Option<String>)> = Vec::new();
            for x in &d {
                for v in x.admission.iter().filter(fair).flat_map(|a| &a.reclaimed) {
                    if before.jobs[v].spec.queue != queue_of(&x.job) {
                        evicted_from.push((x.job.clone(), before.jobs[v].spec.queue.clone()));
                    }
                }
            }
            // (A queue whose own priority preemption lowered its share
            // earlier in that round may: its composition changed.)
            let mut preempted_within = std::collections::BTreeSet::new();
            for x in sim.clone().round() {
                let q = queue_of(&x.job);
                let own = x.admission.iter().flat_map(|a| &a.reclaimed).any(|v| queue_of(v) == q);
                if own {
                    preempted_within.insert(q.clone());
                }
                if preempted_within.contains(&q) {
                    continue;
                }
                for v in x.admission.iter().filter(fair).flat_map(|a| &a.reclaimed) {
                    prop_assert!(
                        !evicted_from.iter().any(|(a, q)| a == v && *q == queue_of(&x.job)),
                        "{} evicted from {:?}, then evicted for {}", v, queue_of(&x.job), x.job
                    );
                }
            }
            check_quota(&sim)?;
            for dec in &d {
                if let Some(a) = &dec.admission {
                    let want = sim.jobs[&dec.job].spec.wanted() as usize;
                    prop_assert_eq!(a.plan.placements.len(), want, "all or nothing: {}", dec.job);
                }
            }
            if *finish {
                let first = sim.admitted.keys().next().cloned();
                if let Some(k) = first {
                    sim.finish(&k);
                }
            }
            let _ = key;
        }
        // A queue under its nominal quota asks for one GPU more, at the
        // top priority: it gets it within one round, whoever borrowed.
        for q in sim.queues.clone() {
            let used = sim.gpus_used_by(&q.name) * 28;
            if used + 28 <= q.nominal_of(&gpu_key(None)).unwrap() {
                let key = sim.submit(job(&format!("owed-{}", q.name), &q.name, 1, 1, 100));
                let d = sim.round();
                prop_assert!(admitted(&d, &key), "{} owed a GPU: {:?}", q.name, d.iter().find(|x| x.job == key));
                check_quota(&sim)?;
            }
        }
    }
}

#[test]
fn an_owner_gets_a_whole_node_back_when_the_borrowed_gpus_are_scattered() {
    let mut b = queue("team-b", Some("lab"), 8);
    b.backfill_window = Some(std::time::Duration::from_secs(60));
    let mut sim = QueueSim::new(
        vec![gpu_node("n1", 8), gpu_node("n2", 8)],
        vec![queue("team-a", Some("lab"), 8), b],
    );
    // team-a fills both nodes but one GPU (15 of 16, 7 borrowed); its
    // youngest jobs are on both nodes.
    for i in 0..4 {
        sim.submit(job(&format!("x{i}"), "team-a", 1, 2, 50));
    }
    sim.round();
    for i in 0..7 {
        sim.submit(job(&format!("y{i}"), "team-a", 1, 1, 50));
    }
    sim.round();
    sim.finish("x0");
    for i in 0..2 {
        sim.submit(job(&format!("z{i}"), "team-a", 1, 1, 50));
        sim.round();
    }
    assert_eq!(sim.gpus_used_by("team-a"), 15);
    let zs: Vec<&str> = ["z0", "z1"]
        .into_iter()
        .filter(|z| on(&sim, z) == ["n1"])
        .collect();
    assert_eq!(zs.len(), 1, "one young job on each node");

    // team-b asks for the 8 GPUs it is owed, as one replica. Evicting
    // team-a's 7 youngest frees GPUs on both nodes and 8 on neither: it
    // waits while work may end by itself.
    sim.submit(job("b8", "team-b", 1, 8, 50));
    let d = sim.round();
    assert!(!admitted(&d, "b8"), "{d:?}");
    assert_eq!(sim.preemptions, 0);
    // Past its backfill window the node where team-a's work can go
    // whole (n2: 1 free, 7 of team-a's) is taken back; team-a keeps its
    // nominal 8 on n1.
    sim.now_ms += 61_000;
    let d = sim.round();
    let b8 = d
        .iter()
        .find(|d| d.job == "b8")
        .and_then(|d| d.admission.clone())
        .unwrap_or_else(|| panic!("{d:?}"));
    // x1..x3 and the young job on n2, not the one on n1.
    let mut want = vec!["x1", "x2", "x3", if zs[0] == "z0" { "z1" } else { "z0" }];
    want.sort();
    assert_eq!(b8.reclaimed, want);
    assert_eq!(on(&sim, "b8"), ["n2"]);
    assert_eq!(sim.gpus_used_by("team-a"), 8);
    assert_eq!(sim.gpus_used_by("team-b"), 8);
}
