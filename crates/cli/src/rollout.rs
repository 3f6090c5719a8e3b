//! `skiff rollout status|history|undo|pause|resume|promote` and `skiff scale`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use skiff_client::RolloutInfo;
use skiff_model::{Deployment, DeploymentStatus, RolloutCounts};

use crate::args::ClientOpts;
use crate::commands::connect;
use crate::output::{emit, print_list, Format};

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Follow a job's current rollout until it ends. Exits 0 when it
    /// succeeds, 1 when it fails, is rolled back, or is replaced.
    #[command(
        after_help = "On a terminal a progress bar is redrawn in place; otherwise one line is\n\
        printed each time the rollout moves. A paused rollout, or canaries\n\
        waiting for `skiff rollout promote`, keep it waiting."
    )]
    Status {
        job: String,
        /// Give up after this long (e.g. 5m) and exit 1; waits for ever
        /// by default.
        #[arg(long, value_parser = crate::args::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the versions a job keeps (`versions_kept`, 10 by default),
    /// which one runs, and which rolled out successfully.
    History {
        job: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Return a job to an earlier version: the last one that rolled out
    /// successfully (or the one before the current), or --to-version.
    /// With canaries waiting, this abandons them.
    Undo {
        job: String,
        /// The version to return to, as `skiff rollout history` lists it.
        #[arg(long, value_name = "N")]
        to_version: Option<u64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Freeze a job's rollout: nothing is added or stopped until it is resumed.
    Pause {
        job: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Let a paused rollout go on (its progress deadline starts again).
    Resume {
        job: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Go on from the canaries to the whole rollout.
    Promote {
        job: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Args)]
#[command(after_help = "Example: skiff scale web 5\n\
    The job's version stays; replicas above the count stop (highest first),\n\
    missing ones are placed. Refused for batch jobs and gangs (apply a spec\n\
    with the new size: a gang is replaced whole).")]
pub struct ScaleArgs {
    /// The job's name.
    job: String,
    /// The number of replicas to run, 0 to 1000.
    replicas: u32,
    #[command(flatten)]
    client: ClientOpts,
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let job = connect(&args.client)
        .await?
        .scale_job(&args.job, args.replicas)
        .await?;
    emit(&format!(
        "job/{} scaled to {} replica{} (version {})\n",
        job.spec.name,
        job.spec.replicas,
        if job.spec.replicas == 1 { "" } else { "s" },
        job.version
    ));
    Ok(())
}

pub async fn rollout(cmd: RolloutCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCmd::Status {
            job,
            timeout,
            client,
        } => status(&job, timeout, &client).await,
        RolloutCmd::History {
            job,
            output,
            client,
        } => {
            let info = connect(&client).await?.get_rollout(&job).await?;
            history(&info, output)?;
            Ok(ExitCode::SUCCESS)
        }
        RolloutCmd::Undo {
            job,
            to_version,
            client,
        } => {
            let (j, d) = connect(&client)
                .await?
                .undo_rollout(&job, to_version)
                .await?;
            let what = match d {
                Some(d) if d.version == j.version && d.status.is_active() => {
                    format!("; follow it with `skiff rollout status {job}`")
                }
                _ => String::new(),
            };
            emit(&format!(
                "job/{job} rolled back to version {}{what}\n",
                j.version
            ));
            Ok(ExitCode::SUCCESS)
        }
        RolloutCmd::Pause { job, client } => control(&job, "pause", "paused", &client).await,
        RolloutCmd::Resume { job, client } => control(&job, "resume", "resumed", &client).await,
        RolloutCmd::Promote { job, client } => control(&job, "promote", "promoted", &client).await,
    }
}

async fn control(
    job: &str,
    action: &str,
    done: &str,
    opts: &ClientOpts,
) -> anyhow::Result<ExitCode> {
    let d = connect(opts).await?.control_rollout(job, action).await?;
    match d {
        Some(d) => emit(&format!(
            "job/{job}: rollout of version {} {done} ({})\n",
            d.version,
            d.status.as_str()
        )),
        None => emit(&format!("job/{job}: rollout {done}\n")),
    }
    Ok(ExitCode::SUCCESS)
}

fn history(info: &RolloutInfo, output: Format) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        version: u64,
        current: bool,
        stable: bool,
        /// The status of the version's latest rollout, if any is kept.
        rollout: Option<&'static str>,
        create_index: u64,
        image: String,
        spec: &'a skiff_model::JobSpec,
    }
    let mut versions: Vec<&skiff_model::JobVersion> = info.history.iter().collect();
    versions.sort_by_key(|v| v.version);
    let rows: Vec<Row<'_>> = versions
        .into_iter()
        .map(|v| Row {
            version: v.version,
            current: v.version == info.job.version,
            stable: v.stable,
            rollout: info
                .deployments
                .iter()
                .rev()
                .find(|d| d.version == v.version)
                .map(|d| d.status.as_str()),
            create_index: v.create_index,
            image: v.spec.task.image.to_string(),
            spec: &v.spec,
        })
        .collect();
    print_list(
        output,
        &rows,
        &[
            "VERSION",
            "CURRENT",
            "STABLE",
            "ROLLOUT",
            "IMAGE",
            "CREATED AT INDEX",
        ],
        5,
        |r| {
            vec![
                r.version.to_string(),
                if r.current { "*" } else { "" }.to_string(),
                if r.stable { "yes" } else { "no" }.to_string(),
                r.rollout.unwrap_or("-").to_string(),
                r.image.clone(),
                r.create_index.to_string(),
            ]
        },
    )
}

/// One line about where a rollout stands.
fn describe(d: &Deployment, c: &RolloutCounts, current: bool) -> String {
    let mut line = format!("version {}: ", d.version);
    if current {
        line.push_str(&format!(
            "{} of {} updated, {} healthy, {} old",
            c.updated.min(c.desired),
            c.desired,
            c.healthy,
            c.old
        ));
        if d.canary > 0 {
            line.push_str(&format!(
                ", {} canar{}{}",
                d.canary,
                if d.canary == 1 { "y" } else { "ies" },
                if d.promoted { " (promoted)" } else { "" }
            ));
        }
        line.push_str(&format!(" ({})", d.status.as_str()));
    } else {
        line.push_str(d.status.as_str());
    }
    if !d.reason.is_empty() {
        line.push_str(&format!(": {}", d.reason));
    }
    line
}

fn bar(c: &RolloutCounts) -> String {
    const WIDTH: u32 = 24;
    let filled = (c.healthy.min(c.desired) * WIDTH)
        .checked_div(c.desired)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

async fn status(
    job: &str,
    timeout: Option<Duration>,
    opts: &ClientOpts,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(opts).await?;
    let info = client.get_rollout(job).await?;
    let Some(first) = info.current().cloned() else {
        if info.job.spec.is_batch() || info.job.spec.gang {
            bail!(
                "job {job:?} is {}: it is replaced whole when it changes and has no rollouts; see `skiff get jobs` and `skiff describe job {job}`",
                if info.job.spec.is_batch() { "a batch job" } else { "a gang" }
            );
        }
        bail!("job {job:?} has no rollout yet");
    };
    let tty = std::io::stdout().is_terminal();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last = String::new();
    let mut info = info;
    loop {
        let Some(d) = info.deployments.iter().find(|d| d.id == first.id) else {
            bail!("the rollout of version {} is no longer kept", first.version);
        };
        let current = info.current().is_some_and(|c| c.id == d.id);
        let line = describe(d, &info.counts, current);
        if line != last {
            if tty {
                emit(&format!("\r\x1b[2K{} {line}", bar(&info.counts)));
            } else {
                emit(&format!("{line}\n"));
            }
            last = line;
        }
        let end = |msg: String, ok: bool| {
            if tty {
                emit("\n");
            }
            emit(&msg);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        };
        match d.status {
            DeploymentStatus::Successful => {
                return Ok(end(
                    format!("rollout of version {} successful\n", d.version),
                    true,
                ))
            }
            DeploymentStatus::Failed => {
                return Ok(end(
                    format!("rollout of version {} failed\n", d.version),
                    false,
                ))
            }
            DeploymentStatus::RolledBack => {
                let to = info.current().map(|c| c.version).unwrap_or_default();
                return Ok(end(
                    format!(
                        "rollout of version {} was rolled back to version {to}; follow the rollback with `skiff rollout status {job}`\n",
                        d.version
                    ),
                    false,
                ));
            }
            DeploymentStatus::Cancelled => {
                return Ok(end(
                    format!(
                        "rollout of version {} was replaced by a newer one\n",
                        d.version
                    ),
                    false,
                ))
            }
            DeploymentStatus::Running | DeploymentStatus::Paused => {}
        }
        if deadline.is_some_and(|t| Instant::now() >= t) {
            return Ok(end(
                format!(
                    "timed out waiting for the rollout of version {}\n",
                    d.version
                ),
                false,
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        info = client.get_rollout(job).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(status: DeploymentStatus) -> Deployment {
        Deployment {
            id: "web-9".into(),
            job: "web".into(),
            version: 2,
            from_version: 1,
            status,
            reason: String::new(),
            canary: 0,
            promoted: false,
            rollback: false,
            started_ms: 0,
            progress_ms: 0,
            ended_ms: 0,
            create_index: 9,
            modify_index: 9,
            slot: 0,
        }
    }

    #[test]
    fn a_status_line_says_how_far_the_rollout_is() {
        let c = RolloutCounts {
            desired: 4,
            updated: 3,
            healthy: 2,
            unhealthy: 0,
            old: 2,
            old_healthy: 2,
        };
        assert_eq!(
            describe(&d(DeploymentStatus::Running), &c, true),
            "version 2: 3 of 4 updated, 2 healthy, 2 old (running)"
        );
        let mut failed = d(DeploymentStatus::RolledBack);
        failed.reason = "allocation 1234 of version 2 crashed".into();
        assert_eq!(
            describe(&failed, &c, false),
            "version 2: rolled_back: allocation 1234 of version 2 crashed"
        );
        assert_eq!(bar(&c), format!("[{}{}]", "#".repeat(12), ".".repeat(12)));
    }
}
