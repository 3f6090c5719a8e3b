//! Who a certificate says its holder is. Every leaf the cluster CA signs
//! names exactly one identity in one URI SAN, SPIFFE-style:
//! `spiffe://skiff/server/<raft id>`, `spiffe://skiff/node/<name>`,
//! `spiffe://skiff/user/<name>`. Authorization reads that URI and nothing
//! else (not the CN, not a request field).

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// The trust domain of every identity URI.
pub const TRUST_DOMAIN: &str = "skiff";
/// The DNS name every server certificate carries: clients verify servers
/// by it, whatever address they dialled.
pub const SERVER_DNS: &str = "server.skiff";
/// A DNS name every node's certificate also carries, besides its own: what
/// Prometheus checks when it scrapes agents' metrics over HTTPS (it cannot
/// check a name per target). Servers reaching an agent check the node's
/// own name.
pub const AGENT_DNS: &str = "agent.skiff";

/// What the holder of a certificate is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A control-plane server, by Raft id.
    Server(u64),
    /// A node's agent, by node name.
    Node(String),
    /// A person or a script, by user name.
    User(String),
}

impl Identity {
    /// The URI SAN that names it.
    pub fn uri(&self) -> String {
        match self {
            Identity::Server(id) => format!("spiffe://{TRUST_DOMAIN}/server/{id}"),
            Identity::Node(name) => format!("spiffe://{TRUST_DOMAIN}/node/{name}"),
            Identity::User(name) => format!("spiffe://{TRUST_DOMAIN}/user/{name}"),
        }
    }

    /// Reads an identity URI.
    pub fn from_uri(uri: &str) -> Result<Identity, PkiError> {
        let bad = || PkiError::Identity(format!("{uri:?} is not a Skiff identity"));
        let rest = uri
            .strip_prefix(&format!("spiffe://{TRUST_DOMAIN}/"))
            .ok_or_else(bad)?;
        let (kind, name) = rest.split_once('/').ok_or_else(bad)?;
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        match kind {
            "server" => Ok(Identity::Server(name.parse().map_err(|_| bad())?)),
            "node" => Ok(Identity::Node(name.to_string())),
            "user" => Ok(Identity::User(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The identity a certificate (DER) names: its one Skiff URI SAN.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::Identity(format!("not a certificate: {e}")))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| PkiError::Identity(format!("bad alternative names: {e}")))?
            .ok_or_else(|| PkiError::Identity("the certificate names no identity".into()))?;
        let uris: Vec<&str> = sans
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] => Identity::from_uri(one),
            [] => Err(PkiError::Identity(
                "the certificate names no identity".into(),
            )),
            _ => Err(PkiError::Identity(
                "the certificate names more than one identity".into(),
            )),
        }
    }

    /// The DNS name a TLS client checks when it dials this identity's
    /// listener: servers share [`SERVER_DNS`]; a node's agent has a name of
    /// its own, derived from its node name (which may hold characters DNS
    /// does not), so a server reaching "node a" cannot be answered by node b.
    pub fn dns_name(&self) -> Option<String> {
        match self {
            Identity::Server(_) => Some(SERVER_DNS.to_string()),
            Identity::Node(name) => Some(node_dns(name)),
            Identity::User(_) => None,
        }
    }
}

/// `n-<16 hex of sha256(name)>.node.skiff`.
pub fn node_dns(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    format!("n-{}.node.{TRUST_DOMAIN}", &hex::encode(digest)[..16])
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Server(id) => write!(f, "server {id}"),
            Identity::Node(name) => write!(f, "node {name}"),
            Identity::User(name) => write!(f, "user {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_survive_their_uris_and_odd_ones_are_refused() {
        for id in [
            Identity::Server(3),
            Identity::Node("gpu-7.lab_2".into()),
            Identity::User("ada".into()),
        ] {
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
        for bad in [
            "spiffe://other/node/a",
            "spiffe://skiff/node/",
            "spiffe://skiff/node/a/b",
            "spiffe://skiff/server/x",
            "spiffe://skiff/admin/a",
            "https://skiff/node/a",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_dns_names_are_dns_labels_and_differ_per_node() {
        let a = node_dns("A_node.1");
        assert!(a.ends_with(".node.skiff"));
        assert!(a
            .split('.')
            .next()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert_ne!(node_dns("a"), node_dns("b"));
        assert_eq!(node_dns("a"), node_dns("a"));
    }
}
