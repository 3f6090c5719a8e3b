//! `skiff queue apply|ls|describe|delete`: team queues sharing a cluster's
//! GPUs (nominal quota per team, borrowing idle capacity within a cohort,
//! fair sharing, reclaim), and why a job waits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use skiff_client::{QueueJob, QueueStatus};
use skiff_model::queue::{format_amount, quota_amounts, resource_name, Amounts, Queue, GPU_PREFIX};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Describe a team queue from a YAML file (new or again; admin only):
    /// `nominal` (what the team is owed: cpu, memory, allocations, gpus
    /// by model or `any`), `cohort` (queues that lend each other unused
    /// quota), `borrowing_limit`, `lending_limit`, `weight` (fair share)
    /// and `namespaces` (who may submit; `*` for all). Jobs name it with
    /// `queue:` and wait until their whole request is admitted.
    #[command(after_help = "Example (examples/queue.yaml):\n  \
        name: team-a\n  \
        cohort: lab\n  \
        namespaces: [team-a]\n  \
        nominal: {gpus: {\"NVIDIA H100 80GB HBM3\": 16, any: 4}, cpu: 256, memory: 2Ti}\n  \
        borrowing_limit: {gpus: {\"NVIDIA H100 80GB HBM3\": 8}}")]
    Apply {
        /// The queue's YAML file.
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List queues: usage against nominal quota, what each borrows and
    /// lends, its fair share and its admitted and waiting jobs.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one queue: its admitted jobs, and its waiting jobs in order
    /// with the reason each waits.
    Describe {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete a queue no job names (admin only).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// A queue as `ls -o json|yaml` shows it. Amounts are written as in a
/// queue's file (`cpu`, `memory`, `allocations`, `gpus: {MODEL|any: N}`),
/// each a quantity string (`"500m"`, `"2Ti"`, `"16"`).
#[derive(Clone, Serialize)]
struct QueueOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cohort: Option<String>,
    weight: u32,
    /// What the queue is owed, of each resource it governs.
    #[serde(serialize_with = "amounts_out")]
    nominal: Amounts,
    /// What its admitted jobs hold.
    #[serde(serialize_with = "amounts_out")]
    usage: Amounts,
    #[serde(serialize_with = "amounts_out")]
    borrowed: Amounts,
    #[serde(serialize_with = "amounts_out")]
    lent: Amounts,
    /// Weighted dominant share of borrowed resources (1.0: all the
    /// cohort can lend, at weight 1); null: borrowing at weight 0.
    share: Option<f64>,
    admitted: u32,
    pending: u32,
}

#[derive(Serialize)]
struct JobOut {
    job: String,
    priority: u32,
    #[serde(serialize_with = "amounts_out")]
    request: Amounts,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

#[derive(Serialize)]
struct DescribeOut {
    queue: QueueOut,
    /// The queue's settings as applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<SpecOut>,
    admitted: Vec<JobOut>,
    pending: Vec<JobOut>,
}

/// A queue's settings beyond its quota and cohort, as `describe` shows
/// them (limits keyed as in the queue's file).
#[derive(Serialize)]
struct SpecOut {
    namespaces: Vec<String>,
    #[serde(serialize_with = "amounts_out")]
    borrowing_limit: Amounts,
    #[serde(serialize_with = "amounts_out")]
    lending_limit: Amounts,
    /// `10m`; the queue's own or the default.
    backfill_window: String,
    #[serde(skip)]
    default_window: bool,
}

impl From<Queue> for SpecOut {
    fn from(q: Queue) -> SpecOut {
        SpecOut {
            backfill_window: skiff_model::duration::format_duration(q.backfill_window()),
            default_window: q.backfill_window.is_none(),
            borrowing_limit: quota_amounts(&q.borrowing_limit),
            lending_limit: quota_amounts(&q.lending_limit),
            namespaces: q.namespaces,
        }
    }
}

/// Amounts keyed as a queue's file keys them, for JSON and YAML.
fn amounts_out<S: serde::Serializer>(a: &Amounts, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Out {
        #[serde(flatten)]
        plain: BTreeMap<String, String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        gpus: BTreeMap<String, String>,
    }
    let mut out = Out {
        plain: BTreeMap::new(),
        gpus: BTreeMap::new(),
    };
    for (k, v) in a {
        match k.strip_prefix(GPU_PREFIX) {
            Some(model) => out.gpus.insert(model.to_string(), format_amount(k, *v)),
            None => out.plain.insert(k.clone(), format_amount(k, *v)),
        };
    }
    out.serialize(s)
}

/// Amounts as people read them, for the tables.
fn readable(a: &Amounts) -> BTreeMap<String, String> {
    a.iter()
        .map(|(k, v)| (resource_name(k), format_amount(k, *v)))
        .collect()
}

fn share_text(share: Option<f64>) -> String {
    share.map_or("inf".into(), |s| format!("{s:.3}"))
}

fn queue_out(s: &QueueStatus) -> QueueOut {
    let q = s.queue.clone().unwrap_or_default();
    QueueOut {
        name: q.name,
        cohort: (!q.cohort.is_empty()).then_some(q.cohort),
        weight: q.weight.unwrap_or(1),
        nominal: s.nominal.clone(),
        usage: s.usage.clone(),
        borrowed: s.borrowed.clone(),
        lent: s.lent.clone(),
        share: (s.share != u64::MAX).then(|| s.share as f64 / 1e6),
        admitted: s.admitted,
        pending: s.pending,
    }
}

/// `used/nominal` by resource, for the table: every resource governed
/// (0 when unused), then the others used.
fn usage_text(q: &QueueOut) -> String {
    let mut m = readable(&q.usage);
    for (k, n) in &q.nominal {
        let used = format_amount(k, q.usage.get(k).copied().unwrap_or(0));
        m.insert(resource_name(k), format!("{used}/{}", format_amount(k, *n)));
    }
    joined(&m)
}

fn job_out(j: &QueueJob) -> JobOut {
    JobOut {
        job: j.job.clone(),
        priority: j.priority,
        request: j.request.clone(),
        reason: j.reason.clone(),
    }
}

fn joined(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn queue(cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Apply { file, client } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let q = Queue::from_yaml(&text).map_err(|e| {
                // A job given where a queue goes: say which command takes it.
                let job = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
                    .ok()
                    .is_some_and(|v| v.get("task").is_some());
                if job {
                    anyhow::anyhow!(
                        "{}: this is a job, not a team queue: `skiff apply -f FILE` takes it",
                        file.display()
                    )
                } else {
                    anyhow::anyhow!("{}: {e}", file.display())
                }
            })?;
            connect(&client).await?.apply_queue(&q).await?;
            emit(&format!("queue/{} applied\n", q.name));
        }
        QueueCmd::Ls { output, client } => {
            let list = connect(&client).await?.list_queues().await?;
            let rows: Vec<QueueOut> = list.iter().map(queue_out).collect();
            print_list(
                output,
                &rows,
                &[
                    "NAME", "COHORT", "ADMITTED", "PENDING", "USAGE", "BORROWED", "LENT", "WEIGHT",
                    "SHARE",
                ],
                7,
                |r| {
                    vec![
                        r.name.clone(),
                        r.cohort.clone().unwrap_or("-".into()),
                        r.admitted.to_string(),
                        r.pending.to_string(),
                        usage_text(r),
                        joined(&readable(&r.borrowed)),
                        joined(&readable(&r.lent)),
                        r.weight.to_string(),
                        share_text(r.share),
                    ]
                },
            )?;
        }
        QueueCmd::Describe {
            name,
            output,
            client,
        } => {
            let d = connect(&client).await?.describe_queue(&name).await?;
            let status = d.status.as_ref().context("no status")?;
            let out = DescribeOut {
                queue: queue_out(status),
                spec: status
                    .queue
                    .clone()
                    .and_then(|q| Queue::try_from(q).ok())
                    .map(SpecOut::from),
                admitted: d.admitted.iter().map(job_out).collect(),
                pending: d.pending.iter().map(job_out).collect(),
            };
            match output {
                Format::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&out)?)),
                Format::Yaml => emit(&serde_yaml_ng::to_string(&out)?),
                Format::Table | Format::Wide => emit(&describe_text(&out)),
            }
        }
        QueueCmd::Delete { name, client } => {
            connect(&client).await?.delete_queue(&name).await?;
            emit(&format!("queue/{name} deleted\n"));
        }
    }
    Ok(())
}

fn describe_text(d: &DescribeOut) -> String {
    use std::fmt::Write;
    let q = &d.queue;
    let mut s = String::new();
    let _ = writeln!(s, "Name:      {}", q.name);
    let _ = writeln!(
        s,
        "Cohort:    {} (weight {})",
        q.cohort.as_deref().unwrap_or("-"),
        q.weight
    );
    if let Some(spec) = &d.spec {
        let _ = writeln!(s, "Namespaces: {}", spec.namespaces.join(", "));
        if !spec.borrowing_limit.is_empty() {
            let limit = joined(&readable(&spec.borrowing_limit));
            let _ = writeln!(s, "Borrowing limit: {limit}");
        }
        if !spec.lending_limit.is_empty() {
            let limit = joined(&readable(&spec.lending_limit));
            let _ = writeln!(s, "Lending limit:   {limit}");
        }
        let default = if spec.default_window {
            " (default)"
        } else {
            ""
        };
        let _ = writeln!(s, "Backfill window: {}{default}", spec.backfill_window);
    }
    let _ = writeln!(s, "Usage:     {}", usage_text(q));
    let _ = writeln!(s, "Borrowed:  {}", joined(&readable(&q.borrowed)));
    let _ = writeln!(s, "Lent:      {}", joined(&readable(&q.lent)));
    let _ = writeln!(s, "Share:     {}", share_text(q.share));
    let _ = writeln!(s, "Admitted:  {}", d.admitted.len());
    for j in &d.admitted {
        let _ = writeln!(
            s,
            "  {}  priority {}  {}",
            j.job,
            j.priority,
            joined(&readable(&j.request))
        );
    }
    let _ = writeln!(s, "Waiting:   {}", d.pending.len());
    for j in &d.pending {
        let _ = writeln!(
            s,
            "  {}  priority {}  {}\n    {}",
            j.job,
            j.priority,
            joined(&readable(&j.request)),
            j.reason
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_in_json_is_keyed_as_in_its_file_with_a_numeric_share() {
        let gpus = |m: &str| format!("{GPU_PREFIX}{m}");
        let units = skiff_model::namespace::GPU_UNITS;
        let q = QueueOut {
            name: "team-a".into(),
            cohort: Some("lab".into()),
            weight: 1,
            nominal: [(gpus("any"), 4 * units), ("memory".into(), 64 << 30)].into(),
            usage: [(gpus("any"), 8 * units), ("cpu".into(), 2500)].into(),
            borrowed: [(gpus("any"), 4 * units + units / 2)].into(),
            lent: Amounts::new(),
            share: Some(0.5),
            admitted: 2,
            pending: 1,
        };
        let v = serde_json::to_value(&q).unwrap();
        assert_eq!(v["nominal"]["gpus"]["any"], "4", "{v}");
        assert_eq!(v["nominal"]["memory"], "64Gi", "{v}");
        assert_eq!(v["usage"]["cpu"], "2500m", "{v}");
        assert_eq!(v["usage"]["gpus"]["any"], "8", "{v}");
        assert_eq!(v["borrowed"]["gpus"]["any"], "4.50", "{v}");
        assert_eq!(v["lent"], serde_json::json!({}), "{v}");
        assert_eq!(v["share"], 0.5, "{v}");
        // The table still reads `used/nominal`, governed resources first
        // named, then what is used of the others.
        assert_eq!(
            usage_text(&q),
            "GPUs (any model)=8/4, cpu=2500m, memory=0/64Gi"
        );
        // describe: the limits read as the quota does, in the file's keys.
        let spec = Queue::from_yaml(
            "name: team-a\ncohort: lab\nnamespaces: [vision]\nnominal: {gpus: {any: 4}, cpu: 8}\nborrowing_limit: {gpus: {any: 2}, cpu: 2}\n",
        )
        .unwrap();
        let d = DescribeOut {
            queue: q.clone(),
            spec: Some(SpecOut::from(spec)),
            admitted: vec![],
            pending: vec![],
        };
        let text = describe_text(&d);
        assert!(
            text.contains("Borrowing limit: GPUs (any model)=2, cpu=2\n"),
            "{text}"
        );
        assert!(text.contains("Backfill window: 10m (default)"), "{text}");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["spec"]["borrowing_limit"]["cpu"], "2", "{v}");
        assert_eq!(v["spec"]["borrowing_limit"]["gpus"]["any"], "2", "{v}");
        let inf = QueueOut { share: None, ..q };
        assert_eq!(
            serde_json::to_value(&inf).unwrap()["share"],
            serde_json::Value::Null
        );
        assert_eq!(share_text(inf.share), "inf");
    }
}
