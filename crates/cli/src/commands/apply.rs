//! `skiff apply` and `skiff delete`: reading a spec file, sending it.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
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

/// Reads the spec, resolving a relative `oci:` layout path against the
/// current directory (as skopeo does).
fn read_spec(file: &Path, namespace: Option<&str>) -> anyhow::Result<JobSpec> {
    let text = if file == Path::new("-") {
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
    };
    let mut spec =
        JobSpec::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    // `-n` places a spec that names no namespace; one that names another
    // is a mistake worth stopping for.
    let named = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
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

pub async fn apply(opts: &ClientOpts, file: &Path) -> anyhow::Result<()> {
    let spec = read_spec(file, opts.namespace.as_deref())?;
    let mut client = connect(opts).await?;
    let applied = client.apply_job(&spec).await?;
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
    Ok(())
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
