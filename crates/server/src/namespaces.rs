//! Namespaces as the `Access` service serves them: an admin describes and
//! deletes them; anyone who may read lists them with what their jobs
//! hold. Admission of jobs against them is the state machine's
//! (`skiff_store::state::namespaces`).

use skiff_model::namespace::Namespace;
use skiff_model::DEFAULT_NAMESPACE;
use skiff_proto::pb;
use skiff_store::{Command, Outcome};
use tonic::{Request, Response, Status};

use crate::api::{invalid, not_done};
use crate::auth::{caller, Action};
use crate::ctx::Ctx;

pub(crate) async fn apply(
    ctx: &Ctx,
    req: Request<pb::ApplyNamespaceRequest>,
) -> Result<Response<pb::ApplyNamespaceResponse>, Status> {
    let name = req
        .get_ref()
        .namespace
        .as_ref()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    crate::audit::name_object(format!("namespace/{}", skiff_model::error::clipped(&name)));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "describe namespaces")?;
    let wire = req
        .into_inner()
        .namespace
        .ok_or_else(|| invalid("namespace", "is required"))?;
    let namespace = Namespace::from(wire);
    namespace
        .validate()
        .map_err(|e| crate::api::invalid_spec(&e))?;
    let applied = ctx.commit(&Command::PutNamespace { namespace }).await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(namespace = %name, "namespace described");
            Ok(Response::new(pb::ApplyNamespaceResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn list(
    ctx: &Ctx,
    req: Request<pb::ListNamespacesRequest>,
) -> Result<Response<pb::ListNamespacesResponse>, Status> {
    caller(&req, &ctx.tls)?.require(ctx, Action::Read, "list namespaces")?;
    ctx.read_barrier(false).await?;
    let state = ctx.store.state();
    let mut all: Vec<Namespace> = state.access.namespaces.values().cloned().collect();
    if !state.access.namespaces.contains_key(DEFAULT_NAMESPACE) {
        all.push(Namespace {
            name: DEFAULT_NAMESPACE.to_string(),
            ..Namespace::default()
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let namespaces = all
        .iter()
        .map(|ns| {
            let mut used = pb::NamespaceUsage::from(&state.namespace_usage(&ns.name, ""));
            used.jobs = state.jobs_in(&ns.name).count() as u32;
            pb::NamespaceInfo {
                namespace: Some(ns.into()),
                used: Some(used),
            }
        })
        .collect();
    Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
}

pub(crate) async fn delete(
    ctx: &Ctx,
    req: Request<pb::DeleteNamespaceRequest>,
) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
    let name = req.get_ref().name.clone();
    crate::audit::name_object(format!("namespace/{}", skiff_model::error::clipped(&name)));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "delete namespaces")?;
    skiff_model::check_dns_label(&name)
        .map_err(|rule| invalid("name", format!("{name:?} {rule}")))?;
    if name == DEFAULT_NAMESPACE {
        return Err(Status::failed_precondition(
            "the default namespace cannot be deleted (apply it again to clear its policy and quota)",
        ));
    }
    let applied = ctx
        .commit(&Command::DeleteNamespace { name: name.clone() })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(namespace = %name, "namespace deleted");
            Ok(Response::new(pb::DeleteNamespaceResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}
