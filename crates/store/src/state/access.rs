//! Who may join: the cluster CA, join tokens (their secrets only as
//! hashes), the node names joined credentials hold, and server ids that
//! were removed. The secret of a token never enters Raft: the server that
//! takes a join compares hashes, then proposes the join, which the state
//! machine checks again (token known, not revoked, not expired at the time
//! the server read, role, name free) before anything is signed.

use super::access_record::ACCESS_KEY;
use super::refusal::Refusal;
use super::table::Table;
use super::{Outcome, State};
use crate::command::{CaRecord, JoinRole, Joiner, TokenRecord};

impl State {
    fn touch_access(&mut self) {
        self.touch(Table::Access, ACCESS_KEY);
    }

    /// Records the cluster CA; the same one again changes nothing, another
    /// is refused (a cluster has one CA).
    pub(super) fn set_ca(&mut self, ca: &CaRecord) -> Outcome {
        match &self.access.ca {
            Some(known) if known == ca => Outcome::AccessChanged,
            Some(_) => Outcome::Refused(Refusal::CaAlreadySet),
            None => {
                self.access.ca = Some(ca.clone());
                self.touch_access();
                Outcome::AccessChanged
            }
        }
    }

    /// A new certificate for the cluster's CA: only with the same key (a
    /// renewal, not a replacement), so everything it signed stays valid.
    pub(super) fn renew_ca(&mut self, ca: &CaRecord) -> Outcome {
        match &self.access.ca {
            Some(known) if known.key_pem == ca.key_pem => {
                if known != ca {
                    self.access.ca = Some(ca.clone());
                    self.touch_access();
                }
                Outcome::AccessChanged
            }
            Some(_) => Outcome::Refused(Refusal::Invalid {
                why: "ca: a renewal must keep the cluster CA's key".into(),
            }),
            None => Outcome::Refused(Refusal::Invalid {
                why: "ca: there is no cluster CA to renew yet".into(),
            }),
        }
    }

    pub(super) fn create_token(&mut self, index: u64, token: &TokenRecord) -> Outcome {
        if self.access.tokens.contains_key(&token.id) {
            return Outcome::Refused(Refusal::TokenExists {
                id: token.id.clone(),
            });
        }
        let mut token = token.clone();
        token.create_index = index;
        token.uses = 0;
        token.revoked = false;
        self.access.tokens.insert(token.id.clone(), token);
        self.touch_access();
        Outcome::AccessChanged
    }

    pub(super) fn revoke_token(&mut self, id: &str) -> Outcome {
        let Some(t) = self.access.tokens.get_mut(id) else {
            return Outcome::Refused(Refusal::TokenNotFound { id: id.to_string() });
        };
        t.revoked = true;
        self.touch_access();
        Outcome::AccessChanged
    }

    /// A join the taking server checked the secret of: checked again here
    /// (the token may have been revoked meanwhile), then recorded.
    pub(super) fn join(
        &mut self,
        index: u64,
        token_id: &str,
        secret_hash: &str,
        joiner: &Joiner,
        at_ms: u64,
    ) -> Outcome {
        let Some(t) = self.access.tokens.get(token_id) else {
            return Outcome::Refused(Refusal::TokenRefused {
                why: "unknown token".into(),
            });
        };
        let role = match joiner {
            Joiner::Node { .. } => JoinRole::Node,
            Joiner::Server { .. } => JoinRole::Server,
        };
        let why = if t.secret_hash != secret_hash {
            Some("unknown token".to_string())
        } else if t.revoked {
            Some(format!("token {token_id} was revoked"))
        } else if at_ms >= t.expires_ms {
            Some(format!("token {token_id} has expired"))
        } else if t.role != role {
            Some(format!(
                "token {token_id} joins a {}, not a {}",
                t.role.as_str(),
                role.as_str()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Outcome::Refused(Refusal::TokenRefused { why });
        }
        match joiner {
            Joiner::Node { name } => {
                if self.access.nodes.contains_key(name) {
                    return Outcome::Refused(Refusal::NodeNameTaken { node: name.clone() });
                }
                self.access.nodes.insert(name.clone(), index);
            }
            Joiner::Server { id } => {
                if self.access.removed_servers.contains(id) {
                    return Outcome::Refused(Refusal::ServerIdRemoved { id: *id });
                }
                if self.servers.contains_key(id) {
                    return Outcome::Refused(Refusal::ServerIdTaken { id: *id });
                }
            }
        }
        if let Some(t) = self.access.tokens.get_mut(token_id) {
            t.uses = t.uses.saturating_add(1);
        }
        self.touch_access();
        Outcome::AccessChanged
    }

    /// `skiff node remove`: the node is gone for good. What it ran is lost
    /// (and replaced elsewhere, as for a node that went down), its record
    /// goes, and its name is free for a new credential (a reinstalled
    /// machine joins again under it).
    pub(super) fn remove_node(&mut self, index: u64, name: &str) -> Outcome {
        let ready = self
            .nodes
            .get(name)
            .is_some_and(|n| n.status == skiff_model::NodeStatus::Ready);
        if !self.nodes.contains_key(name) && !self.access.nodes.contains_key(name) {
            return Outcome::Refused(Refusal::node_not_found(name));
        }
        if ready {
            self.set_node_status(
                index,
                name,
                skiff_model::NodeStatus::Down,
                "removed by an operator",
            );
        }
        // Gone for good: nothing it ran comes back.
        let lost: Vec<String> = self
            .allocs_on_node(name)
            .into_iter()
            .filter(|a| {
                a.node == name
                    && a.status == skiff_model::AllocStatus::Lost
                    && a.desired == skiff_model::DesiredStatus::Run
            })
            .map(|a| a.id.clone())
            .collect();
        for id in lost {
            if let Some(a) = self.allocs.get_mut(&id) {
                a.desired = skiff_model::DesiredStatus::Stop;
                a.modify_index = index;
            }
            self.touch(Table::Alloc, &id);
        }
        if self.nodes.remove(name).is_some() {
            self.touch(Table::Node, name);
        }
        if self.access.nodes.remove(name).is_some() {
            self.touch_access();
        }
        Outcome::NodeRemoved
    }

    /// Remembers that a server left, so its id is never reused.
    pub(crate) fn remember_removed_server(&mut self, id: u64) {
        if self.access.removed_servers.insert(id) {
            self.touch_access();
        }
    }

    /// Drops tokens that expired more than a day before `now_ms`.
    pub(super) fn prune_tokens(&mut self, now_ms: u64) {
        let before = self.access.tokens.len();
        self.access
            .tokens
            .retain(|_, t| t.expires_ms.saturating_add(24 * 3600 * 1000) > now_ms);
        let before_users = self.access.user_tokens.len();
        self.access
            .user_tokens
            .retain(|_, t| t.expires_ms.saturating_add(24 * 3600 * 1000) > now_ms);
        if self.access.tokens.len() != before || self.access.user_tokens.len() != before_users {
            self.touch_access();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn token(id: &str, role: JoinRole, expires_ms: u64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            role,
            secret_hash: format!("hash-of-{id}"),
            expires_ms,
            revoked: false,
            description: String::new(),
            uses: 0,
            create_index: 0,
        }
    }

    fn join(s: &mut State, index: u64, id: &str, hash: &str, joiner: Joiner, at: u64) -> Outcome {
        s.apply(
            index,
            &Command::Join {
                token_id: id.into(),
                secret_hash: hash.into(),
                joiner,
                at_ms: at,
            },
        )
    }

    fn refused(o: Outcome) -> String {
        match o {
            Outcome::Refused(r) => r.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_join_needs_a_live_token_of_its_role_and_a_free_name() {
        let mut s = State::default();
        let node = |n: &str| Joiner::Node { name: n.into() };
        s.apply(
            1,
            &Command::CreateToken {
                token: token("aaaaaa", JoinRole::Node, 1000),
            },
        );
        s.apply(
            2,
            &Command::CreateToken {
                token: token("bbbbbb", JoinRole::Server, 1000),
            },
        );
        assert_eq!(s.access.tokens["aaaaaa"].create_index, 1);

        assert_eq!(
            join(&mut s, 3, "aaaaaa", "hash-of-aaaaaa", node("n1"), 10),
            Outcome::AccessChanged
        );
        assert_eq!(s.access.tokens["aaaaaa"].uses, 1);
        // Many joins per token, but one credential per name.
        assert_eq!(
            join(&mut s, 4, "aaaaaa", "hash-of-aaaaaa", node("n2"), 10),
            Outcome::AccessChanged
        );
        assert!(
            refused(join(&mut s, 5, "aaaaaa", "hash-of-aaaaaa", node("n1"), 10))
                .contains("skiff node remove n1")
        );

        assert_eq!(
            refused(join(&mut s, 6, "aaaaaa", "wrong", node("n3"), 10)),
            "join refused: unknown token"
        );
        assert_eq!(
            refused(join(&mut s, 7, "zzzzzz", "x", node("n3"), 10)),
            "join refused: unknown token"
        );
        assert!(refused(join(
            &mut s,
            8,
            "aaaaaa",
            "hash-of-aaaaaa",
            node("n3"),
            1000
        ))
        .contains("expired"));
        assert!(
            refused(join(&mut s, 9, "bbbbbb", "hash-of-bbbbbb", node("n3"), 10))
                .contains("joins a server, not a node")
        );
        s.apply(
            10,
            &Command::RevokeToken {
                id: "aaaaaa".into(),
            },
        );
        assert!(
            refused(join(&mut s, 11, "aaaaaa", "hash-of-aaaaaa", node("n3"), 10))
                .contains("revoked")
        );
        assert!(
            !s.access.nodes.contains_key("n3"),
            "nothing recorded for a refused join"
        );

        // A removed server's id is never reused.
        s.remember_removed_server(4);
        assert!(refused(join(
            &mut s,
            12,
            "bbbbbb",
            "hash-of-bbbbbb",
            Joiner::Server { id: 4 },
            10
        ))
        .contains("never reused"));
        assert_eq!(
            join(
                &mut s,
                13,
                "bbbbbb",
                "hash-of-bbbbbb",
                Joiner::Server { id: 5 },
                10
            ),
            Outcome::AccessChanged
        );
    }

    #[test]
    fn removing_a_node_frees_its_name_and_loses_what_it_ran() {
        let mut s = State::default();
        s.apply(
            1,
            &Command::CreateToken {
                token: token("aaaaaa", JoinRole::Node, 1000),
            },
        );
        let n1 = || Joiner::Node { name: "n1".into() };
        join(&mut s, 2, "aaaaaa", "hash-of-aaaaaa", n1(), 10);
        assert_eq!(
            s.apply(3, &Command::RemoveNode { name: "n1".into() }),
            Outcome::NodeRemoved
        );
        assert_eq!(
            join(&mut s, 4, "aaaaaa", "hash-of-aaaaaa", n1(), 10),
            Outcome::AccessChanged
        );
        assert!(refused(s.apply(
            5,
            &Command::RemoveNode {
                name: "ghost".into()
            }
        ))
        .contains("not found"));
    }

    #[test]
    fn a_cluster_keeps_its_one_ca_and_expired_tokens_go_after_a_day() {
        let mut s = State::default();
        let ca = |k: &str| CaRecord {
            cert_pem: "cert".into(),
            key_pem: k.into(),
        };
        assert_eq!(
            s.apply(1, &Command::SetCa { ca: ca("k") }),
            Outcome::AccessChanged
        );
        assert_eq!(
            s.apply(2, &Command::SetCa { ca: ca("k") }),
            Outcome::AccessChanged
        );
        assert!(
            refused(s.apply(3, &Command::SetCa { ca: ca("other") })).contains("already has a CA")
        );
        assert!(
            !format!("{:?}", s.access).contains("\"k\""),
            "the key stays out of Debug"
        );

        s.apply(
            4,
            &Command::CreateToken {
                token: token("aaaaaa", JoinRole::Node, 1000),
            },
        );
        let day = 24 * 3600 * 1000;
        join(
            &mut s,
            5,
            "nonexistent",
            "x",
            Joiner::Node { name: "n".into() },
            1000 + day - 1,
        );
        assert!(
            s.access.tokens.contains_key("aaaaaa"),
            "kept a day past its expiry"
        );
        join(
            &mut s,
            6,
            "nonexistent",
            "x",
            Joiner::Node { name: "n".into() },
            1000 + day,
        );
        assert!(!s.access.tokens.contains_key("aaaaaa"));
    }
}
