//! The `Access` service: joining with a token, renewing a certificate,
//! managing join tokens. The secret of a token is compared here and never
//! proposed; the state machine checks the token again when the join is
//! applied, and only then is a certificate signed.

use skiff_pki::{Ca, CertKey, Identity, JoinToken};
use skiff_proto::pb;
use skiff_store::command::{
    CaRecord, Command, JoinRole, Joiner, TokenRecord, UserRecord, UserRole,
};
use skiff_store::Outcome;
use tonic::{Request, Response, Status};

use crate::api::not_done;
use crate::auth::{caller, Action, Caller};
use crate::ctx::{now_ms, Ctx};

/// Longest a join token may live.
const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// A token's life when the request does not say.
const DEFAULT_TTL_SECONDS: u64 = 24 * 3600;

pub struct AccessService {
    ctx: Ctx,
}

impl AccessService {
    pub fn new(ctx: Ctx) -> Self {
        AccessService { ctx }
    }

    /// The cluster CA, from the replicated state.
    fn ca(&self) -> Result<Ca, Status> {
        let state = self.ctx.store.state();
        let rec: &CaRecord = state.access.ca.as_ref().ok_or_else(|| {
            Status::unavailable(
                "the cluster CA is not recorded yet (the cluster is starting); retry",
            )
        })?;
        Ok(Ca(CertKey {
            cert_pem: rec.cert_pem.clone(),
            key_pem: rec.key_pem.clone(),
        }))
    }

    fn sign(&self, csr: &str, who: &Identity) -> Result<String, Status> {
        self.ca()?
            .sign_request(csr, who, self.ctx.leaf_lifetime)
            .map_err(|e| crate::api::invalid("csr_pem", e.to_string()))
    }
}

fn role_from_wire(v: i32) -> Result<JoinRole, Status> {
    match pb::JoinRole::try_from(v) {
        Ok(pb::JoinRole::Node) => Ok(JoinRole::Node),
        Ok(pb::JoinRole::Server) => Ok(JoinRole::Server),
        _ => Err(crate::api::invalid(
            "role",
            format!("{v} is not a join role; expected JOIN_ROLE_NODE or JOIN_ROLE_SERVER"),
        )),
    }
}

fn role_to_wire(r: JoinRole) -> pb::JoinRole {
    match r {
        JoinRole::Node => pb::JoinRole::Node,
        JoinRole::Server => pb::JoinRole::Server,
    }
}

#[tonic::async_trait]
impl pb::access_server::Access for AccessService {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        if !self.ctx.tls.is_on() {
            return Err(Status::failed_precondition(
                "this cluster runs with --insecure: there are no credentials to join with",
            ));
        }
        let r = req.into_inner();
        let role = role_from_wire(r.role)?;
        let (joiner, identity) = match role {
            JoinRole::Node => {
                skiff_model::registration::check_node_name(&r.node)
                    .map_err(|e| crate::api::invalid("node", e.message))?;
                (
                    Joiner::Node {
                        name: r.node.clone(),
                    },
                    Identity::Node(r.node.clone()),
                )
            }
            JoinRole::Server => {
                if r.server_id == 0 {
                    return Err(crate::api::invalid("server_id", "must be more than 0"));
                }
                (
                    Joiner::Server { id: r.server_id },
                    Identity::Server(r.server_id),
                )
            }
        };
        // Checked here first, so a wrong secret costs no Raft write.
        let hash = skiff_pki::token::hash_secret(&r.token_secret);
        let known = self
            .ctx
            .store
            .state()
            .access
            .tokens
            .get(&r.token_id)
            .is_some_and(|t| t.secret_hash == hash);
        if !known {
            tracing::info!(token = %r.token_id, "join refused: unknown token");
            return Err(Status::unauthenticated("join refused: unknown token"));
        }
        let applied = self
            .ctx
            .commit(&Command::Join {
                token_id: r.token_id.clone(),
                secret_hash: hash,
                joiner,
                at_ms: now_ms(),
            })
            .await?;
        match applied.outcome {
            Outcome::AccessChanged => {}
            Outcome::Refused(why) if why.is_unauthenticated() => {
                return Err(Status::unauthenticated(why.to_string()))
            }
            other => return Err(not_done(other)),
        }
        let cert_pem = self.sign(&r.csr_pem, &identity)?;
        tracing::info!(token = %r.token_id, who = %identity, "joined");
        let servers = self
            .ctx
            .store
            .state()
            .servers
            .values()
            .map(|s| pb::Member {
                id: s.id,
                api_addr: s.api_addr.clone(),
                peer_addr: s.peer_addr.clone(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: self.ca()?.cert_pem().to_string(),
            servers,
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let who = caller(&req, &self.ctx.tls)?;
        let identity = match &who {
            Caller::Trusted => {
                return Err(Status::failed_precondition(
                    "this cluster runs with --insecure: there is nothing to renew",
                ))
            }
            Caller::Node(n) => {
                who.require_node(&self.ctx, n, "renew its certificate")?;
                Identity::Node(n.clone())
            }
            Caller::Server(id) => {
                who.require_server(&self.ctx, "renew its certificate")?;
                Identity::Server(*id)
            }
            Caller::User(u) => {
                who.require(&self.ctx, Action::Read, "renew its certificate")?;
                Identity::User(u.clone())
            }
            Caller::Token { .. } => {
                return Err(Status::permission_denied(
                    "a bearer token cannot get a certificate; ask an admin for one (`skiff user create`)",
                ))
            }
        };
        let cert_pem = self.sign(&req.into_inner().csr_pem, &identity)?;
        tracing::info!(who = %identity, "certificate renewed");
        Ok(Response::new(pb::RenewCertificateResponse { cert_pem }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "create join tokens")?;
        let r = req.into_inner();
        let role = role_from_wire(r.role)?;
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TTL_SECONDS,
            s if s <= MAX_TTL_SECONDS => s,
            s => {
                return Err(crate::api::invalid(
                    "ttl_seconds",
                    format!("{s} is longer than a year"),
                ))
            }
        };
        if r.description.len() > 256 {
            return Err(crate::api::invalid(
                "description",
                "must be at most 256 characters",
            ));
        }
        // This server's own copy of the CA: the same as the replicated one,
        // and there before the founding server recorded it.
        let pin = match &self.ctx.tls {
            crate::tls::Tls::On(c) => skiff_pki::ca::pin_of(&c.current().ca_pem),
            crate::tls::Tls::Off => {
                return Err(Status::failed_precondition(
                    "this cluster runs with --insecure: there is nothing to join with",
                ))
            }
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        let token = JoinToken::generate(&pin);
        let expires_ms = now_ms() + ttl * 1000;
        let applied = self
            .ctx
            .commit(&Command::CreateToken {
                token: TokenRecord {
                    id: token.id.clone(),
                    role,
                    secret_hash: skiff_pki::token::hash_secret(&token.secret),
                    expires_ms,
                    revoked: false,
                    description: r.description,
                    uses: 0,
                    create_index: 0,
                },
            })
            .await?;
        match applied.outcome {
            Outcome::AccessChanged => {
                tracing::info!(token = %token.id, role = role.as_str(), "join token created");
                Ok(Response::new(pb::CreateTokenResponse {
                    token: token.reveal(),
                    id: token.id,
                    expires_ms,
                    index: applied.index,
                }))
            }
            other => Err(not_done(other)),
        }
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "list join tokens")?;
        self.ctx.read_barrier(false).await?;
        let state = self.ctx.store.state();
        let tokens = state
            .access
            .tokens
            .values()
            .map(|t| pb::TokenInfo {
                id: t.id.clone(),
                role: role_to_wire(t.role) as i32,
                expires_ms: t.expires_ms,
                revoked: t.revoked,
                description: t.description.clone(),
                uses: t.uses,
                create_index: t.create_index,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "revoke join tokens")?;
        let r = req.into_inner();
        let applied = self
            .ctx
            .commit(&Command::RevokeToken { id: r.id.clone() })
            .await?;
        match applied.outcome {
            Outcome::AccessChanged => {
                tracing::info!(token = %r.id, "join token revoked");
                Ok(Response::new(pb::RevokeTokenResponse {
                    index: applied.index,
                }))
            }
            other => Err(not_done(other)),
        }
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::RunNodes, "remove nodes")?;
        let r = req.into_inner();
        let applied = self
            .ctx
            .commit(&Command::RemoveNode {
                name: r.name.clone(),
            })
            .await?;
        match applied.outcome {
            Outcome::NodeRemoved => {
                tracing::info!(node = %r.name, "node removed");
                Ok(Response::new(pb::RemoveNodeResponse {
                    index: applied.index,
                }))
            }
            other => Err(not_done(other)),
        }
    }

    async fn create_user_token(
        &self,
        req: Request<pb::CreateUserTokenRequest>,
    ) -> Result<Response<pb::CreateUserTokenResponse>, Status> {
        crate::user_tokens::create(&self.ctx, req).await
    }

    async fn revoke_user_token(
        &self,
        req: Request<pb::RevokeUserTokenRequest>,
    ) -> Result<Response<pb::RevokeUserTokenResponse>, Status> {
        crate::user_tokens::revoke(&self.ctx, req).await
    }

    async fn apply_namespace(
        &self,
        req: Request<pb::ApplyNamespaceRequest>,
    ) -> Result<Response<pb::ApplyNamespaceResponse>, Status> {
        crate::namespaces::apply(&self.ctx, req).await
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        crate::namespaces::list(&self.ctx, req).await
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        crate::namespaces::delete(&self.ctx, req).await
    }

    async fn apply_queue(
        &self,
        req: Request<pb::ApplyQueueRequest>,
    ) -> Result<Response<pb::ApplyQueueResponse>, Status> {
        crate::queues::apply(&self.ctx, req).await
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        crate::queues::list(&self.ctx, req).await
    }

    async fn describe_queue(
        &self,
        req: Request<pb::DescribeQueueRequest>,
    ) -> Result<Response<pb::DescribeQueueResponse>, Status> {
        crate::queues::describe(&self.ctx, req).await
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        crate::queues::delete(&self.ctx, req).await
    }

    async fn apply_sync(
        &self,
        req: Request<pb::ApplySyncRequest>,
    ) -> Result<Response<pb::ApplySyncResponse>, Status> {
        crate::syncs::apply(&self.ctx, req).await
    }

    async fn list_syncs(
        &self,
        req: Request<pb::ListSyncsRequest>,
    ) -> Result<Response<pb::ListSyncsResponse>, Status> {
        crate::syncs::list(&self.ctx, req).await
    }

    async fn delete_sync(
        &self,
        req: Request<pb::DeleteSyncRequest>,
    ) -> Result<Response<pb::DeleteSyncResponse>, Status> {
        crate::syncs::delete(&self.ctx, req).await
    }

    async fn set_registry_login(
        &self,
        req: Request<pb::SetRegistryLoginRequest>,
    ) -> Result<Response<pb::SetRegistryLoginResponse>, Status> {
        crate::registry_logins::set(&self.ctx, req).await
    }

    async fn list_registry_logins(
        &self,
        req: Request<pb::ListRegistryLoginsRequest>,
    ) -> Result<Response<pb::ListRegistryLoginsResponse>, Status> {
        crate::registry_logins::list(&self.ctx, req).await
    }

    async fn delete_registry_login(
        &self,
        req: Request<pb::DeleteRegistryLoginRequest>,
    ) -> Result<Response<pb::DeleteRegistryLoginResponse>, Status> {
        crate::registry_logins::delete(&self.ctx, req).await
    }

    async fn read_audit(
        &self,
        req: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<pb::ReadAuditResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "read the audit log")?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1_000,
            n if n > 10_000 => {
                return Err(crate::api::invalid("limit", "must be at most 10000"));
            }
            n => n as usize,
        };
        let log = self.ctx.audit.clone();
        let (records, truncated) = tokio::task::spawn_blocking(move || log.read(r.since_ms, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReadAuditResponse {
            records: records
                .into_iter()
                .map(|r| pb::AuditRecord {
                    time_ms: r.time_ms,
                    server: r.server,
                    identity: r.identity,
                    peer: r.peer,
                    method: r.method,
                    object: r.object,
                    outcome: r.outcome,
                })
                .collect(),
            truncated,
        }))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        crate::audit::name_object(format!(
            "user/{}",
            skiff_model::error::clipped(&req.get_ref().name)
        ));
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "create users")?;
        if !self.ctx.tls.is_on() {
            return Err(Status::failed_precondition(
                "this cluster runs with --insecure: users need certificates, and there are none",
            ));
        }
        let r = req.into_inner();
        skiff_model::registration::check_node_name(&r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let role = user_role_of_wire(r.role)?;
        let namespaces = user_namespaces(role, r.namespaces)?;
        // The request is checked before anything is written.
        let ca = self.ca()?;
        let identity = Identity::User(r.name.clone());
        let cert_pem = self.sign(&r.csr_pem, &identity)?;
        let applied = self
            .ctx
            .commit(&Command::CreateUser {
                user: UserRecord {
                    namespaces,
                    name: r.name.clone(),
                    role,
                    revoked: false,
                    create_index: 0,
                },
            })
            .await?;
        match applied.outcome {
            Outcome::AccessChanged => {
                tracing::info!(user = %r.name, role = role.as_str(), "user created");
                Ok(Response::new(pb::CreateUserResponse {
                    cert_pem,
                    ca_pem: ca.cert_pem().to_string(),
                    index: applied.index,
                }))
            }
            other => Err(not_done(other)),
        }
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "list users")?;
        let users = self
            .ctx
            .store
            .state()
            .access
            .users
            .values()
            .map(|u| pb::UserInfo {
                name: u.name.clone(),
                role: user_role_wire(u.role) as i32,
                revoked: u.revoked,
                create_index: u.create_index,
                namespaces: u.namespaces.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn revoke_user(
        &self,
        req: Request<pb::RevokeUserRequest>,
    ) -> Result<Response<pb::RevokeUserResponse>, Status> {
        crate::audit::name_object(format!(
            "user/{}",
            skiff_model::error::clipped(&req.get_ref().name)
        ));
        caller(&req, &self.ctx.tls)?.require(&self.ctx, Action::Admin, "revoke users")?;
        let r = req.into_inner();
        let applied = self
            .ctx
            .commit(&Command::RevokeUser {
                name: r.name.clone(),
            })
            .await?;
        match applied.outcome {
            Outcome::AccessChanged => {
                tracing::info!(user = %r.name, "user revoked");
                Ok(Response::new(pb::RevokeUserResponse {
                    index: applied.index,
                }))
            }
            other => Err(not_done(other)),
        }
    }
}

fn user_role_of_wire(v: i32) -> Result<UserRole, Status> {
    match pb::UserRole::try_from(v) {
        Ok(pb::UserRole::Admin) => Ok(UserRole::Admin),
        Ok(pb::UserRole::Operator) => Ok(UserRole::Operator),
        Ok(pb::UserRole::Developer) => Ok(UserRole::Developer),
        Ok(pb::UserRole::Viewer) => Ok(UserRole::Viewer),
        Ok(pb::UserRole::Metrics) => Ok(UserRole::Metrics),
        _ => Err(crate::api::invalid(
            "role",
            "must be one of admin, operator, developer, viewer, metrics",
        )),
    }
}

fn user_role_wire(r: UserRole) -> pb::UserRole {
    match r {
        UserRole::Admin => pb::UserRole::Admin,
        UserRole::Operator => pb::UserRole::Operator,
        UserRole::Developer => pb::UserRole::Developer,
        UserRole::Viewer => pb::UserRole::Viewer,
        UserRole::Metrics => pb::UserRole::Metrics,
    }
}

/// The namespaces a new user is granted: admins and operators act in all
/// (a grant would mean nothing); a developer without any gets `default`.
fn user_namespaces(role: UserRole, mut granted: Vec<String>) -> Result<Vec<String>, Status> {
    for (i, ns) in granted.iter().enumerate() {
        skiff_model::check_dns_label(ns).map_err(|rule| {
            crate::api::invalid(&format!("namespaces[{i}]"), format!("{ns:?} {rule}"))
        })?;
    }
    match role {
        UserRole::Metrics if !granted.is_empty() => Err(crate::api::invalid(
            "namespaces",
            "a metrics user reads only /metrics; grants are for developers and viewers",
        )),
        UserRole::Admin | UserRole::Operator if !granted.is_empty() => Err(crate::api::invalid(
            "namespaces",
            format!(
                "a{} {} acts in every namespace; grants are for developers and viewers",
                if role == UserRole::Admin { "n" } else { "" },
                role.as_str()
            ),
        )),
        UserRole::Developer if granted.is_empty() => {
            Ok(vec![skiff_model::DEFAULT_NAMESPACE.to_string()])
        }
        _ => {
            granted.sort();
            granted.dedup();
            Ok(granted)
        }
    }
}
