//! The drift tracking issue (SPEC 6.6): one per repository, labelled
//! `convoy-drift`. Its body lists every drifted environment with expected,
//! found and since, and the exact commands; when no drift remains it is
//! closed with a final comment. Rendered from Tera templates embedded at
//! build time; pure.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::{Context as TeraContext, Tera};

use crate::store::{DriftKind, DriftRecord};

/// The issue's title: constant, so it is found and edited, not replaced.
pub const TITLE: &str = "convoy: environments changed outside convoy (drift)";

/// At most this many rows in the body (GitHub caps it at 65,536
/// characters); the rest are counted, and all are in `/api/drift`.
pub const MAX_ROWS: usize = 100;

const TEMPLATES: [(&str, &str); 3] = [
    (
        "drift/issue.md",
        include_str!("../../templates/drift/issue.md"),
    ),
    (
        "drift/closed.md",
        include_str!("../../templates/drift/closed.md"),
    ),
    (
        "drift/closing_comment.md",
        include_str!("../../templates/drift/closing_comment.md"),
    ),
];

static ENGINE: LazyLock<Result<Tera, String>> = LazyLock::new(|| {
    let mut tera = Tera::default();
    tera.autoescape_on(Vec::<&str>::new());
    tera.add_raw_templates(TEMPLATES)
        .map_err(|e| format!("drift templates: {e}"))?;
    Ok(tera)
});

fn render(name: &str, context: &impl Serialize) -> String {
    let rendered = match &*ENGINE {
        Ok(tera) => TeraContext::from_serialize(context)
            .map_err(|e| e.to_string())
            .and_then(|c| tera.render(name, &c).map_err(|e| e.to_string())),
        Err(e) => Err(e.clone()),
    };
    match rendered {
        Ok(text) => crate::report::render::tidy(&text),
        Err(error) => {
            tracing::error!(template = name, %error, "rendering the drift issue failed");
            "convoy could not render this issue; the error is in its log.\n".to_owned()
        }
    }
}

/// Where links point and how commands are written.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    /// `server.public_url`, without a trailing slash.
    pub public_url: String,
    /// `github.command_prefix`.
    pub prefix: String,
}

#[derive(Serialize)]
struct Row {
    environment: String,
    service: String,
    expected: String,
    found: String,
    since: String,
}

#[derive(Serialize)]
struct EnvCommands {
    environment: String,
    adopt: Vec<String>,
    resync: String,
}

#[derive(Serialize)]
struct IssueCtx {
    repo: String,
    count: usize,
    rows: Vec<Row>,
    more: usize,
    envs: Vec<EnvCommands>,
    api_url: String,
}

/// Longest version shown; agents' answers are untrusted.
const MAX_VERSION_CHARS: usize = 64;

/// A version as shown inside a code span in a table: a full commit SHA
/// shortened to 12 characters; anything an agent said made harmless
/// (no backticks, pipes or line breaks) and clipped.
pub fn short(version: &str) -> String {
    if version.len() == 40 && version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return version[..12].to_owned();
    }
    let clean: String = version
        .chars()
        .map(|c| match c {
            '`' => '\'',
            '|' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if clean.chars().count() > MAX_VERSION_CHARS {
        let cut: String = clean.chars().take(MAX_VERSION_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        clean
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// What the issue should say, from the repository's open records: `None`
/// when no drift is open (the issue should be closed).
pub fn issue_body(repo: &str, open: &[DriftRecord], opts: &IssueOptions) -> Option<String> {
    let drifted: Vec<&DriftRecord> = open
        .iter()
        .filter(|r| r.kind == DriftKind::Drift && r.is_open())
        .collect();
    if drifted.is_empty() {
        return None;
    }
    let mut by_env: BTreeMap<&str, Vec<&DriftRecord>> = BTreeMap::new();
    for r in &drifted {
        by_env.entry(r.environment.as_str()).or_default().push(r);
    }
    let rows: Vec<Row> = by_env
        .values()
        .flatten()
        .take(MAX_ROWS)
        .map(|r| Row {
            environment: r.environment.to_string(),
            service: r.service.to_string(),
            expected: short(&r.expected),
            found: short(r.found.as_deref().unwrap_or("")),
            since: when(&r.first_seen),
        })
        .collect();
    let prefix = &opts.prefix;
    let envs = by_env
        .iter()
        .take(MAX_ROWS)
        .map(|(env, records)| {
            let mut adopt = vec![format!("{prefix} adopt {env}")];
            if records.len() > 1 {
                // One service at a time, for those who keep only some.
                adopt.extend(
                    records
                        .iter()
                        .map(|r| format!("{prefix} adopt {env} {}", r.service)),
                );
            } else if let Some(r) = records.first() {
                adopt = vec![format!("{prefix} adopt {env} {}", r.service)];
            }
            EnvCommands {
                environment: (*env).to_owned(),
                adopt,
                resync: format!("{prefix} resync {env}"),
            }
        })
        .collect();
    let ctx = IssueCtx {
        repo: repo.to_owned(),
        count: by_env.len(),
        more: drifted.len().saturating_sub(MAX_ROWS),
        rows,
        envs,
        api_url: format!("{}/api/drift?repo={repo}", opts.public_url),
    };
    Some(render("drift/issue.md", &ctx))
}

#[derive(Serialize)]
struct ClosedCtx {
    repo: String,
}

/// The body of the closed issue.
pub fn closed_body(repo: &str) -> String {
    render(
        "drift/closed.md",
        &ClosedCtx {
            repo: repo.to_owned(),
        },
    )
}

#[derive(Serialize)]
struct Resolved {
    environment: String,
    service: String,
    how: String,
}

#[derive(Serialize)]
struct ClosingCtx {
    repo: String,
    resolved: Vec<Resolved>,
}

/// How a resolved record ended, in words.
pub fn resolution_text(r: &DriftRecord) -> String {
    let by = r.resolved_by.as_deref().unwrap_or("convoy");
    let by = if by.starts_with("convoy") || by.starts_with("rollout ") {
        by.to_owned()
    } else {
        format!("@{by}")
    };
    match r.resolution.as_deref() {
        Some("adopted") => format!(
            "`{}` adopted by {by}",
            short(r.found.as_deref().unwrap_or(""))
        ),
        Some("resynced") => format!("`{}` redeployed by {by}", short(&r.expected)),
        Some("overwritten") => format!("overwritten with `{}` by {by}", short(&r.expected)),
        Some("converged") => format!("runs `{}` again", short(&r.expected)),
        Some(other) => format!("{other} ({by})"),
        None => "still open".to_owned(),
    }
}

/// The final comment when the issue closes: how the last drift ended
/// (`resolved`: recently resolved drift records, newest first).
pub fn closing_comment(repo: &str, resolved: &[DriftRecord]) -> String {
    let resolved = resolved
        .iter()
        .filter(|r| r.kind == DriftKind::Drift && !r.is_open())
        .take(20)
        .map(|r| Resolved {
            environment: r.environment.to_string(),
            service: r.service.to_string(),
            how: resolution_text(r),
        })
        .collect();
    render(
        "drift/closing_comment.md",
        &ClosingCtx {
            repo: repo.to_owned(),
            resolved,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EnvName, RepoName, ServiceName};
    use chrono::TimeZone;

    fn record(env: &str, service: &str, found: &str, minute: u32) -> DriftRecord {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 10, minute, 0).unwrap();
        DriftRecord {
            id: i64::from(minute),
            repo: RepoName::new("acme/app"),
            environment: EnvName::new(env),
            service: ServiceName::new(service),
            kind: DriftKind::Drift,
            expected: "0123456789abcdef0123456789abcdef01234567".into(),
            found: Some(found.into()),
            detail: None,
            first_seen: at,
            last_seen: at,
            resolved_at: None,
            resolution: None,
            resolved_by: None,
        }
    }

    fn opts() -> IssueOptions {
        IssueOptions {
            public_url: "https://convoy.example.com".into(),
            prefix: "/convoy".into(),
        }
    }

    #[test]
    fn issue_lists_each_drifted_environment_with_its_commands() {
        let mut unreachable = record("cust-009", "api", "", 7);
        unreachable.kind = DriftKind::Unreachable;
        unreachable.found = None;
        let open = vec![
            record("cust-003", "api", "hotfix-1", 3),
            record("acme-eu", "api", "hotfix-7", 1),
            record("acme-eu", "web", "hotfix-7", 2),
            unreachable,
        ];
        let body = issue_body("acme/app", &open, &opts()).unwrap();
        assert!(!body.contains("cust-009"), "unreachable is not drift");
        insta::assert_snapshot!("drift_issue", body);
    }

    #[test]
    fn no_open_drift_means_no_open_issue() {
        let mut gone = record("cust-003", "api", "hotfix-1", 3);
        gone.resolved_at = Some(gone.first_seen);
        assert_eq!(issue_body("acme/app", &[gone], &opts()), None);
        assert_eq!(issue_body("acme/app", &[], &opts()), None);
    }

    #[test]
    fn closing_comment_says_how_each_ended() {
        let mut adopted = record("cust-003", "api", "hotfix-1", 3);
        adopted.resolved_at = Some(adopted.first_seen);
        adopted.resolution = Some("adopted".into());
        adopted.resolved_by = Some("wanda".into());
        let mut resynced = record("acme-eu", "web", "hotfix-7", 2);
        resynced.resolved_at = Some(resynced.first_seen);
        resynced.resolution = Some("resynced".into());
        resynced.resolved_by = Some("sam".into());
        let mut overwritten = record("acme-us", "api", "manual", 1);
        overwritten.resolved_at = Some(overwritten.first_seen);
        overwritten.resolution = Some("overwritten".into());
        overwritten.resolved_by = Some("rollout 20261126-abc".into());
        insta::assert_snapshot!(
            "drift_closing_comment",
            closing_comment("acme/app", &[adopted, resynced, overwritten])
        );
        insta::assert_snapshot!("drift_closed_body", closed_body("acme/app"));
    }

    #[test]
    fn what_agents_say_cannot_break_the_table() {
        assert_eq!(short("a`b|c\nd"), "a'b/c d");
        assert_eq!(short(&"x".repeat(500)).chars().count(), MAX_VERSION_CHARS);
        assert_eq!(
            short("0123456789abcdef0123456789abcdef01234567"),
            "0123456789ab"
        );
    }

    #[test]
    fn a_huge_fleet_fits_in_one_issue() {
        let open: Vec<DriftRecord> = (0..5000)
            .map(|i| record(&format!("cust-{i:05}"), "api", "hotfix", 1))
            .collect();
        let body = issue_body("acme/app", &open, &opts()).unwrap();
        assert!(body.len() < 65_536, "{} bytes", body.len());
        assert!(body.contains("4900 more"));
    }
}
