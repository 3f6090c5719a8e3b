//! `skiff events`: what happened in the cluster, in words.

use clap::Args;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{age, emit, Format};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    skiff events                          what happened in the last hour\n  \
    skiff events -f --job web             follow job web's events\n  \
    skiff events --type warning           only what needs attention\n  \
    skiff events --reason OOMKilled,NodeDown -o json\n  \
    skiff events -A                       every namespace's jobs (-n NS: one)\n\
    Reasons: Applied, Deleted, Placed, Started, Completed, Failed, OOMKilled, BackOff,\n\
    Restarted, Unhealthy, Lost, Stopping, Preempted, Registered, NodeDown, NodeReady,\n\
    Cordoned, Uncordoned, Draining, Drained, GpuUnhealthy, GpuHealthy, RolloutStarted,\n\
    RolloutPaused, RolloutResumed, RolloutSucceeded, RolloutFailed, RollbackStarted,\n\
    RolledBack, RolloutCancelled. Repeats show once with a count; each server keeps\n\
    an hour of events (at most 10,000).")]
pub struct EventsArgs {
    /// Keep printing events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only the job, its allocations and its rollouts.
    #[arg(long)]
    job: Option<String>,
    /// Only the node and the allocations on it.
    #[arg(long)]
    node: Option<String>,
    /// Only events of these types (repeat, or separate with commas).
    #[arg(long = "type", value_delimiter = ',', value_parser = ["normal", "warning"])]
    types: Vec<String>,
    /// Only events with these reasons (repeat, or separate with commas).
    #[arg(long = "reason", value_delimiter = ',')]
    reasons: Vec<String>,
    /// `json` prints each event as one line.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    client: ClientOpts,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Allocation ids are long: the first 8 characters name one well enough
/// to read (`skiff describe alloc` takes a prefix).
fn object(e: &skiff_client::ClusterEvent) -> String {
    let name = if e.object_kind == "alloc" {
        e.object.get(..8).unwrap_or(&e.object)
    } else {
        &e.object
    };
    format!("{}/{name}", e.object_kind)
}

pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let mut events = client
        .events(skiff_client::EventsRequest {
            follow: args.follow,
            job: args.job.unwrap_or_default(),
            node: args.node.unwrap_or_default(),
            types: args.types,
            reasons: args.reasons,
            // The client's (-n, or -A for every namespace).
            namespace: String::new(),
        })
        .await?;
    let table = matches!(args.output, Format::Table | Format::Wide);
    if table {
        emit(&format!(
            "{:<9} {:<8} {:<17} {:<22} {:<16} {:>5}  {}\n",
            "LAST SEEN", "TYPE", "REASON", "OBJECT", "JOB", "COUNT", "MESSAGE"
        ));
    }
    while let Some(e) = events.next().await? {
        let line = if table {
            let ago = std::time::Duration::from_millis(now_ms().saturating_sub(e.last_ms));
            format!(
                "{:<9} {:<8} {:<17} {:<22} {:<16} {:>5}  {}\n",
                age(ago),
                e.r#type,
                e.reason,
                object(&e),
                e.job,
                e.count,
                e.message
            )
        } else {
            format!(
                "{}\n",
                serde_json::json!({
                    "id": e.id, "type": e.r#type, "reason": e.reason,
                    "object_kind": e.object_kind, "object": e.object, "job": e.job,
                    "node": e.node, "message": e.message, "count": e.count,
                    "first_ms": e.first_ms, "last_ms": e.last_ms, "index": e.index,
                })
            )
        };
        emit(&line);
    }
    Ok(())
}
