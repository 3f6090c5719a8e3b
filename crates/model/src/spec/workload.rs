//! Parsing and validation of the workload fields: `type`, `update`,
//! `versions_kept`, the batch fields (`completions`, `parallelism`,
//! `backoff_limit`) and the gang fields (`gang_failure`, `master_port`).
//! The types are in [`crate::job`]; how the fields resolve to counts is in
//! [`crate::workload`].

use std::time::Duration;

use serde_json::{Map, Value};

use crate::duration::format_duration;
use crate::job::{
    Amount, GangFailure, JobSpec, JobType, UpdateSpec, DEFAULT_VERSIONS_KEPT, MAX_REPLICAS,
    MAX_VERSIONS_KEPT,
};
use crate::lifecycle::RestartPolicy;
use crate::workload::{MAX_BACKOFF_LIMIT, MAX_COMPLETIONS};

use super::fields::{
    self, check_span, check_unknown, join, kind, number, one_of, Errors, UPDATE_FIELDS,
};
/// Shortest healthy or progress deadline accepted.
const MIN_DEADLINE: Duration = Duration::from_secs(1);
/// Longest `min_healthy`, `healthy_deadline` or `progress_deadline`.
const MAX_UPDATE_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The workload fields as parsed.
pub(super) struct Workload {
    pub job_type: JobType,
    pub update: UpdateSpec,
    pub versions_kept: u32,
    pub completions: Option<u32>,
    pub parallelism: Option<u32>,
    pub backoff_limit: Option<u32>,
    pub gang_failure: GangFailure,
    pub master_port: Option<u16>,
}

fn amount(v: &Value, path: &str, errs: &mut Errors) -> Option<Amount> {
    let parsed = match v {
        Value::Number(n) => match n.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(x) => Ok(Amount::Count(x)),
            None => Err(format!(
                "{n} must be a number of replicas (e.g. 1) or a percentage of replicas (e.g. 25%)"
            )),
        },
        Value::String(s) => Amount::parse(s),
        other => Err(format!(
            "must be a number or a percentage like 25%, not {}",
            kind(other)
        )),
    };
    parsed.map_err(|e| errs.push(path, e)).ok()
}

fn parse_update(v: &Value, errs: &mut Errors) -> UpdateSpec {
    let mut u = UpdateSpec::default();
    let Value::Object(obj) = v else {
        errs.push("update", format!("must be a map, not {}", kind(v)));
        return u;
    };
    check_unknown(obj, "update", UPDATE_FIELDS, errs);
    let path = |f: &str| join("update", f);
    if let Some(v) = obj.get("max_unavailable") {
        if let Some(a) = amount(v, &path("max_unavailable"), errs) {
            u.max_unavailable = a;
        }
    }
    if let Some(v) = obj.get("max_surge") {
        if let Some(a) = amount(v, &path("max_surge"), errs) {
            u.max_surge = a;
        }
    }
    for (field, slot) in [
        ("min_healthy", &mut u.min_healthy),
        ("healthy_deadline", &mut u.healthy_deadline),
        ("progress_deadline", &mut u.progress_deadline),
    ] {
        if let Some(v) = obj.get(field) {
            if let Some(d) = fields::duration(v, &path(field), errs) {
                *slot = d;
            }
        }
    }
    if let Some(v) = obj.get("auto_rollback") {
        if let Some(b) = fields::boolean(v, &path("auto_rollback"), errs) {
            u.auto_rollback = b;
        }
    }
    if let Some(v) = obj.get("canary") {
        if let Some(n) = number(v, &path("canary"), 0, u64::from(MAX_REPLICAS), errs) {
            u.canary = n as u32;
        }
    }
    u
}

pub(super) fn parse_workload(obj: &Map<String, Value>, errs: &mut Errors) -> Workload {
    let mut w = Workload {
        job_type: JobType::Service,
        update: UpdateSpec::default(),
        versions_kept: DEFAULT_VERSIONS_KEPT,
        completions: None,
        parallelism: None,
        backoff_limit: None,
        gang_failure: GangFailure::default(),
        master_port: None,
    };
    if let Some(v) = obj.get("type") {
        match v.as_str() {
            Some(t) => match JobType::parse(t) {
                Some(t) => w.job_type = t,
                None => errs.push(
                    "type",
                    format!("{t:?} is not a job type; expected service or batch"),
                ),
            },
            None => errs.push("type", format!("must be a string, not {}", kind(v))),
        }
    }
    if let Some(v) = obj.get("update") {
        w.update = parse_update(v, errs);
    }
    if let Some(v) = obj.get("versions_kept") {
        if let Some(n) = number(v, "versions_kept", 1, u64::from(MAX_VERSIONS_KEPT), errs) {
            w.versions_kept = n as u32;
        }
    }
    if let Some(v) = obj.get("completions") {
        w.completions =
            number(v, "completions", 1, u64::from(MAX_COMPLETIONS), errs).map(|n| n as u32);
    }
    if let Some(v) = obj.get("parallelism") {
        w.parallelism =
            number(v, "parallelism", 1, u64::from(MAX_REPLICAS), errs).map(|n| n as u32);
    }
    if let Some(v) = obj.get("backoff_limit") {
        w.backoff_limit =
            number(v, "backoff_limit", 0, u64::from(MAX_BACKOFF_LIMIT), errs).map(|n| n as u32);
    }
    if let Some(v) = obj.get("gang_failure") {
        let expected = "restart_gang (stop every replica and start the gang again) or fail";
        if let Some(g) = one_of(
            v,
            "gang_failure",
            "gang failure policy",
            expected,
            GangFailure::parse,
            errs,
        ) {
            w.gang_failure = g;
        }
    }
    if let Some(v) = obj.get("master_port") {
        w.master_port = number(v, "master_port", 1, 65535, errs).map(|n| n as u16);
    }
    w
}

/// Whether the task in `root` names its restart policy.
pub(super) fn restart_policy_given(root: &Map<String, Value>) -> bool {
    root.get("task")
        .and_then(|t| t.get("restart"))
        .and_then(|r| r.get("policy"))
        .is_some()
}

/// A rollout's span from `min` to a day.
fn check_update_span(d: Duration, field: &str, min: Duration, errs: &mut Errors) {
    check_span(d, field, min, MAX_UPDATE_DURATION, errs);
}

/// Value rules of the workload fields, however the spec was built.
pub(super) fn validate_workload(spec: &JobSpec, errs: &mut Errors) {
    let u = &spec.update;
    if !u.is_default() && !spec.rolls_out() {
        let why = if spec.is_batch() {
            "a batch job is replaced whole when it changes; update applies to services"
        } else {
            "a gang is replaced whole when it changes; update applies to services without gang: true"
        };
        errs.push("update", why);
    } else {
        if u.max_unavailable.is_zero() && u.max_surge.is_zero() {
            errs.push(
                "update.max_surge",
                "max_surge and max_unavailable may not both be 0: the rollout could neither add nor remove an allocation",
            );
        }
        for (field, a) in [
            ("max_unavailable", u.max_unavailable),
            ("max_surge", u.max_surge),
        ] {
            match a {
                Amount::Percent(p) if p > 100 => {
                    errs.push(&join("update", field), format!("{p}% is more than 100%"))
                }
                Amount::Count(n) if n > MAX_REPLICAS => errs.push(
                    &join("update", field),
                    format!("{n} must be a whole number from 0 to {MAX_REPLICAS}"),
                ),
                _ => {}
            }
        }
        check_update_span(u.min_healthy, "update.min_healthy", Duration::ZERO, errs);
        check_update_span(
            u.healthy_deadline,
            "update.healthy_deadline",
            MIN_DEADLINE,
            errs,
        );
        check_update_span(
            u.progress_deadline,
            "update.progress_deadline",
            MIN_DEADLINE,
            errs,
        );
        if u.min_healthy >= u.healthy_deadline {
            errs.push(
                "update.min_healthy",
                format!(
                    "{} must be shorter than healthy_deadline ({}): an allocation could never prove healthy in time",
                    format_duration(u.min_healthy),
                    format_duration(u.healthy_deadline)
                ),
            );
        }
        if u.healthy_deadline > u.progress_deadline {
            errs.push(
                "update.healthy_deadline",
                format!(
                    "{} must not be longer than progress_deadline ({})",
                    format_duration(u.healthy_deadline),
                    format_duration(u.progress_deadline)
                ),
            );
        }
        if u.canary > spec.replicas {
            errs.push(
                "update.canary",
                format!(
                    "{} is more than replicas ({}); at most every replica can be a canary",
                    u.canary, spec.replicas
                ),
            );
        }
    }
    if spec.versions_kept == 0 || spec.versions_kept > MAX_VERSIONS_KEPT {
        errs.push(
            "versions_kept",
            format!(
                "{} must be a whole number from 1 to {MAX_VERSIONS_KEPT}",
                spec.versions_kept
            ),
        );
    }
    let batch_fields = [
        ("completions", spec.completions.is_some()),
        ("parallelism", spec.parallelism.is_some()),
        ("backoff_limit", spec.backoff_limit.is_some()),
    ];
    if !spec.is_batch() {
        for (field, set) in batch_fields {
            if set {
                errs.push(
                    field,
                    "applies to batch jobs only; add `type: batch` (a service keeps `replicas` running)",
                );
            }
        }
    } else {
        if spec.gang {
            for (field, set) in &batch_fields[..2] {
                if *set {
                    errs.push(
                        field,
                        "does not apply to a gang: its `replicas` ranks run together and each must succeed once",
                    );
                }
            }
        } else if spec.replicas != 1 {
            errs.push(
                "replicas",
                format!(
                    "{} is not used by a batch job: it runs `completions` allocations, at most `parallelism` at once (replicas counts the ranks of a gang: add `gang: true` for that)",
                    spec.replicas
                ),
            );
        }
        if let Some(c) = spec.completions {
            if c == 0 || c > MAX_COMPLETIONS {
                errs.push(
                    "completions",
                    format!("{c} must be a whole number from 1 to {MAX_COMPLETIONS}"),
                );
            }
        }
        if let Some(p) = spec.parallelism {
            if p == 0 || p > MAX_REPLICAS {
                errs.push(
                    "parallelism",
                    format!("{p} must be a whole number from 1 to {MAX_REPLICAS}"),
                );
            }
        }
        if let Some(b) = spec.backoff_limit {
            if b > MAX_BACKOFF_LIMIT {
                errs.push(
                    "backoff_limit",
                    format!("{b} must be a whole number from 0 to {MAX_BACKOFF_LIMIT}"),
                );
            }
        }
        if spec.task.restart.policy == RestartPolicy::Always {
            errs.push(
                "task.restart.policy",
                "always never lets a batch job finish; use on-failure (the default for batch jobs) or never",
            );
        }
    }
    if !spec.gang {
        if !spec.gang_failure.is_default() {
            errs.push(
                "gang_failure",
                "applies to gang jobs only; add `gang: true`",
            );
        }
        if spec.master_port.is_some() {
            errs.push("master_port", "applies to gang jobs only; add `gang: true`");
        }
    }
    if spec.master_port == Some(0) {
        errs.push("master_port", "0 must be a port number from 1 to 65535");
    }
}

#[cfg(test)]
mod tests {
    use crate::job::{Amount, GangFailure, JobType};
    use crate::spec::errors_of;
    use crate::{JobSpec, RestartPolicy};
    use std::time::Duration;

    fn has(errs: &[String], prefix: &str) {
        assert!(
            errs.iter().any(|e| e.starts_with(prefix)),
            "missing {prefix:?} in {errs:#?}"
        );
    }

    #[test]
    fn a_gang_runs_on_the_host_network_unless_it_asks_for_the_bridge() {
        let g = JobSpec::from_yaml("name: g\ngang: true\nreplicas: 2\ntask: {image: 'oci:/i'}")
            .unwrap();
        assert_eq!(g.task.network, crate::job::NetworkMode::Host);
        let b = JobSpec::from_yaml(
            "name: g\ngang: true\nreplicas: 2\ntask: {image: 'oci:/i', network: bridge}",
        )
        .unwrap();
        assert_eq!(b.task.network, crate::job::NetworkMode::Bridge);
    }

    #[test]
    fn a_service_gets_the_update_defaults() {
        let spec = JobSpec::from_yaml("name: web\nreplicas: 4\ntask: {image: 'oci:/i'}").unwrap();
        assert_eq!(spec.job_type, JobType::Service);
        let u = &spec.update;
        assert_eq!(u.max_unavailable, Amount::Percent(25));
        assert_eq!(u.max_surge, Amount::Percent(25));
        assert_eq!(u.min_healthy, Duration::from_secs(10));
        assert_eq!(u.healthy_deadline, Duration::from_secs(300));
        assert_eq!(u.progress_deadline, Duration::from_secs(600));
        assert!(u.auto_rollback);
        assert_eq!(u.canary, 0);
        assert_eq!(spec.versions_kept, 10);
        assert_eq!(spec.rolling_limits(), (1, 1));
        assert_eq!(spec.max_unavailable(), 1);
    }

    #[test]
    fn percentages_resolve_against_replicas_and_never_stall() {
        let spec = |replicas: u32, update: &str| {
            JobSpec::from_yaml(&format!(
                "name: web\nreplicas: {replicas}\nupdate: {update}\ntask: {{image: 'oci:/i'}}"
            ))
            .unwrap()
        };
        // 25% of 10: 2 down (rounded down), 3 up (rounded up).
        assert_eq!(spec(10, "{}").rolling_limits(), (2, 3));
        // 25% of 1 is 0 unavailable, 1 surge.
        assert_eq!(spec(1, "{}").rolling_limits(), (0, 1));
        // 10% of 3 rounds both to 0 unavailable and... surge rounds up to 1.
        let s = spec(3, "{max_unavailable: 10%, max_surge: 0}");
        assert_eq!(s.rolling_limits(), (1, 0), "never both 0");
        assert_eq!(
            spec(5, "{max_unavailable: 2, max_surge: 0}").max_unavailable(),
            2
        );
    }

    #[test]
    fn update_rules_name_their_fields() {
        let errs = errors_of(
            "name: web\nreplicas: 2\nupdate: {max_unavailable: 0, max_surge: 0%, canary: 3, min_healthy: 10m, healthy_deadline: 5m, progress_deadline: 1m, colour: red}\ntask: {image: 'oci:/i'}",
        );
        has(&errs, "update.colour: unknown field");
        has(
            &errs,
            "update.max_surge: max_surge and max_unavailable may not both be 0",
        );
        has(&errs, "update.canary: 3 is more than replicas (2)");
        has(
            &errs,
            "update.min_healthy: 10m must be shorter than healthy_deadline (5m)",
        );
        has(
            &errs,
            "update.healthy_deadline: 5m must not be longer than progress_deadline (1m)",
        );
        let errs = errors_of(
            "name: web\nupdate: {max_surge: 120%, max_unavailable: lots, min_healthy: 5, auto_rollback: sure}\ntask: {image: 'oci:/i'}",
        );
        has(&errs, "update.max_surge: \"120%\" is more than 100%");
        has(
            &errs,
            "update.max_unavailable: \"lots\" must be a number of replicas",
        );
        has(&errs, "update.min_healthy: 5 needs a unit");
        has(&errs, "update.auto_rollback: must be true or false");
    }

    #[test]
    fn a_batch_job_defaults_to_one_completion_retried_on_failure() {
        let spec = JobSpec::from_yaml("name: b\ntype: batch\ntask: {image: 'oci:/i'}").unwrap();
        assert!(spec.is_batch());
        assert_eq!(spec.task.restart.policy, RestartPolicy::OnFailure);
        assert_eq!((spec.completions(), spec.parallelism()), (1, 1));
        assert_eq!(spec.backoff_limit(), 6);
        let spec = JobSpec::from_yaml(
            "name: b\ntype: batch\ncompletions: 5\nparallelism: 2\nbackoff_limit: 0\ntask: {image: 'oci:/i', restart: {policy: never}}",
        )
        .unwrap();
        assert_eq!((spec.completions(), spec.parallelism()), (5, 2));
        assert_eq!(spec.backoff_limit(), 0);
        assert_eq!(spec.task.restart.policy, RestartPolicy::Never);
    }

    #[test]
    fn batch_and_gang_fields_are_refused_where_they_mean_nothing() {
        let errs = errors_of(
            "name: web\ncompletions: 3\nbackoff_limit: 1\ngang_failure: fail\nmaster_port: 1234\ntask: {image: 'oci:/i'}",
        );
        has(&errs, "completions: applies to batch jobs only");
        has(&errs, "backoff_limit: applies to batch jobs only");
        has(&errs, "gang_failure: applies to gang jobs only");
        has(&errs, "master_port: applies to gang jobs only");
        let errs = errors_of(
            "name: b\ntype: batch\nreplicas: 3\nupdate: {canary: 1}\ntask: {image: 'oci:/i', restart: {policy: always}}",
        );
        has(&errs, "replicas: 3 is not used by a batch job");
        has(&errs, "update: a batch job is replaced whole");
        has(
            &errs,
            "task.restart.policy: always never lets a batch job finish",
        );
        let errs = errors_of(
            "name: g\ntype: batch\ngang: true\nreplicas: 3\ncompletions: 3\ngang_failure: sometimes\ntask: {image: 'oci:/i'}",
        );
        has(&errs, "completions: does not apply to a gang");
        has(
            &errs,
            "gang_failure: \"sometimes\" is not a gang failure policy",
        );
    }

    #[test]
    fn a_gang_batch_job_restarts_as_a_whole_by_default() {
        let spec = JobSpec::from_yaml(
            "name: train\ntype: batch\ngang: true\nreplicas: 3\ntask: {image: 'oci:/i'}",
        )
        .unwrap();
        assert_eq!(spec.gang_failure, GangFailure::RestartGang);
        assert_eq!(spec.master_port(), 29500);
        assert_eq!(spec.task.restart.policy, RestartPolicy::Never);
        assert_eq!((spec.completions(), spec.parallelism()), (3, 3));
    }

    #[test]
    fn workload_fields_survive_their_serialized_form() {
        for text in [
            "name: web\nreplicas: 4\nversions_kept: 3\nupdate: {max_unavailable: 1, max_surge: 50%, min_healthy: 1s, healthy_deadline: 30s, progress_deadline: 1m, auto_rollback: false, canary: 2}\ntask: {image: 'oci:/i'}",
            "name: b\ntype: batch\ncompletions: 5\nparallelism: 2\nbackoff_limit: 3\ntask: {image: 'oci:/i'}",
            "name: g\ntype: batch\ngang: true\nreplicas: 3\ngang_failure: fail\nmaster_port: 23456\ntask: {image: 'oci:/i'}",
        ] {
            let spec = JobSpec::from_yaml(text).unwrap();
            let yaml = serde_yaml_ng::to_string(&spec).unwrap();
            assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
            spec.validate().unwrap();
        }
    }
}
