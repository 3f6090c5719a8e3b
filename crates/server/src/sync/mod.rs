//! The leader's sync controller (`skiff sync`): each sync's namespace
//! follows the directory of specs at the head of a git branch.
//!
//! Every sync is looked at once per its interval (and at once when it is
//! described or changed). A look reads the branch's head with gix
//! (`git.rs`, on a blocking thread), reads every spec file the way
//! `skiff apply -f DIR` does, and checks every spec (the model's rules,
//! the sync's namespace, the image path and the state machine's own
//! admission check) before it writes anything: a commit with one broken
//! spec is refused whole, the error is reported, and the namespace keeps
//! running the last good commit. Then each job whose stored spec differs
//! from the commit's is applied (the same path as `ApplyJob`), and, with
//! a prune selector, the namespace's jobs it matches that the commit no
//! longer describes are deleted. A job that differs while the commit is
//! the one already applied was changed (or deleted) outside git: that is
//! drift, set back and reported. What happened is replicated
//! (`Command::ReportSync`) only when it changed, so a new leader carries
//! on from the last applied commit; every write the controller makes is
//! in the audit log as `sync/NAME`.

pub mod git;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_client::specs::{self, Namespacing};
use skiff_model::labels::Selector;
use skiff_model::sync::{SyncRecord, SyncSource, SyncStatus, MAX_LISTED};
use skiff_model::JobSpec;
use skiff_proto::pb;
use skiff_store::Command;

use crate::ctx::{now_ms, Ctx};

/// The longest one look may wait for its repository (a remote that
/// stopped answering); the others' looks go on after it.
const READ_LIMIT: Duration = Duration::from_secs(120);

/// How often the controller wakes to see which syncs are due.
const TICK: Duration = Duration::from_millis(500);

/// Runs forever; syncs while this server leads. Remote repositories are
/// fetched under `data_dir/sync/`.
pub async fn run(ctx: Ctx, data_dir: PathBuf) {
    // When each sync was last looked at, with the source it had then.
    let mut looked: BTreeMap<String, (Instant, SyncSource)> = BTreeMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if !ctx.store.is_leader() {
            looked.clear();
            continue;
        }
        let syncs: Vec<SyncRecord> = ctx.store.state().access.syncs.values().cloned().collect();
        looked.retain(|name, _| syncs.iter().any(|r| &r.source.name == name));
        for rec in syncs {
            let due = match looked.get(&rec.source.name) {
                Some((at, source)) => {
                    *source != rec.source
                        || at.elapsed() >= Duration::from_secs(rec.source.interval_secs.into())
                }
                None => true,
            };
            if !due {
                continue;
            }
            looked.insert(
                rec.source.name.clone(),
                (Instant::now(), rec.source.clone()),
            );
            let cache = cache_of(&data_dir, &rec.source.name);
            let status = look(&ctx, &rec, cache).await;
            if status != rec.status {
                let cmd = Command::ReportSync {
                    name: rec.source.name.clone(),
                    status,
                };
                if let Err(e) = ctx.propose(&cmd).await {
                    tracing::warn!(sync = %rec.source.name, error = %e.message(), "recording a sync's status failed; next look");
                }
            }
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// One look at a sync: what its status becomes.
async fn look(ctx: &Ctx, rec: &SyncRecord, cache: PathBuf) -> SyncStatus {
    let mut status = rec.status.clone();
    let source = rec.source.clone();
    let name = source.name.clone();
    let read = tokio::time::timeout(
        READ_LIMIT,
        tokio::task::spawn_blocking(move || git::read(&source, &cache)),
    )
    .await;
    let checkout = match read {
        Ok(Ok(Ok(c))) => c,
        Ok(Ok(Err(e))) => {
            let error = format!("{e} ({})", kept(&status.commit));
            if status.error != error {
                tracing::warn!(sync = %name, error = %e, "cannot read the sync's branch");
            }
            status.error = error;
            return status;
        }
        Ok(Err(e)) => {
            status.error = format!("reading the repository failed: {e}");
            return status;
        }
        Err(_) => {
            // The read goes on on its thread; the other syncs do not wait.
            status.error = format!(
                "reading the repository took longer than {}s ({})",
                READ_LIMIT.as_secs(),
                kept(&status.commit)
            );
            return status;
        }
    };
    status.head = checkout.commit.clone();
    let specs = match checked(ctx, &rec.source, &checkout) {
        Ok(s) => s,
        Err(e) => {
            let error = format!(
                "commit {} refused, {}: {e}",
                short(&checkout.commit),
                kept(&status.commit)
            );
            if status.error != error {
                tracing::warn!(sync = %name, commit = %short(&checkout.commit), "the sync's head is refused; the last good commit keeps running");
            }
            status.error = error;
            return status;
        }
    };
    let first_look = status.commit != checkout.commit;
    let mut drift = Vec::new();
    let mut failed = Vec::new();
    for spec in &specs {
        let change = {
            let state = ctx.store.state();
            crate::api::plan::diff(&state, &mut spec.clone())
        };
        let what = match change {
            Some(fields) if fields.is_empty() => continue,
            Some(fields) => format!("{} changed", fields.join(", ")),
            None => "deleted".to_string(),
        };
        if !first_look {
            drift.push(format!("{}: {what}", spec.key()));
        }
        let req = pb::ApplyJobRequest {
            spec: Some(spec.into()),
        };
        let outcome = crate::api::jobs::apply(ctx, req).await;
        audit(ctx, &name, "ApplyJob", &spec.key(), outcome.as_ref().err());
        match outcome {
            Ok(r) => {
                let version = r.job.map_or(0, |j| j.version);
                tracing::info!(sync = %name, job = %spec.key(), version, commit = %short(&checkout.commit), "applied from git");
            }
            Err(e) => failed.push(format!("job {} not applied: {}", spec.key(), e.message())),
        }
    }
    if !failed.is_empty() {
        status.error = format!(
            "commit {} partly applied, nothing pruned: {}",
            short(&checkout.commit),
            failed.join("; ")
        );
        return status;
    }
    let pruned = prune(ctx, &rec.source, &specs).await;
    match pruned {
        Ok(p) if !p.is_empty() => status.pruned = p,
        Ok(_) => {}
        Err(e) => {
            status.error = format!("commit {}: {e}", short(&checkout.commit));
            return status;
        }
    }
    if first_look {
        status.applied_at_ms = now_ms();
        tracing::info!(sync = %name, commit = %short(&checkout.commit), jobs = specs.len(), "commit applied");
    }
    if !drift.is_empty() {
        tracing::warn!(sync = %name, ?drift, "jobs changed outside git were set back");
        drift.truncate(MAX_LISTED);
        status.drift = drift;
        status.drift_at_ms = now_ms();
    }
    status.commit = checkout.commit;
    status.error.clear();
    status.jobs = specs.iter().map(JobSpec::key).take(MAX_LISTED).collect();
    status
}

/// What keeps running while the head is not applied.
fn kept(commit: &str) -> String {
    if commit.is_empty() {
        "nothing applied yet".into()
    } else {
        format!("commit {} keeps running", short(commit))
    }
}

/// Every spec of the checkout, each checked as an apply would be; all or
/// nothing.
fn checked(
    ctx: &Ctx,
    source: &SyncSource,
    checkout: &git::Checkout,
) -> Result<Vec<JobSpec>, specs::SpecsError> {
    let said_by = format!("sync {} writes to", source.name);
    let ns = Namespacing {
        namespace: Some(&source.namespace),
        said_by: &said_by,
    };
    let state = ctx.store.state();
    let check = |spec: &mut JobSpec| {
        if spec.task.image.is_relative() {
            return Err(format!(
                "task.image: {} must name an absolute layout path (a sync has no directory to resolve a relative one against)",
                spec.task.image
            ));
        }
        crate::api::jobs::check_image_path(&state, spec).map_err(|s| s.message().to_string())?;
        match state.refusal_of(spec) {
            Some(r) => Err(format!("would be refused: {r}")),
            None => Ok(()),
        }
    };
    let whole = if source.path.is_empty() {
        format!("{} (branch {})", source.repo, source.branch)
    } else {
        format!("{}/{} (branch {})", source.repo, source.path, source.branch)
    };
    specs::parse(&checkout.files, &whole, ns, &check)
}

/// Deletes the namespace's jobs the selector matches that `specs` does
/// not describe; the keys deleted.
async fn prune(ctx: &Ctx, source: &SyncSource, specs: &[JobSpec]) -> Result<Vec<String>, String> {
    let Some(selector) = &source.prune else {
        return Ok(Vec::new());
    };
    let selector = Selector::parse(selector).map_err(|e| format!("prune: {e}"))?;
    let keep: BTreeSet<String> = specs.iter().map(JobSpec::key).collect();
    let gone: Vec<(String, String)> = ctx
        .store
        .state()
        .jobs
        .values()
        .filter(|j| {
            j.spec.namespace == source.namespace
                && selector.matches(&j.spec.labels)
                && !keep.contains(&j.key())
        })
        .map(|j| (j.key(), j.spec.name.clone()))
        .collect();
    let mut pruned = Vec::new();
    for (key, job) in gone {
        let req = pb::DeleteJobRequest {
            namespace: source.namespace.clone(),
            name: job,
        };
        let outcome = crate::api::jobs::delete(ctx, req).await;
        audit(ctx, &source.name, "DeleteJob", &key, outcome.as_ref().err());
        match outcome {
            Ok(_) => {
                tracing::info!(sync = %source.name, job = %key, "pruned: no longer in git");
                pruned.push(key);
            }
            Err(e) => return Err(format!("job {key} not pruned: {}", e.message())),
        }
    }
    Ok(pruned)
}

/// The controller's write in this server's audit log, as `sync/NAME`.
fn audit(ctx: &Ctx, sync: &str, method: &str, job: &str, error: Option<&tonic::Status>) {
    ctx.audit.append(&crate::audit::Record {
        time_ms: now_ms(),
        server: ctx.audit.server(),
        identity: format!("sync/{sync}"),
        peer: "controller".into(),
        method: format!("Sync/{method}"),
        object: format!("job/{job}"),
        outcome: error.map_or("OK".into(), |s| crate::audit::code_name(s.code())),
    });
}

/// Where a sync's remote is fetched to.
pub fn cache_of(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("sync").join(format!("{name}.git"))
}
