//! Skiff's public key infrastructure: the cluster CA and the certificates
//! it signs, each naming one identity (a server, a node, a user), join
//! tokens, and writing credentials so only their owner can read them.
//! No cluster state here: the server keeps the CA in Raft and decides who
//! gets what; this crate only makes and reads the objects. Its one network
//! call reads the chain a server presents, to check a join token's pin
//! before trusting the server (`discover.rs`).

#![forbid(unsafe_code)]

pub mod ca;
pub mod discover;
pub mod files;
pub mod identity;
pub mod secrets;
pub mod token;

pub use ca::{Ca, CertKey, CA_LIFETIME, LEAF_LIFETIME};

/// ring's TLS with its TLS 1.3 cipher suites only: a peer that offers no
/// TLS 1.3 finds nothing in common and the handshake fails.
pub fn tls13_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS13);
    provider
}

/// Makes [`tls13_provider`] the process's default, which tonic's TLS
/// (listeners and clients) builds on: every Skiff process speaks TLS 1.3
/// only. Call once, before any TLS is set up; a second call changes
/// nothing.
pub fn use_tls13_only() {
    let _ = tls13_provider().install_default();
}
pub use identity::{Identity, AGENT_DNS, SERVER_DNS};
pub use token::{BearerToken, JoinToken};

/// What can go wrong making or reading PKI objects; messages say which.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("identity: {0}")]
    Identity(String),
    #[error("{0}")]
    Token(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
