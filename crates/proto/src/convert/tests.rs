use skiff_model as m;

use crate::pb;

fn spec() -> m::JobSpec {
    m::JobSpec::from_yaml(
            "name: web\nreplicas: 3\ntask: {image: 'oci:/img:v1', command: [sh], env: {A: b}, network: none, resources: {cpu: 250m, memory: 64Mi}}",
        )
        .unwrap()
}

#[test]
fn job_spec_survives_the_wire() {
    let wire: pb::JobSpec = (&spec()).into();
    let back: m::JobSpec = wire.try_into().unwrap();
    assert_eq!(back, spec());
}

#[test]
fn lifecycle_fields_survive_the_wire() {
    let spec = m::JobSpec::from_yaml(
        r#"
name: web
task:
  image: oci:/img
  restart: {policy: never, backoff: {initial: 1s, max: 2s, reset_after: 3s}}
  probes:
    liveness: {exec: {command: [cat, /x]}, period: 1s}
    readiness: {http: {path: /h, port: 80}, success_threshold: 2, initial_delay: 5s}
    startup: {tcp: {port: 81}}
  security: {read_only_rootfs: true, user: "1:2", cap_add: [NET_ADMIN], cap_drop: [ALL]}
  stop_signal: SIGINT
  stop_grace: 0s
  pids_limit: 10
"#,
    )
    .unwrap();
    let wire: pb::JobSpec = (&spec).into();
    let back: m::JobSpec = wire.try_into().unwrap();
    assert_eq!(back, spec);
}

#[test]
fn scheduling_fields_survive_the_wire() {
    let s = m::JobSpec::from_yaml(
            "name: train\nreplicas: 4\npriority: 0\ngang: true\ndistinct_hosts: true\n\
             constraints: [{label: zone, op: in, values: [a, b]}, {label: cores, op: '>', value: 8}]\n\
             spread: {label: rack, max_skew: 2}\n\
             affinities: [{label: ssd, op: exists, weight: -30}]\n\
             task: {image: 'oci:/i', resources: {cpu: 2, memory: 1Gi, gpus: 2, gpu: {model: A100, min_memory: 40Gi, uuids: [u1, u2], mig: 1g.10gb}, ports: [80, 443]}}",
        )
        .unwrap();
    let wire: pb::JobSpec = (&s).into();
    assert_eq!(m::JobSpec::try_from(wire).unwrap(), s);
}

fn fields(err: &m::SpecError) -> Vec<&str> {
    err.field_errors()
        .iter()
        .map(|e| e.field.as_str())
        .collect()
}

#[test]
fn a_wire_spec_without_priority_gets_the_default_and_every_bad_field_is_named_at_once() {
    let mut wire: pb::JobSpec = (&spec()).into();
    wire.priority = None;
    assert_eq!(m::JobSpec::try_from(wire.clone()).unwrap().priority, 50);
    wire.priority = Some(300);
    wire.constraints.push(pb::Constraint {
        label: "zone".into(),
        op: 99,
        values: vec![],
    });
    wire.task.as_mut().unwrap().ports = vec![70000];
    let err = m::JobSpec::try_from(wire).unwrap_err();
    let mut got = fields(&err);
    got.sort();
    assert_eq!(
        got,
        ["constraints[0].op", "priority", "task.resources.ports[0]"],
        "{err}"
    );
}

#[test]
fn left_out_fields_mean_what_they_mean_in_yaml() {
    for yaml in [
        "name: web\ntask: {image: 'oci:/i'}",
        "name: b\ntype: batch\ntask: {image: 'oci:/i', restart: {backoff: {initial: 2s}}}",
        "name: p\ntask: {image: 'oci:/i', resources: {memory: 1Gi}, probes: {readiness: {tcp: {port: 80}}}}",
        "name: u\nupdate: {canary: 1}\ntask: {image: 'oci:/i'}",
    ] {
        let from_yaml = m::JobSpec::from_yaml(yaml).unwrap();
        // The same fields set on the wire, the rest left out.
        let mut wire = pb::JobSpec {
            name: from_yaml.name.clone(),
            task: Some(pb::TaskSpec {
                image: "oci:/i".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let task = wire.task.as_mut().unwrap();
        if yaml.contains("batch") {
            wire.r#type = pb::JobType::Batch as i32;
            task.restart = Some(pb::RestartSpec {
                backoff_initial_ms: Some(2000),
                ..Default::default()
            });
        }
        if yaml.contains("memory") {
            task.resources = Some(pb::TaskResources {
                memory_bytes: Some(1 << 30),
                ..Default::default()
            });
            task.probes = Some(pb::Probes {
                readiness: Some(pb::Probe {
                    action: Some(pb::probe::Action::Tcp(pb::TcpAction { port: 80 })),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if yaml.contains("canary") {
            wire.update = Some(pb::UpdateSpec {
                canary: 1,
                ..Default::default()
            });
        }
        assert_eq!(m::JobSpec::try_from(wire).unwrap(), from_yaml, "{yaml}");
    }
}

#[test]
fn workload_fields_survive_the_wire() {
    for yaml in [
            "name: web\nreplicas: 4\nversions_kept: 3\nupdate: {max_unavailable: 1, max_surge: 50%, min_healthy: 1s, healthy_deadline: 30s, progress_deadline: 1m, auto_rollback: false, canary: 2}\ntask: {image: 'oci:/i'}",
            "name: b\ntype: batch\ncompletions: 5\nparallelism: 2\nbackoff_limit: 0\ntask: {image: 'oci:/i'}",
            "name: g\ntype: batch\ngang: true\nreplicas: 3\ngang_failure: fail\nmaster_port: 23456\ntask: {image: 'oci:/i'}",
        ] {
            let s = m::JobSpec::from_yaml(yaml).unwrap();
            let wire: pb::JobSpec = (&s).into();
            assert_eq!(m::JobSpec::try_from(wire).unwrap(), s, "{yaml}");
        }
    let mut wire: pb::JobSpec = (&spec()).into();
    wire.r#type = 99;
    wire.gang_failure = 77;
    wire.update = Some(pb::UpdateSpec {
        max_surge: "lots".into(),
        ..Default::default()
    });
    let err = m::JobSpec::try_from(wire).unwrap_err();
    let mut got = fields(&err);
    got.sort();
    assert_eq!(got, ["gang_failure", "type", "update.max_surge"], "{err}");
}

#[test]
fn yaml_paths_name_the_request_fields_they_came_from() {
    for (yaml, wire) in [
        ("", "spec"),
        ("name", "spec.name"),
        ("task.resources.cpu", "spec.task.resources.cpu_millis"),
        ("task.resources.memory", "spec.task.resources.memory_bytes"),
        ("task.resources.gpus", "spec.task.resources.gpus"),
        (
            "task.resources.gpu.min_memory",
            "spec.task.gpu.min_memory_bytes",
        ),
        ("task.resources.ports[1]", "spec.task.ports[1]"),
        ("task.ports[1].host", "spec.task.named_ports[1].host"),
        ("task.stop_grace", "spec.task.stop_grace_ms"),
        ("task.shutdown_delay", "spec.task.shutdown_delay_ms"),
        (
            "task.restart.backoff.initial",
            "spec.task.restart.backoff_initial_ms",
        ),
        ("task.restart.policy", "spec.task.restart.policy"),
        (
            "task.probes.readiness.period",
            "spec.task.probes.readiness.period_ms",
        ),
        (
            "task.probes.liveness.http.port",
            "spec.task.probes.liveness.http.port",
        ),
        ("update.min_healthy", "spec.update.min_healthy_ms"),
        ("constraints[0].value", "spec.constraints[0].values"),
        ("affinities[2].op", "spec.affinities[2].rule.op"),
        ("affinities[2].weight", "spec.affinities[2].weight"),
    ] {
        assert_eq!(crate::wire_field(yaml), wire, "{yaml}");
    }
}

#[test]
fn a_gpu_node_survives_the_wire() {
    let n = m::Node {
        metrics_address: "127.0.0.1:7712".into(),
        image_roots: Vec::new(),
        dynamic_ports: Default::default(),
        subnet: String::new(),
        name: "g".into(),
        labels: Default::default(),
        capacity: m::Resources::new(8000, 1 << 34).with_gpus(2),
        allocatable: m::Resources::new(8000, 1 << 34).with_gpus(1),
        gpus: vec![
            m::Gpu {
                uuid: "GPU-0".into(),
                model: "A100".into(),
                memory_bytes: 80 << 30,
                healthy: true,
                ..m::Gpu::default()
            },
            m::Gpu {
                uuid: "GPU-1".into(),
                model: "A100".into(),
                memory_bytes: 80 << 30,
                healthy: false,
                health_reason: "XID 79".into(),
                index: 1,
                compute_capability: "8.0".into(),
                pci_bus_id: "00000000:07:00.0".into(),
                pcie_generation: 4,
                pcie_width: 16,
                power_limit_mw: 400_000,
                max_sm_clock_mhz: 1410,
                max_memory_clock_mhz: 1593,
                numa_node: Some(1),
                mig_enabled: true,
                mig_profile: None,
                parent: None,
                nvlink_peers: vec!["GPU-0".into()],
            },
            m::Gpu {
                mig_profile: Some("1g.10gb".into()),
                parent: Some("GPU-1".into()),
                ..m::Gpu::new("MIG-1", "A100", 10 << 30)
            },
        ],
        gpu_driver: m::GpuDriver {
            driver_version: "550.54.15".into(),
            cuda_version: "12.4".into(),
        },
        gpu_links: vec![m::GpuLink {
            a: "GPU-0".into(),
            b: "GPU-1".into(),
            level: m::LinkLevel::PcieSwitch,
        }],
        cordoned: true,
        draining: false,
        drain_deadline_ms: None,
        drained: false,
        address: "127.0.0.1:1".into(),
        status: m::NodeStatus::Ready,
        agent_version: "t".into(),
        create_index: 1,
        modify_index: 2,
    };
    let wire: pb::Node = (&n).into();
    assert_eq!(m::Node::try_from(wire).unwrap(), n);
}

#[test]
fn malformed_wire_spec_names_the_fields() {
    let mut wire: pb::JobSpec = (&spec()).into();
    let task = wire.task.as_mut().unwrap();
    task.image = "Nginx".into();
    task.network = 42;
    task.resources = None;
    let err = m::JobSpec::try_from(wire).unwrap_err();
    assert_eq!(fields(&err), ["task.image", "task.network"], "{err}");

    let mut wire: pb::JobSpec = (&spec()).into();
    wire.task = None;
    let err = m::JobSpec::try_from(wire).unwrap_err();
    assert_eq!(fields(&err), ["task"], "{err}");
    assert_eq!(err.field_errors()[0].to_string(), "task: is required");
}

#[test]
fn allocation_survives_the_wire() {
    let a = m::Allocation {
        id: "0123456789abcdef0123456789abcdef".into(),
        job: "web".into(),
        job_version: 2,
        replica: 1,
        node: "n1".into(),
        task: spec().task,
        gpus: vec!["GPU-1".into()],
        ports: vec![8080],
        unhealthy_gpus: vec!["GPU-1: XID 79 (fell off the bus)".into()],
        desired: m::DesiredStatus::Stop,
        status: m::AllocStatus::Failed,
        exit_code: Some(3),
        message: "exited with code 3".into(),
        restart_count: 4,
        healthy: Some(false),
        reason: "oom_killed".into(),
        deploy_health: Some(true),
        healthy_since_ms: 1234,
        create_time_ms: 1000,
        address: "10.88.0.7".into(),
        gang: Some(m::GangRank {
            rank: 1,
            world_size: 3,
            master_addr: "10.0.0.1".into(),
            master_port: 29500,
        }),
        create_index: 5,
        modify_index: 9,
    };
    let wire: pb::Allocation = (&a).into();
    assert_eq!(m::Allocation::try_from(wire).unwrap(), a);
}

/// Every value of a wire enum but UNSPECIFIED, by its number.
fn wire_values(from: impl Fn(i32) -> bool) -> Vec<i32> {
    (1..64).filter(|v| from(*v)).collect()
}

#[test]
fn every_closed_set_round_trips_as_an_enum() {
    use crate::convert::*;
    use std::collections::BTreeSet;

    // Model -> wire -> model, for every member; and no two members share a
    // wire value, and every wire value names a member.
    let mut seen = BTreeSet::new();
    for s in ALL_DEPLOYMENT_STATUSES {
        let w = deployment_status_to_wire(s) as i32;
        assert!(seen.insert(w));
        assert_eq!(deployment_status_from_wire(w, "f").unwrap(), s);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        wire_values(|v| pb::DeploymentStatus::try_from(v).is_ok())
    );
    let mut seen = BTreeSet::new();
    for t in ALL_EVAL_TRIGGERS {
        let w = eval_trigger_to_wire(t) as i32;
        assert!(seen.insert(w));
        assert_eq!(eval_trigger_from_wire(w, "f").unwrap(), t);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        wire_values(|v| pb::EvalTrigger::try_from(v).is_ok())
    );
    let mut seen = BTreeSet::new();
    for s in ALL_EVAL_STATUSES {
        let w = eval_status_to_wire(s) as i32;
        assert!(seen.insert(w));
        assert_eq!(eval_status_from_wire(w, "f").unwrap(), s);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        wire_values(|v| pb::EvalStatus::try_from(v).is_ok())
    );
    let mut seen = BTreeSet::new();
    for (word, wire) in ALL_REASONS {
        assert!(seen.insert(wire as i32));
        assert_eq!(reason_to_wire(word), wire);
        assert_eq!(reason_from_wire(wire as i32, "f").unwrap(), word);
    }
    assert!(seen.remove(&0), "no reason is UNSPECIFIED");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        wire_values(|v| pb::AllocReason::try_from(v).is_ok())
    );
    for s in [
        m::AllocStatus::Pending,
        m::AllocStatus::Running,
        m::AllocStatus::Complete,
        m::AllocStatus::Failed,
        m::AllocStatus::Lost,
    ] {
        let w = pb::AllocStatus::from(s) as i32;
        assert_eq!(alloc_status_from_wire(w, "f").unwrap(), s);
    }
    for d in [m::DesiredStatus::Run, m::DesiredStatus::Stop] {
        assert_eq!(
            desired_from_wire(desired_to_wire(d) as i32, "f").unwrap(),
            d
        );
    }
    for t in [m::JobType::Service, m::JobType::Batch] {
        assert_eq!(
            job_type_from_wire(job_type_to_wire(t) as i32, "f").unwrap(),
            t
        );
    }
    for g in [m::GangFailure::RestartGang, m::GangFailure::Fail] {
        let w = gang_failure_to_wire(g) as i32;
        assert_eq!(gang_failure_from_wire(w, "f").unwrap(), g);
    }
    // A number no member has is refused naming the field.
    let e = eval_trigger_from_wire(99, "latest_eval.trigger").unwrap_err();
    assert_eq!(
        e.to_string(),
        "latest_eval.trigger: 99 is not an evaluation trigger"
    );
}
