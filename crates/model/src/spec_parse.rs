//! Turns an untyped YAML/JSON tree into a [`JobSpec`], collecting every broken
//! rule with the dotted path of its field instead of stopping at the first.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::duration::{format_duration, parse_duration};
use crate::error::{FieldError, SpecError};
use crate::job::{
    ImageRef, JobSpec, NetworkMode, TaskSpec, DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES,
    DEFAULT_PRIORITY, MAX_REPLICAS, MIN_MEMORY_BYTES,
};
use crate::lifecycle::{
    normalize_capability, normalize_signal, Backoff, Probe, ProbeAction, Probes, RestartPolicy,
    RestartSpec, Security, UserId, CAPABILITIES,
};
use crate::quantity::{format_memory, parse_cpu, parse_memory};
use crate::resources::TaskResources;
use crate::spec_sched;
use crate::spec_workload;

const JOB_FIELDS: &[&str] = &[
    "name",
    "type",
    "replicas",
    "priority",
    "gang",
    "constraints",
    "spread",
    "distinct_hosts",
    "affinities",
    "update",
    "versions_kept",
    "completions",
    "parallelism",
    "backoff_limit",
    "gang_failure",
    "master_port",
    "task",
];
const TASK_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "network",
    "restart",
    "probes",
    "security",
    "stop_signal",
    "stop_grace",
    "pids_limit",
];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpus", "gpu", "ports"];
const RESTART_FIELDS: &[&str] = &["policy", "backoff"];
const BACKOFF_FIELDS: &[&str] = &["initial", "max", "reset_after"];
const PROBES_FIELDS: &[&str] = &["liveness", "readiness", "startup"];
const PROBE_FIELDS: &[&str] = &[
    "exec",
    "http",
    "tcp",
    "period",
    "timeout",
    "success_threshold",
    "failure_threshold",
    "initial_delay",
];
const SECURITY_FIELDS: &[&str] = &["read_only_rootfs", "user", "cap_add", "cap_drop"];
/// Shortest probe period accepted (Kubernetes' is 1 s; shorter periods
/// are allowed for quick local checks).
pub const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);
/// Shortest probe timeout accepted.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest back-off, grace period or probe delay accepted.
const MAX_LIFECYCLE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most processes a container may be allowed (the kernel's `pid_max` limit).
const MAX_PIDS_LIMIT: u32 = 4 * 1024 * 1024;
const MAX_THRESHOLD: u32 = 1000;
/// Most CPU one task may ask for: 1024 cores.
const MAX_CPU_MILLIS: u64 = 1024 * 1000;
const MAX_ARGS: usize = 1024;
const MAX_ENV: usize = 1024;
const MAX_STRING: usize = 64 * 1024;

pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
}

pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Reports fields the object holds that are not in `allowed`.
pub(crate) fn check_unknown(
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
    errs: &mut Errors,
) {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.push(
                &join(path, key),
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            );
        }
    }
}

pub(crate) fn as_object<'a>(
    v: &'a Value,
    path: &str,
    errs: &mut Errors,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            errs.push(path, format!("must be a map, not {}", kind(other)));
            None
        }
    }
}

pub(crate) fn as_string(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) if s.len() > MAX_STRING => {
            errs.push(path, format!("is longer than {MAX_STRING} bytes"));
            None
        }
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(path, format!("must be a string, not {}", kind(other)));
            None
        }
    }
}

/// Scalars written without quotes (`PORT: 80`, `cpu: 0.5`) are taken as text.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn string_list(v: &Value, path: &str, errs: &mut Errors) -> Vec<String> {
    let Value::Array(items) = v else {
        errs.push(path, format!("must be a list of strings, not {}", kind(v)));
        return Vec::new();
    };
    if items.len() > MAX_ARGS {
        errs.push(
            path,
            format!("has {} items; at most {MAX_ARGS}", items.len()),
        );
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| as_string(item, &format!("{path}[{i}]"), errs))
        .collect()
}

pub(crate) fn parse_job(root: &Value) -> Result<JobSpec, SpecError> {
    let mut errs = Errors(Vec::new());
    let spec = parse_job_inner(root, &mut errs);
    match spec {
        Some(spec) if errs.0.is_empty() => Ok(spec),
        _ => Err(SpecError::Invalid(errs.0)),
    }
}

fn parse_job_inner(root: &Value, errs: &mut Errors) -> Option<JobSpec> {
    let obj = match root {
        Value::Object(m) => m,
        Value::Null => {
            errs.push("", "spec is empty");
            return None;
        }
        other => {
            errs.push("", format!("spec must be a map, not {}", kind(other)));
            return None;
        }
    };
    check_unknown(obj, "", JOB_FIELDS, errs);

    let name = match obj.get("name") {
        Some(v) => as_string(v, "name", errs).inspect(|n| validate_name(n, errs)),
        None => {
            errs.push("name", "is required");
            None
        }
    };
    let workload = spec_workload::parse_workload(obj, errs);
    let replicas = match obj.get("replicas") {
        None => Some(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(r) if r <= u64::from(MAX_REPLICAS) => Some(r as u32),
            _ => {
                errs.push(
                    "replicas",
                    format!("{n} must be a whole number from 0 to {MAX_REPLICAS}"),
                );
                None
            }
        },
        Some(other) => {
            errs.push("replicas", format!("must be a number, not {}", kind(other)));
            None
        }
    };
    let task = match obj.get("task") {
        Some(v) => parse_task(v, "task", errs),
        None => {
            errs.push("task", "is required");
            None
        }
    };
    let rules = spec_sched::parse_job_rules(obj, errs);
    spec_sched::validate_parsed_rules(&rules, errs);
    let mut spec = JobSpec {
        name: name?,
        job_type: workload.job_type,
        replicas: replicas?,
        priority: rules.priority.unwrap_or(DEFAULT_PRIORITY),
        gang: rules.gang,
        constraints: rules.constraints,
        spread: rules.spread,
        distinct_hosts: rules.distinct_hosts,
        affinities: rules.affinities,
        update: workload.update,
        versions_kept: workload.versions_kept,
        completions: workload.completions,
        parallelism: workload.parallelism,
        backoff_limit: workload.backoff_limit,
        gang_failure: workload.gang_failure,
        master_port: workload.master_port,
        task: task?,
    };
    if spec.is_batch() && !spec_workload::restart_policy_given(obj) {
        spec.task.restart.policy = spec_workload::batch_default_restart(&spec);
    }
    spec_workload::validate_workload(&spec, errs);
    Some(spec)
}

fn parse_task(v: &Value, path: &str, errs: &mut Errors) -> Option<TaskSpec> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, TASK_FIELDS, errs);

    let image = match obj.get("image") {
        Some(v) => as_string(v, &join(path, "image"), errs).and_then(|s| {
            ImageRef::parse(&s)
                .map_err(|e| errs.push(&join(path, "image"), e))
                .ok()
        }),
        None => {
            errs.push(&join(path, "image"), "is required");
            None
        }
    };
    let command = obj
        .get("command")
        .map(|v| string_list(v, &join(path, "command"), errs))
        .unwrap_or_default();
    let args = obj
        .get("args")
        .map(|v| string_list(v, &join(path, "args"), errs))
        .unwrap_or_default();

    let mut env = BTreeMap::new();
    if let Some(v) = obj.get("env") {
        let env_path = join(path, "env");
        if let Some(map) = as_object(v, &env_path, errs) {
            if map.len() > MAX_ENV {
                errs.push(
                    &env_path,
                    format!("has {} entries; at most {MAX_ENV}", map.len()),
                );
            }
            for (key, value) in map.iter().take(MAX_ENV) {
                match scalar_text(value) {
                    Some(text) => {
                        env.insert(key.clone(), text);
                    }
                    None => errs.push(
                        &join(&env_path, key),
                        format!("must be a string, not {}", kind(value)),
                    ),
                }
            }
        }
    }
    let workdir = obj
        .get("workdir")
        .and_then(|v| as_string(v, &join(path, "workdir"), errs));
    let resources = match obj.get("resources") {
        Some(v) => parse_resources(v, &join(path, "resources"), errs),
        None => Some(TaskResources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES)),
    };
    let network = match obj.get("network") {
        None => Some(NetworkMode::Host),
        Some(v) => match v.as_str() {
            Some("host") => Some(NetworkMode::Host),
            Some("none") => Some(NetworkMode::None),
            _ => {
                errs.push(
                    &join(path, "network"),
                    format!(
                        "{} is not a network mode; expected host or none",
                        serde_json::to_string(v).unwrap_or_default()
                    ),
                );
                None
            }
        },
    };
    let restart = match obj.get("restart") {
        None => Some(RestartSpec::default()),
        Some(v) => parse_restart(v, &join(path, "restart"), errs),
    };
    let probes = match obj.get("probes") {
        None => Some(Probes::default()),
        Some(v) => parse_probes(v, &join(path, "probes"), errs),
    };
    let security = match obj.get("security") {
        None => Some(Security::default()),
        Some(v) => parse_security(v, &join(path, "security"), errs),
    };
    let stop_signal = obj.get("stop_signal").and_then(|v| {
        let field = join(path, "stop_signal");
        let text = scalar_text(v).or_else(|| {
            errs.push(&field, format!("must be a signal name, not {}", kind(v)));
            None
        })?;
        match normalize_signal(&text) {
            Some(sig) => Some(sig.to_string()),
            None => {
                errs.push(&field, format!("{text:?} {}", SIGNAL_RULE));
                None
            }
        }
    });
    let stop_grace = obj
        .get("stop_grace")
        .map(|v| duration_field(v, &join(path, "stop_grace"), errs));
    let pids_limit = obj
        .get("pids_limit")
        .map(|v| u32_field(v, &join(path, "pids_limit"), errs));
    let task = TaskSpec {
        image: image?,
        command,
        args,
        env,
        workdir,
        resources: resources?,
        network: network?,
        restart: restart?,
        probes: probes?,
        security: security?,
        stop_signal,
        stop_grace: stop_grace.map(|d| d.ok_or(())).transpose().ok()?,
        pids_limit: pids_limit.map(|n| n.ok_or(())).transpose().ok()?,
    };
    validate_task(&task, path, errs);
    Some(task)
}

const SIGNAL_RULE: &str =
    "is not a stop signal; use one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGPWR, SIGRTMIN+3, SIGKILL";

fn duration_field(v: &Value, path: &str, errs: &mut Errors) -> Option<Duration> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|e| errs.push(path, e)).ok(),
        Value::Number(n) => {
            errs.push(path, format!("{n} needs a unit: ms, s, m or h (e.g. {n}s)"));
            None
        }
        other => {
            errs.push(
                path,
                format!("must be a duration like 10s, not {}", kind(other)),
            );
            None
        }
    }
}

fn u32_field(v: &Value, path: &str, errs: &mut Errors) -> Option<u32> {
    match v {
        Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                errs.push(
                    path,
                    format!("{n} must be a whole number from 0 to {}", u32::MAX),
                );
                None
            }
        },
        other => {
            errs.push(path, format!("must be a number, not {}", kind(other)));
            None
        }
    }
}

fn port_field(v: &Value, path: &str, errs: &mut Errors) -> Option<u16> {
    match v.as_u64() {
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        _ => {
            errs.push(
                path,
                format!(
                    "{} must be a port number from 1 to 65535",
                    serde_json::to_string(v).unwrap_or_default()
                ),
            );
            None
        }
    }
}

fn parse_restart(v: &Value, path: &str, errs: &mut Errors) -> Option<RestartSpec> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, RESTART_FIELDS, errs);
    let policy = match obj.get("policy") {
        None => Some(RestartPolicy::default()),
        Some(v) => match v.as_str().and_then(RestartPolicy::parse) {
            Some(p) => Some(p),
            None => {
                errs.push(
                    &join(path, "policy"),
                    format!(
                        "{} is not a restart policy; expected always, on-failure or never",
                        serde_json::to_string(v).unwrap_or_default()
                    ),
                );
                None
            }
        },
    };
    let backoff = match obj.get("backoff") {
        None => Some(Backoff::default()),
        Some(v) => {
            let bpath = join(path, "backoff");
            let bobj = as_object(v, &bpath, errs)?;
            check_unknown(bobj, &bpath, BACKOFF_FIELDS, errs);
            let d = Backoff::default();
            let mut field = |name: &str, default: Duration| match bobj.get(name) {
                None => Some(default),
                Some(v) => duration_field(v, &join(&bpath, name), errs),
            };
            let initial = field("initial", d.initial);
            let max = field("max", d.max);
            let reset_after = field("reset_after", d.reset_after);
            Some(Backoff {
                initial: initial?,
                max: max?,
                reset_after: reset_after?,
            })
        }
    };
    Some(RestartSpec {
        policy: policy?,
        backoff: backoff?,
    })
}

fn parse_probes(v: &Value, path: &str, errs: &mut Errors) -> Option<Probes> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, PROBES_FIELDS, errs);
    let mut ok = true;
    let mut one = |name: &str| match obj.get(name) {
        None => None,
        Some(v) => {
            let p = parse_probe(v, &join(path, name), errs);
            ok &= p.is_some();
            p
        }
    };
    let probes = Probes {
        liveness: one("liveness"),
        readiness: one("readiness"),
        startup: one("startup"),
    };
    ok.then_some(probes)
}

fn parse_probe(v: &Value, path: &str, errs: &mut Errors) -> Option<Probe> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, PROBE_FIELDS, errs);
    let given: Vec<&str> = ["exec", "http", "tcp"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let action = match given.as_slice() {
        ["exec"] => {
            let p = join(path, "exec");
            let e = as_object(&obj["exec"], &p, errs)?;
            check_unknown(e, &p, &["command"], errs);
            match e.get("command") {
                Some(c) => Some(ProbeAction::Exec {
                    command: string_list(c, &join(&p, "command"), errs),
                }),
                None => {
                    errs.push(&join(&p, "command"), "is required");
                    None
                }
            }
        }
        ["http"] => {
            let p = join(path, "http");
            let h = as_object(&obj["http"], &p, errs)?;
            check_unknown(h, &p, &["path", "port"], errs);
            let hpath = match h.get("path") {
                None => Some("/".to_string()),
                Some(v) => as_string(v, &join(&p, "path"), errs),
            };
            let port = match h.get("port") {
                Some(v) => port_field(v, &join(&p, "port"), errs),
                None => {
                    errs.push(&join(&p, "port"), "is required");
                    None
                }
            };
            Some(ProbeAction::Http {
                path: hpath?,
                port: port?,
            })
        }
        ["tcp"] => {
            let p = join(path, "tcp");
            let t = as_object(&obj["tcp"], &p, errs)?;
            check_unknown(t, &p, &["port"], errs);
            match t.get("port") {
                Some(v) => {
                    port_field(v, &join(&p, "port"), errs).map(|port| ProbeAction::Tcp { port })
                }
                None => {
                    errs.push(&join(&p, "port"), "is required");
                    None
                }
            }
        }
        [] => {
            errs.push(path, "needs one of exec, http or tcp");
            None
        }
        several => {
            errs.push(
                path,
                format!(
                    "has {}; a probe takes exactly one of exec, http or tcp",
                    several.join(" and ")
                ),
            );
            None
        }
    };
    let mut probe = Probe::new(action?);
    let mut ok = true;
    for (name, slot) in [
        ("period", &mut probe.period),
        ("timeout", &mut probe.timeout),
        ("initial_delay", &mut probe.initial_delay),
    ] {
        if let Some(v) = obj.get(name) {
            match duration_field(v, &join(path, name), errs) {
                Some(d) => *slot = d,
                None => ok = false,
            }
        }
    }
    for (name, slot) in [
        ("success_threshold", &mut probe.success_threshold),
        ("failure_threshold", &mut probe.failure_threshold),
    ] {
        if let Some(v) = obj.get(name) {
            match u32_field(v, &join(path, name), errs) {
                Some(n) => *slot = n,
                None => ok = false,
            }
        }
    }
    ok.then_some(probe)
}

fn parse_security(v: &Value, path: &str, errs: &mut Errors) -> Option<Security> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, SECURITY_FIELDS, errs);
    let read_only_rootfs = match obj.get("read_only_rootfs") {
        None => Some(false),
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            errs.push(
                &join(path, "read_only_rootfs"),
                format!("must be true or false, not {}", kind(other)),
            );
            None
        }
    };
    let user = match obj.get("user") {
        None => Some(None),
        Some(v) => scalar_text(v)
            .ok_or_else(|| {
                errs.push(
                    &join(path, "user"),
                    format!("must be UID:GID, not {}", kind(v)),
                )
            })
            .ok()
            .and_then(|t| {
                UserId::parse(&t)
                    .map_err(|e| errs.push(&join(path, "user"), e))
                    .ok()
            })
            .map(Some),
    };
    let caps = |name: &str, errs: &mut Errors| {
        obj.get(name)
            .map(|v| string_list(v, &join(path, name), errs))
            .unwrap_or_default()
            .iter()
            .map(|c| normalize_capability(c))
            .collect::<Vec<_>>()
    };
    let cap_add = caps("cap_add", errs);
    let cap_drop = caps("cap_drop", errs);
    Some(Security {
        read_only_rootfs: read_only_rootfs?,
        user: user?,
        cap_add,
        cap_drop,
    })
}

fn parse_resources(v: &Value, path: &str, errs: &mut Errors) -> Option<TaskResources> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, RESOURCE_FIELDS, errs);
    let cpu = match obj.get("cpu") {
        None => Some(DEFAULT_CPU_MILLIS),
        Some(v) => match scalar_text(v) {
            Some(text) => parse_cpu(&text)
                .map_err(|e| errs.push(&join(path, "cpu"), e.to_string()))
                .ok(),
            None => {
                errs.push(
                    &join(path, "cpu"),
                    format!("must be a quantity, not {}", kind(v)),
                );
                None
            }
        },
    };
    let memory = match obj.get("memory") {
        None => Some(DEFAULT_MEMORY_BYTES),
        Some(v) => match scalar_text(v) {
            Some(text) => parse_memory(&text)
                .map_err(|e| errs.push(&join(path, "memory"), e.to_string()))
                .ok(),
            None => {
                errs.push(
                    &join(path, "memory"),
                    format!("must be a quantity, not {}", kind(v)),
                );
                None
            }
        },
    };
    let mut r = TaskResources::new(cpu?, memory?);
    spec_sched::parse_task_resources(obj, path, &mut r, errs);
    Some(r)
}

/// Rules on values, whatever form the spec arrived in.
pub(crate) fn validate_job(spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Errors(Vec::new());
    validate_name(&spec.name, &mut errs);
    if spec.replicas > MAX_REPLICAS {
        errs.push(
            "replicas",
            format!(
                "{} must be a whole number from 0 to {MAX_REPLICAS}",
                spec.replicas
            ),
        );
    }
    validate_task(&spec.task, "task", &mut errs);
    spec_sched::validate_job_rules(spec, &mut errs);
    spec_workload::validate_workload(spec, &mut errs);
    errs.0
}

fn validate_name(name: &str, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(name) {
        errs.push("name", format!("{name:?} {rule}"));
    }
}

fn validate_task(task: &TaskSpec, path: &str, errs: &mut Errors) {
    if let Some(first) = task.command.first() {
        if first.is_empty() {
            errs.push(
                &join(path, "command[0]"),
                "must name a program, not be empty",
            );
        }
    }
    for (key, value) in &task.env {
        let field = join(path, &format!("env.{key}"));
        if !is_env_name(key) {
            errs.push(
                &field,
                "is not a valid variable name: letters, digits and '_', not starting with a digit",
            );
        } else if key.starts_with("SKIFF_") {
            errs.push(
                &field,
                "names starting with SKIFF_ are reserved for variables Skiff sets",
            );
        }
        if value.contains('\0') {
            errs.push(&field, "must not contain a NUL byte");
        }
    }
    for (list, items) in [("command", &task.command), ("args", &task.args)] {
        for (i, arg) in items.iter().enumerate() {
            if arg.contains('\0') {
                errs.push(
                    &join(path, &format!("{list}[{i}]")),
                    "must not contain a NUL byte",
                );
            }
        }
    }
    if let Some(dir) = &task.workdir {
        if !dir.starts_with('/') {
            errs.push(
                &join(path, "workdir"),
                format!("{dir:?} must be an absolute path"),
            );
        }
    }
    validate_lifecycle(task, path, errs);
    let r = &task.resources;
    spec_sched::validate_task_resources(task, path, errs);
    let cpu = join(path, "resources.cpu");
    if r.cpu_millis == 0 {
        errs.push(&cpu, "must be more than 0");
    } else if r.cpu_millis > MAX_CPU_MILLIS {
        errs.push(&cpu, "must be at most 1024 cores");
    }
    if r.memory_bytes < MIN_MEMORY_BYTES {
        errs.push(
            &join(path, "resources.memory"),
            format!(
                "{} is below the minimum of {}",
                format_memory(r.memory_bytes),
                format_memory(MIN_MEMORY_BYTES)
            ),
        );
    }
}

fn check_duration(d: Duration, field: &str, min: Duration, errs: &mut Errors) {
    if d < min {
        errs.push(
            field,
            format!(
                "{} is below the minimum of {}",
                format_duration(d),
                format_duration(min)
            ),
        );
    } else if d > MAX_LIFECYCLE_DURATION {
        errs.push(
            field,
            format!(
                "{} is above the maximum of {}",
                format_duration(d),
                format_duration(MAX_LIFECYCLE_DURATION)
            ),
        );
    }
}

/// Restart, probes, security and stop rules.
fn validate_lifecycle(task: &TaskSpec, path: &str, errs: &mut Errors) {
    let b = &task.restart.backoff;
    let bpath = join(path, "restart.backoff");
    let ms = Duration::from_millis(1);
    check_duration(b.initial, &join(&bpath, "initial"), ms, errs);
    check_duration(b.max, &join(&bpath, "max"), ms, errs);
    check_duration(b.reset_after, &join(&bpath, "reset_after"), ms, errs);
    if b.max < b.initial {
        errs.push(
            &join(&bpath, "max"),
            format!(
                "{} must not be below backoff.initial ({})",
                format_duration(b.max),
                format_duration(b.initial)
            ),
        );
    }
    for (name, probe) in [
        ("liveness", &task.probes.liveness),
        ("readiness", &task.probes.readiness),
        ("startup", &task.probes.startup),
    ] {
        if let Some(p) = probe {
            validate_probe(p, name, &join(path, &format!("probes.{name}")), errs);
        }
    }
    let s = &task.security;
    let spath = join(path, "security");
    for (list, items) in [("cap_add", &s.cap_add), ("cap_drop", &s.cap_drop)] {
        for (i, cap) in items.iter().enumerate() {
            let field = join(&spath, &format!("{list}[{i}]"));
            if cap == "ALL" {
                if list == "cap_add" {
                    errs.push(
                        &field,
                        "ALL may only be dropped; list the capabilities the task needs",
                    );
                }
            } else if !CAPABILITIES.contains(&cap.as_str()) {
                errs.push(
                    &field,
                    format!("{cap:?} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME)"),
                );
            }
        }
    }
    if let Some(sig) = &task.stop_signal {
        if normalize_signal(sig).is_none() {
            errs.push(&join(path, "stop_signal"), format!("{sig:?} {SIGNAL_RULE}"));
        }
    }
    if let Some(g) = task.stop_grace {
        check_duration(g, &join(path, "stop_grace"), Duration::ZERO, errs);
    }
    if let Some(n) = task.pids_limit {
        if n == 0 || n > MAX_PIDS_LIMIT {
            errs.push(
                &join(path, "pids_limit"),
                format!("{n} must be from 1 to {MAX_PIDS_LIMIT}"),
            );
        }
    }
}

fn validate_probe(p: &Probe, name: &str, path: &str, errs: &mut Errors) {
    check_duration(p.period, &join(path, "period"), MIN_PROBE_PERIOD, errs);
    check_duration(p.timeout, &join(path, "timeout"), MIN_PROBE_TIMEOUT, errs);
    check_duration(
        p.initial_delay,
        &join(path, "initial_delay"),
        Duration::ZERO,
        errs,
    );
    for (field, n) in [
        ("success_threshold", p.success_threshold),
        ("failure_threshold", p.failure_threshold),
    ] {
        if n == 0 || n > MAX_THRESHOLD {
            errs.push(
                &join(path, field),
                format!("{n} must be from 1 to {MAX_THRESHOLD}"),
            );
        }
    }
    if name != "readiness" && p.success_threshold != 1 {
        errs.push(
            &join(path, "success_threshold"),
            format!("must be 1 for a {name} probe (as in Kubernetes)"),
        );
    }
    match &p.action {
        ProbeAction::Exec { command } => {
            let field = join(path, "exec.command");
            match command.first() {
                None => errs.push(&field, "must name a program"),
                Some(first) if first.is_empty() => {
                    errs.push(&join(&field, "[0]"), "must name a program, not be empty")
                }
                _ => {}
            }
            if command.iter().any(|a| a.contains('\0')) {
                errs.push(&field, "must not contain a NUL byte");
            }
        }
        ProbeAction::Http { path: p, port } => {
            if !p.starts_with('/') || p.len() > 2048 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errs.push(
                    &join(path, "http.path"),
                    format!("{p:?} must start with '/' and hold no spaces or control characters (at most 2048 bytes)"),
                );
            }
            if *port == 0 {
                errs.push(
                    &join(path, "http.port"),
                    "0 must be a port number from 1 to 65535",
                );
            }
        }
        ProbeAction::Tcp { port } => {
            if *port == 0 {
                errs.push(
                    &join(path, "tcp.port"),
                    "0 must be a port number from 1 to 65535",
                );
            }
        }
    }
}

/// Kubernetes' DNS-1123 label rule.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 63 {
        return Err("must be at most 63 characters");
    }
    let bytes = name.as_bytes();
    let ok_inner = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_inner || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit");
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name: hello
replicas: 2
task:
  image: oci:./images/busybox:latest
  command: ["sh", "-c", "echo hello from $SKIFF_ALLOC_ID; sleep 3600"]
  env: {GREETING: hi}
  resources: {cpu: 250m, memory: 64Mi}
"#;

    fn errors_of(text: &str) -> Vec<String> {
        match JobSpec::from_yaml(text) {
            Ok(spec) => panic!("expected errors, got {spec:?}"),
            Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_readme_example_parses() {
        let spec = JobSpec::from_yaml(HELLO).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.task.image.path, "./images/busybox");
        assert_eq!(spec.task.image.tag.as_deref(), Some("latest"));
        assert_eq!(spec.task.resources, TaskResources::new(250, 64 << 20));
        assert_eq!(spec.task.env["GREETING"], "hi");
        assert_eq!(spec.task.network, NetworkMode::Host);
    }

    #[test]
    fn a_bad_quantity_names_the_field_and_the_rule() {
        let text = HELLO.replace("64Mi", "64Q");
        assert_eq!(
            errors_of(&text),
            vec!["task.resources.memory: \"64Q\" is not a quantity"]
        );
    }

    #[test]
    fn every_error_is_listed_not_only_the_first() {
        let text = r#"
name: Hello_World
replicas: -1
colour: blue
task:
  image: docker.io/busybox
  imagee: typo
  env: {"1BAD": x, SKIFF_JOB: y}
  resources: {cpu: lots, memory: 64Q, disk: 1Gi}
  network: bridge
"#;
        let errs = errors_of(text);
        let expect = [
            "colour: unknown field",
            "name: \"Hello_World\" must be a DNS-1123 label",
            "replicas: -1 must be a whole number from 0 to 1000",
            "task.imagee: unknown field",
            "task.image: \"docker.io/busybox\" must be oci:PATH[:TAG]",
            "task.resources.disk: unknown field",
            "task.resources.cpu: \"lots\" is not a quantity",
            "task.resources.memory: \"64Q\" is not a quantity",
            "task.network: \"bridge\" is not a network mode",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        // The value rules that need a whole spec (name, env names) are still
        // checked once the shape is right.
        let shaped = text
            .replace("replicas: -1", "replicas: 1")
            .replace("colour: blue\n", "")
            .replace("docker.io/busybox", "oci:/img")
            .replace("  imagee: typo\n", "")
            .replace("cpu: lots, memory: 64Q, disk: 1Gi", "cpu: 1")
            .replace("bridge", "none");
        let errs = errors_of(&shaped);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("name: "));
        assert!(errs[1].starts_with("task.env.1BAD: is not a valid variable name"));
        assert!(errs[2].starts_with("task.env.SKIFF_JOB: names starting with SKIFF_ are reserved"));
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_eq!(
            errors_of("replicas: 1"),
            vec!["name: is required", "task: is required"]
        );
        assert_eq!(
            errors_of("name: x\ntask: {}"),
            vec!["task.image: is required"]
        );
        assert_eq!(errors_of(""), vec!["spec is empty"]);
        assert_eq!(errors_of("[1, 2]"), vec!["spec must be a map, not a list"]);
    }

    #[test]
    fn defaults_fill_in_what_is_left_out() {
        let spec = JobSpec::from_yaml("name: x\ntask: {image: 'oci:/i'}").unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(
            spec.task.resources,
            TaskResources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES)
        );
        assert_eq!(spec.task.image.tag, None);
    }

    #[test]
    fn numbers_in_env_and_resources_are_taken_as_text() {
        let spec = JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', env: {PORT: 80, DEBUG: true}, resources: {cpu: 0.5, memory: 67108864}}",
        )
        .unwrap();
        assert_eq!(spec.task.env["PORT"], "80");
        assert_eq!(spec.task.env["DEBUG"], "true");
        assert_eq!(spec.task.resources, TaskResources::new(500, 64 << 20));
    }

    #[test]
    fn syntax_errors_and_oversized_specs_are_refused() {
        assert!(matches!(
            JobSpec::from_yaml("name: [unclosed"),
            Err(SpecError::Syntax(_))
        ));
        let big = format!("name: x\n# {}", "a".repeat(crate::MAX_SPEC_BYTES));
        assert!(matches!(
            JobSpec::from_yaml(&big),
            Err(SpecError::TooLarge { .. })
        ));
    }

    #[test]
    fn serialized_spec_is_valid_input_again() {
        let spec = JobSpec::from_yaml(HELLO).unwrap();
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn image_refs_follow_skopeo_syntax() {
        let r = ImageRef::parse("oci:/var/images/bb:1.36").unwrap();
        assert_eq!(
            (r.path.as_str(), r.tag.as_deref()),
            ("/var/images/bb", Some("1.36"))
        );
        let r = ImageRef::parse("oci:/var/images/bb").unwrap();
        assert_eq!((r.path.as_str(), r.tag), ("/var/images/bb", None));
        let r = ImageRef::parse("oci:rel/dir").unwrap();
        assert!(r.is_relative());
        assert!(ImageRef::parse("busybox:latest").is_err());
        assert!(ImageRef::parse("oci::tag").is_err());
        assert!(ImageRef::parse("oci:/x:bad tag").is_err());
    }

    const LIFECYCLE: &str = r#"
name: web
task:
  image: oci:/img
  restart: {policy: on-failure, backoff: {initial: 1s, max: 30s, reset_after: 2m}}
  probes:
    startup: {tcp: {port: 8080}, period: 500ms, failure_threshold: 30}
    liveness: {exec: {command: [cat, /tmp/alive]}, timeout: 2s}
    readiness: {http: {path: /healthz, port: 8080}, success_threshold: 2, initial_delay: 1s}
  security: {read_only_rootfs: true, user: "1000:1000", cap_add: [cap_net_admin], cap_drop: [ALL]}
  stop_signal: quit
  stop_grace: 3s
  pids_limit: 64
"#;

    #[test]
    fn lifecycle_fields_parse_with_kubernetes_defaults_filled_in() {
        let spec = JobSpec::from_yaml(LIFECYCLE).unwrap();
        let t = &spec.task;
        assert_eq!(t.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(t.restart.backoff.initial, Duration::from_secs(1));
        let startup = t.probes.startup.as_ref().unwrap();
        assert_eq!(startup.action, ProbeAction::Tcp { port: 8080 });
        assert_eq!(startup.period, Duration::from_millis(500));
        assert_eq!(startup.timeout, Duration::from_secs(1), "default timeout");
        assert_eq!(startup.failure_threshold, 30);
        let live = t.probes.liveness.as_ref().unwrap();
        assert_eq!(live.period, Duration::from_secs(10), "default period");
        assert_eq!(live.failure_threshold, 3, "default failure threshold");
        let ready = t.probes.readiness.as_ref().unwrap();
        assert_eq!(ready.success_threshold, 2);
        assert_eq!(
            t.security.user,
            Some(UserId {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(t.security.cap_add, ["NET_ADMIN"]);
        assert_eq!(t.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(t.stop_grace, Some(Duration::from_secs(3)));
        assert_eq!(t.pids_limit, Some(64));
        // And the stored form is valid input again, through YAML and JSON.
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn a_task_without_lifecycle_fields_restarts_always() {
        let spec = JobSpec::from_yaml("name: x\ntask: {image: 'oci:/i'}").unwrap();
        assert_eq!(spec.task.restart.policy, RestartPolicy::Always);
        assert_eq!(spec.task.restart.backoff, Backoff::default());
        assert!(spec.task.probes.is_empty());
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert!(
            !yaml.contains("restart"),
            "defaults are not written out: {yaml}"
        );
    }

    #[test]
    fn bad_lifecycle_fields_name_the_field_and_the_rule() {
        let text = r#"
name: web
task:
  image: oci:/img
  restart: {policy: sometimes, backoff: {initial: 10, max: 1s, colour: red}}
  probes:
    liveness: {http: {port: 0}, tcp: {port: 80}}
    readiness: {http: {path: healthz, port: 80}, period: 10ms, failure_threshold: 0}
    startup: {exec: {command: []}, success_threshold: 2}
    sideways: {}
  security: {user: web, cap_add: [ALL, FLY], read_only_rootfs: "yes"}
  stop_signal: SIGSEGV
  stop_grace: 5
  pids_limit: 0
"#;
        let errs = errors_of(text);
        let expect = [
            "task.restart.policy: \"sometimes\" is not a restart policy",
            "task.restart.backoff.colour: unknown field",
            "task.restart.backoff.initial: 10 needs a unit",
            "task.probes.sideways: unknown field",
            "task.probes.liveness: has http and tcp; a probe takes exactly one",
            "task.security.user: \"web\" must be UID:GID",
            "task.security.read_only_rootfs: must be true or false",
            "task.stop_signal: \"SIGSEGV\" is not a stop signal",
            "task.stop_grace: 5 needs a unit",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        // Value rules that need a parsed spec.
        let shaped = r#"
name: web
task:
  image: oci:/img
  restart: {backoff: {initial: 1m, max: 1s}}
  probes:
    readiness: {http: {path: healthz, port: 80}, period: 10ms, failure_threshold: 0}
    startup: {exec: {command: []}, success_threshold: 2}
  security: {cap_add: [ALL, FLY]}
  pids_limit: 0
"#;
        let errs = errors_of(shaped);
        for e in [
            "task.restart.backoff.max: 1s must not be below backoff.initial (1m)",
            "task.probes.readiness.period: 10ms is below the minimum of 100ms",
            "task.probes.readiness.failure_threshold: 0 must be from 1 to 1000",
            "task.probes.readiness.http.path: \"healthz\" must start with '/'",
            "task.probes.startup.success_threshold: must be 1 for a startup probe",
            "task.probes.startup.exec.command: must name a program",
            "task.security.cap_add[0]: ALL may only be dropped",
            "task.security.cap_add[1]: \"FLY\" is not a Linux capability",
            "task.pids_limit: 0 must be from 1 to",
        ] {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }
}
