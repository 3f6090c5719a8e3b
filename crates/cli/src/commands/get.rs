//! `skiff get`: jobs, allocations, nodes as tables or JSON/YAML.

use clap::Subcommand;
use skiff_model::quantity::{format_cpu, format_memory_human};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{
    age, gpu_health, gpu_models, gpu_usage, labels_text, list_or_dash, print_list, AllocOut,
    Format, JobOut, NodeOut,
};

#[derive(Subcommand)]
pub enum GetWhat {
    /// List jobs with their allocation counts (`-o wide` adds their
    /// labels).
    #[command(alias = "job")]
    Jobs {
        /// Only jobs whose labels match: `key=value`, `key!=value` or
        /// `key`, comma-separated (every term must hold).
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selector: Option<String>,
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
    /// List a job's endpoints (or every job's): its ready replicas, each
    /// with its address and where each port is reached (published ones at
    /// the node's address and host port).
    #[command(alias = "endpoint", alias = "ep")]
    Endpoints {
        /// Only this job's endpoints.
        #[arg(value_name = "JOB")]
        job: Option<String>,
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

pub async fn get(what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Jobs {
            selector,
            output,
            client,
        } => {
            let selector = selector
                .as_deref()
                .map(skiff_model::labels::Selector::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--selector: {e}"))?
                .unwrap_or_default();
            let jobs = connect(&client).await?.list_jobs().await?;
            let items: Vec<JobOut> = jobs
                .iter()
                .filter(|(j, _)| selector.matches(&j.spec.labels))
                .map(|(j, s)| JobOut::new(j, s))
                .collect();
            // `-A` shows whose each job is, as kubectl does.
            let all = client.all_namespaces;
            let mut headers = vec![
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
                "LABELS",
            ];
            if all {
                headers.insert(0, "NAMESPACE");
            }
            print_list(output, &items, &headers, 9 + usize::from(all), |j| {
                let batch = j.job_type == "batch";
                let mut row = vec![
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
                    labels_text(&j.spec.labels),
                ];
                if all {
                    row.insert(0, j.namespace.to_string());
                }
                row
            })
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
                    "EXIT", "MESSAGE", "GPUS", "PORTS", "ADDRESS",
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
                        if a.address.is_empty() {
                            "-".to_string()
                        } else {
                            a.address.to_string()
                        },
                    ]
                },
            )
        }
        GetWhat::Endpoints {
            job,
            output,
            client,
        } => super::endpoints::get_endpoints(job.as_deref(), output, &client).await,
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
