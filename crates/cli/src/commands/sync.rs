//! `skiff sync apply|status|delete`: a namespace following a directory of
//! specs in a git repository, applied by the leader as commits land.

use anyhow::bail;
use clap::Subcommand;
use skiff_model::sync::{SyncRecord, SyncSource};

use super::connect;
use crate::args::ClientOpts;
use crate::output::{age, emit, print_list, Format};

#[derive(Subcommand)]
pub enum SyncCmd {
    /// Make a namespace follow a git branch (new or again): the leader
    /// reads the directory's specs (.yaml, .yml, .json, recursively) at
    /// the branch's head every --interval and applies what changed; a
    /// commit with any broken spec is refused whole and the last good one
    /// keeps running. Jobs changed by hand are set back (drift).
    #[command(after_help = "Examples:\n  \
        skiff sync apply lab --repo /srv/git/lab.git --path jobs -n team-a --prune -l owner=gitops\n  \
        skiff sync apply lab --repo https://git.example.org/lab/specs.git --branch prod --interval 5m\n\n\
        See docs/declarative.md.")]
    Apply {
        /// The sync's name.
        name: String,
        /// The repository: an absolute path or file:// URL on the servers
        /// (read in place), or an https://, ssh:// or user@host:path
        /// remote (fetched by the leader into its data directory).
        #[arg(long)]
        repo: String,
        /// The branch followed.
        #[arg(long, default_value = "main")]
        branch: String,
        /// The directory of specs inside the repository (default: its
        /// root).
        #[arg(long, default_value = "")]
        path: String,
        /// Delete the namespace's jobs that --selector matches and the
        /// branch no longer describes.
        #[arg(long, requires = "selector")]
        prune: bool,
        /// Which jobs a prune may delete (e.g. owner=gitops).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Time between two looks at the branch (1s to 24h).
        #[arg(long, default_value = "60s")]
        interval: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Where syncs stand: the commit applied, the branch's head, the last
    /// error, drift set back and jobs pruned. With a name, all of it.
    #[command(alias = "ls")]
    Status {
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop a sync; its jobs stay as they are.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn short(commit: &str) -> &str {
    if commit.is_empty() {
        "-"
    } else {
        &commit[..commit.len().min(12)]
    }
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    age(std::time::Duration::from_millis(now.saturating_sub(ms))) + " ago"
}

/// `in sync`, `error` or `pending`, as a column shows it.
fn state(r: &SyncRecord) -> &'static str {
    let s = &r.status;
    if !s.error.is_empty() {
        "error"
    } else if s.commit.is_empty() {
        "pending"
    } else if s.commit == s.head {
        "in sync"
    } else {
        "pending"
    }
}

pub async fn sync(cmd: SyncCmd) -> anyhow::Result<()> {
    match cmd {
        SyncCmd::Apply {
            name,
            repo,
            branch,
            path,
            prune,
            selector,
            interval,
            client,
        } => {
            if selector.is_some() && !prune {
                bail!("--selector with sync apply is for --prune (which jobs may be deleted)");
            }
            let every = skiff_model::duration::parse_duration(&interval)
                .map_err(|rule| anyhow::anyhow!("--interval: {rule}"))?;
            let mut source = SyncSource::new(&name, &repo, &client.namespace());
            source.branch = branch;
            source.path = path.trim_matches('/').to_string();
            source.prune = selector;
            if every.subsec_nanos() != 0 || every.is_zero() {
                bail!("--interval: {interval:?} must be whole seconds, at least 1s");
            }
            // Above a day the model's rule names the limit.
            source.interval_secs = u32::try_from(every.as_secs()).unwrap_or(u32::MAX);
            source
                .validate()
                .map_err(|e| anyhow::anyhow!("sync {name}: {e}"))?;
            connect(&client).await?.apply_sync(&source).await?;
            emit(&format!(
                "sync/{name} applied: namespace {} follows {} branch {}{}\n",
                source.namespace,
                source.repo,
                source.branch,
                if source.path.is_empty() {
                    String::new()
                } else {
                    format!(" path {}", source.path)
                }
            ));
        }
        SyncCmd::Status {
            name,
            output,
            client,
        } => {
            let mut all = connect(&client).await?.list_syncs().await?;
            if let Some(n) = &name {
                all.retain(|r| &r.source.name == n);
                if all.is_empty() {
                    bail!("sync {n:?} not found: `skiff sync status` lists them");
                }
                if matches!(output, Format::Table | Format::Wide) {
                    emit(&describe_text(&all[0]));
                    return Ok(());
                }
            }
            print_list(
                output,
                &all,
                &[
                    "NAME",
                    "NAMESPACE",
                    "STATE",
                    "COMMIT",
                    "APPLIED",
                    "JOBS",
                    "REPO",
                    "BRANCH",
                    "PATH",
                ],
                6,
                |r| {
                    vec![
                        r.source.name.clone(),
                        r.source.namespace.clone(),
                        state(r).into(),
                        short(&r.status.commit).into(),
                        ago(r.status.applied_at_ms),
                        r.status.jobs.len().to_string(),
                        r.source.repo.clone(),
                        r.source.branch.clone(),
                        if r.source.path.is_empty() {
                            "/".into()
                        } else {
                            r.source.path.clone()
                        },
                    ]
                },
            )?;
            for r in all.iter().filter(|r| !r.status.error.is_empty()) {
                emit(&format!("{}: {}\n", r.source.name, r.status.error));
            }
        }
        SyncCmd::Delete { name, client } => {
            connect(&client).await?.delete_sync(&name).await?;
            emit(&format!("sync/{name} deleted; its jobs stay\n"));
        }
    }
    Ok(())
}

fn describe_text(r: &SyncRecord) -> String {
    use std::fmt::Write;
    let (src, st) = (&r.source, &r.status);
    let mut s = String::new();
    let _ = writeln!(s, "Name:       {}", src.name);
    let _ = writeln!(s, "Namespace:  {}", src.namespace);
    let _ = writeln!(s, "Repo:       {}", src.repo);
    let _ = writeln!(s, "Branch:     {}", src.branch);
    let _ = writeln!(
        s,
        "Path:       {}",
        if src.path.is_empty() { "/" } else { &src.path }
    );
    let _ = writeln!(s, "Interval:   {}s", src.interval_secs);
    let _ = writeln!(s, "Prune:      {}", src.prune.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "State:      {}", state(r));
    let _ = writeln!(
        s,
        "Commit:     {} (applied {})",
        short(&st.commit),
        ago(st.applied_at_ms)
    );
    let _ = writeln!(s, "Head:       {}", short(&st.head));
    if !st.error.is_empty() {
        let _ = writeln!(
            s,
            "Error:      {}",
            st.error.replace('\n', "\n              ")
        );
    }
    let _ = writeln!(s, "Jobs:       {}", st.jobs.len());
    for j in &st.jobs {
        let _ = writeln!(s, "  {j}");
    }
    if !st.drift.is_empty() {
        let _ = writeln!(s, "Drift set back {}:", ago(st.drift_at_ms));
        for d in &st.drift {
            let _ = writeln!(s, "  {d}");
        }
    }
    if !st.pruned.is_empty() {
        let _ = writeln!(s, "Last pruned:");
        for p in &st.pruned {
            let _ = writeln!(s, "  {p}");
        }
    }
    s
}
