//! The client commands: apply, get, describe, logs, delete.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use skiff_client::{Client, LogStream};
use skiff_model::duration::format_duration;
use skiff_model::quantity::{format_cpu, format_memory, format_memory_human};
use skiff_model::JobSpec;

use crate::output::{
    age, emit, gpu_health, gpu_models, gpu_usage, labels_text, print_list, table, AllocOut, Format,
    JobOut, NodeOut,
};
use crate::ClientOpts;

#[derive(Subcommand)]
pub enum GetWhat {
    /// List jobs with their allocation counts.
    #[command(alias = "job")]
    Jobs {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List allocations (one per replica placed on a node).
    #[command(alias = "alloc", alias = "allocations")]
    Allocs {
        /// Only this job's allocations.
        #[arg(long)]
        job: Option<String>,
        /// Only the allocations on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only allocations in this status.
        #[arg(long, value_parser = ["pending", "running", "complete", "failed", "lost"])]
        status: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List nodes with their capacity and heartbeat age.
    #[command(alias = "node")]
    Nodes {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
pub enum DescribeWhat {
    /// A job: its spec, allocations, and why any replica waits.
    Job {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A node: capacity and use, GPUs and how they are connected, allocations.
    Node {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
pub struct NodeArgs {
    /// The node's name, as `skiff get nodes` shows it.
    name: String,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Subcommand)]
pub enum GpuAction {
    /// Mark a GPU healthy again now, without waiting for its quiet period
    /// (after you replaced it, or checked it and the fault was transient).
    #[command(after_help = "Example: skiff node gpu reset gpu-7 GPU-5c1a\n\
        The UUID may be a unique prefix, as `skiff describe node` shows it.")]
    Reset {
        /// The node, as `skiff get nodes` shows it.
        node: String,
        /// The GPU's or MIG instance's UUID, or a unique prefix of it.
        uuid: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
pub enum DeleteWhat {
    /// Delete a job and stop its containers.
    Job {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
pub struct LogsArgs {
    /// Allocation id, or a unique prefix of it (as `skiff get allocs` shows).
    alloc: String,
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each stream.
    #[arg(long, value_name = "N", default_value_t = 0)]
    tail: u32,
    /// Only stderr.
    #[arg(long)]
    stderr: bool,
    /// Prefix each line with the time the node received it (RFC 3339, UTC).
    #[arg(short = 't', long)]
    timestamps: bool,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
#[command(after_help = "Example: skiff exec 3f2a -- cat /etc/hostname\n\
    The command's stdout and stderr are printed as they were, and skiff exits\n\
    with the command's exit code.")]
pub struct ExecArgs {
    /// Allocation id, or a unique prefix of it.
    alloc: String,
    /// Kill the command if it runs longer than this (e.g. 30s); no limit
    /// by default.
    #[arg(long, value_parser = crate::daemons::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    client: ClientOpts,
}

pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let client = Client::connect_any(&opts.server).await.with_context(|| {
        "is `skiff server` or `skiff dev` running? Point --server or SKIFF_SERVER at it".to_string()
    })?;
    Ok(client.stale(opts.stale))
}

#[derive(Args)]
pub struct WatchArgs {
    /// Print changes after this index (default: from now on). Use the last
    /// index printed to resume, on any server.
    #[arg(long, value_name = "INDEX", default_value_t = 0)]
    from: u64,
    /// Only changes of this kind.
    #[arg(long, value_parser = ["job", "node", "alloc", "eval", "server", "deployment", "history"])]
    kind: Option<String>,
    /// Print each event as one JSON line.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let mut events = client.watch(args.from).await?;
    while let Some(e) = events.next().await? {
        if args.kind.as_deref().is_some_and(|k| k != e.kind) {
            continue;
        }
        let line = match args.output {
            Format::Table => format!(
                "{:>8}  {:<6} {:<34} {}\n",
                e.index,
                e.kind,
                e.key,
                if e.value.is_some() {
                    "updated"
                } else {
                    "deleted"
                }
            ),
            _ => {
                let value: serde_json::Value = e
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_str(v).ok())
                    .unwrap_or(serde_json::Value::Null);
                format!(
                    "{}\n",
                    serde_json::json!({"index": e.index, "kind": e.kind, "key": e.key, "deleted": e.value.is_none(), "value": value})
                )
            }
        };
        emit(&line);
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct MemberOut {
    id: u64,
    api_addr: String,
    peer_addr: String,
    role: String,
    voter: bool,
    applied_index: Option<u64>,
}

pub async fn members(cmd: crate::daemons::MembersCmd) -> anyhow::Result<()> {
    match cmd.action {
        Some(crate::daemons::MembersAction::Remove { id, client }) => {
            connect(&client).await?.remove_member(id).await?;
            emit(&format!("server {id} removed\n"));
            Ok(())
        }
        None => {
            let (members, _leader) = connect(&cmd.client).await?.members().await?;
            let items: Vec<MemberOut> = members
                .into_iter()
                .map(|m| MemberOut {
                    id: m.id,
                    api_addr: m.api_addr,
                    peer_addr: m.peer_addr,
                    role: m.role,
                    voter: m.voter,
                    applied_index: m.applied_index,
                })
                .collect();
            print_list(
                cmd.output,
                &items,
                &["ID", "ROLE", "API", "PEER", "APPLIED"],
                5,
                |m| {
                    vec![
                        m.id.to_string(),
                        m.role.clone(),
                        m.api_addr.clone(),
                        m.peer_addr.clone(),
                        m.applied_index
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                },
            )
        }
    }
}

/// Reads the spec, resolving a relative `oci:` layout path against the
/// current directory (as skopeo does).
fn read_spec(file: &Path) -> anyhow::Result<JobSpec> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .take(skiff_model::MAX_SPEC_BYTES as u64 + 1)
            .read_to_string(&mut s)
            .context("reading the spec from standard input")?;
        s
    } else {
        let meta =
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        if meta.len() > skiff_model::MAX_SPEC_BYTES as u64 {
            bail!(
                "{} is {} bytes; a spec may be at most {} bytes",
                file.display(),
                meta.len(),
                skiff_model::MAX_SPEC_BYTES
            );
        }
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let mut spec =
        JobSpec::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if spec.task.image.is_relative() {
        let cwd = std::env::current_dir().context("cannot resolve the image path")?;
        let abs = cwd.join(&spec.task.image.path);
        spec.task.image.path = normalize(&abs);
    }
    Ok(spec)
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s),
            _ => {}
        }
    }
    let mut out = String::new();
    for s in parts {
        out.push('/');
        out.push_str(&s.to_string_lossy());
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub async fn apply(opts: &ClientOpts, file: &Path) -> anyhow::Result<()> {
    let spec = read_spec(file)?;
    let mut client = connect(opts).await?;
    let applied = client.apply_job(&spec).await?;
    let what = if !applied.changed {
        "unchanged"
    } else if applied.job.create_index == applied.job.modify_index {
        "created"
    } else {
        "configured"
    };
    emit(&format!(
        "job/{} {what} (version {})\n",
        applied.job.spec.name, applied.job.version
    ));
    Ok(())
}

pub async fn get(what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Jobs { output, client } => {
            let jobs = connect(&client).await?.list_jobs().await?;
            let items: Vec<JobOut> = jobs.iter().map(|(j, s)| JobOut::new(j, s)).collect();
            print_list(
                output,
                &items,
                &[
                    "NAME",
                    "TYPE",
                    "VERSION",
                    "READY",
                    "STATUS",
                    "SUCCEEDED",
                    "FAILED",
                    "PENDING",
                    "IMAGE",
                    "COMPLETE",
                    "LOST",
                ],
                9,
                |j| {
                    let batch = j.job_type == "batch";
                    vec![
                        j.name.to_string(),
                        j.job_type.to_string(),
                        j.version.to_string(),
                        format!("{}/{}", j.running, j.replicas),
                        if j.state.is_empty() {
                            "-".into()
                        } else {
                            j.state.to_string()
                        },
                        if batch {
                            format!("{}/{}", j.succeeded, j.completions)
                        } else {
                            "-".into()
                        },
                        if batch {
                            j.failed_runs.to_string()
                        } else {
                            j.failed.to_string()
                        },
                        j.pending.to_string(),
                        j.image.clone(),
                        j.complete.to_string(),
                        j.lost.to_string(),
                    ]
                },
            )
        }
        GetWhat::Allocs {
            job,
            node,
            status,
            output,
            client,
        } => {
            let mut allocs = connect(&client)
                .await?
                .list_allocs(job.as_deref(), node.as_deref())
                .await?;
            if let Some(status) = status {
                allocs.retain(|a| a.status.as_str() == status);
            }
            let items: Vec<AllocOut> = allocs.iter().map(Into::into).collect();
            print_list(
                output,
                &items,
                &[
                    "ID", "JOB", "REPLICA", "NODE", "DESIRED", "STATUS", "READY", "RESTARTS",
                    "EXIT", "MESSAGE", "GPUS", "PORTS",
                ],
                10,
                |a| {
                    vec![
                        a.id[..8.min(a.id.len())].to_string(),
                        a.job.to_string(),
                        a.replica.to_string(),
                        a.node.to_string(),
                        a.desired.to_string(),
                        a.shown_status().to_string(),
                        a.ready().to_string(),
                        a.restart_count.to_string(),
                        a.exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        a.shown_message(),
                        list_or_dash(a.gpus.iter()),
                        list_or_dash(a.ports.iter()),
                    ]
                },
            )
        }
        GetWhat::Nodes { output, client } => {
            let nodes = connect(&client).await?.list_nodes().await?;
            let items: Vec<NodeOut> = nodes.iter().map(Into::into).collect();
            print_list(
                output,
                &items,
                &[
                    "NAME",
                    "STATUS",
                    "CPU",
                    "MEMORY",
                    "CPU USED",
                    "MEMORY USED",
                    "HEARTBEAT",
                    "ADDRESS",
                    "GPUS",
                    "GPU MODELS",
                    "GPU HEALTH",
                    "GPU UTIL",
                    "GPU MEMORY",
                    "GPU TEMP",
                    "GPU POWER",
                    "LABELS",
                ],
                8,
                |n| {
                    vec![
                        n.name.to_string(),
                        n.status.clone(),
                        n.cpu.clone(),
                        n.memory.clone(),
                        format_cpu(n.cpu_used_millis),
                        format_memory_human(n.memory_used_bytes),
                        n.heartbeat_age_ms
                            .map(|ms| format!("{} ago", age(std::time::Duration::from_millis(ms))))
                            .unwrap_or_else(|| "-".into()),
                        n.address.to_string(),
                        format!("{}/{}", n.gpus_used, n.gpus_allocatable),
                        gpu_models(n.gpus),
                        gpu_health(n.gpus),
                    ]
                    .into_iter()
                    .chain(gpu_usage(n.gpus, n.gpu_metrics))
                    .chain([labels_text(n.labels)])
                    .collect()
                },
            )
        }
    }
}

/// `a, b`, or `-` when empty.
fn list_or_dash<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let parts: Vec<String> = items.map(|x| x.to_string()).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// `cpu 2, memory 8Gi, 2 gpus (model A100), ports 8080`
fn resources_text(r: &skiff_model::TaskResources) -> String {
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

pub async fn describe(what: DescribeWhat) -> anyhow::Result<()> {
    match what {
        DescribeWhat::Job { name, client } => describe_job(&name, &client).await,
        DescribeWhat::Node { name, client } => describe_node(&name, &client).await,
    }
}

async fn describe_node(name: &str, opts: &ClientOpts) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let nodes = client.list_nodes().await?;
    let Some(info) = nodes.iter().find(|n| n.node.name == name) else {
        bail!("node {name:?} not found");
    };
    let n = &info.node;
    let mut out = String::new();
    out.push_str(&format!("Name:        {}\n", n.name));
    out.push_str(&format!("Status:      {}\n", n.status_text()));
    out.push_str(&format!("Address:     {}\n", n.address));
    out.push_str(&format!("Labels:      {}\n", labels_text(&n.labels)));
    out.push_str(&format!(
        "Allocatable: cpu {}, memory {}, gpus {}\n",
        format_cpu(n.allocatable.cpu_millis),
        format_memory_human(n.allocatable.memory_bytes),
        n.allocatable.gpus
    ));
    out.push_str(&format!(
        "Used:        cpu {}, memory {}, gpus {}\n",
        format_cpu(info.used.cpu_millis),
        format_memory_human(info.used.memory_bytes),
        info.used.gpus
    ));
    let allocs = client.list_allocs(None, Some(name)).await?;
    if !n.gpus.is_empty() {
        describe_gpus(&mut out, info, &allocs);
    }
    out.push_str("\nAllocations:\n");
    let live: Vec<&skiff_model::Allocation> =
        allocs.iter().filter(|a| a.holds_resources()).collect();
    if live.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let rows: Vec<Vec<String>> = live
            .iter()
            .map(|a| {
                vec![
                    a.short_id().to_string(),
                    a.job.clone(),
                    a.replica.to_string(),
                    a.status.as_str().to_string(),
                    format_cpu(a.task.resources.cpu_millis),
                    format_memory(a.task.resources.memory_bytes),
                    list_or_dash(a.gpus.iter()),
                    list_or_dash(a.ports.iter()),
                ]
            })
            .collect();
        for line in table(
            &[
                "ID", "JOB", "REPLICA", "STATUS", "CPU", "MEMORY", "GPUS", "PORTS",
            ],
            &rows,
        )
        .lines()
        {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    emit(&out);
    Ok(())
}

/// Indents a table by two spaces under a heading.
fn push_table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    for line in table(headers, rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn zero_dash(n: u32, unit: &str) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{n}{unit}")
    }
}

/// The GPU part of `describe node`: the devices and their health, their
/// attributes, the latest samples, and the link matrix.
fn describe_gpus(
    out: &mut String,
    info: &skiff_client::NodeInfo,
    allocs: &[skiff_model::Allocation],
) {
    let n = &info.node;
    if !n.gpu_driver.is_empty() {
        out.push_str(&format!(
            "GPU driver:  {} (CUDA {})\n",
            or_dash(&n.gpu_driver.driver_version),
            or_dash(&n.gpu_driver.cuda_version)
        ));
    }
    out.push_str("\nGPUs:\n");
    let holder = |uuid: &str| {
        allocs
            .iter()
            .find(|a| a.holds_resources() && a.gpus.iter().any(|g| g == uuid))
            .map(|a| format!("{} ({})", a.short_id(), a.job))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = n
        .gpus
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let kind = match (&g.mig_profile, g.mig_enabled) {
                (Some(p), _) => format!("MIG {p} of GPU {}", g.index),
                (None, true) => "MIG mode".into(),
                (None, false) => "whole".into(),
            };
            vec![
                i.to_string(),
                g.uuid.clone(),
                or_dash(&g.model),
                format_memory_human(g.memory_bytes),
                kind,
                if g.healthy {
                    "healthy".into()
                } else if g.health_reason.is_empty() {
                    "unhealthy".into()
                } else {
                    format!("unhealthy: {}", g.health_reason)
                },
                if g.schedulable() {
                    holder(&g.uuid)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    push_table(
        out,
        &[
            "#",
            "UUID",
            "MODEL",
            "MEMORY",
            "KIND",
            "HEALTH",
            "ALLOCATION",
        ],
        &rows,
    );

    let whole: Vec<&skiff_model::Gpu> = n.gpus.iter().filter(|g| !g.is_mig()).collect();
    out.push_str("\nGPU attributes:\n");
    let rows: Vec<Vec<String>> = whole
        .iter()
        .map(|g| {
            vec![
                g.index.to_string(),
                or_dash(&g.compute_capability),
                or_dash(&g.pci_bus_id),
                if g.pcie_generation > 0 {
                    format!("gen{} x{}", g.pcie_generation, g.pcie_width)
                } else {
                    "-".into()
                },
                zero_dash(g.power_limit_mw / 1000, "W"),
                if g.max_sm_clock_mhz > 0 {
                    format!("{}/{} MHz", g.max_sm_clock_mhz, g.max_memory_clock_mhz)
                } else {
                    "-".into()
                },
                g.numa_node.map_or_else(|| "-".into(), |x| x.to_string()),
                g.nvlink_peers.len().to_string(),
            ]
        })
        .collect();
    push_table(
        out,
        &[
            "GPU",
            "CC",
            "PCI BUS",
            "PCIE MAX",
            "POWER LIMIT",
            "MAX CLOCKS SM/MEM",
            "NUMA",
            "NVLINKS",
        ],
        &rows,
    );

    if !info.gpu_metrics.is_empty() {
        let when = info
            .gpu_metrics_age
            .map(|d| format!(" ({} ago)", age(d)))
            .unwrap_or_default();
        out.push_str(&format!("\nGPU usage{when}:\n"));
        let rows: Vec<Vec<String>> = info
            .gpu_metrics
            .iter()
            .map(|m| {
                let index = n
                    .gpus
                    .iter()
                    .find(|g| g.uuid == m.uuid)
                    .map_or_else(|| "?".into(), |g| g.index.to_string());
                vec![
                    index,
                    format!("{}%", m.utilization_pct),
                    format!("{}%", m.memory_utilization_pct),
                    format_memory_human(m.memory_used_bytes),
                    format!("{}C", m.temperature_c),
                    format!("{:.0}W", f64::from(m.power_mw) / 1000.0),
                    format!("{}/{}", m.ecc_corrected, m.ecc_uncorrected),
                    if m.throttle_reasons.is_empty() {
                        "-".into()
                    } else {
                        m.throttle_reasons.join(",")
                    },
                ]
            })
            .collect();
        push_table(
            out,
            &[
                "GPU",
                "UTIL",
                "MEM UTIL",
                "MEMORY USED",
                "TEMP",
                "POWER",
                "ECC CORR/UNCORR",
                "THROTTLE",
            ],
            &rows,
        );
    }

    if whole.len() >= 2 && !n.gpu_links.is_empty() {
        // The link matrix, as `nvidia-smi topo -m` prints it.
        let owned: Vec<skiff_model::Gpu> = whole.iter().map(|g| (*g).clone()).collect();
        let t = skiff_model::gpu::Topology::new(&owned, &n.gpu_links);
        out.push_str("\nGPU links (NV nvlink, PS pcie-switch, NU numa, SY system):\n");
        let short = |l: skiff_model::LinkLevel| match l {
            skiff_model::LinkLevel::NvLink => "NV",
            skiff_model::LinkLevel::PcieSwitch => "PS",
            skiff_model::LinkLevel::Numa => "NU",
            skiff_model::LinkLevel::System => "SY",
        };
        let mut headers = vec![String::new()];
        headers.extend(whole.iter().map(|g| g.index.to_string()));
        let rows: Vec<Vec<String>> = (0..whole.len())
            .map(|a| {
                let mut r = vec![whole[a].index.to_string()];
                r.extend((0..whole.len()).map(|b| {
                    if a == b {
                        "X".to_string()
                    } else {
                        short(t.level(a, b)).to_string()
                    }
                }));
                r
            })
            .collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        push_table(out, &headers, &rows);
    }
}

async fn describe_job(name: &str, client: &ClientOpts) -> anyhow::Result<()> {
    let name = name.to_string();
    let d = connect(client).await?.get_job(&name).await?;
    let mut out = String::new();
    match &d.job {
        Some(job) => {
            let t = &job.spec.task;
            out.push_str(&format!("Name:       {}\n", job.spec.name));
            out.push_str(&format!("Type:       {}\n", job.spec.job_type.as_str()));
            out.push_str(&format!("Version:    {}\n", job.version));
            let s = &job.spec;
            if s.is_batch() {
                out.push_str(&format!(
                    "Batch:      {} ({} of {} succeeded, {} failed run(s), backoff_limit {}, parallelism {})\n",
                    if d.summary.state.is_empty() { "-" } else { &d.summary.state },
                    d.summary.succeeded,
                    d.summary.completions,
                    d.summary.failed_runs,
                    s.backoff_limit(),
                    s.parallelism()
                ));
            } else if d.summary.state == "awaiting promotion" {
                out.push_str(&format!(
                    "Rollout:    canaries awaiting promotion (`skiff rollout promote {0}` goes on, `skiff rollout undo {0}` abandons them)\n",
                    s.name
                ));
            } else if !d.summary.state.is_empty() {
                out.push_str(&format!(
                    "Rollout:    {} (`skiff rollout status {}`)\n",
                    d.summary.state, s.name
                ));
            }
            if s.rolls_out() {
                let u = &s.update;
                let (down, up) = s.rolling_limits();
                out.push_str(&format!(
                    "Update:     max_unavailable {} ({down}), max_surge {} ({up}), min_healthy {}, healthy_deadline {}, progress_deadline {}, auto_rollback {}{}\n",
                    u.max_unavailable,
                    u.max_surge,
                    format_duration(u.min_healthy),
                    format_duration(u.healthy_deadline),
                    format_duration(u.progress_deadline),
                    if u.auto_rollback { "on" } else { "off" },
                    if u.canary > 0 { format!(", canary {}", u.canary) } else { String::new() }
                ));
            }
            out.push_str(&format!(
                "Replicas:   {} desired, {} running, {} pending, {} complete, {} failed, {} lost\n",
                d.summary.desired,
                d.summary.running,
                d.summary.pending,
                d.summary.complete,
                d.summary.failed,
                d.summary.lost
            ));
            out.push_str(&format!("Image:      {}\n", t.image));
            if !t.command.is_empty() {
                out.push_str(&format!("Command:    {:?}\n", t.command));
            }
            if !t.args.is_empty() {
                out.push_str(&format!("Args:       {:?}\n", t.args));
            }
            out.push_str(&format!("Resources:  {}\n", resources_text(&t.resources)));
            let s = &job.spec;
            out.push_str(&format!("Priority:   {}\n", s.priority));
            if s.gang {
                out.push_str(&format!(
                    "Gang:       yes (all replicas are placed together or none; on a failure: {}; MASTER_PORT {})\n",
                    s.gang_failure.as_str(),
                    s.master_port()
                ));
            }
            if !s.constraints.is_empty() {
                let c: Vec<String> = s.constraints.iter().map(|c| c.to_string()).collect();
                out.push_str(&format!("Constraints: {}\n", c.join("; ")));
            }
            if s.distinct_hosts {
                out.push_str("Distinct hosts: yes\n");
            }
            if let Some(sp) = &s.spread {
                out.push_str(&format!(
                    "Spread:     over {} (max_skew {})\n",
                    sp.label, sp.max_skew
                ));
            }
            if !s.affinities.is_empty() {
                let a: Vec<String> = s
                    .affinities
                    .iter()
                    .map(|a| format!("{} (weight {})", a.rule, a.weight))
                    .collect();
                out.push_str(&format!("Affinities: {}\n", a.join("; ")));
            }
            out.push_str(&format!("Network:    {}\n", t.network.as_str()));
            let b = &t.restart.backoff;
            out.push_str(&format!(
                "Restart:    {} (back-off {} doubling to {}, reset after {})\n",
                t.restart.policy.as_str(),
                format_duration(b.initial),
                format_duration(b.max),
                format_duration(b.reset_after)
            ));
            for (name, p) in [
                ("startup", &t.probes.startup),
                ("liveness", &t.probes.liveness),
                ("readiness", &t.probes.readiness),
            ] {
                if let Some(p) = p {
                    out.push_str(&format!(
                        "Probe:      {name} {} every {}, timeout {}, {} to pass, {} to fail\n",
                        p.action,
                        format_duration(p.period),
                        format_duration(p.timeout),
                        p.success_threshold,
                        p.failure_threshold
                    ));
                }
            }
            let s = &t.security;
            if !s.is_default() {
                let mut parts = Vec::new();
                if s.read_only_rootfs {
                    parts.push("read-only rootfs".to_string());
                }
                if let Some(u) = s.user {
                    parts.push(format!("user {u}"));
                }
                if !s.cap_add.is_empty() {
                    parts.push(format!("cap_add {}", s.cap_add.join(",")));
                }
                if !s.cap_drop.is_empty() {
                    parts.push(format!("cap_drop {}", s.cap_drop.join(",")));
                }
                out.push_str(&format!("Security:   {}\n", parts.join("; ")));
            }
            if !t.env.is_empty() {
                let keys: Vec<&str> = t.env.keys().map(String::as_str).collect();
                out.push_str(&format!("Env:        {}\n", keys.join(", ")));
            }
        }
        None => out.push_str(&format!(
            "Name:       {name} (deleted; allocations remain)\n"
        )),
    }
    if let Some(e) = &d.latest_eval {
        out.push_str(&format!("Evaluation: {} ({})\n", e.status, e.trigger));
        if !e.message.is_empty() {
            out.push_str(&format!("Placement:  {}\n", e.message));
        }
    }
    out.push_str("\nAllocations:\n");
    if d.allocs.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let with_gpus = d.allocs.iter().any(|a| !a.gpus.is_empty());
        let rows: Vec<Vec<String>> = d
            .allocs
            .iter()
            .map(|a| {
                vec![
                    a.short_id().to_string(),
                    a.replica.to_string(),
                    a.job_version.to_string(),
                    a.node.clone(),
                    match a.desired {
                        skiff_model::DesiredStatus::Run => "run".into(),
                        skiff_model::DesiredStatus::Stop => "stop".into(),
                    },
                    AllocOut::from(a).shown_status().to_string(),
                    AllocOut::from(a).ready().to_string(),
                    a.restart_count.to_string(),
                    a.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    list_or_dash(a.gpus.iter()),
                    AllocOut::from(a).shown_message(),
                ]
            })
            .map(|mut r: Vec<String>| {
                if !with_gpus {
                    r.remove(9);
                }
                r
            })
            .collect();
        let mut headers = vec![
            "ID", "REPLICA", "VERSION", "NODE", "DESIRED", "STATUS", "READY", "RESTARTS", "EXIT",
            "GPUS", "MESSAGE",
        ];
        if !with_gpus {
            headers.remove(9);
        }
        for line in table(&headers, &rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    emit(&out);
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let mut reader = client
        .logs_with(
            &args.alloc,
            skiff_client::LogOptions {
                follow: args.follow,
                tail: args.tail,
                stderr_only: args.stderr,
                timestamps: args.timestamps,
            },
        )
        .await?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some((which, data)) = reader.next().await? {
        let result = match which {
            LogStream::Stdout => stdout
                .lock()
                .write_all(&data)
                .and_then(|_| stdout.lock().flush()),
            LogStream::Stderr => stderr.lock().write_all(&data),
        };
        if result.is_err() {
            break; // the reader closed the pipe (e.g. `| head`)
        }
    }
    Ok(())
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut client = connect(&args.client).await?;
    let out = client
        .exec(&args.alloc, &args.command, args.timeout)
        .await?;
    {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&out.stdout).and_then(|_| o.flush());
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&out.stderr);
    }
    if out.truncated {
        eprintln!("skiff: the output was longer than the node keeps (4 MiB per stream); the rest was dropped");
    }
    if out.timed_out {
        eprintln!("skiff: the command ran past --timeout and was killed");
    }
    // Exit codes are 0..=255 (128 + N for signal N).
    Ok(std::process::ExitCode::from(
        out.exit_code.clamp(0, 255) as u8
    ))
}

/// `skiff cordon`, `skiff drain` and `skiff uncordon`.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Mark a node unschedulable: no new work; what runs there stays.
    Cordon(NodeArgs),
    /// Empty a node: service allocations move elsewhere a few at a time (as
    /// each job's max_unavailable allows), batch allocations may finish
    /// until the deadline, then whatever is left stops. The node ends
    /// cordoned and marked drained.
    Drain(DrainArgs),
    /// Let a cordoned or drained node take new work again.
    Uncordon(NodeArgs),
    /// A node's GPUs.
    Gpu {
        #[command(subcommand)]
        action: GpuAction,
    },
}

#[derive(Args)]
pub struct DrainArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// When to stop whatever is still running (e.g. 30m, 2h).
    #[arg(long, default_value = "1h", value_parser = crate::daemons::parse_duration)]
    deadline: std::time::Duration,
    /// Wait until the node is empty and marked drained.
    #[arg(long)]
    wait: bool,
}

pub async fn node(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Cordon(args) => {
            connect(&args.client)
                .await?
                .set_node_eligibility(&args.name, true, false, None)
                .await?;
            emit(&format!("node/{} cordoned\n", args.name));
        }
        NodeCmd::Uncordon(args) => {
            connect(&args.client)
                .await?
                .set_node_eligibility(&args.name, false, false, None)
                .await?;
            emit(&format!("node/{} uncordoned\n", args.name));
        }
        NodeCmd::Gpu {
            action: GpuAction::Reset { node, uuid, client },
        } => {
            let r = connect(&client).await?.reset_gpu(&node, &uuid).await?;
            let was = if r.was_unhealthy {
                format!("was unhealthy: {}", r.reason)
            } else {
                "was healthy already".to_string()
            };
            emit(&format!("node/{node} gpu {} reset ({was})\n", r.uuid));
        }
        NodeCmd::Drain(args) => {
            let mut client = connect(&args.node.client).await?;
            client
                .set_node_eligibility(&args.node.name, true, true, Some(args.deadline))
                .await?;
            emit(&format!(
                "node/{} draining (whatever is left stops in {})\n",
                args.node.name,
                crate::output::age(args.deadline)
            ));
            if args.wait {
                loop {
                    let nodes = client.list_nodes().await?;
                    let Some(n) = nodes.iter().find(|n| n.node.name == args.node.name) else {
                        anyhow::bail!("node {} is gone", args.node.name);
                    };
                    if n.node.drained {
                        emit(&format!("node/{} drained\n", args.node.name));
                        break;
                    }
                    if !n.node.draining {
                        anyhow::bail!("the drain of {} was cancelled", args.node.name);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }
    Ok(())
}

pub async fn delete(what: DeleteWhat) -> anyhow::Result<()> {
    let DeleteWhat::Job { name, client } = what;
    connect(&client).await?.delete_job(&name).await?;
    emit(&format!("job/{name} deleted\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_layout_paths_become_absolute() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), "/a/c");
        assert_eq!(normalize(Path::new("/")), "/");
    }
}
