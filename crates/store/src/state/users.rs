//! Users: a name (what its certificate says) and a role (read from here on
//! every call, so a change or a revocation holds from the next call on).
//! A name is never given out twice: a revoked user's certificate still
//! names it until it expires.

use super::access_record::ACCESS_KEY;
use super::refusal::Refusal;
use super::table::Table;
use super::{Outcome, State};
use crate::command::{UserRecord, UserTokenRecord};

/// The administrator `admin.conf` holds; not a record, never revoked.
pub const ADMIN_USER: &str = "admin";

impl State {
    pub(super) fn create_user(&mut self, index: u64, user: &UserRecord) -> Outcome {
        if user.name == ADMIN_USER {
            return Outcome::Refused(Refusal::UserExists {
                name: user.name.clone(),
                revoked: false,
            });
        }
        if let Some(known) = self.access.users.get(&user.name) {
            return Outcome::Refused(Refusal::UserExists {
                name: user.name.clone(),
                revoked: known.revoked,
            });
        }
        let mut user = user.clone();
        user.create_index = index;
        user.revoked = false;
        self.access.users.insert(user.name.clone(), user);
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    /// A bearer token for a user who exists and is not revoked.
    pub(super) fn create_user_token(&mut self, index: u64, token: &UserTokenRecord) -> Outcome {
        if self.access.users.get(&token.user).is_none_or(|u| u.revoked) {
            return Outcome::Refused(Refusal::UserNotFound {
                name: token.user.clone(),
            });
        }
        if self.access.user_tokens.contains_key(&token.id) {
            return Outcome::Refused(Refusal::TokenExists {
                id: token.id.clone(),
            });
        }
        let mut token = token.clone();
        token.create_index = index;
        token.revoked = false;
        self.access.user_tokens.insert(token.id.clone(), token);
        self.touch(Table::Access, ACCESS_KEY);
        Outcome::AccessChanged
    }

    pub(super) fn revoke_user_token(&mut self, id: &str) -> Outcome {
        match self.access.user_tokens.get_mut(id) {
            Some(t) => {
                t.revoked = true;
                self.touch(Table::Access, ACCESS_KEY);
                Outcome::AccessChanged
            }
            None => Outcome::Refused(Refusal::TokenNotFound { id: id.to_string() }),
        }
    }

    pub(super) fn revoke_user(&mut self, name: &str) -> Outcome {
        match self.access.users.get_mut(name) {
            Some(u) => {
                u.revoked = true;
                self.touch(Table::Access, ACCESS_KEY);
                Outcome::AccessChanged
            }
            None => Outcome::Refused(Refusal::UserNotFound {
                name: name.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, UserRole};

    fn user(name: &str, role: UserRole) -> Command {
        Command::CreateUser {
            user: UserRecord {
                name: name.into(),
                role,
                namespaces: Vec::new(),
                revoked: false,
                create_index: 0,
            },
        }
    }

    #[test]
    fn a_user_name_is_given_out_once_and_admin_never() {
        let mut s = State::default();
        assert_eq!(
            s.apply(1, &user("ann", UserRole::Viewer)),
            Outcome::AccessChanged
        );
        assert_eq!(s.access.users["ann"].create_index, 1);
        let again = s.apply(2, &user("ann", UserRole::Admin));
        assert!(matches!(
            again,
            Outcome::Refused(Refusal::UserExists { .. })
        ));
        assert_eq!(s.access.users["ann"].role, UserRole::Viewer);
        assert!(matches!(
            s.apply(3, &user("admin", UserRole::Viewer)),
            Outcome::Refused(Refusal::UserExists { .. })
        ));
        assert_eq!(
            s.apply(4, &Command::RevokeUser { name: "ann".into() }),
            Outcome::AccessChanged
        );
        assert!(s.access.users["ann"].revoked);
        match s.apply(5, &user("ann", UserRole::Viewer)) {
            Outcome::Refused(r) => assert!(r.to_string().contains("never given out again"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.apply(6, &Command::RevokeUser { name: "bob".into() }),
            Outcome::Refused(Refusal::UserNotFound { .. })
        ));
    }
}
