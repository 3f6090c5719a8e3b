//! Join tokens, after kubeadm's bootstrap tokens: one word,
//! `skiff1.<pin>.<id>.<secret>`. The pin (sha256 of the CA's public key)
//! lets a joiner check it reached the right cluster before it shows the
//! secret; the id names the token in `skiff token ls` and `revoke`; the
//! servers keep only a hash of the secret. A token may be used by many
//! joins until it expires or is revoked.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::PkiError;

const PREFIX: &str = "skiff1";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A join token as a joiner holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA's SubjectPublicKeyInfo, hex.
    pub pin: String,
    /// Public: names the token.
    pub id: String,
    /// Private: proves the holder may join.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken {{ id: {:?}, secret: <secret> }}", self.id)
    }
}

fn random(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

impl JoinToken {
    /// A new token for the CA with this pin.
    pub fn generate(pin: &str) -> JoinToken {
        JoinToken {
            pin: pin.to_string(),
            id: random(ID_LEN),
            secret: random(SECRET_LEN),
        }
    }

    /// The word to hand out. It holds the secret: print it once, never log
    /// it.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}.{}.{}.{}", self.pin, self.id, self.secret)
    }

    /// Reads a token word, naming what is wrong with it.
    pub fn parse(word: &str) -> Result<JoinToken, PkiError> {
        let bad = |why: &str| PkiError::Token(format!("not a Skiff join token: {why}"));
        let parts: Vec<&str> = word.trim().split('.').collect();
        let [prefix, pin, id, secret] = parts.as_slice() else {
            return Err(bad("expected skiff1.PIN.ID.SECRET"));
        };
        if *prefix != PREFIX {
            return Err(bad("it does not start with skiff1."));
        }
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the pin is not 64 hex digits"));
        }
        let word_ok = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !word_ok(id, ID_LEN) || !word_ok(secret, SECRET_LEN) {
            return Err(bad("the id or secret has the wrong length or characters"));
        }
        Ok(JoinToken {
            pin: pin.to_ascii_lowercase(),
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// What the servers keep of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A random secret for a bearer token (scripts' credentials): 32
/// characters of [a-z0-9].
pub fn bearer_secret() -> String {
    random(32)
}

const BEARER_PREFIX: &str = "skiffu1";
const BEARER_ID_LEN: usize = 8;

/// A user's bearer token (`skiff user token`), for scripts that hold no
/// certificate: one word, `skiffu1.<id>.<secret>`, sent as
/// `authorization: Bearer WORD` over TLS. The id names it; the servers
/// keep a hash of the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken {{ id: {:?}, secret: <secret> }}", self.id)
    }
}

impl BearerToken {
    pub fn generate() -> BearerToken {
        BearerToken {
            id: random(BEARER_ID_LEN),
            secret: bearer_secret(),
        }
    }

    /// The word to hand out; it holds the secret.
    pub fn reveal(&self) -> String {
        format!("{BEARER_PREFIX}.{}.{}", self.id, self.secret)
    }

    /// Reads a token word (an `authorization` header's value without
    /// `Bearer `), naming what is wrong with it but never echoing it.
    pub fn parse(word: &str) -> Result<BearerToken, PkiError> {
        let bad = |why: &str| PkiError::Token(format!("not a Skiff user token: {why}"));
        let parts: Vec<&str> = word.trim().split('.').collect();
        let [prefix, id, secret] = parts.as_slice() else {
            return Err(bad("expected skiffu1.ID.SECRET"));
        };
        if *prefix != BEARER_PREFIX {
            return Err(bad("it does not start with skiffu1."));
        }
        let word_ok = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !word_ok(id, BEARER_ID_LEN) || !word_ok(secret, 32) {
            return Err(bad("the id or secret has the wrong length or characters"));
        }
        Ok(BearerToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// Compares two secrets' hashes in time that does not depend on where
/// they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_survives_its_word() {
        let t = BearerToken::generate();
        assert_eq!(BearerToken::parse(&t.reveal()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert!(BearerToken::parse("skiffu1.short.x").is_err());
        assert!(same_hash(&hash_secret("a"), &hash_secret("a")));
        assert!(!same_hash(&hash_secret("a"), &hash_secret("b")));
    }

    #[test]
    fn a_token_survives_its_word_and_malformed_ones_say_why() {
        let pin = "ab".repeat(32);
        let t = JoinToken::generate(&pin);
        let back = JoinToken::parse(&t.reveal()).unwrap();
        assert_eq!(back, t);
        assert!(!format!("{t:?}").contains(&t.secret), "no secret in Debug");
        assert_ne!(JoinToken::generate(&pin).secret, t.secret);
        for bad in [
            "",
            "skiff1.abc",
            &format!("skiff2.{pin}.abcdef.0123456789abcdef"),
            &format!("skiff1.{}.abcdef.0123456789abcdef", "zz".repeat(32)),
            &format!("skiff1.{pin}.ABCDEF.0123456789abcdef"),
            &format!("skiff1.{pin}.abcdef.short"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(hash_secret("x"), hash_secret("x"));
        assert_ne!(hash_secret("x"), hash_secret("y"));
    }
}
