//! People who sign in with GitHub: users, their organisation memberships, and the credentials of
//! the OAuth web flow (CONTRACTS.md §8): authorization codes (10 minutes, single use) and user
//! access/refresh tokens (8 hours / 184 days). Credentials are stored as SHA-256 digests only.
//! A user sees an installation when it is on their own account or on an organisation they belong to.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use secrecy::SecretString;

use super::{
    digest, random_secret, Account, AccountType, Digest32, Installation, StateError, World,
};

/// A code is good for ten minutes after it is issued ([D3]).
pub(crate) const CODE_TTL: TimeDelta = TimeDelta::minutes(10);
/// `expires_in` of a GitHub App user token: always 28800 s ([D1]).
pub(crate) const ACCESS_TTL_S: i64 = 28_800;
/// `refresh_token_expires_in`: always 15897600 s, 184 days ([D1]).
pub(crate) const REFRESH_TTL_S: i64 = 15_897_600;

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub account: Account,
    /// Lower-case logins of the organisations the user belongs to.
    pub orgs: BTreeSet<String>,
}

/// What an authorization code stands for until it is exchanged.
#[derive(Debug, Clone)]
pub(crate) struct CodeGrant {
    pub user_id: u64,
    /// The callback URL the code was sent to; the exchange must name the same one if any.
    pub redirect_uri: String,
    /// PKCE `S256` challenge from step 1, if one was sent.
    pub code_challenge: Option<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct UserGrant {
    pub user_id: u64,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    user_id: u64,
    access: Digest32,
    expires_at: DateTime<Utc>,
}

/// A freshly issued token pair (plain text only here, on its way into the response).
pub(crate) struct IssuedTokens {
    pub access: SecretString,
    pub refresh: SecretString,
}

/// The users' part of the world.
#[derive(Debug, Default)]
pub(crate) struct Users {
    by_id: BTreeMap<u64, User>,
    codes: BTreeMap<Digest32, CodeGrant>,
    access: BTreeMap<Digest32, UserGrant>,
    refresh: BTreeMap<Digest32, RefreshGrant>,
}

/// 20 lower-case hex characters, the shape of GitHub's codes.
fn random_code() -> String {
    let bytes: [u8; 10] = rand::thread_rng().gen();
    hex::encode(bytes)
}

impl World {
    /// Adds a user (a `User` account) who belongs to `orgs`; organisation accounts are made as
    /// needed, so a membership may precede the App's installation on that organisation.
    pub(crate) fn create_user(&mut self, login: &str, orgs: &[String]) -> Result<User, StateError> {
        let valid =
            !login.is_empty() && login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(StateError::Invalid(format!("invalid user login {login:?}")));
        }
        if let Some(existing) = self.accounts.get(&login.to_ascii_lowercase()) {
            if existing.kind != AccountType::User {
                return Err(StateError::Conflict(format!(
                    "{login} already exists as an Organization"
                )));
            }
            if self.users.by_id.contains_key(&existing.id) {
                return Err(StateError::Conflict(format!("user {login} already exists")));
            }
        }
        for org in orgs {
            if let Some(existing) = self.accounts.get(&org.to_ascii_lowercase()) {
                if existing.kind != AccountType::Organization {
                    return Err(StateError::Conflict(format!(
                        "{org} already exists as a User"
                    )));
                }
            }
        }
        let mut memberships = BTreeSet::new();
        for org in orgs {
            if org.is_empty() || org.contains('/') {
                return Err(StateError::Invalid(format!("invalid organisation {org:?}")));
            }
            let account = self.account(org, AccountType::Organization);
            memberships.insert(account.login.to_ascii_lowercase());
        }
        let user = User {
            account: self.account(login, AccountType::User),
            orgs: memberships,
        };
        self.users.by_id.insert(user.account.id, user.clone());
        Ok(user)
    }

    pub(crate) fn user_by_login(&self, login: &str) -> Option<&User> {
        let account = self.accounts.get(&login.to_ascii_lowercase())?;
        self.users.by_id.get(&account.id)
    }

    pub(crate) fn users(&self) -> impl Iterator<Item = &User> {
        self.users.by_id.values()
    }

    /// Installations of the App on the user's own account or on an organisation they belong
    /// to, by id.
    pub(crate) fn installations_of_user(&self, user: &User) -> Vec<&Installation> {
        self.installations
            .values()
            .filter(|i| {
                i.account.id == user.account.id
                    || (i.account.kind == AccountType::Organization
                        && user.orgs.contains(&i.account.login.to_ascii_lowercase()))
            })
            .collect()
    }

    // ---- the web flow's credentials ----

    pub(crate) fn issue_code(&mut self, grant: CodeGrant) -> SecretString {
        let code = random_code();
        self.users.codes.insert(digest(&code), grant);
        SecretString::from(code)
    }

    /// Takes a code out of circulation (single use) if it is known and unexpired.
    pub(crate) fn take_code(&mut self, code: &str, now: DateTime<Utc>) -> Option<CodeGrant> {
        self.users.codes.retain(|_, g| g.expires_at > now);
        self.users.codes.remove(&digest(code))
    }

    pub(crate) fn issue_user_tokens(&mut self, user_id: u64, now: DateTime<Utc>) -> IssuedTokens {
        let access = random_secret("ghu_");
        let refresh = random_secret("ghr_");
        let access_digest = digest(&access);
        self.users.access.insert(
            access_digest,
            UserGrant {
                user_id,
                expires_at: now + TimeDelta::seconds(ACCESS_TTL_S),
            },
        );
        self.users.refresh.insert(
            digest(&refresh),
            RefreshGrant {
                user_id,
                access: access_digest,
                expires_at: now + TimeDelta::seconds(REFRESH_TTL_S),
            },
        );
        IssuedTokens {
            access: SecretString::from(access),
            refresh: SecretString::from(refresh),
        }
    }

    /// Uses a refresh token: it and its access token stop working, a new pair is issued ([D2]).
    pub(crate) fn refresh_user_tokens(
        &mut self,
        refresh: &str,
        now: DateTime<Utc>,
    ) -> Option<IssuedTokens> {
        let grant = self.users.refresh.remove(&digest(refresh))?;
        self.users.access.remove(&grant.access);
        (grant.expires_at > now).then(|| self.issue_user_tokens(grant.user_id, now))
    }

    /// The user a user access token acts for, if it is known and unexpired.
    pub(crate) fn user_for_token(&self, token: &str, now: DateTime<Utc>) -> Option<&User> {
        let grant = self.users.access.get(&digest(token))?;
        if grant.expires_at <= now {
            return None;
        }
        self.users.by_id.get(&grant.user_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_user_sees_installations_of_their_orgs_and_their_own_account_only() {
        let now = Utc::now();
        let mut world = World::default();
        let acme = world
            .create_installation("acme", AccountType::Organization, now)
            .unwrap();
        world
            .create_installation("globex", AccountType::Organization, now)
            .unwrap();
        let mona = world.create_user("mona", &["ACME".into()]).unwrap();
        let own = world
            .create_installation("mona", AccountType::User, now)
            .unwrap();
        let ids: Vec<u64> = world
            .installations_of_user(&mona)
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec![acme.id, own.id]);
        let nobody = world.create_user("nobody", &[]).unwrap();
        assert!(world.installations_of_user(&nobody).is_empty());
        assert!(world.create_user("mona", &[]).is_err(), "duplicate");
        assert!(
            world.create_user("x", &["mona".into()]).is_err(),
            "a user is no org"
        );
    }

    #[test]
    fn codes_are_single_use_and_expire_after_ten_minutes() {
        let now = Utc::now();
        let mut world = World::default();
        let user = world.create_user("mona", &[]).unwrap();
        let grant = |at| CodeGrant {
            user_id: user.account.id,
            redirect_uri: "http://127.0.0.1/cb".into(),
            code_challenge: None,
            expires_at: at + CODE_TTL,
        };
        let code = world.issue_code(grant(now));
        let code = code.expose_secret().to_owned();
        assert_eq!(code.len(), 20);
        assert!(world.take_code(&code, now).is_some());
        assert!(world.take_code(&code, now).is_none(), "used once");
        let late = world.issue_code(grant(now)).expose_secret().to_owned();
        assert!(world.take_code(&late, now + CODE_TTL).is_none(), "expired");
    }

    #[test]
    fn refreshing_retires_both_old_tokens() {
        let now = Utc::now();
        let mut world = World::default();
        let user = world.create_user("mona", &[]).unwrap();
        let first = world.issue_user_tokens(user.account.id, now);
        let access = first.access.expose_secret().to_owned();
        let refresh = first.refresh.expose_secret().to_owned();
        assert!(access.starts_with("ghu_") && refresh.starts_with("ghr_"));
        assert!(world.user_for_token(&access, now).is_some());
        assert!(world
            .user_for_token(&access, now + TimeDelta::seconds(ACCESS_TTL_S))
            .is_none());
        let second = world.refresh_user_tokens(&refresh, now).unwrap();
        assert!(world.user_for_token(&access, now).is_none());
        assert!(world.refresh_user_tokens(&refresh, now).is_none());
        assert!(world
            .user_for_token(second.access.expose_secret(), now)
            .is_some());
    }
}
