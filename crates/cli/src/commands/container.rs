//! `skiff logs` and `skiff exec`: a container's output and commands in it.

use std::io::Write;

use clap::Args;
use skiff_client::LogStream;

use super::connect;
use crate::args::ClientOpts;

#[derive(Args)]
pub struct LogsArgs {
    /// Allocation id, or a unique prefix of it (as `skiff get allocs` shows).
    alloc: String,
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each stream.
    #[arg(long, value_name = "N", default_value_t = 0)]
    tail: u32,
    /// Only stderr.
    #[arg(long)]
    stderr: bool,
    /// Prefix each line with the time the node received it (RFC 3339, UTC).
    #[arg(short = 't', long)]
    timestamps: bool,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
#[command(after_help = "Example: skiff exec 3f2a -- cat /etc/hostname\n\
    The command's stdout and stderr are printed as they were, and skiff exits\n\
    with the command's exit code.")]
pub struct ExecArgs {
    /// Allocation id, or a unique prefix of it.
    alloc: String,
    /// Kill the command if it runs longer than this (e.g. 30s); no limit
    /// by default.
    #[arg(long, value_parser = crate::args::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let mut reader = client
        .logs_with(
            &args.alloc,
            skiff_client::LogOptions {
                follow: args.follow,
                tail: args.tail,
                stderr_only: args.stderr,
                timestamps: args.timestamps,
            },
        )
        .await?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some((which, data)) = reader.next().await? {
        let result = match which {
            LogStream::Stdout => stdout
                .lock()
                .write_all(&data)
                .and_then(|_| stdout.lock().flush()),
            LogStream::Stderr => stderr.lock().write_all(&data),
        };
        if result.is_err() {
            break; // the reader closed the pipe (e.g. `| head`)
        }
    }
    Ok(())
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut client = connect(&args.client).await?;
    let out = client
        .exec(&args.alloc, &args.command, args.timeout)
        .await?;
    {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&out.stdout).and_then(|_| o.flush());
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&out.stderr);
    }
    if out.truncated {
        eprintln!("skiff: the output was longer than the node keeps (4 MiB per stream); the rest was dropped");
    }
    if out.timed_out {
        eprintln!("skiff: the command ran past --timeout and was killed");
    }
    // Exit codes are 0..=255 (128 + N for signal N).
    Ok(std::process::ExitCode::from(
        out.exit_code.clamp(0, 255) as u8
    ))
}
