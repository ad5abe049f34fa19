//! Identifier newtypes. GitHub's ids are integers (int64); a delivery id is GitHub's GUID string.
//! Keeping them apart in the type system stops a job id being used where a run id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// A GitHub App installation (one tenant).
    InstallationId
);
int_id!(
    /// A GitHub repository id.
    RepoId
);
int_id!(
    /// A GitHub Actions workflow job id.
    JobId
);
int_id!(
    /// A GitHub Actions workflow run id.
    RunId
);

/// The `X-GitHub-Delivery` GUID. Redeliveries keep it, so it is the deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(String);

/// Why a delivery id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("a delivery id must be 1 to 100 characters of letters, digits and '-'")]
    BadDeliveryId,
    #[error("a repository must be written as owner/name")]
    BadRepoName,
}

impl DeliveryId {
    /// Accepts GitHub's GUIDs and anything of the same alphabet; refuses what could not be one
    /// (empty, overlong, or carrying characters that have no business in a log line).
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok = !raw.is_empty()
            && raw.len() <= 100
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError::BadDeliveryId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `owner/name` of a repository, as GitHub writes `full_name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoFullName {
    owner: String,
    name: String,
}

impl RepoFullName {
    pub fn new(owner: &str, name: &str) -> Result<Self, IdError> {
        let valid = |s: &str| !s.is_empty() && !s.contains('/') && s.len() <= 100;
        if valid(owner) && valid(name) {
            Ok(Self {
                owner: owner.to_owned(),
                name: name.to_owned(),
            })
        } else {
            Err(IdError::BadRepoName)
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl TryFrom<String> for RepoFullName {
    type Error = IdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl std::str::FromStr for RepoFullName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (owner, name) = s.split_once('/').ok_or(IdError::BadRepoName)?;
        Self::new(owner, name)
    }
}

impl From<RepoFullName> for String {
    fn from(value: RepoFullName) -> Self {
        value.to_string()
    }
}

impl fmt::Display for RepoFullName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_accept_guids_and_refuse_junk() {
        assert!(DeliveryId::parse("0b989ba4-242f-11e5-81e1-c7b6966d2516").is_ok());
        for bad in ["", "a b", "x\ny", "../etc", &"a".repeat(101)] {
            assert_eq!(
                DeliveryId::parse(bad),
                Err(IdError::BadDeliveryId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn repo_full_names_round_trip() {
        let repo: RepoFullName = "octo-org/hello".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(repo.owner(), "octo-org");
        assert_eq!(repo.name(), "hello");
        assert_eq!(repo.to_string(), "octo-org/hello");
        for bad in ["nohash", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<RepoFullName>().is_err(), "{bad}");
        }
    }
}
