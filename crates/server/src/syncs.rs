//! Syncs from git as the `Access` service serves them: a user who may
//! write jobs in a namespace describes and deletes the syncs that write
//! there; anyone who may read lists them with what the leader's
//! controller last did (`sync/`).

use skiff_model::sync::SyncSource;
use skiff_proto::pb;
use skiff_store::{Command, Outcome};
use tonic::{Request, Response, Status};

use crate::api::{invalid, not_done};
use crate::auth::{caller, Action};
use crate::ctx::Ctx;

pub(crate) async fn apply(
    ctx: &Ctx,
    req: Request<pb::ApplySyncRequest>,
) -> Result<Response<pb::ApplySyncResponse>, Status> {
    let wire = req
        .get_ref()
        .source
        .clone()
        .ok_or_else(|| invalid("source", "is required"))?;
    let source = SyncSource::from(wire);
    crate::audit::name_object(format!(
        "sync/{}",
        skiff_model::error::clipped(&source.name)
    ));
    caller(&req, &ctx.tls)?.require_in(
        ctx,
        Action::WriteJobs,
        &source.namespace,
        "describe syncs",
    )?;
    source
        .validate()
        .map_err(|e| crate::api::invalid_spec(&e))?;
    // A sync moved to another namespace needs the right to write there
    // too: the old one is checked as well.
    if let Some(old) = ctx.store.state().access.syncs.get(&source.name) {
        if old.source.namespace != source.namespace {
            caller(&req, &ctx.tls)?.require_in(
                ctx,
                Action::WriteJobs,
                &old.source.namespace,
                "move syncs",
            )?;
        }
    }
    let name = source.name.clone();
    let applied = ctx.commit(&Command::PutSync { source }).await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(sync = %name, "sync described");
            Ok(Response::new(pb::ApplySyncResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn list(
    ctx: &Ctx,
    req: Request<pb::ListSyncsRequest>,
) -> Result<Response<pb::ListSyncsResponse>, Status> {
    caller(&req, &ctx.tls)?.require(ctx, Action::Read, "list syncs")?;
    ctx.read_barrier(false).await?;
    let syncs = ctx
        .store
        .state()
        .access
        .syncs
        .values()
        .map(pb::Sync::from)
        .collect();
    Ok(Response::new(pb::ListSyncsResponse { syncs }))
}

pub(crate) async fn delete(
    ctx: &Ctx,
    req: Request<pb::DeleteSyncRequest>,
) -> Result<Response<pb::DeleteSyncResponse>, Status> {
    let name = req.get_ref().name.clone();
    crate::audit::name_object(format!("sync/{}", skiff_model::error::clipped(&name)));
    skiff_model::check_dns_label(&name)
        .map_err(|rule| invalid("name", format!("{name:?} {rule}")))?;
    let namespace = ctx
        .store
        .state()
        .access
        .syncs
        .get(&name)
        .map(|r| r.source.namespace.clone())
        .ok_or_else(|| {
            Status::not_found(format!(
                "sync {name:?} not found: `skiff sync status` lists them"
            ))
        })?;
    caller(&req, &ctx.tls)?.require_in(ctx, Action::WriteJobs, &namespace, "delete syncs")?;
    let applied = ctx
        .commit(&Command::DeleteSync { name: name.clone() })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(sync = %name, "sync deleted; its jobs stay");
            Ok(Response::new(pb::DeleteSyncResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}
