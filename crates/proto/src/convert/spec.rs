//! A job's spec across the wire.
//!
//! Out (stored spec -> wire) every field is written, defaults included.
//! In (wire -> spec) the message is turned into the same untyped tree the
//! YAML form is (`task.resources.cpu: "250m"`, `task.stop_grace: "1500ms"`)
//! with only the fields the sender set, and read by
//! [`m::JobSpec::from_value`], the YAML form's own reader. So a spec means
//! the same whichever path it came by: one source of defaults (a left-out
//! `replicas` is 1, left-out resources are 100m and 128Mi, a batch job's
//! restart policy is on-failure) and of rules, every broken one reported at
//! once. Errors name the YAML path; [`wire_field`] gives the field path of
//! the request for google.rpc.BadRequest.

use serde_json::{json, Map, Value};
use skiff_model as m;

use super::duration_ms;
use crate::pb;

// ---- out: stored spec -> wire ---------------------------------------------

fn op_to_wire(op: m::ConstraintOp) -> pb::ConstraintOp {
    match op {
        m::ConstraintOp::Eq => pb::ConstraintOp::Eq,
        m::ConstraintOp::Ne => pb::ConstraintOp::Ne,
        m::ConstraintOp::In => pb::ConstraintOp::In,
        m::ConstraintOp::NotIn => pb::ConstraintOp::NotIn,
        m::ConstraintOp::Exists => pb::ConstraintOp::Exists,
        m::ConstraintOp::Lt => pb::ConstraintOp::Lt,
        m::ConstraintOp::Gt => pb::ConstraintOp::Gt,
    }
}

fn constraint_to_wire(c: &m::Constraint) -> pb::Constraint {
    pb::Constraint {
        label: c.label.clone(),
        op: op_to_wire(c.op) as i32,
        values: c.values.clone(),
    }
}

impl From<&m::TaskSpec> for pb::TaskSpec {
    fn from(t: &m::TaskSpec) -> Self {
        let r = &t.resources;
        pb::TaskSpec {
            image: t.image.to_string(),
            command: t.command.clone(),
            args: t.args.clone(),
            env: t.env.clone(),
            workdir: t.workdir.clone(),
            resources: Some(pb::TaskResources {
                cpu_millis: Some(r.cpu_millis),
                memory_bytes: Some(r.memory_bytes),
                gpus: r.gpus,
            }),
            network: match t.network {
                m::NetworkMode::Host => pb::NetworkMode::Host,
                m::NetworkMode::None => pb::NetworkMode::None,
                m::NetworkMode::Bridge => pb::NetworkMode::Bridge,
            } as i32,
            restart: Some(pb::RestartSpec {
                policy: restart_policy_to_wire(t.restart.policy) as i32,
                backoff_initial_ms: Some(duration_ms(t.restart.backoff.initial)),
                backoff_max_ms: Some(duration_ms(t.restart.backoff.max)),
                backoff_reset_after_ms: Some(duration_ms(t.restart.backoff.reset_after)),
            }),
            probes: Some(pb::Probes {
                liveness: t.probes.liveness.as_ref().map(probe_to_wire),
                readiness: t.probes.readiness.as_ref().map(probe_to_wire),
                startup: t.probes.startup.as_ref().map(probe_to_wire),
            }),
            security: Some(pb::Security {
                read_only_rootfs: t.security.read_only_rootfs,
                user: t.security.user.map(|u| u.to_string()).unwrap_or_default(),
                cap_add: t.security.cap_add.clone(),
                cap_drop: t.security.cap_drop.clone(),
            }),
            stop_signal: t.stop_signal.clone().unwrap_or_default(),
            stop_grace_ms: t.stop_grace.map(duration_ms),
            shutdown_delay_ms: t.shutdown_delay.map(duration_ms),
            pids_limit: t.pids_limit,
            pull: if t.pull.is_default() {
                String::new()
            } else {
                t.pull.as_str().to_string()
            },
            gpu: gpu_filter_to_wire(&r.gpu),
            ports: r.ports.iter().map(|&p| u32::from(p)).collect(),
            named_ports: t
                .ports
                .iter()
                .map(|p| pb::PortSpec {
                    name: p.name.clone(),
                    container: u32::from(p.container),
                    host: p.host.map(u32::from),
                    protocol: if p.protocol.is_tcp() {
                        String::new()
                    } else {
                        p.protocol.as_str().to_string()
                    },
                })
                .collect(),
        }
    }
}

pub(super) fn gpu_filter_to_wire(g: &m::GpuFilter) -> Option<pb::GpuFilter> {
    (*g != m::GpuFilter::default()).then(|| pb::GpuFilter {
        model: g.model.clone(),
        min_memory_bytes: g.min_memory_bytes,
        uuids: g.uuids.clone(),
        mig: g.mig.clone(),
    })
}

fn restart_policy_to_wire(p: m::RestartPolicy) -> pb::RestartPolicy {
    match p {
        m::RestartPolicy::Always => pb::RestartPolicy::Always,
        m::RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
        m::RestartPolicy::Never => pb::RestartPolicy::Never,
    }
}

fn probe_to_wire(p: &m::Probe) -> pb::Probe {
    use pb::probe::Action;
    pb::Probe {
        action: Some(match &p.action {
            m::ProbeAction::Exec { command } => Action::Exec(pb::ExecAction {
                command: command.clone(),
            }),
            m::ProbeAction::Http { path, port } => Action::Http(pb::HttpAction {
                path: path.clone(),
                port: u32::from(*port),
            }),
            m::ProbeAction::Tcp { port } => Action::Tcp(pb::TcpAction {
                port: u32::from(*port),
            }),
        }),
        period_ms: Some(duration_ms(p.period)),
        timeout_ms: Some(duration_ms(p.timeout)),
        success_threshold: Some(p.success_threshold),
        failure_threshold: Some(p.failure_threshold),
        initial_delay_ms: Some(duration_ms(p.initial_delay)),
    }
}

/// The wire form of a job type.
pub fn job_type_to_wire(t: m::JobType) -> pb::JobType {
    match t {
        m::JobType::Service => pb::JobType::Service,
        m::JobType::Batch => pb::JobType::Batch,
    }
}

/// The wire form of a gang failure policy.
pub fn gang_failure_to_wire(g: m::GangFailure) -> pb::GangFailure {
    match g {
        m::GangFailure::RestartGang => pb::GangFailure::RestartGang,
        m::GangFailure::Fail => pb::GangFailure::Fail,
    }
}

impl From<&m::JobSpec> for pb::JobSpec {
    fn from(s: &m::JobSpec) -> Self {
        pb::JobSpec {
            namespace: s.namespace.clone(),
            queue: s.queue.clone().unwrap_or_default(),
            labels: s.labels.clone().into_iter().collect(),
            name: s.name.clone(),
            replicas: Some(s.replicas),
            task: Some((&s.task).into()),
            priority: Some(u32::from(s.priority)),
            gang: s.gang,
            constraints: s.constraints.iter().map(constraint_to_wire).collect(),
            spread: s.spread.as_ref().map(|sp| pb::Spread {
                label: sp.label.clone(),
                max_skew: sp.max_skew,
            }),
            distinct_hosts: s.distinct_hosts,
            affinities: s
                .affinities
                .iter()
                .map(|a| pb::Affinity {
                    rule: Some(constraint_to_wire(&a.rule)),
                    weight: a.weight,
                })
                .collect(),
            r#type: job_type_to_wire(s.job_type) as i32,
            // Only a service has one; the default is left out, as the YAML
            // form leaves it out.
            update: (!s.update.is_default()).then(|| pb::UpdateSpec {
                max_unavailable: s.update.max_unavailable.to_string(),
                max_surge: s.update.max_surge.to_string(),
                min_healthy_ms: Some(duration_ms(s.update.min_healthy)),
                healthy_deadline_ms: Some(duration_ms(s.update.healthy_deadline)),
                progress_deadline_ms: Some(duration_ms(s.update.progress_deadline)),
                auto_rollback: Some(s.update.auto_rollback),
                canary: s.update.canary,
            }),
            versions_kept: Some(s.versions_kept),
            completions: s.completions,
            parallelism: s.parallelism,
            backoff_limit: s.backoff_limit,
            gang_failure: gang_failure_to_wire(s.gang_failure) as i32,
            master_port: s.master_port.map(u32::from),
        }
    }
}

// ---- in: wire -> the YAML form's tree -> spec ------------------------------

impl TryFrom<pb::JobSpec> for m::JobSpec {
    type Error = m::SpecError;
    /// Fills in left-out fields and checks every rule, as `from_yaml` does.
    fn try_from(s: pb::JobSpec) -> Result<Self, m::SpecError> {
        m::JobSpec::from_value(&spec_tree(&s))
    }
}

/// Puts `value` under `key` when there is one.
fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_string(), v);
    }
}

fn ms(v: u64) -> Value {
    Value::String(format!("{v}ms"))
}

/// A closed set's word for a wire enum number; a number the set does not
/// know stays a number, which the reader refuses naming it.
fn word(number: i32, words: &[(i32, &str)]) -> Option<Value> {
    if number == 0 {
        return None; // unspecified: the default
    }
    Some(
        words
            .iter()
            .find(|(n, _)| *n == number)
            .map_or_else(|| json!(number), |(_, w)| json!(w)),
    )
}

/// The job as the YAML form's tree, with only what the sender set.
pub fn spec_tree(s: &pb::JobSpec) -> Value {
    let mut job = Map::new();
    job.insert("name".into(), json!(s.name));
    if !s.namespace.is_empty() {
        job.insert("namespace".into(), json!(s.namespace));
    }
    if !s.queue.is_empty() {
        job.insert("queue".into(), json!(s.queue));
    }
    if !s.labels.is_empty() {
        let labels: std::collections::BTreeMap<&String, &String> = s.labels.iter().collect();
        job.insert("labels".into(), json!(labels));
    }
    put(&mut job, "replicas", s.replicas.map(|r| json!(r)));
    put(&mut job, "task", s.task.as_ref().map(task_tree));
    put(&mut job, "priority", s.priority.map(|p| json!(p)));
    if s.gang {
        job.insert("gang".into(), json!(true));
    }
    if !s.constraints.is_empty() {
        let rules = s.constraints.iter().map(|c| Value::Object(rule_tree(c)));
        job.insert("constraints".into(), Value::Array(rules.collect()));
    }
    put(
        &mut job,
        "spread",
        s.spread.as_ref().map(|sp| {
            let mut m = Map::new();
            m.insert("label".into(), json!(sp.label));
            if sp.max_skew != 0 {
                m.insert("max_skew".into(), json!(sp.max_skew));
            }
            Value::Object(m)
        }),
    );
    if s.distinct_hosts {
        job.insert("distinct_hosts".into(), json!(true));
    }
    if !s.affinities.is_empty() {
        let affinities = s.affinities.iter().map(|a| {
            let mut m = a.rule.as_ref().map(rule_tree).unwrap_or_default();
            m.insert("weight".into(), json!(a.weight));
            Value::Object(m)
        });
        job.insert("affinities".into(), Value::Array(affinities.collect()));
    }
    let types = [
        (pb::JobType::Service as i32, "service"),
        (pb::JobType::Batch as i32, "batch"),
    ];
    put(&mut job, "type", word(s.r#type, &types));
    put(&mut job, "update", s.update.as_ref().map(update_tree));
    put(&mut job, "versions_kept", s.versions_kept.map(|v| json!(v)));
    put(&mut job, "completions", s.completions.map(|v| json!(v)));
    put(&mut job, "parallelism", s.parallelism.map(|v| json!(v)));
    put(&mut job, "backoff_limit", s.backoff_limit.map(|v| json!(v)));
    let failures = [
        (pb::GangFailure::RestartGang as i32, "restart_gang"),
        (pb::GangFailure::Fail as i32, "fail"),
    ];
    put(&mut job, "gang_failure", word(s.gang_failure, &failures));
    put(&mut job, "master_port", s.master_port.map(|v| json!(v)));
    Value::Object(job)
}

fn rule_tree(c: &pb::Constraint) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("label".into(), json!(c.label));
    let op = pb::ConstraintOp::try_from(c.op).ok().and_then(|op| {
        Some(match op {
            pb::ConstraintOp::Unspecified => return None,
            pb::ConstraintOp::Eq => m::ConstraintOp::Eq,
            pb::ConstraintOp::Ne => m::ConstraintOp::Ne,
            pb::ConstraintOp::In => m::ConstraintOp::In,
            pb::ConstraintOp::NotIn => m::ConstraintOp::NotIn,
            pb::ConstraintOp::Exists => m::ConstraintOp::Exists,
            pb::ConstraintOp::Lt => m::ConstraintOp::Lt,
            pb::ConstraintOp::Gt => m::ConstraintOp::Gt,
        })
    });
    match op {
        Some(op) => {
            m.insert("op".into(), json!(op.as_str()));
            // The YAML form takes one `value` for operators of one value,
            // and `values` for the others.
            let (_, most) = op.arity();
            if most == 1 && c.values.len() == 1 {
                m.insert("value".into(), json!(c.values[0]));
            } else if !c.values.is_empty() {
                m.insert("values".into(), json!(c.values));
            }
        }
        None => {
            if c.op != 0 {
                m.insert("op".into(), json!(c.op));
            }
            if !c.values.is_empty() {
                m.insert("values".into(), json!(c.values));
            }
        }
    }
    m
}

/// A task as the YAML form's tree (the `task:` of a job).
pub(super) fn task_tree(t: &pb::TaskSpec) -> Value {
    let mut task = Map::new();
    task.insert("image".into(), json!(t.image));
    if !t.command.is_empty() {
        task.insert("command".into(), json!(t.command));
    }
    if !t.args.is_empty() {
        task.insert("args".into(), json!(t.args));
    }
    if !t.env.is_empty() {
        task.insert("env".into(), json!(t.env));
    }
    put(&mut task, "workdir", t.workdir.as_ref().map(|w| json!(w)));
    let mut res = Map::new();
    if let Some(r) = &t.resources {
        put(
            &mut res,
            "cpu",
            r.cpu_millis.map(|c| json!(format!("{c}m"))),
        );
        put(&mut res, "memory", r.memory_bytes.map(|b| json!(b)));
        if r.gpus != 0 {
            res.insert("gpus".into(), json!(r.gpus));
        }
    }
    if let Some(g) = &t.gpu {
        let mut gpu = Map::new();
        put(&mut gpu, "model", g.model.as_ref().map(|v| json!(v)));
        if g.min_memory_bytes != 0 {
            gpu.insert("min_memory".into(), json!(g.min_memory_bytes));
        }
        if !g.uuids.is_empty() {
            gpu.insert("uuids".into(), json!(g.uuids));
        }
        put(&mut gpu, "mig", g.mig.as_ref().map(|v| json!(v)));
        res.insert("gpu".into(), Value::Object(gpu));
    }
    if !t.ports.is_empty() {
        res.insert("ports".into(), json!(t.ports));
    }
    if t.resources.is_some() || !res.is_empty() {
        task.insert("resources".into(), Value::Object(res));
    }
    let networks = [
        (pb::NetworkMode::Host as i32, "host"),
        (pb::NetworkMode::None as i32, "none"),
        (pb::NetworkMode::Bridge as i32, "bridge"),
    ];
    put(&mut task, "network", word(t.network, &networks));
    put(&mut task, "restart", t.restart.as_ref().map(restart_tree));
    if let Some(p) = &t.probes {
        let mut probes = Map::new();
        put(&mut probes, "liveness", p.liveness.as_ref().map(probe_tree));
        put(
            &mut probes,
            "readiness",
            p.readiness.as_ref().map(probe_tree),
        );
        put(&mut probes, "startup", p.startup.as_ref().map(probe_tree));
        task.insert("probes".into(), Value::Object(probes));
    }
    if let Some(s) = &t.security {
        let mut sec = Map::new();
        if s.read_only_rootfs {
            sec.insert("read_only_rootfs".into(), json!(true));
        }
        if !s.user.is_empty() {
            sec.insert("user".into(), json!(s.user));
        }
        if !s.cap_add.is_empty() {
            sec.insert("cap_add".into(), json!(s.cap_add));
        }
        if !s.cap_drop.is_empty() {
            sec.insert("cap_drop".into(), json!(s.cap_drop));
        }
        task.insert("security".into(), Value::Object(sec));
    }
    if !t.stop_signal.is_empty() {
        task.insert("stop_signal".into(), json!(t.stop_signal));
    }
    put(&mut task, "stop_grace", t.stop_grace_ms.map(ms));
    put(&mut task, "shutdown_delay", t.shutdown_delay_ms.map(ms));
    put(&mut task, "pids_limit", t.pids_limit.map(|p| json!(p)));
    if !t.pull.is_empty() {
        task.insert("pull".into(), json!(t.pull));
    }
    if !t.named_ports.is_empty() {
        let ports = t.named_ports.iter().map(|p| {
            let mut port = Map::new();
            port.insert("name".into(), json!(p.name));
            if p.container != 0 {
                port.insert("container".into(), json!(p.container));
            }
            put(&mut port, "host", p.host.map(|h| json!(h)));
            if !p.protocol.is_empty() {
                port.insert("protocol".into(), json!(p.protocol));
            }
            Value::Object(port)
        });
        task.insert("ports".into(), Value::Array(ports.collect()));
    }
    Value::Object(task)
}

fn restart_tree(r: &pb::RestartSpec) -> Value {
    let mut restart = Map::new();
    let policies = [
        (pb::RestartPolicy::Always as i32, "always"),
        (pb::RestartPolicy::OnFailure as i32, "on-failure"),
        (pb::RestartPolicy::Never as i32, "never"),
    ];
    put(&mut restart, "policy", word(r.policy, &policies));
    let mut backoff = Map::new();
    put(&mut backoff, "initial", r.backoff_initial_ms.map(ms));
    put(&mut backoff, "max", r.backoff_max_ms.map(ms));
    put(
        &mut backoff,
        "reset_after",
        r.backoff_reset_after_ms.map(ms),
    );
    if !backoff.is_empty() {
        restart.insert("backoff".into(), Value::Object(backoff));
    }
    Value::Object(restart)
}

fn probe_tree(p: &pb::Probe) -> Value {
    use pb::probe::Action;
    let mut probe = Map::new();
    match &p.action {
        Some(Action::Exec(e)) => {
            probe.insert("exec".into(), json!({ "command": e.command }));
        }
        Some(Action::Http(h)) => {
            let mut http = Map::new();
            if !h.path.is_empty() {
                http.insert("path".into(), json!(h.path));
            }
            http.insert("port".into(), json!(h.port));
            probe.insert("http".into(), Value::Object(http));
        }
        Some(Action::Tcp(t)) => {
            probe.insert("tcp".into(), json!({ "port": t.port }));
        }
        None => {}
    }
    put(&mut probe, "period", p.period_ms.map(ms));
    put(&mut probe, "timeout", p.timeout_ms.map(ms));
    put(
        &mut probe,
        "success_threshold",
        p.success_threshold.map(|v| json!(v)),
    );
    put(
        &mut probe,
        "failure_threshold",
        p.failure_threshold.map(|v| json!(v)),
    );
    put(&mut probe, "initial_delay", p.initial_delay_ms.map(ms));
    Value::Object(probe)
}

fn update_tree(u: &pb::UpdateSpec) -> Value {
    let mut update = Map::new();
    if !u.max_unavailable.is_empty() {
        update.insert("max_unavailable".into(), json!(u.max_unavailable));
    }
    if !u.max_surge.is_empty() {
        update.insert("max_surge".into(), json!(u.max_surge));
    }
    put(&mut update, "min_healthy", u.min_healthy_ms.map(ms));
    put(
        &mut update,
        "healthy_deadline",
        u.healthy_deadline_ms.map(ms),
    );
    put(
        &mut update,
        "progress_deadline",
        u.progress_deadline_ms.map(ms),
    );
    put(
        &mut update,
        "auto_rollback",
        u.auto_rollback.map(|b| json!(b)),
    );
    if u.canary != 0 {
        update.insert("canary".into(), json!(u.canary));
    }
    Value::Object(update)
}

/// The request field a YAML path of a spec names (for BadRequest field
/// violations): `task.resources.cpu` -> `spec.task.resources.cpu_millis`,
/// `task.stop_grace` -> `spec.task.stop_grace_ms`, `affinities[0].op` ->
/// `spec.affinities[0].rule.op`.
pub fn wire_field(path: &str) -> String {
    if path.is_empty() {
        return "spec".into();
    }
    let mut parts: Vec<String> = path.split('.').map(String::from).collect();
    let name = |p: &String| p.split('[').next().unwrap_or_default().to_string();
    let at = |parts: &[String], i: usize| parts.get(i).map(name).unwrap_or_default();
    match (at(&parts, 0).as_str(), at(&parts, 1).as_str()) {
        ("task", "resources") => match at(&parts, 2).as_str() {
            "cpu" => parts[2] = "cpu_millis".into(),
            "memory" => parts[2] = "memory_bytes".into(),
            // GPU filter and ports sit on the task itself on the wire.
            "gpu" | "ports" => {
                parts.remove(1);
                if at(&parts, 2) == "min_memory" {
                    parts[2] = "min_memory_bytes".into();
                }
            }
            _ => {}
        },
        ("task", "stop_grace") => parts[1] = "stop_grace_ms".into(),
        ("task", "shutdown_delay") => parts[1] = "shutdown_delay_ms".into(),
        ("task", "ports") => parts[1] = parts[1].replacen("ports", "named_ports", 1),
        ("task", "restart") if at(&parts, 2) == "backoff" && parts.len() > 3 => {
            let field = format!("backoff_{}_ms", parts[3]);
            parts.truncate(2);
            parts.push(field);
        }
        ("task", "probes") if parts.len() > 3 => {
            if matches!(parts[3].as_str(), "period" | "timeout" | "initial_delay") {
                parts[3].push_str("_ms");
            }
        }
        ("update", _) if parts.len() > 1 => {
            if matches!(
                parts[1].as_str(),
                "min_healthy" | "healthy_deadline" | "progress_deadline"
            ) {
                parts[1].push_str("_ms");
            }
        }
        ("constraints", "value") => parts[1] = "values".into(),
        ("affinities", field) if field != "weight" && !field.is_empty() => {
            if field == "value" {
                parts[1] = "values".into();
            }
            parts.insert(1, "rule".into());
        }
        _ => {}
    }
    format!("spec.{}", parts.join("."))
}
