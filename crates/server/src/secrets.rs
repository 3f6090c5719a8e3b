//! The servers' secrets key at run time (`skiff_pki::secrets`): loaded
//! from the data directory or made at start, then agreed on. The first
//! key id committed is the cluster's; a server holding another (a founding
//! server of a static cluster, one that joined) fetches the cluster's key
//! from a peer over the peer port (server certificates only) and keeps it.
//! Namespaces' registry logins are sealed and opened with it here; the
//! agreement runs in `key_agreement.rs`.

use skiff_pki::secrets::SecretsKey;
use skiff_store::command::RegistryLoginRecord;
use std::sync::{Arc, RwLock};

/// This server's key, replaced once if the cluster agreed on another.
#[derive(Clone)]
pub struct Keyring(Arc<RwLock<SecretsKey>>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({:?})", self.current())
    }
}

impl Keyring {
    /// The key in `data_dir`, made and saved there when there is none.
    pub fn open(data_dir: &std::path::Path) -> Result<Keyring, skiff_pki::secrets::SecretsError> {
        let key = match SecretsKey::load(data_dir)? {
            Some(k) => k,
            None => {
                let k = SecretsKey::generate();
                k.save(data_dir)?;
                k
            }
        };
        Ok(Keyring(Arc::new(RwLock::new(key))))
    }

    /// A ring holding `key` in memory only.
    #[cfg(test)]
    pub(crate) fn holding(key: SecretsKey) -> Keyring {
        Keyring(Arc::new(RwLock::new(key)))
    }

    pub fn current(&self) -> SecretsKey {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, key: SecretsKey) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

/// What a registry login's seal is bound to.
fn context<'a>(namespace: &'a str, registry: &'a str, username: &'a str) -> [&'a str; 4] {
    ["registry-login", namespace, registry, username]
}

/// `password` sealed for `namespace`'s login to `registry` as `username`.
pub fn seal_login(
    key: &SecretsKey,
    namespace: &str,
    registry: &str,
    username: &str,
    password: &str,
    at_ms: u64,
) -> RegistryLoginRecord {
    RegistryLoginRecord {
        registry: registry.to_string(),
        username: username.to_string(),
        sealed: key.seal(&context(namespace, registry, username), password.as_bytes()),
        key_id: key.id().to_string(),
        set_at_ms: at_ms,
    }
}

/// The login in the clear, or `None` (logged, without the secret) when
/// this server cannot open it.
pub fn open_login(
    key: &SecretsKey,
    namespace: &str,
    record: &RegistryLoginRecord,
) -> Option<skiff_registry::Login> {
    let ctx = context(namespace, &record.registry, &record.username);
    match key.open(&record.key_id, &ctx, &record.sealed) {
        Ok(bytes) => Some(skiff_registry::Login {
            registry: record.registry.clone(),
            username: record.username.clone(),
            password: String::from_utf8_lossy(&bytes).into_owned(),
        }),
        Err(e) => {
            tracing::warn!(namespace, registry = %record.registry, error = %e, "cannot open a registry login");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_opens_for_its_namespace_only() {
        let key = SecretsKey::generate();
        let rec = seal_login(&key, "team", "r.lab:5000", "alice", "pw-123", 7);
        assert!(!rec.sealed.contains(&hex::encode("pw-123")));
        assert!(!format!("{rec:?}").contains(&rec.sealed));
        let open = open_login(&key, "team", &rec).unwrap();
        assert_eq!(open.password, "pw-123");
        assert!(open_login(&key, "other", &rec).is_none());
        let mut renamed = rec.clone();
        renamed.username = "mallory".into();
        assert!(open_login(&key, "team", &renamed).is_none());
    }
}
