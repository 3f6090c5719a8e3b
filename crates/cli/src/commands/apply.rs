//! `skiff apply` and `skiff delete`: reading a spec file, sending it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Deserialize;
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

/// Reads a spec file's text (`-`: standard input), refusing one larger
/// than a spec may be.
fn read_text(file: &Path) -> anyhow::Result<String> {
    Ok(if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .take(skiff_model::MAX_SPEC_BYTES as u64 + 1)
            .read_to_string(&mut s)
            .context("reading the spec from standard input")?;
        s
    } else {
        let meta =
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
        if meta.len() > skiff_model::MAX_SPEC_BYTES as u64 {
            bail!(
                "{} is {} bytes; a spec may be at most {} bytes",
                file.display(),
                meta.len(),
                skiff_model::MAX_SPEC_BYTES
            );
        }
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    })
}

/// Reads one spec from `text` (what file `file` holds), resolving a
/// relative `oci:` layout path against the current directory (as skopeo
/// does).
fn read_spec(text: &str, file: &Path, namespace: Option<&str>) -> anyhow::Result<JobSpec> {
    let mut spec =
        JobSpec::from_yaml(text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    // `-n` places a spec that names no namespace; one that names another
    // is a mistake worth stopping for.
    let named = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| v.get("namespace").cloned())
        .is_some();
    if let Some(ns) = namespace {
        if !named {
            spec.namespace = ns.to_string();
        } else if spec.namespace != ns {
            bail!(
                "{}: the spec names namespace {:?}, --namespace says {ns:?}",
                file.display(),
                spec.namespace
            );
        }
    }
    spec.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if spec.task.image.is_relative() {
        let cwd = std::env::current_dir().context("cannot resolve the image path")?;
        let abs = cwd.join(&spec.task.image.path);
        spec.task.image.path = normalize(&abs);
    }
    Ok(spec)
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

/// The spec files under `dir`, recursively, in path order: `.yaml`,
/// `.yml`, `.json`.
fn spec_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            spec_files(&p, out)?;
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Every spec in `file` (a file with one or more YAML documents, `-`, or
/// a directory of them), each checked; every broken one is reported and
/// none is returned if any is broken.
fn read_all(file: &Path, namespace: Option<&str>) -> anyhow::Result<Vec<JobSpec>> {
    let mut files = Vec::new();
    if file != Path::new("-") && file.is_dir() {
        spec_files(file, &mut files)?;
        if files.is_empty() {
            bail!("{}: no .yaml, .yml or .json files", file.display());
        }
    } else {
        files.push(file.to_path_buf());
    }
    let mut specs: Vec<JobSpec> = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        let text = match read_text(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let docs: Vec<serde_yaml_ng::Value> = match serde_yaml_ng::Deserializer::from_str(&text)
            .map(serde_yaml_ng::Value::deserialize)
            .collect()
        {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let several = docs.len() > 1;
        for (i, doc) in docs.iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let shown = if several {
                PathBuf::from(format!("{} (document {})", f.display(), i + 1))
            } else {
                f.clone()
            };
            let one = serde_yaml_ng::to_string(doc).unwrap_or_default();
            match read_spec(&one, &shown, namespace) {
                Ok(spec) => {
                    if specs.iter().any(|s| s.key() == spec.key()) {
                        errors.push(format!(
                            "{}: job {} is described twice",
                            shown.display(),
                            spec.key()
                        ));
                    } else {
                        specs.push(spec);
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} broken spec(s); nothing applied:\n  {}",
            errors.len(),
            errors.join("\n  ")
        );
    }
    if specs.is_empty() {
        bail!("{}: no job specs", file.display());
    }
    Ok(specs)
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
