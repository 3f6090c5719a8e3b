//! The `Access` service: join tokens, removing nodes and the audit log
//! (admin calls).
//! Joining itself is in `join.rs`: a joiner has no credentials yet.

use skiff_proto::pb;

use crate::{Client, ClientError};

/// What a join token lets its holder become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRole {
    Node,
    Server,
}

impl JoinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Node => "node",
            JoinRole::Server => "server",
        }
    }

    pub(crate) fn wire(self) -> pb::JoinRole {
        match self {
            JoinRole::Node => pb::JoinRole::Node,
            JoinRole::Server => pb::JoinRole::Server,
        }
    }

    fn from_wire(v: i32) -> Option<JoinRole> {
        match pb::JoinRole::try_from(v) {
            Ok(pb::JoinRole::Node) => Some(JoinRole::Node),
            Ok(pb::JoinRole::Server) => Some(JoinRole::Server),
            _ => None,
        }
    }
}

impl std::str::FromStr for JoinRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(JoinRole::Node),
            "server" => Ok(JoinRole::Server),
            _ => Err(format!("{s:?} is not a role; expected node or server")),
        }
    }
}

/// What a user may do (docs/security.md has the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserRole {
    Admin,
    Operator,
    Developer,
    Viewer,
    Metrics,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Operator => "operator",
            UserRole::Developer => "developer",
            UserRole::Viewer => "viewer",
            UserRole::Metrics => "metrics",
        }
    }

    fn wire(self) -> pb::UserRole {
        match self {
            UserRole::Admin => pb::UserRole::Admin,
            UserRole::Operator => pb::UserRole::Operator,
            UserRole::Developer => pb::UserRole::Developer,
            UserRole::Viewer => pb::UserRole::Viewer,
            UserRole::Metrics => pb::UserRole::Metrics,
        }
    }

    fn from_wire(v: i32) -> Option<UserRole> {
        match pb::UserRole::try_from(v) {
            Ok(pb::UserRole::Admin) => Some(UserRole::Admin),
            Ok(pb::UserRole::Operator) => Some(UserRole::Operator),
            Ok(pb::UserRole::Developer) => Some(UserRole::Developer),
            Ok(pb::UserRole::Viewer) => Some(UserRole::Viewer),
            Ok(pb::UserRole::Metrics) => Some(UserRole::Metrics),
            _ => None,
        }
    }
}

impl std::str::FromStr for UserRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(UserRole::Admin),
            "operator" => Ok(UserRole::Operator),
            "developer" => Ok(UserRole::Developer),
            "viewer" => Ok(UserRole::Viewer),
            "metrics" => Ok(UserRole::Metrics),
            _ => Err(format!(
                "{s:?} is not a role; expected admin, operator, developer, viewer or metrics"
            )),
        }
    }
}

/// A user as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub role: Option<UserRole>,
    pub revoked: bool,
    pub create_index: u64,
    /// The namespaces a developer or viewer is granted.
    pub namespaces: Vec<String>,
}

/// What a namespace's jobs hold, and how many there are.
#[derive(Clone, Debug, Default)]
pub struct NamespaceUsage {
    pub usage: skiff_model::namespace::Usage,
    pub jobs: u32,
}

/// A user just made: its certificate and the cluster CA (PEM).
#[derive(Clone, Debug)]
pub struct CreatedUser {
    pub cert_pem: String,
    pub ca_pem: String,
    pub index: u64,
}

/// A token just made: `token` is shown this once (the cluster keeps only
/// a hash of its secret).
#[derive(Clone)]
pub struct CreatedToken {
    pub token: String,
    pub id: String,
    pub expires_ms: u64,
    pub index: u64,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("id", &self.id)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// A join token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub role: Option<JoinRole>,
    pub expires_ms: u64,
    pub revoked: bool,
    pub description: String,
    pub uses: u32,
    pub create_index: u64,
}

impl Client {
    /// Makes a join token for `role`, valid for `ttl_seconds` (0: a day).
    pub async fn create_token(
        &mut self,
        role: JoinRole,
        ttl_seconds: u64,
        description: &str,
    ) -> Result<CreatedToken, ClientError> {
        let r = self
            .access
            .create_token(pb::CreateTokenRequest {
                role: role.wire() as i32,
                ttl_seconds,
                description: description.into(),
            })
            .await?
            .into_inner();
        Ok(CreatedToken {
            token: r.token,
            id: r.id,
            expires_ms: r.expires_ms,
            index: r.index,
        })
    }

    pub async fn list_tokens(&mut self) -> Result<Vec<TokenInfo>, ClientError> {
        let r = self
            .access
            .list_tokens(pb::ListTokensRequest {})
            .await?
            .into_inner();
        Ok(r.tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                role: JoinRole::from_wire(t.role),
                expires_ms: t.expires_ms,
                revoked: t.revoked,
                description: t.description,
                uses: t.uses,
                create_index: t.create_index,
            })
            .collect())
    }

    /// Revokes a token by its id; the Raft index of the write.
    pub async fn revoke_token(&mut self, id: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .revoke_token(pb::RevokeTokenRequest { id: id.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Forgets a node: its certificate stops working, its name may join
    /// again. The Raft index of the write.
    pub async fn remove_node(&mut self, name: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .remove_node(pb::RemoveNodeRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Makes user `name` with `role`, granted `namespaces` (developers
    /// and viewers); `csr_pem` is a signing request for the user's own key
    /// (which never leaves the caller).
    pub async fn create_user(
        &mut self,
        name: &str,
        role: UserRole,
        namespaces: &[String],
        csr_pem: &str,
    ) -> Result<CreatedUser, ClientError> {
        let r = self
            .access
            .create_user(pb::CreateUserRequest {
                name: name.into(),
                role: role.wire() as i32,
                csr_pem: csr_pem.into(),
                namespaces: namespaces.to_vec(),
            })
            .await?
            .into_inner();
        Ok(CreatedUser {
            cert_pem: r.cert_pem,
            ca_pem: r.ca_pem,
            index: r.index,
        })
    }

    pub async fn list_users(&mut self) -> Result<Vec<UserInfo>, ClientError> {
        let r = self
            .access
            .list_users(pb::ListUsersRequest {})
            .await?
            .into_inner();
        Ok(r.users
            .into_iter()
            .map(|u| UserInfo {
                name: u.name,
                role: UserRole::from_wire(u.role),
                revoked: u.revoked,
                create_index: u.create_index,
                namespaces: u.namespaces,
            })
            .collect())
    }

    /// A new certificate for the caller's own identity (its current one
    /// must still be valid), for a signing request of a new key.
    pub async fn renew_certificate(&mut self, csr_pem: &str) -> Result<String, ClientError> {
        let r = self
            .access
            .renew_certificate(pb::RenewCertificateRequest {
                csr_pem: csr_pem.into(),
            })
            .await?
            .into_inner();
        Ok(r.cert_pem)
    }

    /// Revokes a user at once; the Raft index of the write.
    pub async fn revoke_user(&mut self, name: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .revoke_user(pb::RevokeUserRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// A bearer token for user `user`, living `ttl_seconds` (0: 30 days):
    /// the word (shown only here), its id and when it expires (ms).
    pub async fn create_user_token(
        &mut self,
        user: &str,
        ttl_seconds: u64,
    ) -> Result<(String, String, u64), ClientError> {
        let r = self
            .access
            .create_user_token(pb::CreateUserTokenRequest {
                user: user.into(),
                ttl_seconds,
            })
            .await?
            .into_inner();
        Ok((r.token, r.id, r.expires_ms))
    }

    /// Revokes a user's bearer token; the Raft index of the write.
    pub async fn revoke_user_token(&mut self, id: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .revoke_user_token(pb::RevokeUserTokenRequest { id: id.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Describes namespace `ns` (new or again); the Raft index of the
    /// write.
    pub async fn apply_namespace(
        &mut self,
        ns: &skiff_model::namespace::Namespace,
    ) -> Result<u64, ClientError> {
        let r = self
            .access
            .apply_namespace(pb::ApplyNamespaceRequest {
                namespace: Some(ns.into()),
            })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Every namespace, with what its jobs hold and how many there are.
    pub async fn list_namespaces(
        &mut self,
    ) -> Result<Vec<(skiff_model::namespace::Namespace, NamespaceUsage)>, ClientError> {
        let r = self
            .access
            .list_namespaces(pb::ListNamespacesRequest {})
            .await?
            .into_inner();
        Ok(r.namespaces
            .into_iter()
            .map(|i| {
                let used = i.used.unwrap_or_default();
                (
                    i.namespace.unwrap_or_default().into(),
                    NamespaceUsage {
                        usage: skiff_model::namespace::Usage {
                            cpu_millis: used.cpu_millis,
                            memory_bytes: used.memory_bytes,
                            allocations: used.allocations,
                            gpu_units: used.gpu_units.into_iter().collect(),
                        },
                        jobs: used.jobs,
                    },
                )
            })
            .collect())
    }

    /// Deletes namespace `name` (no job may live in it); the Raft index.
    pub async fn delete_namespace(&mut self, name: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .delete_namespace(pb::DeleteNamespaceRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Describes team queue `q` (new or again; admin only); the Raft
    /// index of the write.
    pub async fn apply_queue(&mut self, q: &skiff_model::queue::Queue) -> Result<u64, ClientError> {
        let r = self
            .access
            .apply_queue(pb::ApplyQueueRequest {
                queue: Some(q.into()),
            })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Every team queue with where it stands, by name.
    pub async fn list_queues(&mut self) -> Result<Vec<pb::QueueStatus>, ClientError> {
        let r = self
            .access
            .list_queues(pb::ListQueuesRequest {})
            .await?
            .into_inner();
        Ok(r.queues)
    }

    /// One team queue: where it stands, its admitted jobs and its waiting
    /// ones with their reasons.
    pub async fn describe_queue(
        &mut self,
        name: &str,
    ) -> Result<pb::DescribeQueueResponse, ClientError> {
        Ok(self
            .access
            .describe_queue(pb::DescribeQueueRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Deletes team queue `name` (no job may name it); the Raft index.
    pub async fn delete_queue(&mut self, name: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .delete_queue(pb::DeleteQueueRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Describes a sync from git (new or again; a user who may write jobs
    /// in its namespace); the Raft index of the write.
    pub async fn apply_sync(
        &mut self,
        source: &skiff_model::sync::SyncSource,
    ) -> Result<u64, ClientError> {
        let r = self
            .access
            .apply_sync(pb::ApplySyncRequest {
                source: Some(source.into()),
            })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Every sync with what the leader's controller last did, by name.
    pub async fn list_syncs(&mut self) -> Result<Vec<skiff_model::sync::SyncRecord>, ClientError> {
        let r = self
            .access
            .list_syncs(pb::ListSyncsRequest {})
            .await?
            .into_inner();
        Ok(r.syncs
            .into_iter()
            .map(|s| skiff_model::sync::SyncRecord {
                source: s.source.unwrap_or_default().into(),
                status: s.status.unwrap_or_default().into(),
            })
            .collect())
    }

    /// Stops sync `name` (its jobs stay); the Raft index.
    pub async fn delete_sync(&mut self, name: &str) -> Result<u64, ClientError> {
        let r = self
            .access
            .delete_sync(pb::DeleteSyncRequest { name: name.into() })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// Stores `namespace`'s login for `registry` (admin only); the servers
    /// seal the password before it is replicated. The Raft index.
    pub async fn set_registry_login(
        &mut self,
        namespace: &str,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<u64, ClientError> {
        let r = self
            .access
            .set_registry_login(pb::SetRegistryLoginRequest {
                namespace: namespace.into(),
                registry: registry.into(),
                username: username.into(),
                password: password.into(),
            })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// The registry logins namespaces hold (`namespace`'s only, unless
    /// empty), without passwords (admin only).
    pub async fn list_registry_logins(
        &mut self,
        namespace: &str,
    ) -> Result<Vec<RegistryLoginInfo>, ClientError> {
        let r = self
            .access
            .list_registry_logins(pb::ListRegistryLoginsRequest {
                namespace: namespace.into(),
            })
            .await?
            .into_inner();
        Ok(r.logins
            .into_iter()
            .map(|l| RegistryLoginInfo {
                namespace: l.namespace,
                registry: l.registry,
                username: l.username,
                set_at_ms: l.set_at_ms,
            })
            .collect())
    }

    /// Forgets `namespace`'s login for `registry` (admin only); the Raft
    /// index.
    pub async fn delete_registry_login(
        &mut self,
        namespace: &str,
        registry: &str,
    ) -> Result<u64, ClientError> {
        let r = self
            .access
            .delete_registry_login(pb::DeleteRegistryLoginRequest {
                namespace: namespace.into(),
                registry: registry.into(),
            })
            .await?
            .into_inner();
        Ok(r.index)
    }

    /// The answering server's own audit records at or after `since_ms`
    /// (oldest first, the newest `limit` when there are more; 0: 1,000),
    /// and whether older ones were left out. `skiff audit` asks every
    /// member and merges.
    pub async fn read_audit(
        &mut self,
        since_ms: u64,
        limit: u32,
    ) -> Result<(Vec<AuditRecord>, bool), ClientError> {
        let r = self
            .access
            .read_audit(pb::ReadAuditRequest { since_ms, limit })
            .await?
            .into_inner();
        let records = r
            .records
            .into_iter()
            .map(|a| AuditRecord {
                time_ms: a.time_ms,
                server: a.server,
                identity: a.identity,
                peer: a.peer,
                method: a.method,
                object: a.object,
                outcome: a.outcome,
            })
            .collect();
        Ok((records, r.truncated))
    }
}

/// One audited call, as a server recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// When the call ended, ms since the Unix epoch.
    pub time_ms: u64,
    /// The server that served it.
    pub server: u64,
    /// `user/NAME`, `node/NAME`, `server/N`, `anonymous` or `insecure`.
    pub identity: String,
    /// The caller's address.
    pub peer: String,
    /// `Service/Method`.
    pub method: String,
    /// What it named (`job/web`), or empty.
    pub object: String,
    /// The gRPC status name it ended with (`OK`, `PERMISSION_DENIED`).
    pub outcome: String,
}

/// A namespace's login for a registry, as listed (never its password).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegistryLoginInfo {
    pub namespace: String,
    pub registry: String,
    pub username: String,
    /// When it was set, ms since the Unix epoch.
    pub set_at_ms: u64,
}
