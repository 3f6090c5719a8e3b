//! `skiff namespace apply|ls|delete`: what the jobs of a namespace may
//! ask for beyond the defaults, and how much they may hold.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use skiff_model::namespace::{format_gpus, Namespace};
use skiff_model::quantity::{format_cpu, format_memory_human};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum NamespaceCmd {
    /// Describe a namespace from a YAML file (new or again; admin only):
    /// `policy` (capabilities beyond Docker's defaults, `oci:` paths
    /// beyond the nodes' image roots, `host_network: true` to allow
    /// `network: host`, `network_from` the namespaces whose containers
    /// may connect to this one's) and `quota` (cpu, memory,
    /// allocations, gpus by model or `any`). Jobs may live only in
    /// `default` and in described namespaces.
    #[command(after_help = "Example (examples/namespace.yaml):\n  \
        name: ml\n  \
        policy: {capabilities: [SYS_PTRACE], image_paths: [/data/images]}\n  \
        quota: {cpu: 64, memory: 256Gi, allocations: 100, gpus: {\"NVIDIA H100 80GB HBM3\": 8, any: 2}}")]
    Apply {
        /// The namespace's YAML file.
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List namespaces with their quotas and what their jobs hold.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete a namespace no job lives in (admin only).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Serialize)]
struct NamespaceOut<'a> {
    #[serde(flatten)]
    namespace: &'a Namespace,
    jobs: u32,
    used: UsedOut,
}

#[derive(Serialize)]
struct UsedOut {
    cpu: String,
    memory: String,
    allocations: u64,
    gpus: std::collections::BTreeMap<String, String>,
}

/// `used/cap` of one amount, or just what is used when it is not capped.
fn of(used: String, cap: Option<String>) -> String {
    match cap {
        Some(cap) => format!("{used}/{cap}"),
        None => used,
    }
}

pub async fn namespace(cmd: NamespaceCmd) -> anyhow::Result<()> {
    match cmd {
        NamespaceCmd::Apply { file, client } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let ns = Namespace::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            connect(&client).await?.apply_namespace(&ns).await?;
            emit(&format!("namespace/{} applied\n", ns.name));
        }
        NamespaceCmd::Ls { output, client } => {
            let list = connect(&client).await?.list_namespaces().await?;
            let rows: Vec<NamespaceOut> = list
                .iter()
                .map(|(ns, used)| NamespaceOut {
                    namespace: ns,
                    jobs: used.jobs,
                    used: UsedOut {
                        cpu: format_cpu(used.usage.cpu_millis),
                        memory: format_memory_human(used.usage.memory_bytes),
                        allocations: used.usage.allocations,
                        gpus: used
                            .usage
                            .gpu_units
                            .iter()
                            .map(|(k, v)| (k.clone(), format_gpus(*v)))
                            .collect(),
                    },
                })
                .collect();
            print_list(
                output,
                &rows,
                &[
                    "NAME",
                    "JOBS",
                    "CPU",
                    "MEMORY",
                    "ALLOCS",
                    "GPUS",
                    "CAPABILITIES",
                ],
                6,
                |r| {
                    let q = &r.namespace.quota;
                    let mut gpus: Vec<String> = q
                        .gpus
                        .iter()
                        .map(|(model, cap)| {
                            let used = r.used.gpus.get(model).cloned().unwrap_or("0".into());
                            format!("{model}={used}/{cap}")
                        })
                        .collect();
                    for (model, used) in &r.used.gpus {
                        if !q.gpus.contains_key(model) {
                            gpus.push(format!("{model}={used}"));
                        }
                    }
                    vec![
                        r.namespace.name.clone(),
                        r.jobs.to_string(),
                        of(r.used.cpu.clone(), q.cpu_millis.map(format_cpu)),
                        of(
                            r.used.memory.clone(),
                            q.memory_bytes.map(format_memory_human),
                        ),
                        of(
                            r.used.allocations.to_string(),
                            q.allocations.map(|a| a.to_string()),
                        ),
                        if gpus.is_empty() {
                            "-".into()
                        } else {
                            gpus.join(",")
                        },
                        if r.namespace.policy.capabilities.is_empty() {
                            "-".into()
                        } else {
                            r.namespace.policy.capabilities.join(",")
                        },
                    ]
                },
            )?;
        }
        NamespaceCmd::Delete { name, client } => {
            connect(&client).await?.delete_namespace(&name).await?;
            emit(&format!("namespace/{name} deleted\n"));
        }
    }
    Ok(())
}
