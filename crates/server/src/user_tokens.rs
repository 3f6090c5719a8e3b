//! Users' bearer tokens (`skiff user token`): made and revoked by an
//! admin; the secret is shown once and kept only as a hash. Checking a
//! token a call shows is `auth`'s.

use skiff_pki::BearerToken;
use skiff_proto::pb;
use skiff_store::command::{Command, UserTokenRecord};
use skiff_store::Outcome;
use tonic::{Request, Response, Status};

use crate::api::{invalid, not_done};
use crate::auth::{caller, Action};
use crate::ctx::{now_ms, Ctx};

/// A token's life when the request does not say: 30 days.
const DEFAULT_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Longest a token may live.
const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

pub(crate) async fn create(
    ctx: &Ctx,
    req: Request<pb::CreateUserTokenRequest>,
) -> Result<Response<pb::CreateUserTokenResponse>, Status> {
    crate::audit::name_object(format!(
        "user/{}",
        skiff_model::error::clipped(&req.get_ref().user)
    ));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "make user tokens")?;
    if !ctx.tls.is_on() {
        return Err(Status::failed_precondition(
            "this cluster runs with --insecure: tokens travel only over TLS",
        ));
    }
    let r = req.into_inner();
    skiff_model::registration::check_node_name(&r.user)
        .map_err(|e| invalid("user", e.to_string()))?;
    let ttl = match r.ttl_seconds {
        0 => DEFAULT_TTL_SECONDS,
        s if s <= MAX_TTL_SECONDS => s,
        s => return Err(invalid("ttl_seconds", format!("{s} is longer than a year"))),
    };
    let token = BearerToken::generate();
    let expires_ms = now_ms().saturating_add(ttl * 1000);
    let applied = ctx
        .commit(&Command::CreateUserToken {
            token: UserTokenRecord {
                id: token.id.clone(),
                user: r.user.clone(),
                secret_hash: skiff_pki::token::hash_secret(&token.secret),
                expires_ms,
                revoked: false,
                create_index: 0,
            },
        })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(user = %r.user, token = %token.id, "user token created");
            Ok(Response::new(pb::CreateUserTokenResponse {
                token: token.reveal(),
                id: token.id,
                expires_ms,
            }))
        }
        other => Err(not_done(other)),
    }
}

pub(crate) async fn revoke(
    ctx: &Ctx,
    req: Request<pb::RevokeUserTokenRequest>,
) -> Result<Response<pb::RevokeUserTokenResponse>, Status> {
    crate::audit::name_object(format!(
        "user-token/{}",
        skiff_model::error::clipped(&req.get_ref().id)
    ));
    caller(&req, &ctx.tls)?.require(ctx, Action::Admin, "revoke user tokens")?;
    let id = req.into_inner().id;
    if id.is_empty() || id.len() > 64 {
        return Err(invalid("id", "must be 1 to 64 characters"));
    }
    let applied = ctx
        .commit(&Command::RevokeUserToken { id: id.clone() })
        .await?;
    match applied.outcome {
        Outcome::AccessChanged => {
            tracing::info!(token = %id, "user token revoked");
            Ok(Response::new(pb::RevokeUserTokenResponse {
                index: applied.index,
            }))
        }
        other => Err(not_done(other)),
    }
}
