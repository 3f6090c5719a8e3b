//! `skiff apply` and `skiff delete`: reading a spec file, sending it.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use skiff_client::specs;
use skiff_model::labels::Selector;
use skiff_model::JobSpec;

use super::connect;
use crate::args::ClientOpts;
use crate::output::emit;

#[derive(Subcommand)]
pub enum DeleteWhat {
    /// Delete a job and stop its containers.
    Job {
        #[arg(value_name = "JOB")]
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Every spec in `file` (a file with one or more YAML documents, `-`, or
/// a directory of them), each checked, a relative `oci:` layout path
/// resolved against the current directory (as skopeo does); every broken
/// one is reported and none is returned if any is broken.
fn read_all(file: &Path, namespace: Option<&str>) -> anyhow::Result<Vec<JobSpec>> {
    let files = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(skiff_model::MAX_SPEC_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("reading the spec from standard input")?;
        vec![specs::SpecFile {
            name: "-".into(),
            contents: Ok(bytes),
        }]
    } else if file.is_dir() {
        specs::read_dir(file)?
    } else {
        vec![specs::read_file(file)]
    };
    let cwd = std::env::current_dir().context("cannot resolve the image path")?;
    let resolve = |spec: &mut JobSpec| {
        if spec.task.image.is_relative() {
            spec.task.image.path = normalize(&cwd.join(&spec.task.image.path));
        }
        Ok(())
    };
    let ns = specs::Namespacing {
        namespace,
        said_by: "--namespace says",
    };
    Ok(specs::parse(
        &files,
        &file.display().to_string(),
        ns,
        &resolve,
    )?)
}

/// Removes `.` and `..` components without touching the file system.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s),
            _ => {}
        }
    }
    let mut out = String::new();
    for s in parts {
        out.push('/');
        out.push_str(&s.to_string_lossy());
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `skiff apply -f FILE|DIR [--prune -l SELECTOR]`.
pub async fn apply(
    opts: &ClientOpts,
    file: &Path,
    prune: bool,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    let selector = match (prune, selector) {
        (true, None) => {
            bail!("--prune needs a selector (-l owner=NAME): only jobs it matches are ever deleted")
        }
        (_, Some(s)) => Some(Selector::parse(s).map_err(|e| anyhow::anyhow!("--selector: {e}"))?),
        (false, None) => None,
    };
    if selector.is_some() && !prune {
        bail!("--selector with apply is for --prune (which jobs may be deleted)");
    }
    // Every spec is read and checked before anything is written.
    let specs = read_all(file, opts.namespace.as_deref())?;
    let mut client = connect(opts).await?;
    let mut failed = 0;
    for spec in &specs {
        match client.apply_job(spec).await {
            Ok(applied) => {
                let what = if !applied.changed {
                    "unchanged"
                } else if applied.job.create_index == applied.job.modify_index {
                    "created"
                } else {
                    "configured"
                };
                emit(&format!(
                    "job/{} {what} (version {})\n",
                    applied.job.key(),
                    applied.job.version
                ));
                if !applied.image_note.is_empty() {
                    emit(&format!("  {}\n", applied.image_note));
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("job/{} not applied: {e}", spec.key());
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} job(s) not applied{}",
            specs.len(),
            if prune { "; nothing pruned" } else { "" }
        );
    }
    if let Some(sel) = selector {
        // Only in the namespaces the files use (or -n's).
        let keep: std::collections::BTreeSet<String> = specs.iter().map(JobSpec::key).collect();
        let mut namespaces: std::collections::BTreeSet<&str> =
            specs.iter().map(|s| s.namespace.as_str()).collect();
        if let Some(ns) = opts.namespace.as_deref() {
            namespaces.insert(ns);
        }
        for (job, _) in client.list_jobs().await? {
            if sel.matches(&job.spec.labels)
                && namespaces.contains(job.spec.namespace.as_str())
                && !keep.contains(&job.key())
            {
                client
                    .clone()
                    .namespace(job.spec.namespace.clone())
                    .delete_job(&job.spec.name)
                    .await?;
                emit(&format!("job/{} pruned\n", job.key()));
            }
        }
    }
    Ok(())
}

/// `skiff plan -f FILE|DIR`: exit code 0 when nothing would change, 2
/// when something would, 1 on an error.
pub async fn plan(opts: &ClientOpts, file: &Path) -> anyhow::Result<std::process::ExitCode> {
    let specs = read_all(file, opts.namespace.as_deref())?;
    let mut client = connect(opts).await?;
    let mut changes = 0;
    let mut refused = 0;
    for spec in &specs {
        let p = client.plan_job(spec).await?;
        let key = spec.key();
        let head = if !p.exists {
            format!("job/{key}: new, version 1")
        } else if p.changed.is_empty() {
            format!("job/{key}: no change (version {})", p.version)
        } else if p.planned_version != p.version {
            format!(
                "job/{key}: changes {}; new version {} (a rollout)",
                p.changed.join(", "),
                p.planned_version
            )
        } else {
            format!(
                "job/{key}: changes {}; same version {}",
                p.changed.join(", "),
                p.version
            )
        };
        emit(&format!("{head}\n"));
        if !p.exists || !p.changed.is_empty() {
            changes += 1;
        }
        if !p.refusal.is_empty() {
            refused += 1;
            emit(&format!("  would be refused: {}\n", p.refusal));
            continue;
        }
        if !p.queue_note.is_empty() {
            emit(&format!("  {}\n", p.queue_note));
        }
        if !p.placements.is_empty() {
            emit(&format!("  would place: {}\n", p.placements.join("; ")));
        }
        if p.unplaced > 0 {
            emit(&format!(
                "  cannot place {} now: {}\n",
                p.unplaced, p.explanation
            ));
        }
        if !p.evictions.is_empty() {
            emit(&format!("  would evict: {}\n", p.evictions.join("; ")));
        }
        if p.stops > 0 {
            emit(&format!("  would stop {} of its allocations\n", p.stops));
        }
    }
    emit(&format!(
        "{} job(s): {changes} would change, {refused} would be refused\n",
        specs.len()
    ));
    Ok(if refused > 0 {
        std::process::ExitCode::FAILURE
    } else if changes > 0 {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

pub async fn delete(what: DeleteWhat) -> anyhow::Result<()> {
    let DeleteWhat::Job { name, client } = what;
    connect(&client).await?.delete_job(&name).await?;
    emit(&format!("job/{name} deleted\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_layout_paths_become_absolute() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), "/a/c");
        assert_eq!(normalize(Path::new("/")), "/");
    }
}
