//! Namespaces' registry logins as the `Access` service serves them: an
//! admin sets, lists and deletes them; the password is sealed with the
//! servers' secrets key here, before it is proposed, so Raft's log, its
//! snapshots and every server's state hold it sealed only. The servers
//! open them to resolve a namespace's tags at apply and to hand them to
//! the nodes that run the namespace's allocations.

use skiff_model::registry_ref::{check_registry_host, check_registry_username};
use skiff_proto::pb;
use skiff_store::{Command, Outcome};
use tonic::{Request, Response, Status};

use crate::api::{invalid, not_done};
use crate::auth::{caller, Action};
use crate::ctx::Ctx;

/// Most bytes of a password or access token.
const MAX_PASSWORD: usize = 8 * 1024;

fn checked_namespace(ns: &str) -> Result<(), Status> {
    skiff_model::check_dns_label(ns).map_err(|rule| invalid("namespace", format!("{ns:?} {rule}")))
}

fn checked_registry(registry: &str) -> Result<String, Status> {
    check_registry_host(registry).map_err(|rule| invalid("registry", rule))
}

fn audit_name(ns: &str, registry: &str) {
    crate::audit::name_object(format!(
        "registry-login/{}/{}",
        skiff_model::error::clipped(ns),
        skiff_model::error::clipped(registry)
    ));
}

pub(crate) async fn set(
    ctx: &Ctx,
    req: Request<pb::SetRegistryLoginRequest>,
) -> Result<Response<pb::SetRegistryLoginResponse>, Status> {
    audit_name(&req.get_ref().namespace, &req.get_ref().registry);
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "set registry logins")?;
    let r = req.into_inner();
    checked_namespace(&r.namespace)?;
    let registry = checked_registry(&r.registry)?;
    check_registry_username(&r.username).map_err(|rule| invalid("username", rule))?;
    if r.password.is_empty() || r.password.len() > MAX_PASSWORD {
        return Err(invalid(
            "password",
            format!("must be 1 to {MAX_PASSWORD} bytes"),
        ));
    }
    if r.password.chars().any(char::is_control) {
        return Err(invalid(
            "password",
            "must hold no control characters (a newline read with it?)",
        ));
    }
    let key = ctx.secrets.current();
    if ctx.store.state().access.secrets_key.as_deref() != Some(key.id()) {
        return Err(Status::unavailable(
            "this server does not hold the cluster's secrets key yet (the servers are agreeing on it); try again in a moment",
        ));
    }
    let login = crate::secrets::seal_login(
        &key,
        &r.namespace,
        &registry,
        &r.username,
        &r.password,
        crate::ctx::now_ms(),
    );
    let applied = ctx
        .commit(&Command::PutRegistryLogin {
            namespace: r.namespace.clone(),
            login,
        })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(namespace = %r.namespace, %registry, username = %r.username, "registry login set");
            Ok(Response::new(pb::SetRegistryLoginResponse {
                index: applied.index,
            }))
        }
        Outcome::Refused(why) if matches!(why, skiff_store::Refusal::SecretsKeyMismatch { .. }) => {
            Err(Status::unavailable(why.to_string()))
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn list(
    ctx: &Ctx,
    req: Request<pb::ListRegistryLoginsRequest>,
) -> Result<Response<pb::ListRegistryLoginsResponse>, Status> {
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "list registry logins")?;
    let only = req.into_inner().namespace;
    if !only.is_empty() {
        checked_namespace(&only)?;
    }
    ctx.read_barrier(false).await?;
    let state = ctx.store.state();
    let logins = state
        .access
        .registry_logins
        .iter()
        .filter(|(ns, _)| only.is_empty() || **ns == only)
        .flat_map(|(ns, by_registry)| {
            by_registry.values().map(move |l| pb::RegistryLoginInfo {
                namespace: ns.clone(),
                registry: l.registry.clone(),
                username: l.username.clone(),
                set_at_ms: l.set_at_ms,
            })
        })
        .collect();
    Ok(Response::new(pb::ListRegistryLoginsResponse { logins }))
}

pub(crate) async fn delete(
    ctx: &Ctx,
    req: Request<pb::DeleteRegistryLoginRequest>,
) -> Result<Response<pb::DeleteRegistryLoginResponse>, Status> {
    audit_name(&req.get_ref().namespace, &req.get_ref().registry);
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "delete registry logins")?;
    let r = req.into_inner();
    checked_namespace(&r.namespace)?;
    let registry = checked_registry(&r.registry)?;
    let applied = ctx
        .commit(&Command::DeleteRegistryLogin {
            namespace: r.namespace.clone(),
            registry: registry.clone(),
        })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(namespace = %r.namespace, %registry, "registry login deleted");
            Ok(Response::new(pb::DeleteRegistryLoginResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}

/// The logins of `namespace` in the clear; what this server cannot open
/// is left out (and logged).
pub fn opened(
    key: &skiff_pki::secrets::SecretsKey,
    state: &skiff_store::State,
    namespace: &str,
) -> Vec<skiff_registry::Login> {
    let Some(logins) = state.access.registry_logins.get(namespace) else {
        return Vec::new();
    };
    logins
        .values()
        .filter_map(|l| crate::secrets::open_login(key, namespace, l))
        .collect()
}
