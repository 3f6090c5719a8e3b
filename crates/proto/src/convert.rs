//! `model` <-> `pb` conversions.

use std::time::Duration;

use skiff_model as m;
use skiff_model::FieldError;

use crate::pb;

/// A wire message that cannot become a domain value; names every bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct WireError(pub Vec<FieldError>);

impl WireError {
    fn one(field: &str, message: impl Into<String>) -> Self {
        WireError(vec![FieldError::new(field, message)])
    }
}

impl From<WireError> for m::SpecError {
    fn from(e: WireError) -> Self {
        m::SpecError::Invalid(e.0)
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, WireError> {
    v.ok_or_else(|| WireError::one(field, "is required"))
}

// ---- resources -------------------------------------------------------------

impl From<m::Resources> for pb::Resources {
    fn from(r: m::Resources) -> Self {
        pb::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpus,
        }
    }
}

impl From<pb::Resources> for m::Resources {
    fn from(r: pb::Resources) -> Self {
        m::Resources::new(r.cpu_millis, r.memory_bytes).with_gpus(r.gpus)
    }
}

// ---- GPUs ------------------------------------------------------------------

impl From<&m::Gpu> for pb::Gpu {
    fn from(g: &m::Gpu) -> Self {
        pb::Gpu {
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            memory_bytes: g.memory_bytes,
            healthy: g.healthy,
            health_reason: g.health_reason.clone(),
            index: g.index,
            compute_capability: g.compute_capability.clone(),
            pci_bus_id: g.pci_bus_id.clone(),
            pcie_generation: g.pcie_generation,
            pcie_width: g.pcie_width,
            power_limit_mw: g.power_limit_mw,
            max_sm_clock_mhz: g.max_sm_clock_mhz,
            max_memory_clock_mhz: g.max_memory_clock_mhz,
            numa_node: g.numa_node,
            mig_enabled: g.mig_enabled,
            mig_profile: g.mig_profile.clone(),
            parent: g.parent.clone(),
            nvlink_peers: g.nvlink_peers.clone(),
        }
    }
}

impl From<pb::Gpu> for m::Gpu {
    fn from(g: pb::Gpu) -> Self {
        m::Gpu {
            uuid: g.uuid,
            model: g.model,
            memory_bytes: g.memory_bytes,
            healthy: g.healthy,
            health_reason: g.health_reason,
            index: g.index,
            compute_capability: g.compute_capability,
            pci_bus_id: g.pci_bus_id,
            pcie_generation: g.pcie_generation,
            pcie_width: g.pcie_width,
            power_limit_mw: g.power_limit_mw,
            max_sm_clock_mhz: g.max_sm_clock_mhz,
            max_memory_clock_mhz: g.max_memory_clock_mhz,
            numa_node: g.numa_node,
            mig_enabled: g.mig_enabled,
            mig_profile: g.mig_profile,
            parent: g.parent,
            nvlink_peers: g.nvlink_peers,
        }
    }
}

impl From<&m::GpuMetrics> for pb::GpuMetrics {
    fn from(g: &m::GpuMetrics) -> Self {
        pb::GpuMetrics {
            uuid: g.uuid.clone(),
            utilization_pct: g.utilization_pct,
            memory_utilization_pct: g.memory_utilization_pct,
            memory_used_bytes: g.memory_used_bytes,
            temperature_c: g.temperature_c,
            power_mw: g.power_mw,
            ecc_corrected: g.ecc_corrected,
            ecc_uncorrected: g.ecc_uncorrected,
            throttle_reasons: g.throttle_reasons.clone(),
        }
    }
}

impl From<pb::GpuMetrics> for m::GpuMetrics {
    fn from(g: pb::GpuMetrics) -> Self {
        m::GpuMetrics {
            uuid: g.uuid,
            utilization_pct: g.utilization_pct,
            memory_utilization_pct: g.memory_utilization_pct,
            memory_used_bytes: g.memory_used_bytes,
            temperature_c: g.temperature_c,
            power_mw: g.power_mw,
            ecc_corrected: g.ecc_corrected,
            ecc_uncorrected: g.ecc_uncorrected,
            throttle_reasons: g.throttle_reasons,
        }
    }
}

impl From<&m::GpuLink> for pb::GpuLink {
    fn from(l: &m::GpuLink) -> Self {
        pb::GpuLink {
            a: l.a.clone(),
            b: l.b.clone(),
            level: match l.level {
                m::LinkLevel::NvLink => pb::LinkLevel::Nvlink,
                m::LinkLevel::PcieSwitch => pb::LinkLevel::PcieSwitch,
                m::LinkLevel::Numa => pb::LinkLevel::Numa,
                m::LinkLevel::System => pb::LinkLevel::System,
            } as i32,
        }
    }
}

/// A GPU link off the wire; an unknown level is an error naming `path`.
pub fn gpu_link_from_wire(l: pb::GpuLink, path: &str) -> Result<m::GpuLink, WireError> {
    let level = match pb::LinkLevel::try_from(l.level) {
        Ok(pb::LinkLevel::Nvlink) => m::LinkLevel::NvLink,
        Ok(pb::LinkLevel::PcieSwitch) => m::LinkLevel::PcieSwitch,
        Ok(pb::LinkLevel::Numa) => m::LinkLevel::Numa,
        Ok(pb::LinkLevel::System | pb::LinkLevel::Unspecified) => m::LinkLevel::System,
        Err(_) => {
            return Err(WireError::one(
                &format!("{path}.level"),
                format!("{} is not a link level", l.level),
            ))
        }
    };
    Ok(m::GpuLink {
        a: l.a,
        b: l.b,
        level,
    })
}

fn gpu_filter_to_wire(f: &m::GpuFilter) -> Option<pb::GpuFilter> {
    (!f.is_empty()).then(|| pb::GpuFilter {
        model: f.model.clone(),
        min_memory_bytes: f.min_memory_bytes,
        uuids: f.uuids.clone(),
        mig: f.mig.clone(),
    })
}

fn ports_from_wire(ports: Vec<u32>, path: &str, errors: &mut Vec<FieldError>) -> Vec<u16> {
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        match u16::try_from(p) {
            Ok(p) => out.push(p),
            Err(_) => errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{p} must be a port number from 1 to 65535"),
            )),
        }
    }
    out
}

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

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
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

fn task_from_wire(t: pb::TaskSpec, path: &str) -> Result<m::TaskSpec, WireError> {
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

impl From<&m::Job> for pb::Job {
    fn from(j: &m::Job) -> Self {
        pb::Job {
            spec: Some((&j.spec).into()),
            version: j.version,
            create_index: j.create_index,
            modify_index: j.modify_index,
        }
    }
}

impl TryFrom<pb::Job> for m::Job {
    type Error = WireError;
    fn try_from(j: pb::Job) -> Result<Self, WireError> {
        Ok(m::Job {
            spec: required(j.spec, "spec")?.try_into()?,
            version: j.version,
            create_index: j.create_index,
            modify_index: j.modify_index,
        })
    }
}

// ---- nodes -----------------------------------------------------------------

impl From<m::NodeStatus> for pb::NodeStatus {
    fn from(s: m::NodeStatus) -> Self {
        match s {
            m::NodeStatus::Ready => pb::NodeStatus::Ready,
            m::NodeStatus::Down => pb::NodeStatus::Down,
        }
    }
}

impl From<&m::Node> for pb::Node {
    fn from(n: &m::Node) -> Self {
        pb::Node {
            name: n.name.clone(),
            labels: n.labels.clone(),
            capacity: Some(n.capacity.into()),
            allocatable: Some(n.allocatable.into()),
            address: n.address.clone(),
            status: pb::NodeStatus::from(n.status) as i32,
            agent_version: n.agent_version.clone(),
            create_index: n.create_index,
            modify_index: n.modify_index,
            gpus: n.gpus.iter().map(Into::into).collect(),
            gpu_links: n.gpu_links.iter().map(Into::into).collect(),
            cordoned: n.cordoned,
            draining: n.draining,
            drained: n.drained,
            drain_deadline_ms: n.drain_deadline_ms,
            gpu_driver_version: n.gpu_driver.driver_version.clone(),
            cuda_version: n.gpu_driver.cuda_version.clone(),
        }
    }
}

impl TryFrom<pb::Node> for m::Node {
    type Error = WireError;
    fn try_from(n: pb::Node) -> Result<Self, WireError> {
        let status = match pb::NodeStatus::try_from(n.status) {
            Ok(pb::NodeStatus::Ready) => m::NodeStatus::Ready,
            Ok(pb::NodeStatus::Down) => m::NodeStatus::Down,
            _ => {
                return Err(WireError::one(
                    "status",
                    format!("{} is not a node status", n.status),
                ))
            }
        };
        let gpu_links = n
            .gpu_links
            .into_iter()
            .enumerate()
            .map(|(i, l)| gpu_link_from_wire(l, &format!("gpu_links[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(m::Node {
            name: n.name,
            labels: n.labels,
            capacity: required(n.capacity, "capacity")?.into(),
            allocatable: required(n.allocatable, "allocatable")?.into(),
            gpus: n.gpus.into_iter().map(Into::into).collect(),
            gpu_links,
            gpu_driver: m::GpuDriver {
                driver_version: n.gpu_driver_version,
                cuda_version: n.cuda_version,
            },
            cordoned: n.cordoned,
            draining: n.draining,
            drained: n.drained,
            drain_deadline_ms: n.drain_deadline_ms,
            address: n.address,
            status,
            agent_version: n.agent_version,
            create_index: n.create_index,
            modify_index: n.modify_index,
        })
    }
}

// ---- allocations -----------------------------------------------------------

impl From<m::AllocStatus> for pb::AllocStatus {
    fn from(s: m::AllocStatus) -> Self {
        match s {
            m::AllocStatus::Pending => pb::AllocStatus::Pending,
            m::AllocStatus::Running => pb::AllocStatus::Running,
            m::AllocStatus::Complete => pb::AllocStatus::Complete,
            m::AllocStatus::Failed => pb::AllocStatus::Failed,
            m::AllocStatus::Lost => pb::AllocStatus::Lost,
        }
    }
}

/// Reads an alloc status off the wire; `field` names it in the error.
pub fn alloc_status_from_wire(v: i32, field: &str) -> Result<m::AllocStatus, WireError> {
    Ok(match pb::AllocStatus::try_from(v) {
        Ok(pb::AllocStatus::Pending) => m::AllocStatus::Pending,
        Ok(pb::AllocStatus::Running) => m::AllocStatus::Running,
        Ok(pb::AllocStatus::Complete) => m::AllocStatus::Complete,
        Ok(pb::AllocStatus::Failed) => m::AllocStatus::Failed,
        Ok(pb::AllocStatus::Lost) => m::AllocStatus::Lost,
        _ => {
            return Err(WireError::one(
                field,
                format!("{v} is not an allocation status"),
            ))
        }
    })
}

impl From<&m::Allocation> for pb::Allocation {
    fn from(a: &m::Allocation) -> Self {
        pb::Allocation {
            id: a.id.clone(),
            job: a.job.clone(),
            job_version: a.job_version,
            replica: a.replica,
            node: a.node.clone(),
            task: Some((&a.task).into()),
            desired: match a.desired {
                m::DesiredStatus::Run => pb::DesiredStatus::Run,
                m::DesiredStatus::Stop => pb::DesiredStatus::Stop,
            } as i32,
            status: pb::AllocStatus::from(a.status) as i32,
            exit_code: a.exit_code,
            message: a.message.clone(),
            create_index: a.create_index,
            modify_index: a.modify_index,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: a.reason.clone(),
            gpus: a.gpus.clone(),
            ports: a.ports.iter().map(|&p| u32::from(p)).collect(),
            unhealthy_gpus: a.unhealthy_gpus.clone(),
            deploy_health: a.deploy_health,
            healthy_since_ms: a.healthy_since_ms,
            create_time_ms: a.create_time_ms,
            gang: a.gang.as_ref().map(|g| pb::GangRank {
                rank: g.rank,
                world_size: g.world_size,
                master_addr: g.master_addr.clone(),
                master_port: u32::from(g.master_port),
            }),
        }
    }
}

impl TryFrom<pb::Allocation> for m::Allocation {
    type Error = WireError;
    fn try_from(a: pb::Allocation) -> Result<Self, WireError> {
        let desired = match pb::DesiredStatus::try_from(a.desired) {
            Ok(pb::DesiredStatus::Run) => m::DesiredStatus::Run,
            Ok(pb::DesiredStatus::Stop) => m::DesiredStatus::Stop,
            _ => {
                return Err(WireError::one(
                    "desired",
                    format!("{} is not a desired status", a.desired),
                ))
            }
        };
        let mut errors = Vec::new();
        let ports = ports_from_wire(a.ports, "ports", &mut errors);
        let gang = match a.gang {
            None => None,
            Some(g) => match u16::try_from(g.master_port) {
                Ok(master_port) => Some(m::GangRank {
                    rank: g.rank,
                    world_size: g.world_size,
                    master_addr: g.master_addr,
                    master_port,
                }),
                Err(_) => {
                    errors.push(FieldError::new(
                        "gang.master_port",
                        format!("{} must be a port number from 1 to 65535", g.master_port),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(WireError(errors));
        }
        Ok(m::Allocation {
            deploy_health: a.deploy_health,
            healthy_since_ms: a.healthy_since_ms,
            create_time_ms: a.create_time_ms,
            gang,
            gpus: a.gpus,
            ports,
            unhealthy_gpus: a.unhealthy_gpus,
            status: alloc_status_from_wire(a.status, "status")?,
            task: task_from_wire(required(a.task, "task")?, "task")?,
            id: a.id,
            job: a.job,
            job_version: a.job_version,
            replica: a.replica,
            node: a.node,
            desired,
            exit_code: a.exit_code,
            message: a.message,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: a.reason,
            create_index: a.create_index,
            modify_index: a.modify_index,
        })
    }
}

// ---- rollouts --------------------------------------------------------------

impl From<&m::Deployment> for pb::Deployment {
    fn from(d: &m::Deployment) -> Self {
        pb::Deployment {
            id: d.id.clone(),
            job: d.job.clone(),
            version: d.version,
            from_version: d.from_version,
            status: d.status.as_str().to_string(),
            reason: d.reason.clone(),
            canary: d.canary,
            promoted: d.promoted,
            rollback: d.rollback,
            started_ms: d.started_ms,
            progress_ms: d.progress_ms,
            ended_ms: d.ended_ms,
            create_index: d.create_index,
            modify_index: d.modify_index,
        }
    }
}

impl TryFrom<pb::Deployment> for m::Deployment {
    type Error = WireError;
    fn try_from(d: pb::Deployment) -> Result<Self, WireError> {
        let status = m::DeploymentStatus::parse(&d.status).ok_or_else(|| {
            WireError::one("status", format!("{:?} is not a rollout status", d.status))
        })?;
        Ok(m::Deployment {
            id: d.id,
            job: d.job,
            version: d.version,
            from_version: d.from_version,
            status,
            reason: d.reason,
            canary: d.canary,
            promoted: d.promoted,
            rollback: d.rollback,
            started_ms: d.started_ms,
            progress_ms: d.progress_ms,
            ended_ms: d.ended_ms,
            create_index: d.create_index,
            modify_index: d.modify_index,
            slot: 0,
        })
    }
}

impl From<&m::JobVersion> for pb::JobVersion {
    fn from(v: &m::JobVersion) -> Self {
        pb::JobVersion {
            version: v.version,
            spec: Some(v.spec.as_ref().into()),
            create_index: v.create_index,
            stable: v.stable,
            note: v.note.clone(),
        }
    }
}

impl TryFrom<pb::JobVersion> for m::JobVersion {
    type Error = WireError;
    fn try_from(v: pb::JobVersion) -> Result<Self, WireError> {
        Ok(m::JobVersion {
            version: v.version,
            spec: Box::new(required(v.spec, "spec")?.try_into()?),
            create_index: v.create_index,
            stable: v.stable,
            note: v.note,
            slot: 0,
            fingerprint: 0,
        })
    }
}

impl From<m::RolloutCounts> for pb::RolloutCounts {
    fn from(c: m::RolloutCounts) -> Self {
        pb::RolloutCounts {
            desired: c.desired,
            updated: c.updated,
            healthy: c.healthy,
            unhealthy: c.unhealthy,
            old: c.old,
            old_healthy: c.old_healthy,
        }
    }
}

impl From<pb::RolloutCounts> for m::RolloutCounts {
    fn from(c: pb::RolloutCounts) -> Self {
        m::RolloutCounts {
            desired: c.desired,
            updated: c.updated,
            healthy: c.healthy,
            unhealthy: c.unhealthy,
            old: c.old,
            old_healthy: c.old_healthy,
        }
    }
}

// ---- evaluations -----------------------------------------------------------

impl From<&m::Evaluation> for pb::Evaluation {
    fn from(e: &m::Evaluation) -> Self {
        pb::Evaluation {
            id: e.id.clone(),
            job: e.job.clone(),
            trigger: e.trigger.as_str().to_string(),
            status: match e.status {
                m::EvalStatus::Pending => pb::EvalStatus::Pending,
                m::EvalStatus::Complete => pb::EvalStatus::Complete,
                m::EvalStatus::Blocked => pb::EvalStatus::Blocked,
            } as i32,
            message: e.message.clone(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_wire_spec_without_priority_gets_the_default_and_bad_ones_are_named() {
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
        let err = m::JobSpec::try_from(wire.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task.resources.ports[0]: 70000 must be a port number from 1 to 65535"
        );
        wire.task.as_mut().unwrap().ports = vec![];
        let err = m::JobSpec::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["priority", "constraints[0].op"]);
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
        wire.r#type = "cron".into();
        wire.gang_failure = "shrug".into();
        wire.update = Some(pb::UpdateSpec {
            max_surge: "lots".into(),
            ..Default::default()
        });
        let err = m::JobSpec::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["type", "gang_failure", "update.max_surge"]);
    }

    #[test]
    fn a_gpu_node_survives_the_wire() {
        let n = m::Node {
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
        task.image = "nginx".into();
        task.network = 42;
        task.resources = None;
        let err = m::JobSpec::try_from(wire).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["task.image", "task.network", "task.resources"]);

        let mut wire: pb::JobSpec = (&spec()).into();
        wire.task = None;
        assert_eq!(
            m::JobSpec::try_from(wire).unwrap_err().to_string(),
            "task: is required"
        );
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
}
