//! Registry logins that namespaces hold, and the id of the servers'
//! secrets key they are sealed with. The passwords enter Raft only
//! sealed; a login sealed with any key but the cluster's is refused, so
//! every server that holds the cluster's key can open every login.

use super::access_record::ACCESS_KEY;
use super::refusal::Refusal;
use super::table::Table;
use super::{Outcome, State};
use crate::command::RegistryLoginRecord;

impl State {
    /// The first key id proposed is the cluster's; the same again changes
    /// nothing, another is refused (its server fetches the cluster's).
    pub(super) fn set_secrets_key(&mut self, key_id: &str) -> Outcome {
        match &self.access.secrets_key {
            Some(known) if known == key_id => Outcome::AccessChanged,
            Some(known) => Outcome::Refused(Refusal::SecretsKeyMismatch {
                sealed_with: key_id.to_string(),
                cluster: Some(known.clone()),
            }),
            None => {
                self.access.secrets_key = Some(key_id.to_string());
                self.touch(Table::Access, ACCESS_KEY);
                Outcome::AccessChanged
            }
        }
    }

    pub(super) fn put_registry_login(
        &mut self,
        namespace: &str,
        login: &RegistryLoginRecord,
    ) -> Outcome {
        if !self.namespace_exists(namespace) {
            return Outcome::Refused(Refusal::NamespaceMissing {
                name: namespace.to_string(),
            });
        }
        if self.access.secrets_key.as_deref() != Some(login.key_id.as_str()) {
            return Outcome::Refused(Refusal::SecretsKeyMismatch {
                sealed_with: login.key_id.clone(),
                cluster: self.access.secrets_key.clone(),
            });
        }
        self.access
            .registry_logins
            .entry(namespace.to_string())
            .or_default()
            .insert(login.registry.clone(), login.clone());
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    pub(super) fn delete_registry_login(&mut self, namespace: &str, registry: &str) -> Outcome {
        let logins = self.access.registry_logins.get_mut(namespace);
        if logins.and_then(|l| l.remove(registry)).is_none() {
            return Outcome::Refused(Refusal::RegistryLoginMissing {
                namespace: namespace.to_string(),
                registry: registry.to_string(),
            });
        }
        if self
            .access
            .registry_logins
            .get(namespace)
            .is_some_and(|l| l.is_empty())
        {
            self.access.registry_logins.remove(namespace);
        }
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, RegistryLoginRecord};
    use crate::state::refusal::Refusal;
    use crate::state::{Outcome, State};
    use skiff_model::namespace::Namespace;

    fn login(registry: &str, key_id: &str) -> RegistryLoginRecord {
        RegistryLoginRecord {
            registry: registry.into(),
            username: "alice".into(),
            sealed: "00ff".into(),
            key_id: key_id.into(),
            set_at_ms: 1,
        }
    }

    fn refused(o: Outcome) -> Refusal {
        match o {
            Outcome::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const KEY: &str = "00112233445566aa";

    #[test]
    fn logins_need_the_clusters_key_and_go_with_their_namespace() {
        let mut s = State::default();
        let put = |ns: &str, l| Command::PutRegistryLogin {
            namespace: ns.into(),
            login: l,
        };
        // No cluster key yet: nothing sealed is taken.
        let r = refused(s.apply(1, &put("default", login("r.lab:5000", KEY))));
        assert!(
            matches!(r, Refusal::SecretsKeyMismatch { cluster: None, .. }),
            "{r}"
        );
        s.apply(2, &Command::SetSecretsKey { key_id: KEY.into() });
        // The first key is the cluster's; another is refused.
        let r = refused(s.apply(
            3,
            &Command::SetSecretsKey {
                key_id: "ffffffffffffffff".into(),
            },
        ));
        assert!(r.to_string().contains(KEY), "{r}");
        let r = refused(s.apply(4, &put("default", login("r.lab:5000", "ffffffffffffffff"))));
        assert!(matches!(r, Refusal::SecretsKeyMismatch { .. }), "{r}");
        // A namespace that does not exist holds nothing.
        let r = refused(s.apply(5, &put("lab", login("r.lab:5000", KEY))));
        assert!(r.is_not_found(), "{r}");
        s.apply(
            6,
            &Command::PutNamespace {
                namespace: Namespace {
                    name: "lab".into(),
                    ..Namespace::default()
                },
            },
        );
        assert_eq!(
            s.apply(7, &put("lab", login("r.lab:5000", KEY))),
            Outcome::AccessChanged
        );
        s.apply(8, &put("default", login("r.lab:5000", KEY)));
        assert_eq!(s.access.registry_logins["lab"].len(), 1);
        // Deleting the namespace deletes its logins, not another's.
        s.apply(9, &Command::DeleteNamespace { name: "lab".into() });
        assert!(!s.access.registry_logins.contains_key("lab"));
        assert!(s.access.registry_logins.contains_key("default"));
        let del = |ns: &str| Command::DeleteRegistryLogin {
            namespace: ns.into(),
            registry: "r.lab:5000".into(),
        };
        assert_eq!(s.apply(10, &del("default")), Outcome::AccessChanged);
        assert!(s.access.registry_logins.is_empty());
        assert!(refused(s.apply(11, &del("default"))).is_not_found());
    }
}
