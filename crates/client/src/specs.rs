//! A directory of job specs, read the one way `skiff apply -f DIR`,
//! `skiff plan` and the servers' sync from git all read it: files ending
//! `.yaml`, `.yml` or `.json`, recursively, in path order; several YAML
//! documents per file; every spec checked, and every broken one reported
//! before anything is used.

use std::path::Path;

use serde::Deserialize;
use skiff_model::{JobSpec, MAX_SPEC_BYTES};

/// Why a set of specs cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecsError {
    /// One line per broken file or document, each naming it.
    #[error("{} broken spec(s); nothing applied:\n  {}", .0.len(), .0.join("\n  "))]
    Broken(Vec<String>),
    /// Files were read but described no job.
    #[error("{0}: no job specs")]
    Empty(String),
    /// The directory holds no spec files.
    #[error("{0}: no .yaml, .yml or .json files")]
    NoFiles(String),
    /// The directory could not be read.
    #[error("cannot read {path}: {error}")]
    Unreadable { path: String, error: String },
}

/// Where the namespace of a spec that names none comes from, and what a
/// spec naming another one is told.
#[derive(Debug, Clone, Copy)]
pub struct Namespacing<'a> {
    /// The namespace every spec must be in (`None`: each its own).
    pub namespace: Option<&'a str>,
    /// Who asks for it, for the error: `--namespace says`.
    pub said_by: &'a str,
}

/// One file's contents (or why it could not be read), named as the
/// reader shows it.
#[derive(Debug)]
pub struct SpecFile {
    pub name: String,
    pub contents: Result<Vec<u8>, String>,
}

/// Whether a file name is a spec file's.
pub fn is_spec_file(name: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
}

/// The spec files under `dir`, recursively, in path order.
pub fn read_dir(dir: &Path) -> Result<Vec<SpecFile>, SpecsError> {
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    if paths.is_empty() {
        return Err(SpecsError::NoFiles(dir.display().to_string()));
    }
    Ok(paths.iter().map(|p| read_file(p)).collect())
}

/// One file, read up to one byte past the limit (a larger one is
/// reported by [`parse`] with the others).
pub fn read_file(p: &Path) -> SpecFile {
    SpecFile {
        name: p.display().to_string(),
        contents: read_capped(p),
    }
}

fn read_capped(p: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), SpecsError> {
    let unreadable = |e: std::io::Error| SpecsError::Unreadable {
        path: dir.display().to_string(),
        error: e.to_string(),
    };
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(unreadable)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_spec_file)
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Every spec in `files`, each checked (with `check`, which may also
/// change it, after the model's rules); every broken one is reported and
/// none is returned if any is broken. `source` names the whole for an
/// empty result.
pub fn parse(
    files: &[SpecFile],
    source: &str,
    ns: Namespacing<'_>,
    check: &dyn Fn(&mut JobSpec) -> Result<(), String>,
) -> Result<Vec<JobSpec>, SpecsError> {
    let mut specs: Vec<JobSpec> = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let bytes = match &f.contents {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{}: {e}", f.name));
                continue;
            }
        };
        if bytes.len() > MAX_SPEC_BYTES {
            errors.push(format!(
                "{}: more than {MAX_SPEC_BYTES} bytes; a spec file may be at most that",
                f.name
            ));
            continue;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            errors.push(format!("{}: is not UTF-8 text", f.name));
            continue;
        };
        let docs: Vec<serde_yaml_ng::Value> = match serde_yaml_ng::Deserializer::from_str(text)
            .map(serde_yaml_ng::Value::deserialize)
            .collect()
        {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{}: {e}", f.name));
                continue;
            }
        };
        let several = docs.len() > 1;
        for (i, doc) in docs.iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let shown = if several {
                format!("{} (document {})", f.name, i + 1)
            } else {
                f.name.clone()
            };
            match one(doc, ns, check) {
                Ok(spec) if specs.iter().any(|s| s.key() == spec.key()) => {
                    errors.push(format!("{shown}: job {} is described twice", spec.key()))
                }
                Ok(spec) => specs.push(spec),
                Err(e) => errors.push(format!("{shown}: {e}")),
            }
        }
    }
    if !errors.is_empty() {
        return Err(SpecsError::Broken(errors));
    }
    if specs.is_empty() {
        return Err(SpecsError::Empty(source.to_string()));
    }
    Ok(specs)
}

fn one(
    doc: &serde_yaml_ng::Value,
    ns: Namespacing<'_>,
    check: &dyn Fn(&mut JobSpec) -> Result<(), String>,
) -> Result<JobSpec, String> {
    // Another kind of file given where jobs go: say which command takes it.
    if doc.get("task").is_none() {
        let has = |k: &str| doc.get(k).is_some();
        if ["nominal", "cohort", "borrowing_limit", "lending_limit"]
            .iter()
            .any(|k| has(k))
        {
            return Err(
                "this is a team queue, not a job: `skiff queue apply -f FILE` takes it".into(),
            );
        }
        if has("quota") || has("policy") {
            return Err(
                "this is a namespace, not a job: `skiff namespace apply -f FILE` takes it".into(),
            );
        }
    }
    let text = serde_yaml_ng::to_string(doc).map_err(|e| e.to_string())?;
    let mut spec = JobSpec::from_yaml(&text).map_err(|e| e.to_string())?;
    // A spec that names no namespace is placed; one that names another
    // is a mistake worth stopping for.
    if let Some(want) = ns.namespace {
        if doc.get("namespace").is_none() {
            spec.namespace = want.to_string();
        } else if spec.namespace != want {
            return Err(format!(
                "the spec names namespace {:?}, {} {want:?}",
                spec.namespace, ns.said_by
            ));
        }
    }
    spec.validate().map_err(|e| e.to_string())?;
    check(&mut spec)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> SpecFile {
        SpecFile {
            name: name.into(),
            contents: Ok(text.as_bytes().to_vec()),
        }
    }

    const NS: Namespacing<'static> = Namespacing {
        namespace: Some("lab"),
        said_by: "sync lab writes to",
    };

    #[test]
    fn documents_are_read_placed_and_checked_together() {
        let files = [
            file(
                "a.yaml",
                "name: web\ntask: {image: 'oci:/i'}\n---\nname: api\ntask: {image: 'oci:/i'}\n",
            ),
            file("b.json", r#"{"name": "cron", "task": {"image": "oci:/i"}}"#),
        ];
        let specs = parse(&files, "dir", NS, &|_| Ok(())).unwrap();
        let keys: Vec<String> = specs.iter().map(JobSpec::key).collect();
        assert_eq!(keys, ["lab/web", "lab/api", "lab/cron"]);
    }

    #[test]
    fn a_queue_or_a_namespace_file_is_named_for_its_own_command() {
        let files = [
            file(
                "queue.yaml",
                "name: team-a\ncohort: lab\nnominal: {gpus: {any: 4}}\n",
            ),
            file("ns.yaml", "name: ml\nquota: {cpu: 4}\n"),
        ];
        let Err(SpecsError::Broken(errors)) = parse(&files, "dir", NS, &|_| Ok(())) else {
            panic!("taken as jobs");
        };
        assert_eq!(
            errors,
            [
                "queue.yaml: this is a team queue, not a job: `skiff queue apply -f FILE` takes it",
                "ns.yaml: this is a namespace, not a job: `skiff namespace apply -f FILE` takes it",
            ]
        );
    }

    #[test]
    fn every_broken_document_is_named_and_nothing_is_returned() {
        let files = [
            file("ok.yaml", "name: web\ntask: {image: 'oci:/i'}\n"),
            file("bad.yaml", "name: Bad_Name\ntask: {image: 'oci:/i'}\n"),
            file(
                "other.yaml",
                "name: x\nnamespace: prod\ntask: {image: 'oci:/i'}\n",
            ),
            file("twice.yml", "name: web\ntask: {image: 'oci:/i'}\n"),
            file("syntax.yaml", "name: [\n"),
            SpecFile {
                name: "gone.json".into(),
                contents: Err("cannot read: gone".into()),
            },
        ];
        let Err(SpecsError::Broken(errors)) = parse(&files, "dir", NS, &|_| Ok(())) else {
            panic!("broken specs accepted")
        };
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].starts_with("bad.yaml: "), "{errors:#?}");
        assert!(errors[0].contains("name"), "{errors:#?}");
        assert_eq!(
            errors[1],
            "other.yaml: the spec names namespace \"prod\", sync lab writes to \"lab\""
        );
        assert_eq!(errors[2], "twice.yml: job lab/web is described twice");
        assert!(errors[3].starts_with("syntax.yaml: "), "{errors:#?}");
        assert_eq!(errors[4], "gone.json: cannot read: gone");
    }

    #[test]
    fn the_callers_check_refuses_too() {
        let files = [file("a.yaml", "name: web\ntask: {image: 'oci:/i'}\n")];
        let err = parse(&files, "dir", NS, &|s| Err(format!("{} refused", s.name))).unwrap_err();
        assert_eq!(err, SpecsError::Broken(vec!["a.yaml: web refused".into()]));
        assert_eq!(
            parse(&[file("empty.yaml", "---\n")], "dir", NS, &|_| Ok(())),
            Err(SpecsError::Empty("dir".into()))
        );
    }
}
