//! Newtypes for the domain. Each one says what a string or number *is*, so a
//! service name can never be passed where an environment name belongs, and
//! each knows how it is written to the database (as its plain inner value).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value without validation; validation happens where the
            /// value enters convoy (config parsing, webhook parsing).
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A git commit id, as 40 (SHA-1) or 64 (SHA-256) hex digits.
    CommitSha
);
string_newtype!(
    /// An environment name from `convoy.yml` (`[a-z0-9][a-z0-9._-]{0,62}`).
    EnvName
);
string_newtype!(
    /// A service name from `convoy.yml`.
    ServiceName
);
string_newtype!(
    /// A wave name from `convoy.yml` (or the implicit `rest`).
    WaveName
);
string_newtype!(
    /// A rollout's id: opaque, URL-safe, unique.
    RolloutId
);
string_newtype!(
    /// `owner/name` of a GitHub repository.
    RepoName
);
string_newtype!(
    /// A branch name without `refs/heads/`.
    BranchName
);
string_newtype!(
    /// A GitHub webhook delivery id (`X-GitHub-Delivery`).
    DeliveryId
);

impl RepoName {
    /// Splits `owner/name`; `None` unless both parts are there and there
    /// is exactly one slash.
    pub fn split(&self) -> Option<(&str, &str)> {
        self.0
            .split_once('/')
            .filter(|(owner, name)| !owner.is_empty() && !name.is_empty() && !name.contains('/'))
    }
}

/// A GitHub App installation id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstallationId(pub i64);

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_name_splits_owner_and_name() {
        assert_eq!(RepoName::new("acme/app").split(), Some(("acme", "app")));
        assert_eq!(RepoName::new("noslash").split(), None);
        for bad in ["acme/", "/app", "/", "a/b/c"] {
            assert_eq!(RepoName::new(bad).split(), None, "{bad}");
        }
    }

    #[test]
    fn newtypes_serialize_as_their_inner_value() {
        let env = EnvName::new("acme-eu");
        assert_eq!(serde_json::to_string(&env).unwrap(), "\"acme-eu\"");
        assert_eq!(
            serde_json::from_str::<InstallationId>("42").unwrap(),
            InstallationId(42)
        );
    }
}
