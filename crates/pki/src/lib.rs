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
pub mod token;

pub use ca::{Ca, CertKey, CA_LIFETIME, LEAF_LIFETIME};
pub use identity::{Identity, SERVER_DNS};
pub use token::JoinToken;

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
