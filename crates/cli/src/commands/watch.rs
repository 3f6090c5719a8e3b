//! `skiff watch` and `skiff server members`.

use clap::Args;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    skiff watch --job web                 everything about job web\n  \
    skiff watch --kind allocation --node gpu-3 -o json\n  \
    skiff watch --from 1234               resume after the last index seen\n\
    Kinds: job, node, allocation, evaluation, deployment, job_version, server.")]
pub struct WatchArgs {
    /// Print changes after this index (default: from now on). Use the last
    /// index printed to resume, on any server.
    #[arg(long, value_name = "INDEX", default_value_t = 0)]
    from: u64,
    /// Only changes of these kinds (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = skiff_client::OBJECT_KINDS.map(|(w, _)| w))]
    kind: Vec<String>,
    /// Only the job, its allocations, evaluations, rollouts and versions.
    #[arg(long)]
    job: Option<String>,
    /// Only the node and the allocations on it.
    #[arg(long)]
    node: Option<String>,
    /// `json` prints each event as one line: index, kind, key, deleted and
    /// the object in the proto3 JSON mapping.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Format,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let mut events = client
        .watch_with(skiff_client::WatchOptions {
            from_index: args.from,
            kinds: args.kind,
            job: args.job,
            node: args.node,
        })
        .await?;
    while let Some(e) = events.next().await? {
        let line = match args.output {
            Format::Table => format!(
                "{:>8}  {:<11} {:<34} {}\n",
                e.index,
                e.kind,
                e.key,
                if e.json.is_some() {
                    "updated"
                } else {
                    "deleted"
                }
            ),
            _ => {
                let object: serde_json::Value = e
                    .json
                    .as_deref()
                    .and_then(|v| serde_json::from_str(v).ok())
                    .unwrap_or(serde_json::Value::Null);
                format!(
                    "{}\n",
                    serde_json::json!({"index": e.index, "kind": e.kind, "key": e.key, "deleted": e.json.is_none(), "object": object})
                )
            }
        };
        emit(&line);
    }
    Ok(())
}

#[derive(Args)]
pub struct MembersCmd {
    #[command(subcommand)]
    pub action: Option<MembersAction>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(clap::Subcommand)]
pub enum MembersAction {
    /// Remove a server from the cluster (the leader hands over leadership first).
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientOpts,
    },
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

pub async fn members(cmd: MembersCmd) -> anyhow::Result<()> {
    match cmd.action {
        Some(MembersAction::Remove { id, client }) => {
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
