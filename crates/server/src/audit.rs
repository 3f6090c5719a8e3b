//! The audit log: every mutating call and every denial this server
//! served, one JSON line each (time, identity, method, object, outcome),
//! appended to `DATA_DIR/audit/audit.log` (mode 0600), rotated at
//! [`ROTATE_BYTES`] with [`KEEP`] older files. `skiff audit` reads every
//! server's log through `Access.ReadAudit` and merges them by time.
//!
//! The recording sits around each gRPC service ([`Audited`]): it sees the
//! method, the caller's certificate and the status the call ended with,
//! never the request's body, so no secret can reach the file. The object
//! (`job/web`, `node/n1`) is named by the command the call proposed
//! ([`Ctx::propose`](crate::ctx::Ctx::propose)) or by the handler
//! ([`name_object`]), through a task-local slot the wrapper opens.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use skiff_store::Command;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;

/// A log file is rotated when it grows past this.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept (`audit.log.1` newest .. `audit.log.N` oldest).
pub const KEEP: usize = 4;

/// Methods that change something (or run something, as exec): recorded
/// whatever their outcome. Any other call is recorded only when denied.
const MUTATING: &[&str] = &[
    "ApplyJob",
    "DeleteJob",
    "ScaleJob",
    "ControlRollout",
    "UndoRollout",
    "SetNodeEligibility",
    "ResetNodeGpu",
    "PullNodeImage",
    "Exec",
    "AddMember",
    "RemoveMember",
    "Join",
    "RenewCertificate",
    "CreateToken",
    "RevokeToken",
    "RemoveNode",
    "CreateUser",
    "RevokeUser",
    "CreateUserToken",
    "RevokeUserToken",
    "ApplyNamespace",
    "DeleteNamespace",
    "ApplyQueue",
    "DeleteQueue",
    "SetRegistryLogin",
    "DeleteRegistryLogin",
    "ApplySync",
    "DeleteSync",
    "Register",
];

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the call ended, ms since the Unix epoch.
    pub time_ms: u64,
    /// The server that served it.
    pub server: u64,
    /// `user/NAME`, `node/NAME`, `server/N`, `anonymous` (no certificate)
    /// or `insecure` (a server started with `--insecure`).
    pub identity: String,
    /// The caller's address.
    pub peer: String,
    /// `Service/Method`, as `Cluster/ApplyJob`.
    pub method: String,
    /// What it named (`job/web`), when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// The gRPC status it ended with, as `OK` or `PERMISSION_DENIED`.
    pub outcome: String,
}

/// The append-only audit file of this server.
pub struct AuditLog {
    dir: PathBuf,
    server: u64,
    rotate_bytes: u64,
    file: Mutex<Option<(std::fs::File, u64)>>,
}

impl AuditLog {
    /// The log under `data_dir/audit` (made 0700 if missing).
    pub fn open(data_dir: &Path, server: u64) -> std::io::Result<AuditLog> {
        AuditLog::open_rotating_at(data_dir, server, ROTATE_BYTES)
    }

    /// [`AuditLog::open`] with another rotation size (tests).
    pub fn open_rotating_at(
        data_dir: &Path,
        server: u64,
        rotate_bytes: u64,
    ) -> std::io::Result<AuditLog> {
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let log = AuditLog {
            dir,
            server,
            rotate_bytes,
            file: Mutex::new(None),
        };
        *log.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(log.open_current()?);
        Ok(log)
    }

    fn current(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("audit.log.{n}"))
    }

    fn open_current(&self) -> std::io::Result<(std::fs::File, u64)> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.current())?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// Appends one record; rotates first when the file is full. A failure
    /// to write is logged, never returned to the caller of the RPC.
    pub fn append(&self, record: &Record) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append_locked(&mut guard, &line) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot write the audit log");
        }
    }

    fn append_locked(
        &self,
        slot: &mut Option<(std::fs::File, u64)>,
        line: &[u8],
    ) -> std::io::Result<()> {
        if slot
            .as_ref()
            .is_none_or(|(_, size)| *size + line.len() as u64 > self.rotate_bytes)
        {
            *slot = None;
            if self.current().exists() {
                for n in (1..KEEP).rev() {
                    let from = self.rotated(n);
                    if from.exists() {
                        std::fs::rename(&from, self.rotated(n + 1))?;
                    }
                }
                std::fs::rename(self.current(), self.rotated(1))?;
            }
            *slot = Some(self.open_current()?);
        }
        let (file, size) = slot.as_mut().expect("opened above");
        file.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    /// This server's records at or after `since_ms`, oldest first, at most
    /// `limit` of them (the newest when there are more); and whether some
    /// were left out.
    pub fn read(&self, since_ms: u64, limit: usize) -> (Vec<Record>, bool) {
        let _guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut files: Vec<PathBuf> = (1..=KEEP).rev().map(|n| self.rotated(n)).collect();
        files.push(self.current());
        let mut out = std::collections::VecDeque::new();
        let mut truncated = false;
        for path in files {
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                let Ok(r) = serde_json::from_str::<Record>(&line) else {
                    continue; // a line cut by a crash
                };
                if r.time_ms < since_ms {
                    continue;
                }
                out.push_back(r);
                if out.len() > limit {
                    out.pop_front();
                    truncated = true;
                }
            }
        }
        (out.into(), truncated)
    }

    pub fn server(&self) -> u64 {
        self.server
    }
}

tokio::task_local! {
    static OBJECT: Arc<Mutex<String>>;
}

/// Names the object of the call being served (no effect outside one).
pub fn name_object(object: impl Into<String>) {
    let object = object.into();
    let _ = OBJECT.try_with(|slot| {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = object;
    });
}

/// What a command is about, for the audit log; never a secret.
pub fn object_of(cmd: &Command) -> Option<String> {
    Some(match cmd {
        Command::UpsertJob { spec } => format!("job/{}", spec.key()),
        Command::DeleteJob { name } | Command::ScaleJob { name, .. } => format!("job/{name}"),
        Command::ControlRollout { job, .. } | Command::UndoRollout { job, .. } => {
            format!("job/{job}")
        }
        Command::RegisterNode { registration } => format!("node/{}", registration.name),
        Command::SetNodeEligibility { name, .. } | Command::RemoveNode { name } => {
            format!("node/{name}")
        }
        Command::CreateToken { token } => format!("token/{}", token.id),
        Command::RevokeToken { id } => format!("token/{id}"),
        Command::CreateUser { user } => format!("user/{}", user.name),
        Command::RevokeUser { name } => format!("user/{name}"),
        Command::Join {
            token_id, joiner, ..
        } => match joiner {
            skiff_store::command::Joiner::Node { name } => {
                format!("node/{name} token/{token_id}")
            }
            skiff_store::command::Joiner::Server { id } => {
                format!("server/{id} token/{token_id}")
            }
        },
        _ => return None,
    })
}

/// Certificates seen lately and the identities they name: a connection's
/// every call shows the same certificate, and parsing it (X.509, a few
/// microseconds) on every call was a measurable share of a write's cost.
/// The handshake has checked the certificate; this only reads its name,
/// so the bytes are the key. Bounded: emptied when full.
fn identity_of(der: &[u8]) -> Result<skiff_pki::Identity, String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    const KEPT: usize = 4096;
    type Seen = Mutex<HashMap<Box<[u8]>, Result<skiff_pki::Identity, String>>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
        return known.clone();
    }
    let id = skiff_pki::Identity::of_certificate(der).map_err(|e| e.to_string());
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= KEPT {
        seen.clear();
    }
    seen.insert(der.into(), id.clone());
    id
}

/// The identity the caller's client certificate names, read once per call
/// by [`Audited`] and left in the request's extensions for
/// `auth::caller`. `None`: no certificate.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Option<Result<skiff_pki::Identity, String>>);

impl PeerIdentity {
    /// Reads the certificate of the connection `req` came on.
    pub fn of(extensions: &http::Extensions) -> PeerIdentity {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let identity = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|t| t.peer_certs())
            .and_then(|certs| certs.first().map(|c| identity_of(c.as_ref())));
        PeerIdentity(identity)
    }

    /// In the log's words.
    fn name(&self) -> String {
        match &self.0 {
            Some(Ok(skiff_pki::Identity::Server(n))) => format!("server/{n}"),
            Some(Ok(skiff_pki::Identity::Node(n))) => format!("node/{n}"),
            Some(Ok(skiff_pki::Identity::User(n))) => format!("user/{n}"),
            Some(Err(_)) => "unknown-certificate".into(),
            None => "anonymous".into(),
        }
    }
}

/// `user-token/ID` for a call that shows a bearer token (checked later).
fn bearer_id(headers: &http::HeaderMap) -> Option<String> {
    let word = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let token = skiff_pki::BearerToken::parse(word).ok()?;
    Some(format!("user-token/{}", token.id))
}

/// The caller's address.
fn peer_of<B>(req: &http::Request<B>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .map(|t| t.get_ref())
        .or_else(|| req.extensions().get::<TcpConnectInfo>())
        .and_then(|t| t.remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// `grpc-status` of a response that ended at its headers (every refusal
/// does); a response whose status comes in the trailers succeeded as far
/// as its headers tell.
fn outcome_of<B>(resp: &http::Response<B>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

pub(crate) fn code_name(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    // CamelCase to SCREAMING_SNAKE, as the gRPC docs name codes.
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A gRPC service whose calls are audited.
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    log: Arc<AuditLog>,
    tls_on: bool,
    metrics: Option<Arc<crate::metrics::ApiMetrics>>,
}

impl<S> Audited<S> {
    pub fn new(inner: S, log: Arc<AuditLog>, tls_on: bool) -> Audited<S> {
        Audited {
            inner,
            log,
            tls_on,
            metrics: None,
        }
    }

    /// Also counts each call in `metrics`, if any (by method and code,
    /// with its duration).
    pub fn counted(mut self, metrics: Option<Arc<crate::metrics::ApiMetrics>>) -> Audited<S> {
        self.metrics = metrics;
        self
    }
}

impl<S: NamedService> NamedService for Audited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Audited<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        // "/skiff.v1.Cluster/ApplyJob" -> "Cluster/ApplyJob"
        let method = path
            .trim_start_matches('/')
            .trim_start_matches("skiff.v1.")
            .to_string();
        let mutating = MUTATING.contains(&method.rsplit('/').next().unwrap_or(""));
        let peer = peer_of(&req);
        let identity = if self.tls_on {
            let id = PeerIdentity::of(req.extensions());
            let name = match &id.0 {
                // A bearer token's public id; never its secret.
                None => bearer_id(req.headers()).unwrap_or_else(|| id.name()),
                Some(_) => id.name(),
            };
            req.extensions_mut().insert(id);
            name
        } else {
            "insecure".to_string()
        };
        let log = self.log.clone();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let slot = Arc::new(Mutex::new(String::new()));
        let fut = OBJECT.scope(slot.clone(), self.inner.call(req));
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => outcome_of(resp),
                Err(_) => tonic::Code::Unknown,
            };
            if let Some(m) = &metrics {
                m.record(&method, code, &code_name(code), started.elapsed());
            }
            let denied = matches!(
                code,
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            );
            if mutating || denied {
                let object = std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
                log.append(&Record {
                    time_ms: now_ms(),
                    server: log.server(),
                    identity,
                    peer,
                    method,
                    object,
                    outcome: code_name(code),
                });
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            time_ms: n,
            server: 1,
            identity: "user/admin".into(),
            peer: "127.0.0.1:1".into(),
            method: "Cluster/ApplyJob".into(),
            object: format!("job/j{n}"),
            outcome: "OK".into(),
        }
    }

    #[test]
    fn the_log_rotates_keeps_its_files_private_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open_rotating_at(dir.path(), 1, 8192).unwrap();
        // Enough records to rotate more than KEEP times.
        let one = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        let per_file = 8192 / one;
        let total = per_file * (KEEP as u64 + 2);
        for n in 0..total {
            log.append(&record(n));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("audit/audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.path().join(format!("audit/audit.log.{KEEP}")).exists());
        assert!(!dir
            .path()
            .join(format!("audit/audit.log.{}", KEEP + 1))
            .exists());
        // The newest records, in order, none repeated; the oldest rotated out.
        let (all, truncated) = log.read(0, usize::MAX);
        assert!(!truncated);
        assert_eq!(all.last().unwrap().time_ms, total - 1);
        assert!(all.first().unwrap().time_ms > 0, "the oldest file went");
        assert!(all.windows(2).all(|w| w[0].time_ms + 1 == w[1].time_ms));
        let (some, truncated) = log.read(total - 10, 5);
        assert!(truncated);
        assert_eq!(
            some.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            (total - 5..total).collect::<Vec<_>>()
        );
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
