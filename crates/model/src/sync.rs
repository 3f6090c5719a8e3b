//! Syncs: a namespace's jobs following a directory of specs in a git
//! repository (`skiff sync`). The source is what a user described; the
//! status is what the leader's controller last did with it. Both are
//! replicated, so a new leader carries on from the commit the old one
//! applied.

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, SpecError};
use crate::labels::Selector;

/// The least and most seconds between two looks at a repository.
pub const MIN_INTERVAL_SECS: u32 = 1;
pub const MAX_INTERVAL_SECS: u32 = 86_400;
/// The default: a minute, as Flux's and Argo CD's defaults are minutes.
pub const DEFAULT_INTERVAL_SECS: u32 = 60;
/// The most jobs one status lists by name (the rest are counted).
pub const MAX_LISTED: usize = 200;

/// What a sync follows and where it writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSource {
    /// The sync's name (a DNS label), unique in the cluster.
    pub name: String,
    /// The repository: an absolute path or `file://` URL (read in place),
    /// or an `https://`, `http://`, `ssh://` or `user@host:path` remote
    /// (fetched into the leader's data directory).
    pub repo: String,
    /// The branch followed.
    pub branch: String,
    /// The directory of specs inside the repository ("" for its root).
    pub path: String,
    /// The namespace its jobs live in; a spec naming another is refused.
    pub namespace: String,
    /// Jobs of the namespace this selector matches that the directory no
    /// longer describes are deleted; without one nothing is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<String>,
    /// Seconds between two looks at the branch.
    pub interval_secs: u32,
}

/// What the controller last did with a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The commit whose specs the namespace runs ("" before the first).
    #[serde(default)]
    pub commit: String,
    /// When that commit was applied (ms since the epoch).
    #[serde(default)]
    pub applied_at_ms: u64,
    /// The branch's head when last read ("" when it could not be read).
    #[serde(default)]
    pub head: String,
    /// Why the head is not applied ("" when it is).
    #[serde(default)]
    pub error: String,
    /// The jobs the applied commit describes.
    #[serde(default)]
    pub jobs: Vec<String>,
    /// Jobs found changed or deleted outside git the last time any were,
    /// each with what differed; they were set back to the commit's spec.
    #[serde(default)]
    pub drift: Vec<String>,
    /// When that drift was found and corrected.
    #[serde(default)]
    pub drift_at_ms: u64,
    /// Jobs deleted by the last prune.
    #[serde(default)]
    pub pruned: Vec<String>,
}

/// A sync as the state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub source: SyncSource,
    #[serde(default)]
    pub status: SyncStatus,
}

/// What kind of place a repository string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoKind {
    /// A repository on the leader's file system, read where it lies.
    Local(String),
    /// A remote the leader fetches.
    Remote,
}

/// Reads `repo` as a local path or a remote URL; the error is the rule.
pub fn repo_kind(repo: &str) -> Result<RepoKind, String> {
    if repo.is_empty() {
        return Err("is required".into());
    }
    if repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{repo:?} must not hold spaces or control characters"
        ));
    }
    if let Some(path) = repo.strip_prefix("file://") {
        return local(path, repo);
    }
    if repo.starts_with('/') {
        return local(repo, repo);
    }
    let remote = ["https://", "http://", "ssh://", "git://"]
        .iter()
        .any(|p| repo.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
    // scp-like: user@host:path.
    let scp = repo
        .split_once(':')
        .is_some_and(|(host, path)| host.contains('@') && !host.contains('/') && !path.is_empty());
    if remote || scp {
        Ok(RepoKind::Remote)
    } else {
        Err(format!(
            "{repo:?} must be an absolute path, a file:// URL, or an https://, ssh:// or user@host:path remote"
        ))
    }
}

fn local(path: &str, repo: &str) -> Result<RepoKind, String> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!("{repo:?} must name an absolute path without `..`"));
    }
    Ok(RepoKind::Local(path.to_string()))
}

/// A path inside a repository: relative, `/`-separated, no `.` or `..`.
fn check_inner_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!(
            "{path:?} must be relative to the repository's root"
        ));
    }
    if path
        .split('/')
        .filter(|c| !c.is_empty())
        .any(|c| c == "." || c == "..")
    {
        return Err(format!("{path:?} must not hold `.` or `..`"));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(format!("{path:?} must not hold control characters"));
    }
    Ok(())
}

/// A branch name as git allows it (the common rules).
fn check_branch(branch: &str) -> Result<(), String> {
    let bad = branch.is_empty()
        || branch.len() > 255
        || branch.starts_with('/')
        || branch.starts_with('-')
        || branch.ends_with('/')
        || branch.ends_with(".lock")
        || branch.ends_with('.')
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err(format!("{branch:?} is not a valid git branch name"))
    } else {
        Ok(())
    }
}

impl SyncSource {
    /// A source with the defaults: branch `main`, the repository's root,
    /// a look a minute, nothing pruned.
    pub fn new(name: &str, repo: &str, namespace: &str) -> SyncSource {
        SyncSource {
            name: name.into(),
            repo: repo.into(),
            branch: "main".into(),
            path: String::new(),
            namespace: namespace.into(),
            prune: None,
            interval_secs: DEFAULT_INTERVAL_SECS,
        }
    }

    /// Every rule, every broken field reported at once.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, r: Result<(), String>| {
            if let Err(rule) = r {
                errors.push(FieldError::new(field, rule));
            }
        };
        check(
            "name",
            crate::check_dns_label(&self.name).map_err(|rule| format!("{:?} {rule}", self.name)),
        );
        check("repo", repo_kind(&self.repo).map(|_| ()));
        check("branch", check_branch(&self.branch));
        check("path", check_inner_path(&self.path));
        check(
            "namespace",
            crate::check_dns_label(&self.namespace)
                .map_err(|rule| format!("{:?} {rule}", self.namespace)),
        );
        if let Some(sel) = &self.prune {
            check(
                "prune",
                match Selector::parse(sel) {
                    Ok(s) if s.is_empty() => Err("must name at least one label".into()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                },
            );
        }
        check(
            "interval_secs",
            if (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&self.interval_secs) {
                Ok(())
            } else {
                Err(format!(
                    "must be {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS} seconds"
                ))
            },
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_local_paths_or_remotes() {
        assert_eq!(
            repo_kind("/srv/git/lab.git"),
            Ok(RepoKind::Local("/srv/git/lab.git".into()))
        );
        assert_eq!(
            repo_kind("file:///srv/git/lab.git"),
            Ok(RepoKind::Local("/srv/git/lab.git".into()))
        );
        assert_eq!(repo_kind("https://git.lab/ops.git"), Ok(RepoKind::Remote));
        assert_eq!(repo_kind("git@git.lab:ops.git"), Ok(RepoKind::Remote));
        assert!(repo_kind("relative/repo").is_err());
        assert!(repo_kind("/srv/../etc").is_err());
        assert!(repo_kind("https://").is_err());
    }

    #[test]
    fn every_broken_field_is_named() {
        let mut s = SyncSource::new("Lab", "repo", "default");
        s.branch = "a..b".into();
        s.path = "../up".into();
        s.prune = Some("".into());
        s.interval_secs = 0;
        let Err(SpecError::Invalid(errors)) = s.validate() else {
            panic!("invalid source accepted")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "repo", "branch", "path", "prune", "interval_secs"]
        );
        let mut ok = SyncSource::new("lab", "/srv/lab.git", "team-a");
        ok.path = "jobs/prod".into();
        ok.prune = Some("owner=gitops".into());
        assert_eq!(ok.validate(), Ok(()));
    }
}
