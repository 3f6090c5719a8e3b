//! The access record: what `access.rs` changes, kept apart so the state
//! can hold it without importing the rules that change it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{CaRecord, RegistryLoginRecord, TokenRecord, UserRecord, UserTokenRecord};

/// The record every access change rewrites.
pub const ACCESS_KEY: &str = "access";

/// Access state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(default)]
    pub ca: Option<CaRecord>,
    /// Join tokens by id.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Node names a credential holds, with the index of the join that
    /// took each: another join under the name is refused until an admin
    /// removes the node.
    #[serde(default)]
    pub nodes: BTreeMap<String, u64>,
    /// Raft ids removed from the cluster: never given out again.
    #[serde(default)]
    pub removed_servers: BTreeSet<u64>,
    /// Users by name (revoked ones stay, so a name is never reused: a
    /// certificate names only its user).
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
    /// Users' bearer tokens by id.
    #[serde(default)]
    pub user_tokens: BTreeMap<String, UserTokenRecord>,
    /// Namespaces an admin described, by name (`default` needs none).
    #[serde(default)]
    pub namespaces: BTreeMap<String, skiff_model::namespace::Namespace>,
    /// The id of the servers' secrets key (the key itself never enters
    /// Raft: each server keeps it in its data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_key: Option<String>,
    /// Team queues an admin described, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, skiff_model::queue::Queue>,
    /// Registry logins by namespace, then registry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_logins: BTreeMap<String, BTreeMap<String, RegistryLoginRecord>>,
    /// Syncs from git by name, each with what its controller last did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub syncs: BTreeMap<String, skiff_model::sync::SyncRecord>,
}
