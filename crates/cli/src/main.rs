//! `skiff`: the server, the agent, the all-in-one dev mode, and the
//! client commands, in one binary.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod completion;
mod daemons;
mod image_opts;
mod logging;
#[cfg(test)]
mod metrics_doc;
mod network_opts;
mod output;
mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::args::ClientOpts;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A lightweight container orchestrator for small clusters and GPU labs",
    long_about = "A lightweight container orchestrator for small clusters and GPU labs.\n\n\
        Run `skiff dev` to try it on one machine, then `skiff apply -f examples/hello.yaml`.\n\
        For a cluster, run `skiff server` on a few machines and `skiff agent` on every machine.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a control-plane server (Raft member holding the desired state), or
    /// manage the servers (`skiff server members`).
    Server(daemons::ServerCmd),
    /// Run the node agent: registers this machine and runs its containers with runc.
    Agent(daemons::AgentArgs),
    /// Run a server and an agent in one process: the quickest way to try Skiff.
    Dev(daemons::DevArgs),
    /// Create or update a job from a YAML (or JSON) file.
    Apply {
        /// The job spec; `-` reads standard input. A file may hold several
        /// YAML documents; a directory is read recursively (`.yaml`,
        /// `.yml`, `.json`). Every spec is checked first: if any is
        /// broken, nothing is applied.
        #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
        file: PathBuf,
        /// Also delete the jobs the selector matches that the files no
        /// longer describe (needs -l; never deletes anything else).
        #[arg(long)]
        prune: bool,
        /// With --prune: the jobs that may be deleted, e.g. `owner=gitops`
        /// (`key=value`, `key!=value`, `key`, comma-separated).
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selector: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show what `skiff apply -f FILE|DIR` would do, changing nothing: per
    /// job, the fields that would change and whether a new version would
    /// roll out, whether the write would be refused, and a scheduler dry
    /// run (what would be placed where, what cannot be and why, what would
    /// be evicted). Exit code 0 when nothing would change, 2 when
    /// something would, 1 on an error (Terraform's -detailed-exitcode).
    Plan {
        /// The job spec, a file of several, or a directory (as apply reads
        /// them); `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE|DIR")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List jobs, allocations or nodes.
    Get {
        #[command(subcommand)]
        what: commands::GetWhat,
    },
    /// Show one object in detail.
    Describe {
        #[command(subcommand)]
        what: commands::DescribeWhat,
    },
    /// Print an allocation's output (stdout and stderr).
    Logs(commands::LogsArgs),
    /// Run a command in an allocation's container; exits with its exit code.
    Exec(commands::ExecArgs),
    /// Delete an object.
    Delete {
        #[command(subcommand)]
        what: commands::DeleteWhat,
    },
    /// Cordon, drain, uncordon or remove a node; reset a GPU's health.
    Node {
        #[command(subcommand)]
        what: commands::NodeCmd,
    },
    /// The images cached on the nodes; pull one on a node ahead of time.
    Image {
        #[command(subcommand)]
        what: commands::ImageCmd,
    },
    /// The registry logins namespaces hold for their private images.
    Registry {
        #[command(subcommand)]
        what: commands::RegistryCmd,
    },
    /// Same as `skiff node cordon`.
    #[command(hide = true)]
    Cordon(commands::NodeArgs),
    /// Same as `skiff node drain`.
    #[command(hide = true)]
    Drain(commands::DrainArgs),
    /// Same as `skiff node uncordon`.
    #[command(hide = true)]
    Uncordon(commands::NodeArgs),
    /// Print changes of the cluster's state as they happen.
    Watch(commands::WatchArgs),
    /// What happened in the cluster, in words: allocations placed, failed
    /// or OOM-killed, nodes down, rollouts and rollbacks (`-f` follows).
    Events(commands::EventsArgs),
    /// What nodes and allocations use now (cpu, memory, GPUs) against what
    /// they offer and asked for.
    Top {
        #[command(subcommand)]
        what: commands::TopWhat,
    },
    /// Follow, inspect and steer a service's rollouts: status, history,
    /// undo, pause, resume, promote.
    Rollout {
        #[command(subcommand)]
        what: rollout::RolloutCmd,
    },
    /// Set how many replicas a job runs; its version stays.
    Scale(rollout::ScaleArgs),
    /// Make, list and revoke join tokens (for new nodes and servers).
    Token {
        #[command(subcommand)]
        what: commands::TokenCmd,
    },
    /// Make the CA the founding servers of a static cluster share.
    Ca {
        #[command(subcommand)]
        what: commands::CaCmd,
    },
    /// Make, list and revoke users of the client API, each with a role
    /// (admin, operator, developer, viewer).
    User {
        #[command(subcommand)]
        what: commands::UserCmd,
    },
    /// Describe, list and delete namespaces: what their jobs may ask for
    /// (policy) and how much they may hold (quota).
    #[command(alias = "ns")]
    Namespace {
        #[command(subcommand)]
        what: commands::NamespaceCmd,
    },
    /// Team queues for shared GPUs: describe, list and delete them, and
    /// see why a job waits (quota per team, borrowing idle capacity,
    /// fair sharing, reclaim).
    #[command(alias = "queues")]
    Queue {
        #[command(subcommand)]
        what: commands::QueueCmd,
    },
    /// Make a namespace follow a directory of specs in a git branch: the
    /// leader applies each commit (all specs valid, or nothing), prunes
    /// what the branch no longer describes and sets back jobs changed by
    /// hand; `skiff sync status` says where each stands.
    Sync {
        #[command(subcommand)]
        what: commands::SyncCmd,
    },
    /// Show who changed what and who was refused: every server's audit
    /// log (mutating calls and denials), merged by time. Admin only.
    Audit(commands::AuditArgs),
    /// Print a shell completion script (bash, zsh, fish); it completes job,
    /// node and allocation names from the cluster.
    Completion(completion::CompletionArgs),
}

/// mimalloc for `skiff server` and `skiff dev`, the system allocator for
/// the rest (the shim and the agent stay small): see the skiff-alloc crate.
#[global_allocator]
static ALLOCATOR: skiff_alloc::BySubcommand = skiff_alloc::BySubcommand;

fn main() -> ExitCode {
    // `skiff shim ...`, the per-container monitor the agent starts, is
    // handled before anything else: it forks, so it must run before any
    // thread (and so any runtime) exists, and it stays small by skipping
    // the command-line parser.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "shim") {
        return ExitCode::from(skiff_agent::shim::main(args) as u8);
    }
    // A TAB in a shell that sourced `skiff completion SHELL`: answer and exit.
    completion::answer_if_asked(Cli::command);
    let cli = Cli::parse();
    // Every listener and client of this process: TLS 1.3 only.
    skiff_pki::use_tls13_only();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Server(args) => ok(daemons::server(args).await),
            Cmd::Agent(args) => ok(daemons::agent(args).await),
            Cmd::Dev(args) => ok(daemons::dev(args).await),
            Cmd::Apply {
                file,
                prune,
                selector,
                client,
            } => ok(commands::apply(&client, &file, prune, selector.as_deref()).await),
            Cmd::Plan { file, client } => commands::plan(&client, &file).await,
            Cmd::Get { what } => ok(commands::get(what).await),
            Cmd::Describe { what } => ok(commands::describe(what).await),
            Cmd::Logs(args) => ok(commands::logs(args).await),
            Cmd::Exec(args) => commands::exec(args).await,
            Cmd::Delete { what } => ok(commands::delete(what).await),
            Cmd::Node { what } => ok(commands::node(what).await),
            Cmd::Image { what } => ok(commands::image(what).await),
            Cmd::Registry { what } => ok(commands::registry(what).await),
            Cmd::Cordon(args) => ok(commands::node(commands::NodeCmd::Cordon(args)).await),
            Cmd::Drain(args) => ok(commands::node(commands::NodeCmd::Drain(args)).await),
            Cmd::Uncordon(args) => ok(commands::node(commands::NodeCmd::Uncordon(args)).await),
            Cmd::Watch(args) => ok(commands::watch(args).await),
            Cmd::Events(args) => ok(commands::events(args).await),
            Cmd::Top { what } => ok(commands::top(what).await),
            Cmd::Rollout { what } => rollout::rollout(what).await,
            Cmd::Scale(args) => ok(rollout::scale(args).await),
            Cmd::Token { what } => ok(commands::token(what).await),
            Cmd::Ca { what } => ok(commands::ca(what)),
            Cmd::Audit(args) => ok(commands::audit(args).await),
            Cmd::User { what } => ok(commands::user(what).await),
            Cmd::Namespace { what } => ok(commands::namespace(what).await),
            Cmd::Queue { what } => ok(commands::queue(what).await),
            Cmd::Sync { what } => ok(commands::sync(what).await),
            Cmd::Completion(args) => ok(completion::print_script(args)),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
