//! `skiff node`: cordon, drain, uncordon, remove, GPU resets.

use clap::{Args, Subcommand};

use super::connect;
use crate::args::ClientOpts;
use crate::output::emit;

#[derive(Args)]
pub struct NodeArgs {
    /// The node's name, as `skiff get nodes` shows it.
    #[arg(value_name = "NODE")]
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
    /// Forget a node: its allocations are replaced elsewhere, its
    /// certificate stops working at once, and its name may join again
    /// with a new token. Drain it first to move its work gently.
    Remove(NodeArgs),
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
    #[arg(long, default_value = "1h", value_parser = crate::args::parse_duration)]
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
        NodeCmd::Remove(args) => super::remove_node(&args.name, &args.client).await?,
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
