//! `convoy plan --repo DIR [--from REV] [--to REV] [--format text|json|markdown] [--config PATH]`:
//! the plan and risk for a commit range of a local repository, without
//! deploying anything.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::git::{ChangeSet, GitError, GitRepo, SpecLoadError};
use crate::spec::CheckContext;
use crate::spec::cli::load_config_for_checks;

use super::impact::{self, Change};
use super::model::Plan;
use super::risk::History;
use super::{build_plan, render};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PlanFormat {
    #[default]
    Text,
    Json,
    Markdown,
}

/// What went wrong making a plan from a repository.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Git(#[from] GitError),
    /// `convoy.yml` at the target commit is missing or invalid.
    #[error(transparent)]
    Spec(SpecLoadError),
}

/// The plan for `from..to` of an open repository. `from` `None` with `to`
/// a root commit: a first rollout. No history: `assumed_success` applies.
pub fn plan_range(
    repo: &GitRepo,
    from: Option<&str>,
    to: Option<&str>,
    ctx: &CheckContext,
    history: &History,
) -> Result<Plan, PlanError> {
    let to = repo.resolve(to.unwrap_or("HEAD"))?;
    let from = match from {
        Some(rev) => Some(repo.resolve(rev)?),
        None => repo.parent(&to)?,
    };
    let change = ChangeSet::read(repo, to, from, ctx)?;
    plan_change(change, history).map_err(PlanError::Spec)
}

/// The plan for what git said about a commit: the affected services of its
/// change and the steps, waves and risk they make.
pub fn plan_change(change: ChangeSet, history: &History) -> Result<Plan, SpecLoadError> {
    plan_change_with(change, history, &[])
}

/// As [`plan_change`], with the services in `also` affected too, whatever
/// the change touched (in the order of `convoy.yml`).
pub fn plan_change_with(
    change: ChangeSet,
    history: &History,
    also: &[crate::domain::ServiceName],
) -> Result<Plan, SpecLoadError> {
    let spec = change.spec.as_ref().map_err(Clone::clone)?;
    let touched = impact::affected_services(spec, Change::of(&change));
    let affected: Vec<_> = spec
        .services
        .iter()
        .map(|s| &s.name)
        .filter(|name| touched.contains(name) || also.contains(name))
        .cloned()
        .collect();
    Ok(build_plan(
        spec,
        change.commit.clone(),
        change.previous_commit.clone(),
        &affected,
        history,
    ))
}

pub fn render(plan: &Plan, format: PlanFormat) -> String {
    match format {
        PlanFormat::Text => render::plan_text(plan),
        PlanFormat::Json => {
            let mut s = serde_json::to_string_pretty(&render::plan_json(plan))
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            s.push('\n');
            s
        }
        PlanFormat::Markdown => render::plan_markdown(plan),
    }
}

/// Exit 0 with the plan on stdout; 1 when `convoy.yml` is missing or
/// invalid (errors as `convoy.yml:LINE:COL: message`); 2 when the
/// repository, a revision or the config cannot be read.
pub fn plan_main(
    repo: &Path,
    from: Option<&str>,
    to: Option<&str>,
    format: PlanFormat,
    config: Option<&Path>,
) -> ExitCode {
    let config = match config.map(load_config_for_checks).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = config
        .as_ref()
        .map(CheckContext::from_config)
        .unwrap_or_default();
    let result = GitRepo::open(repo)
        .map_err(PlanError::from)
        .and_then(|r| plan_range(&r, from, to, &ctx, &History::new()));
    let mut out = std::io::stdout().lock();
    match result {
        Ok(plan) => {
            let _ = out.write_all(render(&plan, format).as_bytes());
            ExitCode::SUCCESS
        }
        Err(PlanError::Spec(SpecLoadError::Invalid { commit, errors })) => {
            eprintln!("convoy.yml at {commit} is invalid:");
            for e in &errors {
                let _ = writeln!(out, "{}", e.render(impact::SPEC_FILE));
            }
            ExitCode::from(1)
        }
        Err(PlanError::Spec(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
