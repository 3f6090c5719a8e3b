//! Who is calling, and whether they may. The caller is the identity its
//! client certificate names (one URI SAN, read with `skiff_pki`), checked
//! against the replicated state on every call, not only at the handshake:
//! a removed node's certificate stops working at once.
//!
//! The rules: the client API serves users (today the one admin user the
//! first server makes) and, for the calls servers make of each other, other
//! servers; the node API serves each node for itself only (Kubernetes'
//! NodeRestriction); the peer port serves current members only.

use skiff_store::command::UserRole;
use tonic::{Request, Status};

use crate::audit::PeerIdentity;
use crate::ctx::Ctx;
use crate::tls::Tls;

/// The user `admin.conf` holds: allowed everything, never revoked.
pub const ADMIN: &str = skiff_store::state::ADMIN_USER;

/// What a call of the client API does, for the role table
/// (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Jobs, allocations, nodes, rollouts, the watch, servers.
    Read,
    Logs,
    Exec,
    /// Apply, delete, scale jobs; steer and undo rollouts.
    WriteJobs,
    /// Cordon, drain, reset GPUs, remove nodes.
    RunNodes,
    /// Tokens, users, servers, the audit log.
    Admin,
}

/// Whether `role` may do `action`.
pub fn allows(role: UserRole, action: Action) -> bool {
    // A metrics user scrapes `/metrics` (outside gRPC) and calls nothing.
    role != UserRole::Metrics
        && matches!(
            (role, action),
            (UserRole::Admin, _)
                | (_, Action::Read | Action::Logs)
                | (UserRole::Operator, Action::RunNodes)
                | (UserRole::Developer, Action::WriteJobs | Action::Exec)
        )
}

/// Whether a user of `role`, granted `granted`, may act in namespace
/// `ns`: admins and operators everywhere; developers in their grants;
/// viewers in their grants, or everywhere when granted none.
pub fn grants(role: UserRole, granted: &[String], ns: &str) -> bool {
    match role {
        UserRole::Admin | UserRole::Operator => true,
        UserRole::Developer => granted.iter().any(|g| g == ns),
        UserRole::Viewer => granted.is_empty() || granted.iter().any(|g| g == ns),
        UserRole::Metrics => false,
    }
}

/// The role and namespace grants of user `name` now, if it is one (not
/// revoked).
pub fn user_grant(ctx: &Ctx, name: &str) -> Option<(UserRole, Vec<String>)> {
    if name == ADMIN {
        return Some((UserRole::Admin, Vec::new()));
    }
    let state = ctx.store.state();
    state
        .access
        .users
        .get(name)
        .filter(|u| !u.revoked)
        .map(|u| (u.role, u.namespaces.clone()))
}

/// Which namespaces a caller may see in a list or a watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    All,
    Only(Vec<String>),
}

impl Scope {
    pub fn sees(&self, ns: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(list) => list.iter().any(|n| n == ns),
        }
    }
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `--insecure`: nobody is checked.
    Trusted,
    Server(u64),
    Node(String),
    User(String),
    /// A bearer token (`skiff user token`), not yet checked against the
    /// state: its id and the hash of the secret it showed.
    Token {
        id: String,
        secret_hash: String,
    },
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(why.to_string())
}

/// The caller of `req`, from its client certificate. Without TLS every
/// caller is trusted; with it, a call without a certificate is refused
/// (the joins, which carry a token instead, do not ask).
pub fn caller<T>(req: &Request<T>, tls: &Tls) -> Result<Caller, Status> {
    if !tls.is_on() {
        return Ok(Caller::Trusted);
    }
    // Read once per call by the audit wrapper every service sits in.
    let read;
    let id = match req.extensions().get::<PeerIdentity>() {
        Some(id) => id,
        None => {
            read = PeerIdentity::of(req.extensions());
            &read
        }
    };
    match &id.0 {
        None => match bearer(req.metadata())? {
            Some(token) => Ok(Caller::Token {
                id: token.id,
                secret_hash: skiff_pki::token::hash_secret(&token.secret),
            }),
            None => Err(unauthenticated(
                "this call needs a client certificate or a bearer token: use the credentials `skiff` writes (admin.conf), `skiff user token`, or join with a token",
            )),
        },
        Some(Ok(skiff_pki::Identity::Server(id))) => Ok(Caller::Server(*id)),
        Some(Ok(skiff_pki::Identity::Node(name))) => Ok(Caller::Node(name.clone())),
        Some(Ok(skiff_pki::Identity::User(name))) => Ok(Caller::User(name.clone())),
        Some(Err(e)) => Err(unauthenticated(e)),
    }
}

/// The bearer token of a call's `authorization` header, if it has one.
fn bearer(meta: &tonic::metadata::MetadataMap) -> Result<Option<skiff_pki::BearerToken>, Status> {
    let Some(value) = meta.get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not text"))?;
    let word = text
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthenticated("the authorization header must be `Bearer TOKEN`"))?;
    skiff_pki::BearerToken::parse(word)
        .map(Some)
        .map_err(|e| unauthenticated(&e.to_string()))
}

fn denied(caller: &Caller, what: &str) -> Status {
    let who = match caller {
        Caller::Trusted => "this caller".to_string(),
        Caller::Server(id) => format!("server {id}"),
        Caller::Node(n) => format!("node {n:?}"),
        Caller::User(u) => format!("user {u:?}"),
        Caller::Token { id, .. } => format!("token {id:?}"),
    };
    Status::permission_denied(format!("{who} may not {what}"))
}

impl Caller {
    /// A bearer token becomes the user it was made for, if it is known,
    /// not revoked, not expired and its secret matches; other callers stay
    /// as they are.
    fn resolved(&self, ctx: &Ctx) -> Result<std::borrow::Cow<'_, Caller>, Status> {
        let Caller::Token { id, secret_hash } = self else {
            return Ok(std::borrow::Cow::Borrowed(self));
        };
        let state = ctx.store.state();
        let refused = || unauthenticated(&format!("token {id:?} is unknown, revoked or expired"));
        let t = state.access.user_tokens.get(id).ok_or_else(refused)?;
        if t.revoked
            || t.expires_ms <= crate::ctx::now_ms()
            || !skiff_pki::token::same_hash(&t.secret_hash, secret_hash)
        {
            return Err(refused());
        }
        Ok(std::borrow::Cow::Owned(Caller::User(t.user.clone())))
    }

    /// A user whose role allows `action` (read from the replicated state,
    /// so a revocation holds from the next call on); `--insecure` trusts
    /// every caller.
    pub fn require(&self, ctx: &Ctx, action: Action, what: &str) -> Result<(), Status> {
        self.grant_for(ctx, action, None, what).map(|_| ())
    }

    /// A user whose role allows `action` in namespace `ns`.
    pub fn require_in(
        &self,
        ctx: &Ctx,
        action: Action,
        ns: &str,
        what: &str,
    ) -> Result<(), Status> {
        self.grant_for(ctx, action, Some(ns), what).map(|_| ())
    }

    /// What the caller may read, after checking it may read at all; a
    /// request naming a namespace the caller may not read is refused.
    pub fn read_scope(&self, ctx: &Ctx, ns: &str, what: &str) -> Result<Scope, Status> {
        if !ns.is_empty() {
            self.require_in(ctx, Action::Read, ns, what)?;
            return Ok(Scope::Only(vec![ns.to_string()]));
        }
        Ok(match self.grant_for(ctx, Action::Read, None, what)? {
            Some((UserRole::Developer, granted)) => Scope::Only(granted),
            Some((UserRole::Viewer, granted)) if !granted.is_empty() => Scope::Only(granted),
            _ => Scope::All,
        })
    }

    /// The one check behind `require`, `require_in` and `read_scope`: the
    /// caller (a token resolved to its user) must be a user whose role
    /// allows `action` and, with `ns`, whose grants reach that namespace;
    /// read from the replicated state once. The user's role and grants
    /// (`None` for a trusted caller).
    fn grant_for(
        &self,
        ctx: &Ctx,
        action: Action,
        ns: Option<&str>,
        what: &str,
    ) -> Result<Option<(UserRole, Vec<String>)>, Status> {
        let who = self.resolved(ctx)?;
        let u = match who.as_ref() {
            Caller::Trusted => return Ok(None),
            Caller::User(u) => u,
            other => return Err(denied(other, what)),
        };
        let (role, granted) = user_grant(ctx, u).ok_or_else(|| {
            Status::permission_denied(format!(
                "user {u:?} is not a user of this cluster (unknown or revoked)"
            ))
        })?;
        if !allows(role, action) {
            return Err(Status::permission_denied(format!(
                "user {u:?} ({}) may not {what}",
                role.as_str()
            )));
        }
        if let Some(ns) = ns {
            if !grants(role, &granted, ns) {
                return Err(Status::permission_denied(format!(
                    "user {u:?} ({}) may not {what} in namespace {ns:?} (granted: {})",
                    role.as_str(),
                    if granted.is_empty() {
                        "none".to_string()
                    } else {
                        granted.join(", ")
                    }
                )));
            }
        }
        Ok(Some((role, granted)))
    }

    /// A user who may read, or a current member server (the calls servers
    /// make of each other's client API).
    pub fn require_read_or_server(&self, ctx: &Ctx, what: &str) -> Result<(), Status> {
        match self {
            Caller::Server(_) => self.require_server(ctx, what).map(|_| ()),
            _ => self.require(ctx, Action::Read, what),
        }
    }

    /// The agent of `node` itself, whose credential still holds the name.
    pub fn require_node(&self, ctx: &Ctx, node: &str, what: &str) -> Result<(), Status> {
        match self {
            Caller::Trusted => Ok(()),
            Caller::Node(n) if n == node => {
                if ctx.store.state().access.nodes.contains_key(n) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "node {n:?} was removed; join again with a token"
                    )))
                }
            }
            other => Err(denied(other, &format!("{what} for node {node:?}"))),
        }
    }

    /// A server that is a member now (voter or learner), or any server of
    /// the cluster while this one has just joined; its id.
    pub fn require_server(&self, ctx: &Ctx, what: &str) -> Result<u64, Status> {
        match self {
            Caller::Trusted => Ok(0),
            Caller::Server(id) => {
                let s = ctx.store.status();
                // A server that has just joined knows no configuration
                // until the leader's first snapshot arrives: it takes
                // messages from any server the cluster CA certified.
                let waiting = s.voters.is_empty() && s.learners.is_empty();
                let member = waiting || s.voters.contains(id) || s.learners.contains(id);
                let removed = ctx.store.state().access.removed_servers.contains(id);
                if member && !removed {
                    Ok(*id)
                } else {
                    Err(Status::permission_denied(format!(
                        "server {id} is not a member of this cluster"
                    )))
                }
            }
            other => Err(denied(other, what)),
        }
    }
}

/// Whether an HTTP `Authorization` header holds a live bearer token of a
/// `metrics` user (or an admin): what metrics served off loopback ask.
/// `Err` says why not, for the 401's body.
pub fn metrics_bearer(ctx: &Ctx, header: Option<&str>) -> Result<(), String> {
    let header = header.ok_or(
        "this address needs `Authorization: Bearer TOKEN` (a `skiff user token` of a user made with --role metrics)",
    )?;
    let word = header
        .strip_prefix("Bearer ")
        .ok_or("the authorization header must be `Bearer TOKEN`")?;
    let token = skiff_pki::BearerToken::parse(word).map_err(|e| e.to_string())?;
    let caller = Caller::Token {
        id: token.id,
        secret_hash: skiff_pki::token::hash_secret(&token.secret),
    };
    let user = match caller
        .resolved(ctx)
        .map_err(|s| s.message().to_string())?
        .as_ref()
    {
        Caller::User(u) => u.clone(),
        _ => return Err("not a user's token".into()),
    };
    match user_grant(ctx, &user) {
        Some((UserRole::Metrics | UserRole::Admin, _)) => Ok(()),
        Some((role, _)) => Err(format!(
            "user {user:?} ({}) may not read metrics: make one with `skiff user create NAME --role metrics`",
            role.as_str()
        )),
        None => Err(format!("user {user:?} is revoked")),
    }
}
