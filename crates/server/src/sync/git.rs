//! Reading a sync's directory of specs at the head of its branch, with
//! gix. A local repository (a path or `file://` URL, bare or not) is read
//! where it lies; a remote one is fetched into a bare repository under
//! the leader's data directory first (HTTPS through reqwest on the
//! process's rustls provider; ssh through the `ssh` program). Blocking:
//! the controller runs it on a blocking thread.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use skiff_client::specs::{is_spec_file, SpecFile};
use skiff_model::sync::{repo_kind, RepoKind, SyncSource};
use skiff_model::MAX_SPEC_BYTES;

/// The most spec files one directory may hold.
pub const MAX_FILES: usize = 1_000;

/// Why a sync's branch could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open repository {repo}: {message}")]
    Open { repo: String, message: String },
    #[error("cannot fetch {repo}: {message}")]
    Fetch { repo: String, message: String },
    #[error("branch {branch:?} not found in {repo}")]
    NoBranch { repo: String, branch: String },
    #[error("commit {commit}: {path:?} is not a directory in the repository")]
    NoDirectory { commit: String, path: String },
    #[error("commit {commit}: more than {MAX_FILES} spec files under {path:?}")]
    TooManyFiles { commit: String, path: String },
    #[error("cannot read commit {commit}: {message}")]
    Read { commit: String, message: String },
}

/// The spec files of a branch's head.
#[derive(Debug)]
pub struct Checkout {
    /// The head commit's id (hex).
    pub commit: String,
    /// Its spec files, named by their path in the repository.
    pub files: Vec<SpecFile>,
}

/// The head of `source`'s branch and the spec files under its path.
/// `cache` is where a remote is fetched to (one bare repository per sync).
pub fn read(source: &SyncSource, cache: &Path) -> Result<Checkout, GitError> {
    // A local branch is read as it is; a remote's, where the fetch put it.
    let (repo, refname) = match repo_kind(&source.repo) {
        Ok(RepoKind::Local(path)) => (
            gix::open(&path).map_err(|e| GitError::Open {
                repo: source.repo.clone(),
                message: e.to_string(),
            })?,
            format!("refs/heads/{}", source.branch),
        ),
        Ok(RepoKind::Remote) => (
            fetch(source, cache)?,
            format!("refs/remotes/origin/{}", source.branch),
        ),
        Err(rule) => {
            return Err(GitError::Open {
                repo: source.repo.clone(),
                message: rule,
            })
        }
    };
    let no_branch = || GitError::NoBranch {
        repo: source.repo.clone(),
        branch: source.branch.clone(),
    };
    let mut reference = repo
        .try_find_reference(refname.as_str())
        .map_err(|e| GitError::Open {
            repo: source.repo.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(no_branch)?;
    let commit = reference.peel_to_commit().map_err(|_| no_branch())?;
    let id = commit.id.to_string();
    let read_err = |e: &dyn std::error::Error| GitError::Read {
        commit: id.clone(),
        message: chain(e),
    };
    let mut tree = commit.tree().map_err(|e| read_err(&e))?;
    let dir = if source.path.is_empty() {
        tree
    } else {
        let entry = tree
            .peel_to_entry_by_path(&source.path)
            .map_err(|e| read_err(&e))?
            .filter(|e| e.mode().is_tree())
            .ok_or_else(|| GitError::NoDirectory {
                commit: id.clone(),
                path: source.path.clone(),
            })?;
        entry
            .object()
            .map_err(|e| read_err(&e))?
            .peel_to_tree()
            .map_err(|e| read_err(&e))?
    };
    let mut entries = dir
        .traverse()
        .breadthfirst
        .files()
        .map_err(|e| read_err(&e))?;
    entries.retain(|e| e.mode.is_blob() && is_spec_file(&e.filepath.to_string()));
    entries.sort_by(|a, b| a.filepath.cmp(&b.filepath));
    if entries.len() > MAX_FILES {
        return Err(GitError::TooManyFiles {
            commit: id,
            path: source.path.clone(),
        });
    }
    let mut files = Vec::with_capacity(entries.len());
    for e in entries {
        let name = if source.path.is_empty() {
            e.filepath.to_string()
        } else {
            format!("{}/{}", source.path, e.filepath)
        };
        // The size first: a blob larger than a spec may be is not read.
        let size = repo
            .find_header(e.oid)
            .map_err(|err| read_err(&err))?
            .size();
        let contents = if size > MAX_SPEC_BYTES as u64 {
            Ok(vec![0; MAX_SPEC_BYTES + 1])
        } else {
            repo.find_object(e.oid)
                .map(|o| o.detach().data)
                .map_err(|err| format!("cannot read: {err}"))
        };
        files.push(SpecFile { name, contents });
    }
    Ok(Checkout { commit: id, files })
}

/// An error and its causes, outermost first (a TLS handshake that failed
/// says why: an unknown issuer, an expired certificate).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Fetches `source`'s branch into the cache's bare repository.
fn fetch(source: &SyncSource, cache: &Path) -> Result<gix::Repository, GitError> {
    let err = |e: &dyn std::error::Error| GitError::Fetch {
        repo: source.repo.clone(),
        message: chain(e),
    };
    let repo = if cache.join("HEAD").exists() {
        gix::open(cache).map_err(|e| err(&e))?
    } else {
        std::fs::create_dir_all(cache).map_err(|e| err(&e))?;
        gix::init_bare(cache).map_err(|e| err(&e))?
    };
    let spec = format!("+refs/heads/{b}:refs/remotes/origin/{b}", b = source.branch);
    let remote = repo
        .remote_at(source.repo.as_str())
        .map_err(|e| err(&e))?
        .with_refspecs(Some(spec.as_str()), gix::remote::Direction::Fetch)
        .map_err(|e| err(&e))?;
    let stop = AtomicBool::new(false);
    remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| err(&e))?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| err(&e))?
        .receive(gix::progress::Discard, &stop)
        .map_err(|e| err(&e))?;
    Ok(repo)
}
