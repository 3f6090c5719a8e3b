//! How Skiff reaches image registries, shared by agents (pulls) and
//! servers (resolving tags at apply), from the same flags on both:
//!
//! - `--insecure-registry HOST:PORT`: the only way to speak plain HTTP;
//! - `--registry-ca HOST:PORT=PEM_FILE`: a registry's own CA, trusted for
//!   that registry only (besides the system's);
//! - `--registry-auth FILE`: credentials in Docker's `config.json` format
//!   (`auths` with `auth` = base64 `user:password`, or `username` and
//!   `password`), sent to their registry only; bearer tokens are then
//!   negotiated as the registry asks;
//! - `--registry-mirror REGISTRY=URL`: a pull-through cache asked first
//!   for that registry's images (in the order given), the registry itself
//!   last. A mirror is trusted for tags as the registry would be; what it
//!   serves is checked against digests like anything else.
//!
//! Credentials are never logged: the `Debug` form names registries only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

/// Docker Hub's names, as Docker's `config.json` and references spell them.
const DOCKER_HUB: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("--registry-ca {0:?} must be HOST:PORT=PEM_FILE")]
    CaFlag(String),
    #[error("--registry-mirror {flag:?}: {reason}")]
    MirrorFlag { flag: String, reason: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not Docker's config.json format: {reason}")]
    AuthFile { path: String, reason: String },
    #[error("cannot make a registry client for {registry}: {reason}")]
    Client { registry: String, reason: String },
}

/// A namespace's login for one registry, which the servers hand out with
/// the namespace's work; its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// HOST[:PORT].
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Whether this login is for `registry` (Docker Hub by any name).
    pub fn is_for(&self, registry: &str) -> bool {
        registry_key(&self.registry) == registry_key(registry)
    }
}

/// The flags, as given.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// `--insecure-registry`.
    pub insecure: Vec<String>,
    /// `--registry-ca`: `HOST:PORT=PEM_FILE`.
    pub cas: Vec<String>,
    /// `--registry-auth`.
    pub auth_file: Option<PathBuf>,
    /// `--registry-mirror`: `REGISTRY=URL`.
    pub mirrors: Vec<String>,
    /// Never contact a registry (the fuzz harness).
    pub offline: bool,
}

/// What the flags say, read once.
pub struct RegistryAccess {
    insecure: Vec<String>,
    cas: BTreeMap<String, Vec<u8>>,
    auths: BTreeMap<String, (String, String)>,
    /// Registry -> the hosts of its mirrors, in the order given.
    mirrors: BTreeMap<String, Vec<String>>,
    offline: bool,
    clients: Mutex<HashMap<String, Client>>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("insecure", &self.insecure)
            .field("cas", &self.cas.keys().collect::<Vec<_>>())
            .field("credentials_for", &self.auths.keys().collect::<Vec<_>>())
            .field("mirrors", &self.mirrors)
            .field("offline", &self.offline)
            .finish()
    }
}

impl Default for RegistryAccess {
    fn default() -> Self {
        RegistryAccess {
            insecure: Vec::new(),
            cas: BTreeMap::new(),
            auths: BTreeMap::new(),
            mirrors: BTreeMap::new(),
            offline: false,
            clients: Mutex::new(HashMap::new()),
        }
    }
}

/// `https://host:port/v1/` and `host:port` name the same registry; Docker
/// Hub has several names.
fn registry_key(name: &str) -> String {
    if DOCKER_HUB.contains(&name) {
        return "docker.io".to_string();
    }
    let bare = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(name);
    let host = bare.split('/').next().unwrap_or(bare);
    if DOCKER_HUB.contains(&host) {
        "docker.io".to_string()
    } else {
        host.to_string()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `REGISTRY=URL` -> (registry key, mirror host). A plain `http://`
/// mirror must also be named by `--insecure-registry`, the one way to
/// allow plain HTTP.
fn parse_mirror(flag: &str, insecure: &[String]) -> Result<(String, String), RegistryError> {
    let bad = |reason: &str| RegistryError::MirrorFlag {
        flag: flag.to_string(),
        reason: reason.to_string(),
    };
    let (registry, url) = flag
        .split_once('=')
        .filter(|(r, u)| !r.is_empty() && !u.is_empty())
        .ok_or_else(|| bad("must be REGISTRY=URL, e.g. docker.io=https://mirror.lab:5000"))?;
    let (plain, rest) = match url.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not http or https"))),
        None => (false, url),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(bad(
            "the URL must name a host[:port] only (a mirror serves the registry's repositories at its root)",
        ));
    }
    if plain
        && !insecure
            .iter()
            .any(|h| registry_key(h) == registry_key(host))
    {
        return Err(bad(&format!(
            "plain HTTP needs --insecure-registry {host} as well"
        )));
    }
    Ok((registry_key(registry), host.to_string()))
}

/// The `auths` of a Docker `config.json`: registry -> (user, password).
fn parse_auths(
    text: &[u8],
    path: &str,
) -> Result<BTreeMap<String, (String, String)>, RegistryError> {
    let bad = |reason: String| RegistryError::AuthFile {
        path: path.to_string(),
        reason,
    };
    let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(out);
    };
    for (registry, entry) in auths {
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let (user, pass) = if !field("auth").is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(field("auth"))
                .map_err(|_| bad(format!("auths.{registry:?}.auth is not base64")))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| bad(format!("auths.{registry:?}.auth is not text")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{registry:?}.auth is not user:password")))?;
            (u.to_string(), p.to_string())
        } else if !field("username").is_empty() {
            (field("username").to_string(), field("password").to_string())
        } else {
            continue; // identity or registry tokens: not supported here
        };
        out.insert(registry_key(registry), (user, pass));
    }
    Ok(out)
}

impl RegistryAccess {
    /// Reads the CA and credential files the flags name.
    pub fn load(cfg: &AccessConfig) -> Result<RegistryAccess, RegistryError> {
        let mut cas = BTreeMap::new();
        for flag in &cfg.cas {
            let (host, file) = flag
                .split_once('=')
                .filter(|(h, f)| !h.is_empty() && !f.is_empty())
                .ok_or_else(|| RegistryError::CaFlag(flag.clone()))?;
            cas.insert(registry_key(host), read(std::path::Path::new(file))?);
        }
        let auths = match &cfg.auth_file {
            Some(p) => parse_auths(&read(p)?, &p.display().to_string())?,
            None => BTreeMap::new(),
        };
        let mut mirrors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for flag in &cfg.mirrors {
            let (registry, host) = parse_mirror(flag, &cfg.insecure)?;
            mirrors.entry(registry).or_default().push(host);
        }
        Ok(RegistryAccess {
            insecure: cfg.insecure.clone(),
            cas,
            auths,
            mirrors,
            offline: cfg.offline,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Where `registry`'s images are asked for, in order: its mirrors,
    /// then the registry itself.
    pub fn sources(&self, registry: &str) -> Vec<String> {
        let mut out = self
            .mirrors
            .get(&registry_key(registry))
            .cloned()
            .unwrap_or_default();
        out.push(registry.to_string());
        out
    }

    /// Registries must not be contacted.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// The credentials for `registry`: `login` when it is for that
    /// registry (a namespace's), else the node's from `--registry-auth`
    /// (anonymous when none are given).
    pub fn auth_for(&self, registry: &str, login: Option<&Login>) -> RegistryAuth {
        if let Some(l) = login.filter(|l| l.is_for(registry)) {
            return RegistryAuth::Basic(l.username.clone(), l.password.clone());
        }
        match self.auths.get(&registry_key(registry)) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// A client for `registry`, used with [`RegistryAccess::auth_for`]'s
    /// answer for the same `login`. One is kept per registry and
    /// credentials: a client keeps the tokens a registry handed it, which
    /// must never serve a pull made with other credentials.
    pub fn client_for(
        &self,
        registry: &str,
        login: Option<&Login>,
    ) -> Result<Client, RegistryError> {
        let key = registry_key(registry);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let held_key = match login.filter(|l| l.is_for(registry)) {
            Some(l) => {
                use sha2::Digest as _;
                let mut h = sha2::Sha256::new();
                for part in [&l.username, &l.password] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
                format!("{key} {}", hex::encode(&h.finalize()[..16]))
            }
            None => key.clone(),
        };
        if let Some(c) = clients.get(&held_key) {
            return Ok(c.clone());
        }
        skiff_pki::use_tls13_only();
        let protocol = if self.insecure.iter().any(|h| registry_key(h) == key) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates: self
                .cas
                .get(&key)
                .map(|pem| {
                    vec![Certificate {
                        encoding: CertificateEncoding::Pem,
                        data: pem.clone(),
                    }]
                })
                .unwrap_or_default(),
            read_timeout: Some(Duration::from_secs(60)),
            connect_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| RegistryError::Client {
            registry: key.clone(),
            reason: e.to_string(),
        })?;
        clients.insert(held_key, client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_are_found_by_registry_and_never_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.json");
        let ana = base64::engine::general_purpose::STANDARD.encode("ana:s3cret");
        std::fs::write(
            &file,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{ana}"}},
                   "registry.lab:5000": {{"username": "bo", "password": "pw"}},
                   "ghcr.io": {{"identitytoken": "x"}}}}}}"#
            ),
        )
        .unwrap();
        let access = RegistryAccess::load(&AccessConfig {
            auth_file: Some(file),
            ..Default::default()
        })
        .unwrap();
        assert!(
            matches!(access.auth_for("docker.io", None), RegistryAuth::Basic(u, p) if u == "ana" && p == "s3cret")
        );
        assert!(
            matches!(access.auth_for("registry.lab:5000", None), RegistryAuth::Basic(u, _) if u == "bo")
        );
        assert!(matches!(
            access.auth_for("ghcr.io", None),
            RegistryAuth::Anonymous
        ));
        assert!(matches!(
            access.auth_for("other.lab", None),
            RegistryAuth::Anonymous
        ));
        let shown = format!("{access:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw"),
            "{shown}"
        );
        assert!(shown.contains("registry.lab:5000"), "{shown}");
        // A namespace's login wins for its registry only, and gets a
        // client of its own (tokens never cross credentials).
        let login = Login {
            registry: "registry.lab:5000".into(),
            username: "team".into(),
            password: "team-pw".into(),
        };
        assert!(
            matches!(access.auth_for("registry.lab:5000", Some(&login)), RegistryAuth::Basic(u, p) if u == "team" && p == "team-pw")
        );
        assert!(
            matches!(access.auth_for("docker.io", Some(&login)), RegistryAuth::Basic(u, _) if u == "ana")
        );
        assert!(!format!("{login:?}").contains("team-pw"));
        skiff_pki::use_tls13_only();
        access.client_for("registry.lab:5000", None).unwrap();
        access
            .client_for("registry.lab:5000", Some(&login))
            .unwrap();
        access
            .client_for("registry.lab:5000", Some(&login))
            .unwrap();
        access.client_for("docker.io", Some(&login)).unwrap();
        let held = access.clients.lock().unwrap().len();
        assert_eq!(
            held, 3,
            "the node's and the team's for registry.lab, the node's for docker.io"
        );
    }

    #[test]
    fn bad_flags_and_files_are_named() {
        let e = RegistryAccess::load(&AccessConfig {
            cas: vec!["no-equals".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("HOST:PORT=PEM_FILE"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.json");
        std::fs::write(&file, r#"{"auths": {"x": {"auth": "!!"}}}"#).unwrap();
        let e = RegistryAccess::load(&AccessConfig {
            auth_file: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn mirrors_come_first_in_the_order_given_and_plain_http_needs_the_insecure_flag() {
        let access = RegistryAccess::load(&AccessConfig {
            mirrors: vec![
                "docker.io=https://mirror.lab:5000/".into(),
                "index.docker.io=http://127.0.0.1:5001".into(),
            ],
            insecure: vec!["127.0.0.1:5001".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            access.sources("docker.io"),
            ["mirror.lab:5000", "127.0.0.1:5001", "docker.io"]
        );
        assert_eq!(access.sources("ghcr.io"), ["ghcr.io"]);
        for (flag, why) in [
            (
                "docker.io=http://127.0.0.1:5001",
                "--insecure-registry 127.0.0.1:5001",
            ),
            ("docker.io", "REGISTRY=URL"),
            ("docker.io=ftp://m", "not http or https"),
            ("docker.io=https://m/sub", "host[:port] only"),
        ] {
            let e = RegistryAccess::load(&AccessConfig {
                mirrors: vec![flag.into()],
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(why) && e.contains("--registry-mirror"),
                "{flag}: {e}"
            );
        }
    }
}
