//! `skiff image`: the images cached on the nodes, and pulls ahead of time.

use clap::Subcommand;
use serde::Serialize;
use skiff_model::quantity::format_memory_human;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// List the images cached on the nodes: size, last use, whether an
    /// allocation uses it (such an image is never garbage-collected).
    #[command(alias = "list")]
    Ls {
        /// Only this node's images.
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pull a registry image on a node now, so the allocations that need it
    /// start without waiting for it (operators and admins). With -n NS, it
    /// is pulled with namespace NS's registry logins and held for NS.
    #[command(
        after_help = "Example: skiff image pull --node gpu-7 registry.lab:5000/team/train:v3"
    )]
    Pull {
        /// The node, as `skiff get nodes` shows it.
        #[arg(long)]
        node: String,
        /// A registry image (`alpine:3.20`, `registry.lab:5000/a/b:v1`,
        /// `...@sha256:<digest>`).
        image: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Serialize)]
struct ImageOut {
    node: String,
    reference: String,
    digest: String,
    manifest: String,
    size_bytes: u64,
    last_used_ms: u64,
    in_use: bool,
}

impl ImageOut {
    fn new(node: &str, i: skiff_client::CachedImage) -> ImageOut {
        ImageOut {
            node: node.to_string(),
            reference: i.reference,
            digest: i.digest,
            manifest: i.manifest,
            size_bytes: i.size_bytes,
            last_used_ms: i.last_used_ms,
            in_use: i.in_use,
        }
    }

    fn last_used(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ago = std::time::Duration::from_millis(now.saturating_sub(self.last_used_ms));
        format!("{} ago", crate::output::age(ago))
    }
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..12.min(hex.len())].to_string()
}

pub async fn image(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Ls {
            node,
            output,
            client,
        } => {
            let nodes = connect(&client).await?.list_images(node.as_deref()).await?;
            let mut items = Vec::new();
            for n in nodes {
                if !n.error.is_empty() {
                    eprintln!("warning: node {}: {}", n.node, n.error);
                }
                items.extend(n.images.into_iter().map(|i| ImageOut::new(&n.node, i)));
            }
            print_list(
                output,
                &items,
                &[
                    "NODE",
                    "IMAGE",
                    "DIGEST",
                    "SIZE",
                    "LAST USED",
                    "IN USE",
                    "MANIFEST",
                ],
                6,
                |i| {
                    vec![
                        i.node.clone(),
                        i.reference.clone(),
                        short(&i.digest),
                        format_memory_human(i.size_bytes),
                        i.last_used(),
                        if i.in_use { "yes" } else { "no" }.to_string(),
                        i.manifest.clone(),
                    ]
                },
            )?;
        }
        ImageCmd::Pull {
            node,
            image,
            client,
        } => {
            // With -n: that namespace's registry logins (`skiff registry`).
            let namespace = client.namespace.clone().unwrap_or_default();
            let pulled = connect(&client)
                .await?
                .pull_image(&node, &image, &namespace)
                .await?;
            match pulled {
                Some(i) => emit(&format!(
                    "node/{node} pulled {} ({}, {})\n",
                    i.reference,
                    i.digest,
                    format_memory_human(i.size_bytes)
                )),
                None => emit(&format!("node/{node} pulled {image}\n")),
            }
        }
    }
    Ok(())
}
