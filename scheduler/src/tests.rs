use super::*;
use skiff_model::{AllocStatus, JobSpec, NodeStatus};

fn node(name: &str, cpu: u64, mem_mi: u64) -> Node {
    Node {
        name: name.into(),
        labels: Default::default(),
        capacity: Resources::new(cpu, mem_mi << 20),
        allocatable: Resources::new(cpu, mem_mi << 20),
        address: String::new(),
        status: NodeStatus::Ready,
        agent_version: String::new(),
        create_index: 1,
        modify_index: 1,
    }
}

fn job(replicas: u32, cpu: &str, mem: &str) -> Job {
    let spec = JobSpec::from_yaml(&format!(
        "name: web\nreplicas: {replicas}\ntask: {{image: 'oci:/i', resources: {{cpu: {cpu}, memory: {mem}}}}}"
    ))
    .unwrap();
    Job {
        spec,
        version: 1,
        create_index: 1,
        modify_index: 1,
    }
}

fn alloc(id: &str, job: &Job, replica: u32, node: &str) -> Allocation {
    Allocation {
        id: id.into(),
        job: job.spec.name.clone(),
        job_version: job.version,
        replica,
        node: node.into(),
        task: job.spec.task.clone(),
        desired: DesiredStatus::Run,
        status: AllocStatus::Running,
        exit_code: None,
        message: String::new(),
        restart_count: 0,
        healthy: None,
        reason: String::new(),
        create_index: 1,
        modify_index: 1,
    }
}

#[test]
fn places_every_replica_when_capacity_allows() {
    let nodes = [node("a", 1000, 1024), node("b", 1000, 1024)];
    let j = job(3, "250m", "64Mi");
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(plan.placements.len(), 3);
    assert_eq!(plan.unplaced, 0);
    let replicas: Vec<u32> = plan.placements.iter().map(|p| p.replica).collect();
    assert_eq!(replicas, [0, 1, 2]);
}

#[test]
fn best_fit_prefers_the_fuller_node() {
    // b already runs something, so packing onto b leaves a empty.
    let nodes = [node("a", 2000, 2048), node("b", 2000, 2048)];
    let other = job(1, "1", "1Gi");
    let mut busy = alloc("x", &other, 0, "b");
    busy.job = "other".into();
    let j = job(1, "500m", "256Mi");
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&busy],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(plan.placements[0].node, "b");
}

#[test]
fn never_overcommits_and_explains_what_does_not_fit() {
    let mut down = node("c", 8000, 8192);
    down.status = NodeStatus::Down;
    let nodes = [node("a", 1000, 128), node("b", 1000, 1024), down];
    let j = job(4, "500m", "256Mi");
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(plan.placements.len(), 2, "{plan:?}");
    assert!(plan.placements.iter().all(|p| p.node == "b"));
    assert_eq!(plan.unplaced, 2);
    assert_eq!(
        plan.explanation,
        "0/3 nodes: 1 insufficient cpu, 1 insufficient memory, 1 node not ready"
    );
}

#[test]
fn no_nodes_is_explained() {
    let j = job(1, "1", "64Mi");
    let plan = reconcile("web", Some(&j), &Snapshot::default());
    assert_eq!(plan.unplaced, 1);
    assert_eq!(plan.explanation, "0/0 nodes: no nodes are registered");
}

#[test]
fn running_replicas_are_left_alone() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(2, "1", "64Mi");
    let a0 = alloc("a0", &j, 0, "a");
    let a1 = alloc("a1", &j, 1, "a");
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&a0, &a1],
    };
    assert!(reconcile("web", Some(&j), &snap).is_empty());
}

#[test]
fn scaling_down_stops_the_highest_replicas() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(1, "1", "64Mi");
    let a0 = alloc("a0", &j, 0, "a");
    let a1 = alloc("a1", &j, 1, "a");
    let a2 = alloc("a2", &j, 2, "a");
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&a2, &a0, &a1],
    };
    let plan = reconcile("web", Some(&j), &snap);
    let stopped: Vec<&str> = plan.stops.iter().map(|s| s.alloc_id.as_str()).collect();
    assert_eq!(stopped, ["a2", "a1"]);
    assert!(plan.placements.is_empty());
}

#[test]
fn a_deleted_job_has_everything_stopped() {
    let j = job(2, "1", "64Mi");
    let a0 = alloc("a0", &j, 0, "a");
    let mut done = alloc("a1", &j, 1, "a");
    done.status = AllocStatus::Complete;
    let snap = Snapshot {
        nodes: vec![],
        allocs: vec![&a0, &done],
    };
    let plan = reconcile("web", None, &snap);
    assert_eq!(plan.stops.len(), 1);
    assert_eq!(plan.stops[0].alloc_id, "a0");
    assert_eq!(plan.stops[0].reason, "job deleted");
}

#[test]
fn a_new_task_version_replaces_old_allocations() {
    let nodes = [node("a", 4000, 4096)];
    let mut j = job(1, "1", "64Mi");
    let old = alloc("old", &j, 0, "a");
    j.version = 2;
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&old],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(plan.stops[0].alloc_id, "old");
    assert_eq!(plan.placements.len(), 1);
    // The old allocation still holds its resources until it has stopped.
    assert_eq!(plan.placements[0].node, "a");
}

#[test]
fn finished_replicas_are_not_replaced_but_lost_ones_are() {
    let nodes = [node("a", 4000, 4096)];
    let j = job(2, "1", "64Mi");
    let mut failed = alloc("f", &j, 0, "a");
    failed.status = AllocStatus::Failed;
    let mut lost = alloc("l", &j, 1, "a");
    lost.status = AllocStatus::Lost;
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&failed, &lost],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(
        plan.placements,
        vec![Placement {
            replica: 1,
            node: "a".into()
        }]
    );
}

#[test]
fn the_same_input_gives_the_same_plan() {
    let nodes: Vec<Node> = (0..20)
        .map(|i| node(&format!("n{i:02}"), 2000, 2048))
        .collect();
    let j = job(30, "300m", "200Mi");
    let forward = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![],
    };
    let backward = Snapshot {
        nodes: nodes.iter().rev().collect(),
        allocs: vec![],
    };
    assert_eq!(
        reconcile("web", Some(&j), &forward),
        reconcile("web", Some(&j), &backward)
    );
}

#[test]
fn allocations_of_an_earlier_job_with_the_same_name_are_replaced() {
    let nodes = [node("a", 4000, 4096)];
    let mut j = job(1, "1", "64Mi");
    let old = alloc("old", &j, 0, "a");
    j.create_index = 10; // deleted and created again after `old` was placed
    let snap = Snapshot {
        nodes: nodes.iter().collect(),
        allocs: vec![&old],
    };
    let plan = reconcile("web", Some(&j), &snap);
    assert_eq!(plan.stops[0].alloc_id, "old");
    assert_eq!(plan.placements.len(), 1);
}
