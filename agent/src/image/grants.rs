//! Who may use an image the node's content store holds without asking a
//! registry. An image pulled with the node's own credentials (or none) is
//! the node's: every namespace may start it from the store. One pulled
//! with a namespace's registry login is that namespace's until another
//! asker proves access by fetching its manifest with its own credentials;
//! otherwise a private image cached for one team would start for every
//! team on the node (Kubernetes' KEP-2535). Kept per manifest (or index)
//! digest in `CONTENT/grants/<hex>`, a line per grant: `*` for the node,
//! else a namespace's name.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use skiff_registry::Login;

/// A registry login as the servers send it (with a namespace's
/// allocations, or with a pull made in its name).
pub fn login_from_wire(l: skiff_proto::pb::RegistryLogin) -> Login {
    Login {
        registry: l.registry,
        username: l.username,
        password: l.password,
    }
}

/// Who asks for an image: the namespace of the allocation (none for an
/// operator's pre-pull) and the registry logins that namespace holds.
#[derive(Debug, Clone, Default)]
pub struct Asker {
    pub namespace: Option<String>,
    pub logins: Vec<Login>,
}

impl Asker {
    /// The node itself (`skiff image pull`): its own credentials only.
    pub fn node() -> Asker {
        Asker::default()
    }

    /// The login this asker uses for `registry`, if it holds one.
    pub fn login_for(&self, registry: &str) -> Option<&Login> {
        self.logins.iter().find(|l| l.is_for(registry))
    }

    /// The grant a successful fetch with `login` gives.
    fn grant(&self, login: Option<&Login>) -> String {
        match (login, &self.namespace) {
            (Some(_), Some(ns)) => ns.clone(),
            _ => "*".to_string(),
        }
    }
}

/// The grants of a content store.
#[derive(Debug, Clone)]
pub struct Grants {
    dir: PathBuf,
}

impl Grants {
    pub fn new(content: &Path) -> Grants {
        Grants {
            dir: content.join("grants"),
        }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        super::is_sha256_hex(hex).then(|| self.dir.join(hex))
    }

    /// Whether `asker` may use the held image `digest` without asking
    /// its registry. An image with no grants recorded (pulled before they
    /// were kept) is the node's.
    pub fn allows(&self, digest: &str, asker: &Asker) -> bool {
        let Some(text) = self
            .path(digest)
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return true;
        };
        text.lines()
            .any(|l| l == "*" || Some(l) == asker.namespace.as_deref())
    }

    /// Records that `asker` fetched the manifest `digest` from its
    /// registry with `login` (or the node's credentials when none).
    pub fn record(
        &self,
        digest: &str,
        asker: &Asker,
        login: Option<&Login>,
    ) -> std::io::Result<()> {
        let Some(path) = self.path(digest) else {
            return Ok(());
        };
        let grant = asker.grant(login);
        let held = std::fs::read_to_string(&path).unwrap_or_default();
        if held.lines().any(|l| l == grant) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{grant}")
    }

    /// Forgets the grants of `digest` (its image was collected).
    pub fn forget(&self, digest: &str) {
        if let Some(p) = self.path(digest) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn asker(ns: &str, login: bool) -> Asker {
        Asker {
            namespace: Some(ns.into()),
            logins: login
                .then(|| Login {
                    registry: "r.lab:5000".into(),
                    username: ns.into(),
                    password: "pw".into(),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn an_image_pulled_with_a_namespaces_login_is_that_namespaces_alone() {
        let dir = tempfile::tempdir().unwrap();
        let g = Grants::new(dir.path());
        let (team, other) = (asker("team", true), asker("other", false));
        assert!(g.allows(D, &other), "nothing recorded: the node's");
        g.record(D, &team, team.login_for("r.lab:5000")).unwrap();
        assert!(g.allows(D, &team));
        assert!(!g.allows(D, &other));
        assert!(!g.allows(D, &Asker::node()));
        // Another asker that fetched it with the node's credentials makes
        // it the node's.
        g.record(D, &other, other.login_for("r.lab:5000")).unwrap();
        assert!(g.allows(D, &Asker::node()));
        g.record(D, &other, None).unwrap();
        let lines = std::fs::read_to_string(dir.path().join("grants").join(&D[7..])).unwrap();
        assert_eq!(lines, "team\n*\n", "each grant once");
        g.forget(D);
        assert!(g.allows(D, &other));
    }
}
