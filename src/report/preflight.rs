//! The PR-time preflight (SPEC 7.2): on every pull request opened,
//! reopened or synchronized against a configured branch, `convoy/preflight`
//! on its head commit says what merging would do — `convoy.yml` errors as
//! annotations at their line, the plan, the risk with the five riskiest
//! environments, the environments that are unreachable, drifted or frozen
//! right now (a freeze window of `policy.freeze`, or an emergency freeze of
//! the repository or of all), and the next steps. It concludes `failure` on configuration
//! or policy errors, else `success`, so it can be a required status check.
//!
//! [`render_preflight`] is pure; [`Preflight::run`] gathers the facts (git,
//! the store, the drivers) and posts through the GitHub client directly: a
//! preflight is one check run per push, created once, so there is nothing
//! to coalesce.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::Context as TeraContext;

use crate::config::Config;
use crate::domain::{BranchName, CommitSha, EnvName, InstallationId, RepoName, ServiceName};
use crate::drivers::{Drivers, Endpoint};
use crate::engine::freeze::{ActiveFreeze, active_freeze};
use crate::git::{ChangeSet, RepoCache, SpecLoadError};
use crate::github::GitHubApi;
use crate::github::types::{
    Annotation, CheckRunConclusion, CheckRunOutput, CheckRunStatus, NewCheckRun,
};
use crate::plan::cli::plan_change_with;
use crate::plan::model::Plan;
use crate::plan::render::{format_percent, plan_markdown};
use crate::plan::{Change, affected_services};
use crate::runtime::merges::{
    Against, TokenSource, branch_configured, branch_head, history_of, read_change,
};
use crate::runtime::worker::HandlerError;
use crate::spec::{ConvoySpec, SpecError};
use crate::store::{Freeze, Store};
use crate::webhook::events::PullRequestEvent;

use super::render::{BODY_LIMIT, RenderOptions, fenced_lines, render_template, spec_annotation};
use super::text::{code, inline, plural, short_sha};
use crate::github::limits::truncate_bytes;

/// The check run's name.
pub const PREFLIGHT_CHECK: &str = "convoy/preflight";

/// Environments probed at once.
pub const PROBE_CONCURRENCY: usize = 32;

/// Items listed per warning in the summary (the text lists more).
const SUMMARY_ITEMS: usize = 10;
/// Items listed per warning in the text.
const TEXT_ITEMS: usize = 300;

/// What an environment looked like at check time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Unreachable {
        environment: EnvName,
        service: ServiceName,
        reason: String,
    },
    /// What runs there differs from what convoy last deployed (SPEC 6.6).
    Drifted {
        environment: EnvName,
        service: ServiceName,
        expected: String,
        found: String,
    },
}

/// What the preflight found.
#[derive(Clone, Debug, PartialEq)]
pub enum PreflightOutcome {
    /// `convoy.yml` is invalid (syntax, schema, or against the operator's
    /// policy: drivers, hosts, limits).
    Invalid { errors: Vec<SpecError> },
    /// It plans; these are the plan and what the environments said.
    Planned {
        plan: Box<Plan>,
        probes: Vec<Probe>,
        freeze: Option<ActiveFreeze>,
        /// The emergency freeze (`/convoy freeze`, or `convoy freeze
        /// --all`) in force at the check, if any: see [`Freeze::in_force`].
        emergency_freeze: Option<Freeze>,
        /// Services the base branch changed since its last commit rolled
        /// out, which the pull request does not touch: in the plan, since
        /// a merge now is planned from that commit too.
        from_base: Option<Box<FromBase>>,
    },
}

/// What the base branch carries into a merge besides the pull request's
/// own change: its changes since the last commit rolled out from it (their
/// rollout failed, was stopped, or has not finished).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromBase {
    /// As of `base_head`, the base changes these services, which the pull
    /// request does not; they are in the plan.
    Carried {
        /// The last commit rolled out from the base branch.
        since: CommitSha,
        base_head: CommitSha,
        services: Vec<ServiceName>,
        /// Services the base's `convoy.yml` added that the head's does not
        /// define: a merge rolls them out too, but a plan from the head's
        /// file cannot hold them.
        not_in_plan: Vec<ServiceName>,
    },
    /// The base could not be read (fetch, or its `convoy.yml`): the plan
    /// shows the pull request's own change only, and says so.
    Unread { since: CommitSha },
}

/// Everything the preflight shows.
#[derive(Clone, Debug, PartialEq)]
pub struct PreflightFacts {
    pub head_sha: CommitSha,
    pub base: BranchName,
    pub pull_request: u64,
    pub checked_at: DateTime<Utc>,
    pub outcome: PreflightOutcome,
}

#[derive(Serialize)]
struct Ctx {
    emoji: &'static str,
    headline: String,
    short_commit: String,
    /// As code.
    base: String,
    /// The risk estimate in one sentence (with the riskiest environments).
    risk: String,
    config_errors: String,
    config_errors_more: usize,
    config_error_count: String,
    warnings: Vec<String>,
    next_steps: Vec<String>,
    checked_at: String,
    plan_command: String,
    plan: String,
    lists: Vec<List>,
}

#[derive(Serialize)]
struct List {
    title: String,
    items: Vec<String>,
    more: usize,
}

fn unreachable(probes: &[Probe]) -> Vec<(&EnvName, &ServiceName, &str)> {
    probes
        .iter()
        .filter_map(|p| match p {
            Probe::Unreachable {
                environment,
                service,
                reason,
            } => Some((environment, service, reason.as_str())),
            _ => None,
        })
        .collect()
}

fn drifted(probes: &[Probe]) -> Vec<(&EnvName, &ServiceName, &str, &str)> {
    probes
        .iter()
        .filter_map(|p| match p {
            Probe::Drifted {
                environment,
                service,
                expected,
                found,
            } => Some((environment, service, expected.as_str(), found.as_str())),
            _ => None,
        })
        .collect()
}

/// Distinct environments of a list, in order.
fn envs_of<'a>(list: impl Iterator<Item = &'a EnvName>) -> Vec<&'a EnvName> {
    let mut seen = std::collections::HashSet::new();
    list.filter(|e| seen.insert(*e)).collect()
}

fn names(envs: &[&EnvName], max: usize) -> String {
    let mut s = envs
        .iter()
        .take(max)
        .map(|e| code(e.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if envs.len() > max {
        s.push_str(&format!(" and {} more", envs.len() - max));
    }
    s
}

/// The `convoy/preflight` check run for a pull request's head commit.
pub fn render_preflight(facts: &PreflightFacts, opts: &RenderOptions) -> NewCheckRun {
    let short = short_sha(facts.head_sha.as_str()).to_owned();
    let base = code(facts.base.as_str());
    let plan_command = format!("{} plan", opts.prefix);
    let mut ctx = Ctx {
        emoji: "✅",
        headline: String::new(),
        short_commit: short.clone(),
        base: base.clone(),
        risk: String::new(),
        config_errors: String::new(),
        config_errors_more: 0,
        config_error_count: String::new(),
        warnings: Vec::new(),
        next_steps: Vec::new(),
        checked_at: facts.checked_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        plan_command,
        plan: String::new(),
        lists: Vec::new(),
    };
    let mut annotations: Vec<Annotation> = Vec::new();
    let (conclusion, title) = match &facts.outcome {
        PreflightOutcome::Invalid { errors } => {
            let count = plural(errors.len(), "error", "errors");
            ctx.emoji = "❌";
            ctx.headline = format!("`convoy.yml` has {count}: merging would roll out nothing");
            let text: String = errors
                .iter()
                .map(|e| e.render(crate::plan::impact::SPEC_FILE))
                .collect::<Vec<_>>()
                .join("\n");
            let (block, more) = fenced_lines(&text, 100);
            ctx.config_errors = block;
            ctx.config_errors_more = more;
            ctx.config_error_count = count.clone();
            ctx.next_steps
                .push("Fix the errors and push: this check runs again on every push.".into());
            annotations = errors
                .iter()
                .map(|e| spec_annotation(e.pos.line, e.pos.col, &e.message))
                .collect();
            (CheckRunConclusion::Failure, format!("convoy.yml: {count}"))
        }
        PreflightOutcome::Planned {
            plan,
            probes,
            freeze,
            emergency_freeze,
            from_base,
        } => {
            ctx.plan = plan_markdown(plan);
            let steps = plan.step_count();
            // What the base carries is worth knowing whatever the plan.
            match from_base.as_deref() {
                Some(FromBase::Carried {
                    since,
                    base_head,
                    services,
                    not_in_plan,
                }) => {
                    let names = |list: &[ServiceName]| {
                        list.iter()
                            .map(|s| code(s.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let them = |list: &[ServiceName]| if list.len() == 1 { "it" } else { "them" };
                    let mut w = format!(
                        "{base} has changes not rolled out yet: its last successful rollout was {}, and up to {}",
                        code(short_sha(since.as_str())),
                        code(short_sha(base_head.as_str())),
                    );
                    if !services.is_empty() {
                        w.push_str(&format!(
                            " it also changes {}, which this pull request does not touch. A merge now rolls {} out too, unless a rollout of {base} succeeds first.",
                            names(services),
                            them(services),
                        ));
                    }
                    if !not_in_plan.is_empty() {
                        w.push_str(&format!(
                            "{} it adds {}, which this branch's `convoy.yml` does not define: a merge rolls {} out too, but this plan cannot show {}.",
                            if services.is_empty() { "" } else { " And" },
                            names(not_in_plan),
                            them(not_in_plan),
                            them(not_in_plan),
                        ));
                    }
                    ctx.warnings.push(w);
                }
                Some(FromBase::Unread { since }) => ctx.warnings.push(format!(
                    "convoy could not read what {base} changed since its last successful rollout ({}): the plan shows this pull request's own change only, and a merge now may roll out more.",
                    code(short_sha(since.as_str())),
                )),
                None => {}
            }
            if steps == 0 {
                ctx.emoji = if ctx.warnings.is_empty() {
                    "➖"
                } else {
                    "⚠️"
                };
                ctx.headline =
                    format!("Merging into {base} rolls nothing out: the change affects no service");
                ctx.next_steps.push(if ctx.warnings.is_empty() {
                    "Nothing to do: the merge concludes `convoy/rollout` as neutral.".into()
                } else {
                    "Nothing of this pull request's own: read the warning above before merging."
                        .into()
                });
                (
                    CheckRunConclusion::Success,
                    "Nothing to roll out".to_owned(),
                )
            } else {
                let envs = plural(plan.targets.len(), "environment", "environments");
                ctx.headline = format!(
                    "Merging into {base} rolls out {} to {envs} in {}",
                    plan.affected_services
                        .iter()
                        .map(|s| code(s.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    plural(plan.waves.len(), "wave", "waves"),
                );
                ctx.risk = format!(
                    "{}: {} chance that some step fails on its first attempt; {} that a human is needed (with {}).{}",
                    plural(plan.risk.steps, "step", "steps"),
                    format_percent(plan.risk.first_attempt_failure),
                    format_percent(plan.risk.needs_human),
                    plural(plan.policy.retries as usize, "retry", "retries"),
                    if plan.risk.riskiest.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " Riskiest environments (first-attempt success rate): {}.",
                            plan.risk
                                .riskiest
                                .iter()
                                .map(|e| format!(
                                    "{} {}",
                                    code(e.environment.as_str()),
                                    format_percent(e.p)
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                let down = unreachable(probes);
                let drift = drifted(probes);
                if !down.is_empty() {
                    let e = envs_of(down.iter().map(|d| d.0));
                    ctx.warnings.push(format!(
                        "{} unreachable: {}",
                        plural(e.len(), "environment is", "environments are"),
                        names(&e, SUMMARY_ITEMS)
                    ));
                    ctx.lists.push(List {
                        title: format!("Unreachable ({})", e.len()),
                        items: down
                            .iter()
                            .take(TEXT_ITEMS)
                            .map(|(env, svc, reason)| {
                                format!(
                                    "{}: {}",
                                    code(&format!("{env}/{svc}")),
                                    inline(reason, 200)
                                )
                            })
                            .collect(),
                        more: down.len().saturating_sub(TEXT_ITEMS),
                    });
                }
                if !drift.is_empty() {
                    let e = envs_of(drift.iter().map(|d| d.0));
                    ctx.warnings.push(format!(
                        "{} drifted (what runs there is not what convoy deployed): {}",
                        plural(e.len(), "environment has", "environments have"),
                        names(&e, SUMMARY_ITEMS)
                    ));
                    ctx.lists.push(List {
                        title: format!("Drifted ({})", e.len()),
                        items: drift
                            .iter()
                            .take(TEXT_ITEMS)
                            .map(|(env, svc, expected, found)| {
                                format!(
                                    "{}: expected {}, found {}",
                                    code(&format!("{env}/{svc}")),
                                    code(expected),
                                    code(found)
                                )
                            })
                            .collect(),
                        more: drift.len().saturating_sub(TEXT_ITEMS),
                    });
                }
                if let Some(f) = freeze {
                    ctx.warnings.push(format!(
                        "A freeze window is in force until {}{}: a rollout started now waits until then.",
                        f.until.format("%Y-%m-%d %H:%M UTC"),
                        f.reason
                            .as_deref()
                            .map(|r| format!(" ({})", inline(r, 200)))
                            .unwrap_or_default()
                    ));
                }
                if let Some(f) = emergency_freeze {
                    let until = f
                        .until
                        .map(|u| format!("until {}", u.format("%Y-%m-%d %H:%M UTC")))
                        .unwrap_or_else(|| "until lifted".into());
                    let reason = f
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({})", inline(r, 200)))
                        .unwrap_or_default();
                    let all = f.scope == Freeze::ALL;
                    ctx.warnings.push(format!(
                        "{} by {} is in force {until}{reason}: a rollout started now starts no step until it ends.",
                        if all {
                            "An emergency freeze of every repository"
                        } else {
                            "An emergency freeze of this repository"
                        },
                        code(&f.by),
                    ));
                    ctx.next_steps.push(if all {
                        "The freeze of every repository is the operator's (`convoy freeze --all`); `convoy unfreeze --all` lifts it.".to_owned()
                    } else {
                        format!(
                            "`{} unfreeze` lifts the emergency freeze (write access).",
                            opts.prefix
                        )
                    });
                }
                if !ctx.warnings.is_empty() {
                    ctx.emoji = "⚠️";
                }
                let first = &plan.waves[0];
                ctx.next_steps.push(format!(
                    "Merge into {base} to start the rollout: wave {} ({}) goes first.",
                    code(first.name.as_str()),
                    plural(first.environments.len(), "environment", "environments")
                ));
                for w in plan.waves.iter().filter(|w| w.approval) {
                    let who = if plan.policy.approvers.is_empty() {
                        "anyone with write access".to_owned()
                    } else {
                        plan.policy
                            .approvers
                            .iter()
                            .map(|a| code(a))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    };
                    ctx.next_steps.push(format!(
                        "Wave {} waits for approval: {who} comments `{} approve {}` (or clicks **Approve**) once it is reached.",
                        code(w.name.as_str()),
                        opts.prefix,
                        w.name
                    ));
                }
                if !drift.is_empty() {
                    let action = match plan.policy.on_drift {
                        crate::plan::model::OnDrift::Halt => {
                            "fail their preflight and halt the rollout (`on_drift: halt`)"
                        }
                        crate::plan::model::OnDrift::Overwrite => {
                            "be overwritten (`on_drift: overwrite`)"
                        }
                        crate::plan::model::OnDrift::Skip => "be skipped (`on_drift: skip`)",
                    };
                    ctx.next_steps.push(format!(
                        "Drifted environments will {action}; `{} adopt ENV` accepts what runs there, `{} resync ENV` redeploys convoy's version.",
                        opts.prefix, opts.prefix
                    ));
                }
                if !down.is_empty() {
                    ctx.next_steps.push(
                        "Unreachable environments will fail their preflight when their wave starts: bring them back or expect a halt.".into(),
                    );
                }
                let title = if ctx.warnings.is_empty() {
                    format!(
                        "Ready: {} in {}",
                        plural(steps, "step", "steps"),
                        plural(plan.waves.len(), "wave", "waves")
                    )
                } else {
                    format!(
                        "Ready, with {}",
                        plural(ctx.warnings.len(), "warning", "warnings")
                    )
                };
                (CheckRunConclusion::Success, title)
            }
        }
    };
    let context = TeraContext::from_serialize(&ctx).unwrap_or_default();
    // Bounded lists keep both far below GitHub's limit; the cut is a last
    // resort that says so.
    let summary = truncate_bytes(
        &render_template("preflight_summary.md", &context),
        BODY_LIMIT,
    );
    let text = truncate_bytes(&render_template("preflight_text.md", &context), BODY_LIMIT);
    let mut run = NewCheckRun::new(PREFLIGHT_CHECK, facts.head_sha.as_str());
    run.status = CheckRunStatus::Completed;
    run.conclusion = Some(conclusion);
    run.started_at = Some(facts.checked_at);
    run.completed_at = Some(facts.checked_at);
    run.external_id = Some(format!("pr-{}", facts.pull_request));
    run.output = Some(CheckRunOutput {
        title,
        summary,
        text: (!text.trim().is_empty()).then_some(text),
        annotations,
    });
    run
}

/// What the base's change (`base`: from its last commit rolled out to its
/// head) carries into a merge beside the pull request's own (`own`: from
/// where the branch meets the base's head), judged by the base's
/// `convoy.yml`: the services the head's `spec` defines, and those it does
/// not. `None` when it carries nothing, or when a commit was gone and there
/// is no diff to judge; an error when the base's `convoy.yml` cannot be
/// read.
fn base_carries(
    spec: &ConvoySpec,
    since: CommitSha,
    base_head: CommitSha,
    base: &ChangeSet,
    own: &ChangeSet,
) -> Result<Option<FromBase>, String> {
    if base.changed_paths.is_none() || own.changed_paths.is_none() {
        return Ok(None);
    }
    let base_spec = base
        .spec
        .as_ref()
        .map_err(|e| format!("convoy.yml at the base's head: {e}"))?;
    let own = affected_services(spec, Change::of(own));
    let (services, not_in_plan): (Vec<ServiceName>, Vec<ServiceName>) =
        affected_services(base_spec, Change::of(base))
            .into_iter()
            .filter(|s| !own.contains(s))
            .partition(|s| spec.services.iter().any(|d| &d.name == s));
    Ok(
        (!services.is_empty() || !not_in_plan.is_empty()).then_some(FromBase::Carried {
            since,
            base_head,
            services,
            not_in_plan,
        }),
    )
}

/// Runs the preflight for pull requests (I/O).
pub struct Preflight {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    drivers: Drivers,
    tokens: Arc<dyn TokenSource>,
    api: Arc<dyn GitHubApi>,
    cache: RepoCache,
    opts: RenderOptions,
}

impl Preflight {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        drivers: Drivers,
        tokens: Arc<dyn TokenSource>,
        api: Arc<dyn GitHubApi>,
    ) -> Preflight {
        let cache = RepoCache::new(config.server.data_dir.join("git"));
        let opts = super::setup::render_options(&config);
        Preflight {
            config,
            store,
            drivers,
            tokens,
            api,
            cache,
            opts,
        }
    }

    /// Gathers the facts for a pull request's head commit; `None` when
    /// there is nothing to check (no `convoy.yml`, or a base branch that
    /// starts no rollouts).
    pub async fn facts(
        &self,
        installation: InstallationId,
        pr: &PullRequestEvent,
    ) -> Result<Option<PreflightFacts>, HandlerError> {
        let previous = self
            .store
            .last_succeeded_commit(&pr.repo, &pr.base_ref)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        // The base's head first: its fetch brings every branch, so for a
        // pull request from a branch of the same repository the head's
        // read that follows finds its commit and fetches nothing more.
        let base_head = match &previous {
            Some(since) => Some(
                branch_head(
                    &self.config,
                    &self.cache,
                    self.tokens.as_ref(),
                    installation,
                    &pr.repo,
                    &pr.base_ref,
                    vec![pr.head_sha.clone(), since.clone()],
                )
                .await,
            ),
            None => None,
        };
        let change = read_change(
            &self.config,
            &self.cache,
            self.tokens.as_ref(),
            installation,
            &pr.repo,
            pr.head_sha.clone(),
            previous.clone().map(|p| (p, Against::MergeBase)),
        )
        .await?;
        let now = Utc::now();
        let facts = |outcome| PreflightFacts {
            head_sha: pr.head_sha.clone(),
            base: pr.base_ref.clone(),
            pull_request: pr.number,
            checked_at: now,
            outcome,
        };
        match &change.spec {
            Err(SpecLoadError::Missing(_)) => return Ok(None),
            Err(SpecLoadError::Invalid { errors, .. }) => {
                // A broken file cannot say which branches roll out; only
                // pull requests into the default branch hear about it.
                if pr.default_branch.as_ref() != Some(&pr.base_ref) {
                    return Ok(None);
                }
                return Ok(Some(facts(PreflightOutcome::Invalid {
                    errors: errors.clone(),
                })));
            }
            Err(SpecLoadError::Git(e)) => return Err(HandlerError::Transient(e.to_string())),
            Ok(spec) => {
                if !branch_configured(
                    &spec.policy.branches,
                    pr.default_branch.as_ref(),
                    &pr.base_ref,
                ) {
                    return Ok(None);
                }
            }
        }
        let from_base = match (&change.spec, previous, base_head) {
            // Only when the head's own change was read against the last
            // commit rolled out (not planned from scratch because that
            // commit is gone).
            (Ok(spec), Some(since), Some(base_head)) if change.changed_paths.is_some() => {
                self.base_changes(installation, pr, spec, since, base_head)
                    .await
            }
            _ => None,
        };
        let also = match from_base.as_deref() {
            Some(FromBase::Carried { services, .. }) => &services[..],
            _ => &[][..],
        };
        let history = history_of(self.store.as_ref(), &pr.repo).await?;
        let plan = match plan_change_with(change, &history, also) {
            Ok(p) => p,
            Err(SpecLoadError::Invalid { errors, .. }) => {
                return Ok(Some(facts(PreflightOutcome::Invalid { errors })));
            }
            Err(e) => return Err(HandlerError::Transient(e.to_string())),
        };
        let probes = self.probe(&pr.repo, &plan).await;
        let freeze = active_freeze(&plan.policy.freeze, now);
        let freezes = self
            .store
            .freezes_for(&pr.repo)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        Ok(Some(facts(PreflightOutcome::Planned {
            plan: Box::new(plan),
            probes,
            freeze,
            emergency_freeze: Freeze::in_force(&freezes, now),
            from_base,
        })))
    }

    /// What the base branch changed from `since` (its last commit rolled
    /// out) to `base_head` (read from the repository, not from the event:
    /// GitHub's `base.sha` can be where the base was when the pull request
    /// was opened): a merge now rolls it out too, as its rollout is
    /// planned from `since` (SPEC 6.1). Judged with the base's own
    /// `convoy.yml`, as the merge keeps the base's definitions of what the
    /// pull request does not change; only services the head still defines
    /// can be planned. `None` when the base has nothing the pull request
    /// does not already change.
    async fn base_changes(
        &self,
        installation: InstallationId,
        pr: &PullRequestEvent,
        spec: &ConvoySpec,
        since: CommitSha,
        base_head: Result<CommitSha, HandlerError>,
    ) -> Option<Box<FromBase>> {
        let read = |commit: CommitSha, against: (CommitSha, Against)| {
            read_change(
                &self.config,
                &self.cache,
                self.tokens.as_ref(),
                installation,
                &pr.repo,
                commit,
                Some(against),
            )
        };
        let reads = async {
            let base_head = base_head?;
            if base_head == since {
                return Ok(None);
            }
            let base = read(base_head.clone(), (since.clone(), Against::Previous)).await?;
            // The pull request's own change, from where it meets the base's
            // head: an up-to-date branch holds the base's changes too, and
            // they are still the base's.
            let own = read(pr.head_sha.clone(), (base_head.clone(), Against::MergeBase)).await?;
            Ok::<_, HandlerError>(Some((base_head, base, own)))
        };
        let unread = |why: String| {
            tracing::warn!(
                repo = %pr.repo, base = %pr.base_ref, error = %why,
                "cannot read what the base branch changed since its last rollout; \
                 the preflight shows the pull request's own change only"
            );
            Some(Box::new(FromBase::Unread {
                since: since.clone(),
            }))
        };
        let (base_head, base, own) = match reads.await {
            Ok(Some(read)) => read,
            Ok(None) => return None,
            Err(e) => return unread(e.to_string()),
        };
        match base_carries(spec, since.clone(), base_head, &base, &own) {
            Ok(carried) => carried.map(Box::new),
            Err(why) => unread(why),
        }
    }

    /// Every step's environment asked for its status, at most
    /// [`PROBE_CONCURRENCY`] at once: unreachable, or drifted from what
    /// convoy last deployed there.
    async fn probe(&self, repo: &RepoName, plan: &Plan) -> Vec<Probe> {
        use tokio::task::JoinSet;
        let steps: Vec<(EnvName, ServiceName)> = plan
            .waves
            .iter()
            .flat_map(|w| w.steps.iter())
            .map(|s| (s.environment.clone(), s.service.clone()))
            .collect();
        let mut results: Vec<(usize, Option<Probe>)> = Vec::with_capacity(steps.len());
        let mut set = JoinSet::new();
        let mut next = 0;
        loop {
            while set.len() < PROBE_CONCURRENCY && next < steps.len() {
                let (env, service) = steps[next].clone();
                let target = plan.targets.get(&env).cloned();
                let drivers = self.drivers.clone();
                let store = self.store.clone();
                let repo = repo.clone();
                let index = next;
                set.spawn(async move {
                    (
                        index,
                        probe_one(&drivers, store.as_ref(), &repo, env, service, target).await,
                    )
                });
                next += 1;
            }
            match set.join_next().await {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => tracing::warn!(error = %e, "an environment probe died"),
                None => break,
            }
        }
        // Plan order, whatever order the answers came in.
        results.sort_by_key(|r| r.0);
        results.into_iter().filter_map(|r| r.1).collect()
    }

    /// `/convoy plan`, or a re-run asked for on the check run: the same
    /// check for an open pull request known by number (its head and base
    /// read from GitHub).
    pub async fn run_for_pull_request(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: u64,
    ) -> Result<(), HandlerError> {
        let github = |e: crate::github::GitHubError| {
            if e.is_transient() {
                HandlerError::Transient(e.to_string())
            } else {
                HandlerError::Permanent(e.to_string())
            }
        };
        let pr = self
            .api
            .get_pull_request(installation, repo, number)
            .await
            .map_err(github)?;
        let repository = self
            .api
            .get_repository(installation, repo)
            .await
            .map_err(github)?;
        let event = PullRequestEvent {
            action: "synchronize".into(),
            repo: repo.clone(),
            number,
            author: pr.user.map(|u| u.login).unwrap_or_default(),
            head_sha: CommitSha::new(pr.head.sha),
            base_ref: BranchName::new(pr.base.ref_name),
            merged: false,
            merge_commit_sha: None,
            default_branch: Some(BranchName::new(repository.default_branch)),
        };
        self.run(installation, &event).await
    }

    /// Checks the pull request's head commit and posts `convoy/preflight`.
    pub async fn run(
        &self,
        installation: InstallationId,
        pr: &PullRequestEvent,
    ) -> Result<(), HandlerError> {
        let Some(facts) = self.facts(installation, pr).await? else {
            return Ok(());
        };
        let run = render_preflight(&facts, &self.opts);
        self.api
            .create_check_run(installation, &pr.repo, &run)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    HandlerError::Transient(e.to_string())
                } else {
                    HandlerError::Permanent(e.to_string())
                }
            })?;
        tracing::info!(
            repo = %pr.repo,
            pull_request = pr.number,
            head = %pr.head_sha,
            conclusion = ?run.conclusion,
            "preflight posted"
        );
        Ok(())
    }
}

async fn probe_one(
    drivers: &Drivers,
    store: &dyn Store,
    repo: &RepoName,
    environment: EnvName,
    service: ServiceName,
    target: Option<crate::plan::model::EnvTarget>,
) -> Option<Probe> {
    let unreachable = |reason: String| Probe::Unreachable {
        environment: environment.clone(),
        service: service.clone(),
        reason,
    };
    let Some(target) = target else {
        return Some(unreachable("no target in the plan".into()));
    };
    let driver = match drivers.get(&target.driver) {
        Ok(d) => d,
        Err(e) => return Some(unreachable(e.message)),
    };
    let endpoint = Endpoint {
        environment: environment.clone(),
        url: target.url.clone(),
    };
    let status = match driver.status(&endpoint, &service).await {
        Ok(s) => s,
        Err(e) => return Some(unreachable(e.message)),
    };
    let baseline = store
        .baseline(repo, &environment, &service)
        .await
        .ok()
        .flatten()?;
    match status.version {
        Some(found) if found != baseline.version => Some(Probe::Drifted {
            environment,
            service,
            expected: baseline.version,
            found,
        }),
        _ => None,
    }
}

/// `/convoy plan` and a re-run of the `convoy/preflight` check land here.
#[async_trait::async_trait]
impl crate::runtime::commands::PreflightRunner for Preflight {
    async fn rerun(
        &self,
        request: &crate::runtime::commands::PreflightRequest,
    ) -> Result<(), String> {
        let Some(number) = request.pull_request else {
            return Err(format!(
                "no pull request is known for commit {}; push to the pull request to run the check again",
                request.head_sha
            ));
        };
        self.run_for_pull_request(request.installation, &request.repo, number)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CheckContext, parse_spec};

    fn spec(services: &str) -> ConvoySpec {
        let text = format!(
            "version: 1\nservices:\n{services}environments:\n  - {{ name: a, driver: agent }}\n"
        );
        parse_spec(&text, &CheckContext::default()).unwrap()
    }

    fn change(spec: ConvoySpec, paths: &[&str]) -> ChangeSet {
        ChangeSet {
            commit: sha('b'),
            previous_commit: Some(sha('a')),
            previous_spec: Some(spec.clone()),
            spec: Ok(spec),
            changed_paths: Some(paths.iter().map(|p| p.to_string()).collect()),
        }
    }

    fn sha(c: char) -> CommitSha {
        CommitSha::new(c.to_string().repeat(40))
    }

    fn names(v: &[ServiceName]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    /// What the base changed beyond the branch's own change: services the
    /// branch's `convoy.yml` defines go into the plan, those only the
    /// base's defines are named apart (a plan made from the branch's file
    /// cannot hold them); what the branch changes itself is neither.
    #[test]
    fn the_base_s_services_are_split_by_what_the_branch_s_spec_defines() {
        let head = spec("  api:\n    paths: [\"api/**\"]\n  web:\n    paths: [\"web/**\"]\n");
        let base = change(
            spec(
                "  api:\n    paths: [\"api/**\"]\n  web:\n    paths: [\"web/**\"]\n  worker:\n    paths: [\"worker/**\"]\n",
            ),
            &["api/x", "web/y", "worker/z"],
        );
        let own = change(head.clone(), &["web/y"]);
        let carries = |own: &ChangeSet| base_carries(&head, sha('a'), sha('b'), &base, own);
        let Ok(Some(FromBase::Carried {
            services,
            not_in_plan,
            ..
        })) = carries(&own)
        else {
            panic!("the base carries api and worker")
        };
        assert_eq!(names(&services), ["api"]);
        assert_eq!(names(&not_in_plan), ["worker"]);
        // Nothing beyond what the branch changes itself, or no diff to
        // judge: nothing said.
        let all = change(head.clone(), &["api/x", "web/y"]);
        let quiet = change(head.clone(), &["api/x"]);
        assert_eq!(
            base_carries(&head, sha('a'), sha('b'), &quiet, &all),
            Ok(None)
        );
        let mut first = change(head.clone(), &[]);
        first.changed_paths = None;
        assert_eq!(carries(&first), Ok(None));
    }
}
