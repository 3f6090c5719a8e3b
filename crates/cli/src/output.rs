//! Tables, JSON and YAML for the client commands.

use serde::Serialize;
use skiff_client::{JobSummary, NodeInfo};
use skiff_model::quantity::{format_cpu, format_memory, format_memory_human};
use skiff_model::{Allocation, Job};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    /// The table with more columns (GPUs, labels, ports).
    Wide,
    Json,
    Yaml,
}

/// An allocation as `-o json|yaml` shows it.
#[derive(Serialize)]
pub struct AllocOut<'a> {
    pub id: &'a str,
    pub job: &'a str,
    pub job_version: u64,
    pub replica: u32,
    pub node: &'a str,
    pub desired: &'static str,
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub message: &'a str,
    /// Times the node started the container again.
    pub restart_count: u32,
    /// Readiness (null while not running).
    pub healthy: Option<bool>,
    /// `oom_killed`, `back_off`, `error`, ... (empty when none applies).
    pub reason: &'a str,
    pub image: String,
    /// UUIDs of the GPUs it holds.
    pub gpus: &'a [String],
    /// Host ports it holds.
    pub ports: &'a [u16],
    /// `network: bridge`: its address on its node's bridge.
    pub address: &'a str,
    /// Its GPUs that are unhealthy now (`UUID: reason`).
    pub unhealthy_gpus: &'a [String],
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> From<&'a Allocation> for AllocOut<'a> {
    fn from(a: &'a Allocation) -> Self {
        AllocOut {
            id: &a.id,
            job: &a.job,
            job_version: a.job_version,
            replica: a.replica,
            node: &a.node,
            desired: match a.desired {
                skiff_model::DesiredStatus::Run => "run",
                skiff_model::DesiredStatus::Stop => "stop",
            },
            status: a.status.as_str(),
            exit_code: a.exit_code,
            message: &a.message,
            restart_count: a.restart_count,
            healthy: a.healthy,
            reason: &a.reason,
            image: a.task.image.to_string(),
            gpus: &a.gpus,
            ports: &a.ports,
            address: &a.address,
            unhealthy_gpus: &a.unhealthy_gpus,
            create_index: a.create_index,
            modify_index: a.modify_index,
        }
    }
}

impl AllocOut<'_> {
    /// The STATUS column: the status, or what keeps a running allocation
    /// from running right now (`back-off`, as Kubernetes shows
    /// CrashLoopBackOff), or why it failed (`oom-killed`), or that its
    /// image is being pulled (`pulling`, the message says how far).
    pub fn shown_status(&self) -> String {
        match (self.status, self.reason) {
            ("running", "back_off") => "back-off".into(),
            ("failed", "oom_killed") => "oom-killed".into(),
            ("pending", "pulling") => "pulling".into(),
            (s, _) => s.into(),
        }
    }

    /// The MESSAGE column: the message, after a warning about any of its
    /// GPUs that is unhealthy.
    pub fn shown_message(&self) -> String {
        if self.unhealthy_gpus.is_empty() {
            return self.message.to_string();
        }
        let warning = format!("GPU unhealthy: {}", self.unhealthy_gpus.join("; "));
        if self.message.is_empty() {
            warning
        } else {
            format!("{warning}; {}", self.message)
        }
    }

    /// The READY column: yes, no, or - when not running.
    pub fn ready(&self) -> &'static str {
        match self.healthy {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        }
    }
}

#[derive(Serialize)]
pub struct NodeOut<'a> {
    pub name: &'a str,
    /// `ready`, `ready,cordoned`, `ready,draining`, `down`...
    pub status: String,
    pub cordoned: bool,
    pub draining: bool,
    /// Allocatable CPU, as a quantity.
    pub cpu: String,
    /// Allocatable memory, as a quantity.
    pub memory: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub cpu_used_millis: u64,
    pub memory_used_bytes: u64,
    /// Healthy GPUs (what the scheduler may hand out) and those in use.
    pub gpus_allocatable: u32,
    pub gpus_used: u32,
    pub gpus: &'a [skiff_model::Gpu],
    pub gpu_links: &'a [skiff_model::GpuLink],
    pub gpu_driver: &'a skiff_model::GpuDriver,
    /// The latest GPU samples (utilisation, memory, temperature, power,
    /// ECC counts, throttling), as the answering server has them.
    pub gpu_metrics: &'a [skiff_model::GpuMetrics],
    pub gpu_metrics_age_ms: Option<u64>,
    pub address: &'a str,
    /// Its subnet for `network: bridge`.
    pub subnet: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub heartbeat_age_ms: Option<u64>,
    pub agent_version: &'a str,
}

impl<'a> From<&'a NodeInfo> for NodeOut<'a> {
    fn from(n: &'a NodeInfo) -> Self {
        let a = n.node.allocatable;
        NodeOut {
            name: &n.node.name,
            status: n.node.status_text(),
            cordoned: n.node.cordoned,
            draining: n.node.draining,
            cpu: format_cpu(a.cpu_millis),
            memory: format_memory_human(a.memory_bytes),
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            cpu_used_millis: n.used.cpu_millis,
            memory_used_bytes: n.used.memory_bytes,
            gpus_allocatable: a.gpus,
            gpus_used: n.used.gpus,
            gpus: &n.node.gpus,
            gpu_links: &n.node.gpu_links,
            gpu_driver: &n.node.gpu_driver,
            gpu_metrics: &n.gpu_metrics,
            gpu_metrics_age_ms: n.gpu_metrics_age.map(|d| d.as_millis() as u64),
            address: &n.node.address,
            subnet: &n.node.subnet,
            labels: &n.node.labels,
            heartbeat_age_ms: n.heartbeat_age.map(|d| d.as_millis() as u64),
            agent_version: &n.node.agent_version,
        }
    }
}

#[derive(Serialize)]
pub struct JobOut<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// `service` or `batch`.
    pub job_type: &'static str,
    pub version: u64,
    /// Replicas of a service; parallelism of a batch job.
    pub replicas: u32,
    pub running: u32,
    pub pending: u32,
    pub complete: u32,
    pub failed: u32,
    pub lost: u32,
    /// Batch: slots that succeeded, of `completions`; failed runs.
    pub succeeded: u32,
    pub completions: u32,
    pub failed_runs: u32,
    /// Batch: running, complete or failed; a service: its rollout's status.
    pub state: String,
    pub image: String,
    pub spec: &'a skiff_model::JobSpec,
}

impl<'a> JobOut<'a> {
    pub fn new(job: &'a Job, s: &JobSummary) -> Self {
        JobOut {
            name: &job.spec.name,
            namespace: &job.spec.namespace,
            job_type: job.spec.job_type.as_str(),
            version: job.version,
            replicas: s.desired,
            running: s.running,
            pending: s.pending,
            complete: s.complete,
            failed: s.failed,
            lost: s.lost,
            succeeded: s.succeeded,
            completions: s.completions,
            failed_runs: s.failed_runs,
            state: s.state.clone(),
            image: job.spec.task.image.to_string(),
            spec: &job.spec,
        }
    }
}

/// Prints a list in the chosen format. JSON is always an array. `row`
/// gives every column; the table shows the first `narrow` of them, the
/// wide table all.
pub fn print_list<T: Serialize>(
    format: Format,
    items: &[T],
    headers: &[&str],
    narrow: usize,
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => emit(&format!("{}\n", serde_json::to_string_pretty(items)?)),
        Format::Yaml => emit(&serde_yaml_ng::to_string(items)?),
        Format::Table | Format::Wide => {
            let keep = if format == Format::Wide {
                headers.len()
            } else {
                narrow.min(headers.len())
            };
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| row(item).into_iter().take(keep).collect())
                .collect();
            emit(&table(&headers[..keep], &rows));
        }
    }
    Ok(())
}

/// `2 A100 (80Gi), 1 T4 (16Gi)`: a node's GPUs counted by model, `-` for
/// none; MIG instances are counted by profile (`3 MIG 1g.10gb`).
pub fn gpu_models(gpus: &[skiff_model::Gpu]) -> String {
    let mut counts: std::collections::BTreeMap<(String, u64), u32> = Default::default();
    for g in gpus.iter().filter(|g| g.schedulable()) {
        let name = match &g.mig_profile {
            Some(p) => format!("MIG {p}"),
            None => g.model.clone(),
        };
        let mem = if g.is_mig() { 0 } else { g.memory_bytes };
        *counts.entry((name, mem)).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .into_iter()
        .map(|((model, mem), n)| {
            let model = if model.is_empty() {
                "gpu".to_string()
            } else {
                model
            };
            if mem > 0 {
                format!("{n} {model} ({})", format_memory_human(mem))
            } else {
                format!("{n} {model}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Summaries of a node's GPU samples for `get nodes -o wide`: mean
/// utilisation, memory used of total, hottest temperature, total power.
pub fn gpu_usage(gpus: &[skiff_model::Gpu], m: &[skiff_model::GpuMetrics]) -> [String; 4] {
    if m.is_empty() {
        return ["-".into(), "-".into(), "-".into(), "-".into()];
    }
    let util = m.iter().map(|x| u64::from(x.utilization_pct)).sum::<u64>() / m.len() as u64;
    let used: u64 = m.iter().map(|x| x.memory_used_bytes).sum();
    let total: u64 = gpus
        .iter()
        .filter(|g| !g.is_mig() && m.iter().any(|x| x.uuid == g.uuid))
        .map(|g| g.memory_bytes)
        .sum();
    let temp = m.iter().map(|x| x.temperature_c).max().unwrap_or(0);
    let power: u64 = m.iter().map(|x| u64::from(x.power_mw)).sum();
    [
        format!("{util}%"),
        format!(
            "{}/{}",
            format_memory_human(used),
            format_memory_human(total)
        ),
        format!("{temp}C"),
        format!("{}W", power / 1000),
    ]
}

/// `4 ok`, `3 ok, 1 unhealthy`, or `-` without GPUs: what can be given
/// out (whole GPUs and MIG instances; an instance is unhealthy with its
/// GPU).
pub fn gpu_health(gpus: &[skiff_model::Gpu]) -> String {
    let units: Vec<&skiff_model::Gpu> = gpus.iter().filter(|g| g.schedulable()).collect();
    if units.is_empty() {
        return "-".into();
    }
    let bad = units.iter().filter(|g| !g.healthy).count();
    let ok = units.len() - bad;
    if bad == 0 {
        format!("{ok} ok")
    } else {
        format!("{ok} ok, {bad} unhealthy")
    }
}

/// `k=v,k2=v2`, `-` for none.
pub fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes to stdout. A reader that went away (`| head`, `| grep -q`) is
/// not an error: the output simply ends.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Left-aligned columns separated by three spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `3s`, `2m`, `1h` — how long ago, roughly.
pub fn age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s < 1 {
        format!("{}ms", d.as_millis())
    } else if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// `a, b`, or `-` when empty.
pub(crate) fn list_or_dash<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let parts: Vec<String> = items.map(|x| x.to_string()).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// `cpu 2, memory 8Gi, 2 gpus (model A100), ports 8080`
pub(crate) fn resources_text(r: &skiff_model::TaskResources) -> String {
    let mut s = format!(
        "cpu {}, memory {}",
        format_cpu(r.cpu_millis),
        format_memory(r.memory_bytes)
    );
    if r.gpus > 0 {
        s.push_str(&format!(
            ", {} gpu{}",
            r.gpus,
            if r.gpus == 1 { "" } else { "s" }
        ));
        if !r.gpu.is_empty() {
            s.push_str(&format!(" ({})", r.gpu));
        }
    }
    if !r.ports.is_empty() {
        s.push_str(&format!(", ports {}", list_or_dash(r.ports.iter())));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "STATUS"],
            &[
                vec!["a".into(), "running".into()],
                vec!["longer".into(), "x".into()],
            ],
        );
        assert_eq!(t, "NAME     STATUS\na        running\nlonger   x\n");
    }

    #[test]
    fn ages_are_short() {
        use std::time::Duration;
        assert_eq!(age(Duration::from_millis(250)), "250ms");
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(300)), "5m");
    }
}

/// A time (ms since the Unix epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC.
pub fn utc(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // The civil date of a day count (proleptic Gregorian, eras of 400 years).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn utc_names_the_calendar_day() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 (a leap day) 12:34:56.789
        assert_eq!(super::utc(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(super::utc(1_798_761_600_000), "2027-01-01T00:00:00.000Z");
    }
}
