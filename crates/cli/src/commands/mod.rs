//! The client commands, one room each: `apply`/`delete` (specs), `get`
//! (lists), `describe` (one object in detail), `node` (cordon, drain, GPU
//! resets), `container` (logs, exec), `watch` (changes, members).

mod apply;
mod container;
mod describe;
mod get;
mod node;
mod watch;

use anyhow::Context;
use skiff_client::Client;

use crate::args::ClientOpts;

pub use apply::{apply, delete, DeleteWhat};
pub use container::{exec, logs, ExecArgs, LogsArgs};
pub use describe::{describe, DescribeWhat};
pub use get::{get, GetWhat};
pub use node::{node, DrainArgs, NodeArgs, NodeCmd};
pub use watch::{members, watch, MembersCmd, WatchArgs};

pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let client = Client::connect_any(&opts.server).await.with_context(|| {
        "is `skiff server` or `skiff dev` running? Point --server or SKIFF_SERVER at it".to_string()
    })?;
    Ok(client.stale(opts.stale))
}
