//! The servers' secrets key: 32 random bytes each server keeps in its data
//! directory (`secrets.key`, mode 0600, hex), never in Raft. Secrets the
//! servers must keep in the replicated state (namespaces' registry
//! passwords) are sealed with it (ChaCha20-Poly1305, a random nonce per
//! seal) and bound to where they belong by the associated data, so a
//! sealed value copied to another namespace or registry does not open.
//! Raft records only the key's id, which servers agree on.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Digest;

use crate::PkiError;

/// The key's file in a server's data directory.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Why a sealed value did not open (or a key could not be had).
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("sealed with secrets key {sealed_with}, but this server holds {holds}")]
    OtherKey { sealed_with: String, holds: String },
    #[error("the sealed value is damaged, or belongs elsewhere")]
    Damaged,
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The key; its `Debug` shows the id only.
#[derive(Clone)]
pub struct SecretsKey {
    bytes: [u8; 32],
    id: String,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", self.id)
    }
}

impl SecretsKey {
    /// A new random key.
    pub fn generate() -> SecretsKey {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        SecretsKey::from_bytes(bytes)
    }

    /// The key of `bytes` (32 of them), as a peer sent it.
    pub fn from_slice(bytes: &[u8]) -> Option<SecretsKey> {
        Some(SecretsKey::from_bytes(bytes.try_into().ok()?))
    }

    fn from_bytes(bytes: [u8; 32]) -> SecretsKey {
        let id = hex::encode(&sha2::Sha256::digest(bytes)[..8]);
        SecretsKey { bytes, id }
    }

    /// Its id: the first 16 hex digits of its SHA-256.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key bytes, to hand to a peer server.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key in `dir`, or none there yet.
    pub fn load(dir: &Path) -> Result<Option<SecretsKey>, SecretsError> {
        let path = dir.join(SECRETS_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SecretsError::File {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })
            }
        };
        hex::decode(text.trim())
            .ok()
            .and_then(|b| SecretsKey::from_slice(&b))
            .map(Some)
            .ok_or_else(|| SecretsError::File {
                path: path.display().to_string(),
                why: "must hold a secrets key: 64 hex digits".into(),
            })
    }

    /// Writes the key to `dir` (mode 0600), replacing what was there.
    pub fn save(&self, dir: &Path) -> Result<(), SecretsError> {
        let text = format!("{}\n", hex::encode(self.bytes));
        crate::files::write_private(&dir.join(SECRETS_KEY_FILE), text.as_bytes())?;
        Ok(())
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.bytes).expect("a 32-byte key fits"),
        )
    }

    /// `secret` sealed and bound to `context` (which opening must give
    /// again), as hex.
    pub fn seal(&self, context: &[&str], secret: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = secret.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(context)),
                &mut data,
            )
            .expect("a secret this small seals");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        hex::encode(out)
    }

    /// What [`SecretsKey::seal`] sealed with this key and `context`.
    pub fn open(
        &self,
        key_id: &str,
        context: &[&str],
        sealed: &str,
    ) -> Result<Vec<u8>, SecretsError> {
        if key_id != self.id {
            return Err(SecretsError::OtherKey {
                sealed_with: key_id.to_string(),
                holds: self.id.clone(),
            });
        }
        let bytes = hex::decode(sealed).map_err(|_| SecretsError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretsError::Damaged);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Damaged)?;
        let mut data = data.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(aad(context)), &mut data)
            .map_err(|_| SecretsError::Damaged)?;
        Ok(plain.to_vec())
    }
}

/// The context, each part length-prefixed (so no two contexts read the
/// same).
fn aad(context: &[&str]) -> Vec<u8> {
    let mut out = b"skiff-sealed-v1".to_vec();
    for part in context {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_context() {
        let key = SecretsKey::generate();
        let ctx = ["registry-login", "team", "r.lab:5000", "alice"];
        let sealed = key.seal(&ctx, b"hunter2");
        assert!(!sealed.contains(&hex::encode(b"hunter2")));
        assert_eq!(key.open(key.id(), &ctx, &sealed).unwrap(), b"hunter2");
        // Two seals of one secret differ (a fresh nonce each).
        assert_ne!(key.seal(&ctx, b"hunter2"), sealed);
        // Moved to another namespace, it does not open.
        let other = ["registry-login", "team2", "r.lab:5000", "alice"];
        assert!(matches!(
            key.open(key.id(), &other, &sealed),
            Err(SecretsError::Damaged)
        ));
        // Nor with another key, which says whose it is.
        let stranger = SecretsKey::generate();
        let e = stranger.open(key.id(), &ctx, &sealed).unwrap_err();
        assert!(e.to_string().contains(key.id()), "{e}");
        // A flipped byte is refused.
        let mut bad = hex::decode(&sealed).unwrap();
        *bad.last_mut().unwrap() ^= 1;
        assert!(key.open(key.id(), &ctx, &hex::encode(bad)).is_err());
        assert!(key.open(key.id(), &ctx, "zz").is_err());
        assert!(!format!("{key:?}").contains(&hex::encode(key.bytes())));
    }

    #[test]
    fn the_key_file_is_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(SecretsKey::load(dir.path()).unwrap().is_none());
        let key = SecretsKey::generate();
        key.save(dir.path()).unwrap();
        let path = dir.path().join(SECRETS_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            SecretsKey::load(dir.path()).unwrap().unwrap().id(),
            key.id()
        );
        std::fs::write(&path, "short").unwrap();
        let e = SecretsKey::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }
}
