//! `convoy freeze --all [--for DURATION] --reason TEXT` and `convoy unfreeze
//! --all` (SPEC 9): the operator's kill switch over every repository,
//! written to the database the server uses. A rollout that starts while
//! the freeze lasts starts nothing (the server reads freezes when it
//! starts a rollout); the action is kept in the audit log.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::{self, AuditEntry, Freeze};

/// Who the freeze is recorded as: the operator, with the login name when
/// the environment gives one.
fn operator() -> String {
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.is_empty() => format!("operator ({user})"),
        _ => "operator".to_owned(),
    }
}

/// The freeze `convoy freeze --all` records (pure).
pub fn all_freeze(
    duration: Option<std::time::Duration>,
    reason: Option<String>,
    by: String,
    now: DateTime<Utc>,
) -> Result<Freeze, String> {
    let until = match duration {
        Some(d) => Some(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| "--for: duration too large".to_owned())?,
        ),
        None => None,
    };
    Ok(Freeze {
        scope: Freeze::ALL.to_owned(),
        until,
        reason,
        by,
        at: now,
    })
}

/// The server's configuration. Only `database.url` matters here, so the
/// webhook secret the server requires (often given only in the server's
/// environment) may be missing.
fn load(config_path: &Path) -> Result<Config, ExitCode> {
    let fail = |e: String| {
        eprintln!("convoy: configuration error: {e}");
        ExitCode::from(2)
    };
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| fail(format!("{}: cannot read: {e}", config_path.display())))?;
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !env.iter().any(|(k, _)| k == "CONVOY_GITHUB_WEBHOOK_SECRET") {
        env.push((
            "CONVOY_GITHUB_WEBHOOK_SECRET".into(),
            "not-used-by-freeze".into(),
        ));
    }
    Config::from_toml(&text, &config_path.display().to_string(), &env).map_err(|e| fail(e.0))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("convoy: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}

const NEED_ALL: &str = "say --all: this freezes every repository (one repository is frozen with `/convoy freeze` on a pull request)";

/// `convoy freeze --all [--for DURATION] --reason TEXT`.
pub fn freeze_main(
    config_path: &Path,
    all: bool,
    duration: Option<&str>,
    reason: Option<&str>,
) -> ExitCode {
    if !all {
        eprintln!("convoy freeze: {NEED_ALL}");
        return ExitCode::from(2);
    }
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    let Some(reason) = reason else {
        eprintln!("convoy freeze: --reason is required (it is shown on every frozen rollout)");
        return ExitCode::from(2);
    };
    let duration = match duration.map(crate::duration::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("convoy freeze: --for: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let store = match store::open(&config.database.url).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("convoy freeze: {e}");
                return ExitCode::from(1);
            }
        };
        let now = Utc::now();
        let freeze = match all_freeze(duration, Some(reason.to_owned()), operator(), now) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("convoy freeze: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = store.set_freeze(&freeze).await {
            eprintln!("convoy freeze: {e}");
            return ExitCode::from(1);
        }
        let action = match duration {
            Some(d) => format!(
                "convoy freeze --all --for {} --reason {reason}",
                crate::duration::format_duration(d)
            ),
            None => format!("convoy freeze --all --reason {reason}"),
        };
        audit(&*store, &freeze.by, &action, now).await;
        match freeze.until {
            Some(u) => println!(
                "Every repository is frozen until {}: {reason}",
                u.format("%Y-%m-%d %H:%M UTC")
            ),
            None => println!("Every repository is frozen until `convoy unfreeze --all`: {reason}"),
        }
        ExitCode::SUCCESS
    })
}

/// `convoy unfreeze --all`.
pub fn unfreeze_main(config_path: &Path, all: bool) -> ExitCode {
    if !all {
        eprintln!("convoy unfreeze: {NEED_ALL}");
        return ExitCode::from(2);
    }
    let config = match load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let store = match store::open(&config.database.url).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("convoy unfreeze: {e}");
                return ExitCode::from(1);
            }
        };
        match store.clear_freeze(Freeze::ALL).await {
            Ok(true) => {
                audit(&*store, &operator(), "convoy unfreeze --all", Utc::now()).await;
                println!("The freeze of every repository is lifted.");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("There was no freeze of every repository.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("convoy unfreeze: {e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn audit(store: &dyn store::Store, by: &str, action: &str, now: DateTime<Utc>) {
    let entry = AuditEntry {
        at: now,
        actor: by.to_owned(),
        repo: None,
        rollout_id: None,
        location: Some("cli".into()),
        action: action.to_owned(),
        result: "accepted".into(),
        detail: None,
        line: None,
    };
    if let Err(e) = store.append_audit(&entry).await {
        eprintln!("convoy: the freeze is recorded, but not in the audit log: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_sets_the_end() {
        let now = Utc::now();
        let f = all_freeze(
            Some(std::time::Duration::from_secs(3600)),
            Some("incident".into()),
            "operator".into(),
            now,
        )
        .unwrap();
        assert_eq!(f.scope, "*");
        assert_eq!(f.until, Some(now + chrono::Duration::hours(1)));
        assert!(f.active(now) && !f.active(now + chrono::Duration::hours(2)));
        let open = all_freeze(None, None, "operator".into(), now).unwrap();
        assert!(open.until.is_none() && open.active(now + chrono::Duration::days(365)));
    }
}
