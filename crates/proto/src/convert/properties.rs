//! A spec means the same whichever path it comes by. For generated valid
//! specs: the YAML path (the spec's own YAML form, where serde leaves
//! defaults out) and the API path (its wire form, with fields holding their
//! default left out at random, as a client in another language would send
//! it) both give back the spec as it would be stored.

use proptest::prelude::*;
use skiff_model as m;
use skiff_model::testing::valid_spec;

use crate::pb;

/// Which defaulted wire fields to leave out: one coin per field.
#[derive(Debug, Clone)]
struct Omit(Vec<bool>);

impl Omit {
    fn take(&mut self) -> bool {
        self.0.pop().unwrap_or(false)
    }
}

/// Leaves out, where `omit` says so, every wire field whose value is the
/// default the server would fill in.
fn sparse(spec: &m::JobSpec, wire: &mut pb::JobSpec, omit: &mut Omit) {
    if spec.replicas == 1 && omit.take() {
        wire.replicas = None;
    }
    if spec.priority == m::job::DEFAULT_PRIORITY && omit.take() {
        wire.priority = None;
    }
    if spec.versions_kept == m::job::DEFAULT_VERSIONS_KEPT && omit.take() {
        wire.versions_kept = None;
    }
    if spec.job_type == m::JobType::Service && omit.take() {
        wire.r#type = pb::JobType::Unspecified as i32;
    }
    if spec.gang_failure == m::GangFailure::RestartGang && omit.take() {
        wire.gang_failure = pb::GangFailure::Unspecified as i32;
    }
    if let Some(u) = wire.update.as_mut() {
        let d = m::UpdateSpec::default();
        let s = &spec.update;
        if s.max_unavailable == d.max_unavailable && omit.take() {
            u.max_unavailable.clear();
        }
        if s.max_surge == d.max_surge && omit.take() {
            u.max_surge.clear();
        }
        if s.min_healthy == d.min_healthy && omit.take() {
            u.min_healthy_ms = None;
        }
        if s.healthy_deadline == d.healthy_deadline && omit.take() {
            u.healthy_deadline_ms = None;
        }
        if s.progress_deadline == d.progress_deadline && omit.take() {
            u.progress_deadline_ms = None;
        }
        if s.auto_rollback == d.auto_rollback && omit.take() {
            u.auto_rollback = None;
        }
    }
    let task = wire.task.as_mut().expect("a task");
    let t = &spec.task;
    let res = task.resources.as_mut().expect("resources");
    if t.resources.cpu_millis == m::job::DEFAULT_CPU_MILLIS && omit.take() {
        res.cpu_millis = None;
    }
    if t.resources.memory_bytes == m::job::DEFAULT_MEMORY_BYTES && omit.take() {
        res.memory_bytes = None;
    }
    if res.cpu_millis.is_none() && res.memory_bytes.is_none() && res.gpus == 0 && omit.take() {
        task.resources = None;
    }
    // Left out, a task's network is the bridge (a gang's the host's).
    let default_network = if spec.gang {
        m::NetworkMode::Host
    } else {
        m::NetworkMode::Bridge
    };
    if t.network == default_network && omit.take() {
        task.network = pb::NetworkMode::Unspecified as i32;
    }
    let r = task.restart.as_mut().expect("restart");
    if t.restart.policy == spec.default_restart_policy() && omit.take() {
        r.policy = pb::RestartPolicy::Unspecified as i32;
    }
    let b = m::Backoff::default();
    if t.restart.backoff.initial == b.initial && omit.take() {
        r.backoff_initial_ms = None;
    }
    if t.restart.backoff.max == b.max && omit.take() {
        r.backoff_max_ms = None;
    }
    if t.restart.backoff.reset_after == b.reset_after && omit.take() {
        r.backoff_reset_after_ms = None;
    }
    let probes = task.probes.as_mut().expect("probes");
    let kept = [&t.probes.liveness, &t.probes.readiness, &t.probes.startup];
    let wires = [
        &mut probes.liveness,
        &mut probes.readiness,
        &mut probes.startup,
    ];
    for (model, wire) in kept.into_iter().zip(wires) {
        let (Some(p), Some(w)) = (model, wire.as_mut()) else {
            continue;
        };
        if p.period == m::lifecycle::DEFAULT_PROBE_PERIOD && omit.take() {
            w.period_ms = None;
        }
        if p.timeout == m::lifecycle::DEFAULT_PROBE_TIMEOUT && omit.take() {
            w.timeout_ms = None;
        }
        if p.success_threshold == m::lifecycle::DEFAULT_SUCCESS_THRESHOLD && omit.take() {
            w.success_threshold = None;
        }
        if p.failure_threshold == m::lifecycle::DEFAULT_FAILURE_THRESHOLD && omit.take() {
            w.failure_threshold = None;
        }
        if p.initial_delay.is_zero() && omit.take() {
            w.initial_delay_ms = None;
        }
    }
    if t.security == m::Security::default() && omit.take() {
        task.security = None;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_yaml_and_api_paths_store_the_same_job(
        spec in valid_spec(),
        coins in proptest::collection::vec(any::<bool>(), 64),
    ) {
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        let from_yaml = m::JobSpec::from_yaml(&yaml);
        prop_assert_eq!(from_yaml.as_ref(), Ok(&spec), "YAML:\n{}", yaml);

        let mut wire: pb::JobSpec = (&spec).into();
        let full = m::JobSpec::try_from(wire.clone());
        prop_assert_eq!(full.as_ref(), Ok(&spec));
        sparse(&spec, &mut wire, &mut Omit(coins));
        let from_api = m::JobSpec::try_from(wire.clone());
        prop_assert_eq!(from_api.as_ref(), Ok(&spec), "wire: {:?}", wire);
    }
}

#[test]
fn a_minimal_wire_spec_is_stored_like_a_minimal_yaml_one() {
    let yaml = m::JobSpec::from_yaml("name: tiny\ntask: {image: 'oci:/i'}").unwrap();
    let wire = pb::JobSpec {
        name: "tiny".into(),
        task: Some(pb::TaskSpec {
            image: "oci:/i".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = m::JobSpec::try_from(wire).unwrap();
    assert_eq!(api, yaml);
    assert_eq!(api.replicas, 1, "left-out replicas mean one");
    assert_eq!(
        (
            api.task.resources.cpu_millis,
            api.task.resources.memory_bytes
        ),
        (m::job::DEFAULT_CPU_MILLIS, m::job::DEFAULT_MEMORY_BYTES)
    );
    let batch = pb::JobSpec {
        name: "once".into(),
        r#type: pb::JobType::Batch as i32,
        task: Some(pb::TaskSpec {
            image: "oci:/i".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let batch = m::JobSpec::try_from(batch).unwrap();
    assert_eq!(
        batch.task.restart.policy,
        m::RestartPolicy::OnFailure,
        "a batch job's restart policy defaults to on-failure on every path"
    );
}
