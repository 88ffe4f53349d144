//! Who may run a command: a pure decision over facts the edge looked up on
//! GitHub (the commenter's repository permission and, for `approve`, team
//! memberships). `author_association` is never an input: it is only a hint.

use std::fmt;

use serde::Serialize;

use super::table::{Access, Verb};

/// The commenter's repository permission, as `permission` in GitHub's
/// `GET /repos/{owner}/{repo}/collaborators/{user}/permission` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    None,
    Read,
    Write,
    Admin,
}

impl Permission {
    /// Reads GitHub's value. `maintain` and `triage` (what `role_name` may
    /// hold) count as write and read, as the `permission` field reports
    /// them; anything unknown counts as none, so a surprise never grants.
    pub fn from_github(value: &str) -> Permission {
        match value.trim().to_ascii_lowercase().as_str() {
            "admin" => Permission::Admin,
            "write" | "maintain" => Permission::Write,
            "read" | "triage" => Permission::Read,
            _ => Permission::None,
        }
    }

    /// Admin and write both count as write.
    pub fn can_write(self) -> bool {
        self >= Permission::Write
    }

    pub fn label(self) -> &'static str {
        match self {
            Permission::None => "none",
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// A team named in `policy.approvers` as `@org/team`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TeamRef {
    pub org: String,
    /// The team's slug, as in `GET /orgs/{org}/teams/{team_slug}/memberships/{username}`.
    pub slug: String,
}

impl TeamRef {
    fn matches(&self, other: &TeamRef) -> bool {
        self.org.eq_ignore_ascii_case(&other.org) && self.slug.eq_ignore_ascii_case(&other.slug)
    }
}

impl fmt::Display for TeamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}/{}", self.org, self.slug)
    }
}

/// One entry of `policy.approvers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Approver {
    Login(String),
    Team(TeamRef),
}

impl Approver {
    /// `@org/team` is a team, `alice` or `@alice` a login. Blank entries and
    /// malformed teams (`@org/`, `@/team`, `@a/b/c`) are `None`: they match
    /// nobody.
    pub fn parse(entry: &str) -> Option<Approver> {
        let entry = entry.trim();
        let bare = entry.strip_prefix('@').unwrap_or(entry);
        if bare.is_empty() || bare.contains(char::is_whitespace) {
            return None;
        }
        match bare.split_once('/') {
            None => Some(Approver::Login(bare.to_owned())),
            Some((org, slug)) if !org.is_empty() && !slug.is_empty() && !slug.contains('/') => {
                Some(Approver::Team(TeamRef {
                    org: org.to_owned(),
                    slug: slug.to_owned(),
                }))
            }
            Some(_) => None,
        }
    }
}

/// The facts a decision needs.
#[derive(Clone, Copy, Debug)]
pub struct AuthInput<'a> {
    pub verb: Verb,
    /// The commenter's (or clicker's) login.
    pub user: &'a str,
    pub permission: Permission,
    /// `policy.approvers` as written in `convoy.yml`.
    pub approvers: &'a [String],
    /// The pull request's author; `None` off a pull request (drift issue).
    pub pr_author: Option<&'a str>,
    pub forbid_self_approval: bool,
}

/// The outcome of an authorization decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Refused(Refusal),
}

/// Why someone may not run a command, saying what would be needed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("`{}` needs write permission on the repository; {user} has {}", verb.name(), have.label())]
    NeedsWrite {
        verb: Verb,
        user: String,
        have: Permission,
    },
    #[error("`{}` needs one of the approvers ({}); {user} is not one", verb.name(), approvers.join(", "))]
    NotAnApprover {
        verb: Verb,
        user: String,
        /// `policy.approvers` as written.
        approvers: Vec<String>,
    },
    #[error(
        "{user} opened this pull request and may not approve its rollout (policy.forbid_self_approval)"
    )]
    SelfApproval { verb: Verb, user: String },
}

fn is_listed_login(user: &str, approvers: &[Approver]) -> bool {
    approvers
        .iter()
        .any(|a| matches!(a, Approver::Login(login) if login.eq_ignore_ascii_case(user)))
}

fn is_self_approval(input: &AuthInput<'_>) -> bool {
    input.forbid_self_approval
        && input
            .pr_author
            .is_some_and(|author| author.eq_ignore_ascii_case(input.user))
}

fn parsed_approvers(input: &AuthInput<'_>) -> Vec<Approver> {
    input
        .approvers
        .iter()
        .filter_map(|a| Approver::parse(a))
        .collect()
}

/// The teams whose membership of `input.user` the edge must look up before
/// calling [`authorize`]: only for `approve`, only when `policy.approvers`
/// is set, the user has write and is not listed by login (otherwise the
/// answer could not change the decision). Empty means no lookup.
pub fn teams_to_check(input: &AuthInput<'_>) -> Vec<TeamRef> {
    if input.verb.access() != Access::Approver
        || input.approvers.is_empty()
        || !input.permission.can_write()
        || is_self_approval(input)
    {
        return Vec::new();
    }
    let approvers = parsed_approvers(input);
    if is_listed_login(input.user, &approvers) {
        return Vec::new();
    }
    let mut teams: Vec<TeamRef> = Vec::new();
    for approver in approvers {
        if let Approver::Team(team) = approver
            && !teams.iter().any(|t| t.matches(&team))
        {
            teams.push(team);
        }
    }
    teams
}

/// Decides whether `input.user` may run `input.verb`. `member_of` holds the
/// teams (from [`teams_to_check`]) the lookup found the user to be an
/// active member of; a team not in it counts as "not a member", so a failed
/// lookup never grants.
///
/// Rules: `anyone` commands are always allowed. `write` commands need
/// admin or write. `approve` needs write too and, when `policy.approvers`
/// is set, a listed login or membership of a listed team: the list narrows
/// who of the writers may approve, it never lets someone without write
/// steer a rollout (a login left in the list after its owner lost access
/// grants nothing). With `forbid_self_approval`, the pull request's author
/// may never approve, whatever else holds.
pub fn authorize(input: &AuthInput<'_>, member_of: &[TeamRef]) -> Decision {
    let refuse = |refusal| Decision::Refused(refusal);
    match input.verb.access() {
        Access::Anyone => Decision::Allowed,
        Access::Write if input.permission.can_write() => Decision::Allowed,
        Access::Write => refuse(Refusal::NeedsWrite {
            verb: input.verb,
            user: input.user.to_owned(),
            have: input.permission,
        }),
        Access::Approver => {
            if is_self_approval(input) {
                return refuse(Refusal::SelfApproval {
                    verb: input.verb,
                    user: input.user.to_owned(),
                });
            }
            if !input.permission.can_write() {
                return refuse(Refusal::NeedsWrite {
                    verb: input.verb,
                    user: input.user.to_owned(),
                    have: input.permission,
                });
            }
            if input.approvers.is_empty() {
                return Decision::Allowed;
            }
            let approvers = parsed_approvers(input);
            let listed = is_listed_login(input.user, &approvers)
                || approvers.iter().any(|a| match a {
                    Approver::Team(team) => member_of.iter().any(|m| m.matches(team)),
                    Approver::Login(_) => false,
                });
            if listed {
                Decision::Allowed
            } else {
                refuse(Refusal::NotAnApprover {
                    verb: input.verb,
                    user: input.user.to_owned(),
                    approvers: input.approvers.to_vec(),
                })
            }
        }
    }
}
