//! A job's spec across the wire: the task and its lifecycle, probes and
//! security, placement rules, the update strategy.

use std::time::Duration;

use skiff_model as m;
use skiff_model::FieldError;

use super::resources::{gpu_filter_to_wire, ports_from_wire};
use super::{duration_ms, required, WireError};
use crate::pb;

// ---- placement rules -------------------------------------------------------

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

fn constraint_from_wire(
    c: pb::Constraint,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<m::Constraint> {
    let op = match pb::ConstraintOp::try_from(c.op) {
        Ok(pb::ConstraintOp::Eq) => m::ConstraintOp::Eq,
        Ok(pb::ConstraintOp::Ne) => m::ConstraintOp::Ne,
        Ok(pb::ConstraintOp::In) => m::ConstraintOp::In,
        Ok(pb::ConstraintOp::NotIn) => m::ConstraintOp::NotIn,
        Ok(pb::ConstraintOp::Exists) => m::ConstraintOp::Exists,
        Ok(pb::ConstraintOp::Lt) => m::ConstraintOp::Lt,
        Ok(pb::ConstraintOp::Gt) => m::ConstraintOp::Gt,
        _ => {
            errors.push(FieldError::new(
                format!("{path}.op"),
                format!("{} is not a constraint operator", c.op),
            ));
            return None;
        }
    };
    Some(m::Constraint {
        label: c.label,
        op,
        values: c.values,
    })
}

// ---- job spec --------------------------------------------------------------

impl From<&m::TaskSpec> for pb::TaskSpec {
    fn from(t: &m::TaskSpec) -> Self {
        pb::TaskSpec {
            image: t.image.to_string(),
            command: t.command.clone(),
            args: t.args.clone(),
            env: t.env.clone(),
            workdir: t.workdir.clone(),
            resources: Some(t.resources.amount().into()),
            network: match t.network {
                m::NetworkMode::Host => pb::NetworkMode::Host,
                m::NetworkMode::None => pb::NetworkMode::None,
            } as i32,
            restart: Some(restart_to_wire(&t.restart)),
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
            pids_limit: t.pids_limit,
            gpu: gpu_filter_to_wire(&t.resources.gpu),
            ports: t.resources.ports.iter().map(|&p| u32::from(p)).collect(),
        }
    }
}

fn restart_to_wire(r: &m::RestartSpec) -> pb::RestartSpec {
    pb::RestartSpec {
        policy: match r.policy {
            m::RestartPolicy::Always => pb::RestartPolicy::Always,
            m::RestartPolicy::OnFailure => pb::RestartPolicy::OnFailure,
            m::RestartPolicy::Never => pb::RestartPolicy::Never,
        } as i32,
        backoff_initial_ms: duration_ms(r.backoff.initial),
        backoff_max_ms: duration_ms(r.backoff.max),
        backoff_reset_after_ms: duration_ms(r.backoff.reset_after),
    }
}

fn restart_from_wire(
    r: Option<pb::RestartSpec>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> m::RestartSpec {
    let Some(r) = r else {
        return m::RestartSpec::default();
    };
    let policy = match pb::RestartPolicy::try_from(r.policy) {
        Ok(pb::RestartPolicy::Unspecified | pb::RestartPolicy::Always) => m::RestartPolicy::Always,
        Ok(pb::RestartPolicy::OnFailure) => m::RestartPolicy::OnFailure,
        Ok(pb::RestartPolicy::Never) => m::RestartPolicy::Never,
        Err(_) => {
            errors.push(FieldError::new(
                format!("{path}.policy"),
                format!("{} is not a restart policy", r.policy),
            ));
            m::RestartPolicy::Always
        }
    };
    // Zero means "not set": the default applies.
    let d = m::Backoff::default();
    let or = |ms: u64, default: Duration| {
        if ms == 0 {
            default
        } else {
            Duration::from_millis(ms)
        }
    };
    m::RestartSpec {
        policy,
        backoff: m::Backoff {
            initial: or(r.backoff_initial_ms, d.initial),
            max: or(r.backoff_max_ms, d.max),
            reset_after: or(r.backoff_reset_after_ms, d.reset_after),
        },
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
        period_ms: duration_ms(p.period),
        timeout_ms: duration_ms(p.timeout),
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
        initial_delay_ms: duration_ms(p.initial_delay),
    }
}

fn probe_from_wire(p: pb::Probe, path: &str, errors: &mut Vec<FieldError>) -> Option<m::Probe> {
    use pb::probe::Action;
    let port = |port: u32, field: &str, errors: &mut Vec<FieldError>| match u16::try_from(port) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errors.push(FieldError::new(
                format!("{path}.{field}"),
                format!("{port} must be a port number from 1 to 65535"),
            ));
            None
        }
    };
    let action = match p.action {
        Some(Action::Exec(e)) => m::ProbeAction::Exec { command: e.command },
        Some(Action::Http(h)) => m::ProbeAction::Http {
            path: if h.path.is_empty() {
                "/".into()
            } else {
                h.path
            },
            port: port(h.port, "http.port", errors)?,
        },
        Some(Action::Tcp(t)) => m::ProbeAction::Tcp {
            port: port(t.port, "tcp.port", errors)?,
        },
        None => {
            errors.push(FieldError::new(
                path,
                "needs one of exec, http or tcp".to_string(),
            ));
            return None;
        }
    };
    let mut probe = m::Probe::new(action);
    // Zero means "not set": Kubernetes' default applies.
    if p.period_ms > 0 {
        probe.period = Duration::from_millis(p.period_ms);
    }
    if p.timeout_ms > 0 {
        probe.timeout = Duration::from_millis(p.timeout_ms);
    }
    if p.success_threshold > 0 {
        probe.success_threshold = p.success_threshold;
    }
    if p.failure_threshold > 0 {
        probe.failure_threshold = p.failure_threshold;
    }
    probe.initial_delay = Duration::from_millis(p.initial_delay_ms);
    Some(probe)
}

fn probes_from_wire(p: Option<pb::Probes>, path: &str, errors: &mut Vec<FieldError>) -> m::Probes {
    let Some(p) = p else {
        return m::Probes::default();
    };
    let mut one = |probe: Option<pb::Probe>, name: &str| {
        probe.and_then(|probe| probe_from_wire(probe, &format!("{path}.{name}"), errors))
    };
    m::Probes {
        liveness: one(p.liveness, "liveness"),
        readiness: one(p.readiness, "readiness"),
        startup: one(p.startup, "startup"),
    }
}

fn security_from_wire(
    s: Option<pb::Security>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> m::Security {
    let Some(s) = s else {
        return m::Security::default();
    };
    let user = if s.user.is_empty() {
        None
    } else {
        m::UserId::parse(&s.user)
            .map_err(|e| errors.push(FieldError::new(format!("{path}.user"), e)))
            .ok()
    };
    let norm = |caps: Vec<String>| {
        caps.iter()
            .map(|c| m::lifecycle::normalize_capability(c))
            .collect()
    };
    m::Security {
        read_only_rootfs: s.read_only_rootfs,
        user,
        cap_add: norm(s.cap_add),
        cap_drop: norm(s.cap_drop),
    }
}

pub(super) fn task_from_wire(t: pb::TaskSpec, path: &str) -> Result<m::TaskSpec, WireError> {
    let mut errors = Vec::new();
    let image = m::ImageRef::parse(&t.image)
        .map_err(|e| errors.push(FieldError::new(format!("{path}.image"), e)))
        .ok();
    let network = match pb::NetworkMode::try_from(t.network) {
        Ok(pb::NetworkMode::Unspecified | pb::NetworkMode::Host) => Some(m::NetworkMode::Host),
        Ok(pb::NetworkMode::None) => Some(m::NetworkMode::None),
        Err(_) => {
            errors.push(FieldError::new(
                format!("{path}.network"),
                format!("{} is not a network mode", t.network),
            ));
            None
        }
    };
    let ports = ports_from_wire(t.ports, &format!("{path}.resources.ports"), &mut errors);
    let resources = match t.resources {
        Some(r) => {
            let gpu = t.gpu.map_or_else(m::GpuFilter::default, |g| m::GpuFilter {
                model: g.model,
                min_memory_bytes: g.min_memory_bytes,
                uuids: g.uuids,
                mig: g.mig,
            });
            Some(m::TaskResources {
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                gpus: r.gpus,
                gpu,
                ports,
            })
        }
        None => {
            errors.push(FieldError::new(format!("{path}.resources"), "is required"));
            None
        }
    };
    let restart = restart_from_wire(t.restart, &format!("{path}.restart"), &mut errors);
    let probes = probes_from_wire(t.probes, &format!("{path}.probes"), &mut errors);
    let security = security_from_wire(t.security, &format!("{path}.security"), &mut errors);
    let stop_signal = if t.stop_signal.is_empty() {
        None
    } else {
        match m::lifecycle::normalize_signal(&t.stop_signal) {
            Some(s) => Some(s.to_string()),
            None => {
                errors.push(FieldError::new(
                    format!("{path}.stop_signal"),
                    format!("{:?} is not a stop signal", t.stop_signal),
                ));
                None
            }
        }
    };
    match (image, network, resources) {
        (Some(image), Some(network), Some(resources)) if errors.is_empty() => Ok(m::TaskSpec {
            image,
            command: t.command,
            args: t.args,
            env: t.env,
            workdir: t.workdir,
            resources,
            network,
            restart,
            probes,
            security,
            stop_signal,
            stop_grace: t.stop_grace_ms.map(Duration::from_millis),
            pids_limit: t.pids_limit,
        }),
        _ => Err(WireError(errors)),
    }
}

impl From<&m::JobSpec> for pb::JobSpec {
    fn from(s: &m::JobSpec) -> Self {
        pb::JobSpec {
            name: s.name.clone(),
            replicas: s.replicas,
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
            r#type: s.job_type.as_str().to_string(),
            update: (!s.update.is_default()).then(|| update_to_wire(&s.update)),
            versions_kept: Some(s.versions_kept),
            completions: s.completions,
            parallelism: s.parallelism,
            backoff_limit: s.backoff_limit,
            gang_failure: s.gang_failure.as_str().to_string(),
            master_port: s.master_port.map(u32::from),
        }
    }
}

fn update_to_wire(u: &m::UpdateSpec) -> pb::UpdateSpec {
    pb::UpdateSpec {
        max_unavailable: u.max_unavailable.to_string(),
        max_surge: u.max_surge.to_string(),
        min_healthy_ms: Some(duration_ms(u.min_healthy)),
        healthy_deadline_ms: Some(duration_ms(u.healthy_deadline)),
        progress_deadline_ms: Some(duration_ms(u.progress_deadline)),
        auto_rollback: Some(u.auto_rollback),
        canary: u.canary,
    }
}

fn update_from_wire(u: Option<pb::UpdateSpec>, errors: &mut Vec<FieldError>) -> m::UpdateSpec {
    let mut out = m::UpdateSpec::default();
    let Some(u) = u else {
        return out;
    };
    for (field, text, slot) in [
        (
            "update.max_unavailable",
            &u.max_unavailable,
            &mut out.max_unavailable,
        ),
        ("update.max_surge", &u.max_surge, &mut out.max_surge),
    ] {
        if !text.is_empty() {
            match m::Amount::parse(text) {
                Ok(a) => *slot = a,
                Err(e) => errors.push(FieldError::new(field, e)),
            }
        }
    }
    if let Some(ms) = u.min_healthy_ms {
        out.min_healthy = Duration::from_millis(ms);
    }
    if let Some(ms) = u.healthy_deadline_ms {
        out.healthy_deadline = Duration::from_millis(ms);
    }
    if let Some(ms) = u.progress_deadline_ms {
        out.progress_deadline = Duration::from_millis(ms);
    }
    if let Some(b) = u.auto_rollback {
        out.auto_rollback = b;
    }
    out.canary = u.canary;
    out
}

impl TryFrom<pb::JobSpec> for m::JobSpec {
    type Error = WireError;
    fn try_from(s: pb::JobSpec) -> Result<Self, WireError> {
        let task = task_from_wire(required(s.task, "task")?, "task")?;
        let mut errors = Vec::new();
        let priority = match s.priority {
            None => m::job::DEFAULT_PRIORITY,
            Some(p) if p <= u32::from(m::job::MAX_PRIORITY) => p as u8,
            Some(p) => {
                errors.push(FieldError::new(
                    "priority",
                    format!("{p} must be a whole number from 0 to 100"),
                ));
                0
            }
        };
        let constraints = s
            .constraints
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| constraint_from_wire(c, &format!("constraints[{i}]"), &mut errors))
            .collect();
        let mut affinities = Vec::new();
        for (i, a) in s.affinities.into_iter().enumerate() {
            let path = format!("affinities[{i}]");
            match a.rule {
                Some(rule) => {
                    if let Some(rule) = constraint_from_wire(rule, &path, &mut errors) {
                        affinities.push(m::Affinity {
                            rule,
                            weight: a.weight,
                        });
                    }
                }
                None => errors.push(FieldError::new(format!("{path}.rule"), "is required")),
            }
        }
        let job_type = match s.r#type.as_str() {
            "" => m::JobType::Service,
            t => m::JobType::parse(t).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "type",
                    format!("{t:?} is not a job type; expected service or batch"),
                ));
                m::JobType::Service
            }),
        };
        let gang_failure = match s.gang_failure.as_str() {
            "" => m::GangFailure::default(),
            g => m::GangFailure::parse(g).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "gang_failure",
                    format!("{g:?} is not a gang failure policy; expected restart_gang or fail"),
                ));
                m::GangFailure::default()
            }),
        };
        let master_port = match s.master_port {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    errors.push(FieldError::new(
                        "master_port",
                        format!("{p} must be a port number from 1 to 65535"),
                    ));
                    None
                }
            },
        };
        let update = update_from_wire(s.update, &mut errors);
        if !errors.is_empty() {
            return Err(WireError(errors));
        }
        Ok(m::JobSpec {
            name: s.name,
            job_type,
            replicas: s.replicas,
            priority,
            update,
            versions_kept: s.versions_kept.unwrap_or(m::job::DEFAULT_VERSIONS_KEPT),
            completions: s.completions,
            parallelism: s.parallelism,
            backoff_limit: s.backoff_limit,
            gang_failure,
            master_port,
            gang: s.gang,
            constraints,
            spread: s.spread.map(|sp| m::Spread {
                label: sp.label,
                max_skew: sp.max_skew,
            }),
            distinct_hosts: s.distinct_hosts,
            affinities,
            task,
        })
    }
}
