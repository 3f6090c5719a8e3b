//! `skiff describe`: one job, node or allocation in detail.

use anyhow::bail;
use clap::Subcommand;
use skiff_model::duration::format_duration;
use skiff_model::quantity::{format_cpu, format_memory, format_memory_human};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{age, emit, labels_text, list_or_dash, resources_text, table, AllocOut};

#[derive(Subcommand)]
pub enum DescribeWhat {
    /// A job: its spec, allocations, and why any replica waits.
    Job {
        #[arg(value_name = "JOB")]
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A node: capacity and use, GPUs and how they are connected, allocations.
    Node {
        #[arg(value_name = "NODE")]
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// An allocation: where it runs, its status and why (a pull under way
    /// says how far it has got), its image, restarts and last exit.
    #[command(alias = "allocation")]
    Alloc {
        /// An allocation id, or a unique prefix of one (as `skiff get
        /// allocs` shows).
        #[arg(value_name = "ALLOC")]
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

pub async fn describe(what: DescribeWhat) -> anyhow::Result<()> {
    match what {
        DescribeWhat::Job { name, client } => describe_job(&name, &client).await,
        DescribeWhat::Node { name, client } => describe_node(&name, &client).await,
        DescribeWhat::Alloc { id, client } => describe_alloc(&id, &client).await,
    }
}

/// `http 8080 -> 192.0.2.1:20004, admin 9000`, the host ports of
/// `resources.ports` first.
fn ports_text(
    a: &skiff_model::Allocation,
    named: &[skiff_model::ports::Published<'_>],
    node_host: Option<&str>,
) -> String {
    let mut parts: Vec<String> = a.task.resources.ports.iter().map(u16::to_string).collect();
    for p in named {
        // `8080`, or `53/udp`.
        let port = if p.protocol.is_tcp() {
            p.container.to_string()
        } else {
            format!("{}/{}", p.container, p.protocol.as_str())
        };
        parts.push(match p.host {
            Some(h) => format!(
                "{} {port} -> {}",
                p.name,
                skiff_model::ports::join_host_port(node_host.unwrap_or("node"), h)
            ),
            None => format!("{} {port}", p.name),
        });
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

async fn describe_alloc(id: &str, opts: &ClientOpts) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let allocs = client.list_allocs(None, None).await?;
    let mut matches = allocs.iter().filter(|a| a.id.starts_with(id));
    let a = match (matches.next(), matches.next()) {
        (Some(a), None) if !id.is_empty() => a,
        (Some(_), Some(_)) => bail!("{id:?} matches several allocations; give more characters"),
        _ => bail!("allocation {id:?} not found"),
    };
    let shown = AllocOut::from(a);
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let mut out = String::new();
    out.push_str(&format!("ID:        {}\n", a.id));
    out.push_str(&format!(
        "Job:       {} (version {}, replica {})\n",
        a.job, a.job_version, a.replica
    ));
    out.push_str(&format!("Node:      {}\n", or_dash(a.node.clone())));
    out.push_str(&format!("Desired:   {}\n", shown.desired));
    out.push_str(&format!("Status:    {}\n", shown.shown_status()));
    out.push_str(&format!("Reason:    {}\n", or_dash(a.reason.clone())));
    out.push_str(&format!("Message:   {}\n", or_dash(shown.shown_message())));
    out.push_str(&format!("Ready:     {}\n", shown.ready()));
    out.push_str(&format!("Restarts:  {}\n", a.restart_count));
    out.push_str(&format!(
        "Exit code: {}\n",
        a.exit_code.map_or("-".to_string(), |c| c.to_string())
    ));
    out.push_str(&format!("Image:     {}\n", a.task.image));
    out.push_str(&format!(
        "Resources: {}\n",
        resources_text(&a.task.resources)
    ));
    out.push_str(&format!("GPUs:      {}\n", list_or_dash(a.gpus.iter())));
    let named = a.published();
    let node_host = if named.iter().any(|p| p.host.is_some()) {
        client
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.node.name == a.node)
            .map(|n| skiff_model::workload::host_of(&n.node.address))
    } else {
        None
    };
    out.push_str(&format!(
        "Ports:     {}\n",
        ports_text(a, &named, node_host.as_deref())
    ));
    out.push_str(&format!(
        "Network:   {}{}\n",
        a.task.network.as_str(),
        if a.address.is_empty() {
            String::new()
        } else {
            format!(", address {}", a.address)
        }
    ));
    out.push_str(&format!(
        "Indexes:   created {}, modified {}\n",
        a.create_index, a.modify_index
    ));
    emit(&out);
    Ok(())
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
    out.push_str(&format!(
        "Subnet:      {}\n",
        if n.subnet.is_empty() { "-" } else { &n.subnet }
    ));
    out.push_str(&format!("Ports:       {} (host: 0)\n", n.dynamic_ports));
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
    let job = &d.job;
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
    if let Some(q) = &s.queue {
        let state = if job.admitted_index > 0 {
            format!("admitted (skiff queue describe {q})")
        } else {
            format!("waiting to be admitted whole (skiff queue describe {q})")
        };
        out.push_str(&format!("Queue:      {q}, {state}\n"));
    }
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
