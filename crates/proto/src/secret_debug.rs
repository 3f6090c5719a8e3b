//! `Debug` for the messages that carry a secret (build.rs skips prost's):
//! everything but the secret, so a message logged whole leaks nothing.

use std::fmt;

use crate::pb;

const HIDDEN: &str = "<secret>";

impl fmt::Debug for pb::RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for pb::SetRegistryLoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRegistryLoginRequest")
            .field("namespace", &self.namespace)
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for pb::SecretsKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKeyResponse")
            .field("key", &HIDDEN)
            .field("key_id", &self.key_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let login = pb::RegistryLogin {
            registry: "r.lab:5000".into(),
            username: "alice".into(),
            password: "hunter2-pw".into(),
        };
        let set = pb::AllocationSet {
            registry_logins: [(
                "team".to_string(),
                pb::RegistryLogins {
                    logins: vec![login.clone()],
                },
            )]
            .into(),
            ..Default::default()
        };
        let req = pb::SetRegistryLoginRequest {
            namespace: "team".into(),
            registry: "r.lab:5000".into(),
            username: "alice".into(),
            password: "hunter2-pw".into(),
        };
        let key = pb::SecretsKeyResponse {
            key: b"hunter2-pw".to_vec(),
            key_id: "0011".into(),
        };
        for shown in [
            format!("{login:?}"),
            format!("{set:?}"),
            format!("{req:?}"),
            format!("{key:?}"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("<secret>"), "{shown}");
        }
        assert!(format!("{set:?}").contains("alice"));
    }
}
