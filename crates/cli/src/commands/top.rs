//! `skiff top nodes|allocs`: what is used now against what is offered
//! and asked for.

use clap::{Args, Subcommand};
use skiff_model::quantity::{format_cpu, format_memory_human};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, table, Format};

#[derive(Subcommand)]
pub enum TopWhat {
    /// Each node: cpu and memory in use on the machine (and as a share of
    /// what it offers), what its allocations asked for, its GPUs.
    Nodes(TopArgs),
    /// Each running allocation: cpu and memory its container uses against
    /// what it asked for, its GPUs' utilisation.
    Allocs(TopArgs),
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    skiff top nodes\n  \
    skiff top allocs --job train          one job's replicas\n  \
    skiff top allocs --node gpu-3 -o json\n\
    Figures come from the agents' heartbeats (every few seconds); cpu is the\n\
    average since the previous one.")]
pub struct TopArgs {
    /// Only this node (and the allocations on it).
    #[arg(long)]
    node: Option<String>,
    /// Only this job's allocations.
    #[arg(long)]
    job: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    client: ClientOpts,
}

/// `used` as a share of `of`, or `-` when there is nothing to share.
fn pct(used: u64, of: u64) -> String {
    match (used * 100).checked_div(of) {
        Some(p) => format!("{p}%"),
        None => "-".into(),
    }
}

fn json_of<T: serde::Serialize>(items: &[T], format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Yaml => serde_yaml_ng::to_string(items)?,
        _ => serde_json::to_string_pretty(items)? + "\n",
    })
}

pub async fn top(what: TopWhat) -> anyhow::Result<()> {
    let (args, allocs) = match what {
        TopWhat::Nodes(a) => (a, false),
        TopWhat::Allocs(a) => (a, true),
    };
    let mut client = connect(&args.client).await?;
    let got = client
        .top(skiff_client::TopRequest {
            node: args.node.unwrap_or_default(),
            job: args.job.unwrap_or_default(),
            allocs,
            namespace: String::new(),
        })
        .await?;
    let tabular = matches!(args.output, Format::Table | Format::Wide);
    if !allocs {
        if !tabular {
            emit(&json_of(&got.nodes, args.output)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = got
            .nodes
            .iter()
            .map(|n| {
                let reported = n.age_ms.is_some();
                let or_dash = |s: String| if reported { s } else { "-".into() };
                vec![
                    n.node.clone(),
                    n.status.clone(),
                    or_dash(format_cpu(n.cpu_millis)),
                    or_dash(pct(n.cpu_millis, n.cpu_allocatable_millis)),
                    format!(
                        "{} ({})",
                        format_cpu(n.cpu_requested_millis),
                        pct(n.cpu_requested_millis, n.cpu_allocatable_millis)
                    ),
                    or_dash(format_memory_human(n.memory_bytes)),
                    or_dash(pct(n.memory_bytes, n.memory_allocatable_bytes)),
                    format!(
                        "{} ({})",
                        format_memory_human(n.memory_requested_bytes),
                        pct(n.memory_requested_bytes, n.memory_allocatable_bytes)
                    ),
                    format!("{}/{}", n.gpus_held, n.gpus),
                    if n.gpus == 0 {
                        "-".into()
                    } else {
                        format!("{}%", n.gpu_utilization_pct)
                    },
                ]
            })
            .collect();
        emit(&table(
            &[
                "NODE",
                "STATUS",
                "CPU",
                "CPU%",
                "CPU ASKED",
                "MEMORY",
                "MEMORY%",
                "MEMORY ASKED",
                "GPUS HELD",
                "GPU UTIL",
            ],
            &rows,
        ));
        return Ok(());
    }
    if !tabular {
        emit(&json_of(&got.allocs, args.output)?);
    } else {
        let rows: Vec<Vec<String>> = got
            .allocs
            .iter()
            .map(|a| {
                let or_dash = |s: String| if a.sampled { s } else { "-".into() };
                vec![
                    a.alloc_id.get(..8).unwrap_or(&a.alloc_id).to_string(),
                    a.job.clone(),
                    a.node.clone(),
                    or_dash(format_cpu(a.cpu_millis)),
                    format_cpu(a.cpu_requested_millis),
                    or_dash(format_memory_human(a.memory_bytes)),
                    format_memory_human(a.memory_requested_bytes),
                    or_dash(pct(a.memory_bytes, a.memory_requested_bytes)),
                    a.gpus.to_string(),
                    if a.gpus == 0 {
                        "-".into()
                    } else {
                        format!("{}%", a.gpu_utilization_pct)
                    },
                ]
            })
            .collect();
        emit(&table(
            &[
                "ALLOC",
                "JOB",
                "NODE",
                "CPU",
                "CPU ASKED",
                "MEMORY",
                "MEMORY ASKED",
                "MEMORY%",
                "GPUS",
                "GPU UTIL",
            ],
            &rows,
        ));
    }
    if got.truncated {
        eprintln!("(more allocations than one answer lists; narrow with --node or --job)");
    }
    Ok(())
}
