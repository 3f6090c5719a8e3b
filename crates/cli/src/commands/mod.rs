//! The client commands, one room each: `apply`/`delete` (specs), `get`
//! (lists), `describe` (one object in detail), `node` (cordon, drain, GPU
//! resets), `image` (cached images, pulls), `registry` (namespaces'
//! registry logins), `container` (logs, exec),
//! `watch` (changes, members),
//! `access` (join tokens, the CA of a static cluster, removing nodes).

mod access;
mod apply;
mod container;
mod describe;
mod endpoints;
mod events;
mod get;
mod image;
mod namespace;
mod node;
mod queue;
mod registry;
mod sync;
mod top;
mod user;
mod watch;

use anyhow::Context;
use skiff_client::Client;

use crate::args::ClientOpts;

pub use access::{audit, ca, remove_node, token, AuditArgs, CaCmd, TokenCmd};
pub use apply::{apply, delete, plan, DeleteWhat};
pub use container::{exec, logs, ExecArgs, LogsArgs};
pub use describe::{describe, DescribeWhat};
pub use events::{events, EventsArgs};
pub use get::{get, GetWhat};
pub use image::{image, ImageCmd};
pub use namespace::{namespace, NamespaceCmd};
pub use node::{node, DrainArgs, NodeArgs, NodeCmd};
pub use queue::{queue, QueueCmd};
pub use registry::{registry, RegistryCmd};
pub use sync::{sync, SyncCmd};
pub use top::{top, TopWhat};
pub use user::{user, UserCmd};
pub use watch::{members, watch, MembersCmd, WatchArgs};

pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let config = opts.client_config()?;
    let client = Client::connect_config(&config).await.with_context(|| {
        let from = match &config.source {
            Some(p) => format!(" (servers from {})", p.display()),
            None => String::new(),
        };
        format!(
            "is `skiff server` or `skiff dev` running at {}{from}? Point --server or SKIFF_SERVER at it, and --config or SKIFF_CONFIG at your credentials",
            config.servers.join(", ")
        )
    })?;
    Ok(client.stale(opts.stale).namespace(opts.namespace()))
}
