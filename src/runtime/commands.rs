//! Slash commands and check-run buttons, the edge (SPEC 7.2, 7.4): reads
//! `issue_comment` and `check_run` events, looks up what authorization needs
//! on GitHub (cached at most 60 s), asks the pure decisions in
//! [`crate::commands`], carries out what they allow through the rollout
//! runtime, answers with reactions and replies, and writes every accepted,
//! refused or failed command to the audit log.
//!
//! Failure policy: anything that fails *before* a command acts (the store,
//! a permission lookup during a GitHub outage) fails the delivery as
//! transient, so the worker retries it whole; lines already acted on are
//! found in the audit log and not run twice. Once a command has acted,
//! feedback to GitHub is best effort: a GitHub outage delays or loses a
//! reaction, never repeats an action.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::commands::{
    self, Action, AuthInput, CommentFacts, CommentPlace, Decision, Notice, Outcome, Permission,
    Rejection, ReplyInput, TeamRef, TtlCache, Venue, Verb,
};
use crate::config::Config;
use crate::domain::{CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId};
use crate::engine::{Importance, Rollout, StepState};
use crate::github::{GitHubApi, GitHubError, Reaction as GhReaction, WallClock};
use crate::plan::model::RolloutPolicy;
use crate::runtime::rollouts::{ReportSink, RolloutRuntime, RuntimeError};
use crate::runtime::worker::{EventHandler, HandlerError};
use crate::store::{AuditEntry, RolloutRecord};
use crate::webhook::events::{CheckRunEvent, IssueCommentEvent};
use crate::webhook::{Envelope, Event};

/// The check run a `rerequested` reruns the preflight for.
pub const PREFLIGHT_CHECK: &str = "convoy/preflight";
/// The check run a `rerequested` retries the failed steps of.
pub const ROLLOUT_CHECK: &str = "convoy/rollout";

/// How long a looked-up permission or team membership is trusted.
pub const PERMISSION_TTL: Duration = commands::cache::MAX_TTL;

/// What `/convoy plan` (and a rerun of `convoy/preflight`) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightRequest {
    pub installation: InstallationId,
    pub repo: RepoName,
    /// The pull request's head commit.
    pub head_sha: CommitSha,
    pub pull_request: Option<u64>,
    pub requested_by: String,
}

/// Reruns the pull-request preflight check (built by the reporting side and
/// plugged in through [`CommandHooks`]). `Err` is a reason for the reply.
#[async_trait]
pub trait PreflightRunner: Send + Sync + 'static {
    async fn rerun(&self, request: &PreflightRequest) -> Result<(), String>;
}

/// `/convoy adopt` and `/convoy resync` (SPEC 6.6), plugged in by the drift
/// side. `Err` is a reason for the reply ("`acme-eu` has not drifted").
#[async_trait]
pub trait DriftCommands: Send + Sync + 'static {
    async fn adopt(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&crate::domain::ServiceName>,
        by: &str,
    ) -> Result<(), String>;

    async fn resync(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        by: &str,
    ) -> Result<(), String>;

    /// [`DriftCommands::resync`], answering the rollout it started, so the
    /// audit log links it.
    async fn resync_started(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        environment: &EnvName,
        by: &str,
    ) -> Result<Option<RolloutId>, String> {
        self.resync(installation, repo, environment, by)
            .await
            .map(|()| None)
    }

    /// `/convoy status` on the drift issue: check the repository's
    /// environments again and show the issue as it is now.
    async fn refresh(&self, _installation: InstallationId, _repo: &RepoName) -> Result<(), String> {
        Err("this convoy cannot check for drift on demand".into())
    }
}

/// Optional capabilities other parts of convoy plug in.
#[derive(Clone, Default)]
pub struct CommandHooks {
    pub preflight: Option<Arc<dyn PreflightRunner>>,
    pub drift: Option<Arc<dyn DriftCommands>>,
}

/// What a command acts on, as found for one comment or click.
struct Target {
    venue: Venue,
    rollout: Option<(RolloutRecord, Rollout)>,
    /// The pull request's author, for `forbid_self_approval`.
    pr_author: Option<String>,
    /// The open pull request's head commit, for `plan`.
    head_sha: Option<CommitSha>,
}

impl Target {
    fn policy(&self) -> Option<&RolloutPolicy> {
        self.rollout.as_ref().map(|(_, r)| &r.policy)
    }
    fn rollout_id(&self) -> Option<&RolloutId> {
        self.rollout.as_ref().map(|(rec, _)| &rec.id)
    }
}

/// What became of one command.
enum Handled {
    /// Carried out; an optional reply (help, a confirmation).
    Done {
        reply: Option<String>,
        /// Rollouts it acted on, when not (only) the target's.
        rollouts: Vec<RolloutId>,
        detail: Option<String>,
    },
    Rejected(Rejection),
    Problem(Notice),
}

/// Who asked, and where to answer.
struct Asker<'a> {
    installation: InstallationId,
    repo: &'a RepoName,
    user: &'a str,
    /// The line as written, or the command a button stands for.
    line: String,
    /// Its line number in the comment (1-based), for a comment.
    line_no: Option<u32>,
    /// The pull request it came from, when known.
    pull_request: Option<u64>,
}

pub struct CommandHandler {
    prefix: String,
    app_id: u64,
    public_url: String,
    runtime: RolloutRuntime,
    github: Option<Arc<dyn GitHubApi>>,
    reporter: Option<Arc<dyn ReportSink>>,
    hooks: CommandHooks,
    clock: Arc<dyn WallClock>,
    /// (repo, lower-case login) → permission.
    permissions: Mutex<TtlCache<(String, String), Permission>>,
    /// (lower-case org, lower-case team, lower-case login) → active member.
    teams: Mutex<TtlCache<(String, String, String), bool>>,
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CommandHandler {
    pub fn new(
        config: &Config,
        runtime: RolloutRuntime,
        github: Option<Arc<dyn GitHubApi>>,
        reporter: Option<Arc<dyn ReportSink>>,
        hooks: CommandHooks,
    ) -> CommandHandler {
        CommandHandler {
            prefix: config.github.command_prefix.trim().to_owned(),
            app_id: config.github.app_id,
            public_url: config.server.public_url.trim_end_matches('/').to_owned(),
            runtime,
            github,
            reporter,
            hooks,
            clock: Arc::new(crate::github::SystemClock),
            permissions: Mutex::new(TtlCache::new(PERMISSION_TTL)),
            teams: Mutex::new(TtlCache::new(PERMISSION_TTL)),
        }
    }

    /// Uses `clock` for freeze ends, audit times and the permission cache.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> CommandHandler {
        self.clock = clock;
        self
    }

    fn store(&self) -> &Arc<dyn crate::store::Store> {
        self.runtime.store()
    }

    fn rollout_url(&self, id: &RolloutId) -> Option<String> {
        (!self.public_url.is_empty()).then(|| format!("{}/rollouts/{id}", self.public_url))
    }

    // --- comments --------------------------------------------------------

    async fn on_comment(
        &self,
        installation: InstallationId,
        e: &IssueCommentEvent,
    ) -> Result<(), HandlerError> {
        let labels: Vec<&str> = e.issue_labels.iter().map(String::as_str).collect();
        let place = match commands::comment_place(&CommentFacts {
            event: "issue_comment",
            action: &e.action,
            on_pull_request: e.on_pull_request,
            issue_labels: &labels,
            author_login: &e.author,
            author_type: &e.author_type,
        }) {
            Ok(place) => place,
            Err(why) => {
                tracing::debug!(
                    ?why,
                    comment = e.comment_id,
                    "comment not read for commands"
                );
                return Ok(());
            }
        };
        let lines = commands::parse_comment(&e.body, &self.prefix);
        if lines.is_empty() {
            return Ok(());
        }
        let comment_id = u64::try_from(e.comment_id).ok();
        let target = self.comment_target(installation, e, place).await?;
        let location = commands::comment_location(e.on_pull_request, e.issue_number, e.comment_id);
        // A redelivery, or a retry after a failure part-way: lines already
        // written to the audit log at this comment were acted on (and
        // answered) and are not run again, rollout or not.
        let earlier: Vec<AuditEntry> = self
            .store()
            .audit_at(&e.repo, &location)
            .await
            .map_err(transient)?;
        // A line is known by its number and text: a command written twice
        // is two lines. Entries from before line numbers were kept match
        // by text alone.
        let fresh: Vec<_> = lines
            .iter()
            .filter(|l| {
                !earlier.iter().any(|a| {
                    a.action == l.text
                        && a.line
                            .is_none_or(|n| usize::try_from(n).is_ok_and(|n| n == l.line))
                })
            })
            .collect();
        if fresh.is_empty() {
            tracing::info!(
                comment = e.comment_id,
                "comment already handled; not run again"
            );
            return Ok(());
        }
        self.react(installation, &e.repo, comment_id, GhReaction::Eyes)
            .await;

        let mut replies: Vec<String> = Vec::new();
        let (mut done, mut problems) = (0usize, 0usize);
        for line in fresh {
            let asker = Asker {
                installation,
                repo: &e.repo,
                user: &e.author,
                line: line.text.clone(),
                line_no: u32::try_from(line.line).ok(),
                pull_request: e.on_pull_request.then_some(e.issue_number),
            };
            let handled = match &line.result {
                Err(error) => Handled::Rejected(error.clone().into()),
                Ok(command) => match self.run(&asker, command, &target).await {
                    Ok(handled) => handled,
                    Err(error) => {
                        // This line is retried with the delivery; what the
                        // lines before it did is answered now, as they will
                        // not run (nor answer) again.
                        if !replies.is_empty() {
                            self.reply(
                                installation,
                                &e.repo,
                                e.issue_number,
                                &replies.join("\n\n"),
                            )
                            .await;
                        }
                        return Err(error);
                    }
                },
            };
            let verb = line.result.as_ref().ok().map(commands::Command::verb);
            let (reply, carried_out) = self.settle(&asker, &target, &location, verb, handled).await;
            if let Some((text, problem)) = reply {
                replies.push(text);
                problems += usize::from(problem);
            }
            done += usize::from(carried_out);
        }
        if !replies.is_empty() {
            self.reply(installation, &e.repo, e.issue_number, &replies.join("\n\n"))
                .await;
        }
        if problems > 0 {
            self.react(installation, &e.repo, comment_id, GhReaction::Confused)
                .await;
        }
        if done > 0 {
            self.react(installation, &e.repo, comment_id, GhReaction::Rocket)
                .await;
        }
        Ok(())
    }

    /// The venue and rollout of a comment: on a pull request, the newest
    /// deploy rollout of its merge; without one, GitHub says whether the
    /// pull request is open, merged or closed.
    async fn comment_target(
        &self,
        installation: InstallationId,
        e: &IssueCommentEvent,
        place: CommentPlace,
    ) -> Result<Target, HandlerError> {
        if place == CommentPlace::DriftIssue {
            return Ok(Target {
                venue: Venue::DriftIssue,
                rollout: None,
                pr_author: None,
                head_sha: None,
            });
        }
        let found = self
            .store()
            .latest_rollout_for_pull_request(&e.repo, e.issue_number)
            .await
            .map_err(transient)?;
        if let Some(record) = found {
            let rollout = decode(&record);
            return Ok(Target {
                venue: Venue::MergedPullRequest,
                rollout: rollout.map(|r| (record, r)),
                pr_author: Some(e.issue_author.clone()),
                head_sha: None,
            });
        }
        let mut target = Target {
            venue: Venue::OpenPullRequest,
            rollout: None,
            pr_author: Some(e.issue_author.clone()),
            head_sha: None,
        };
        let Some(github) = &self.github else {
            return Ok(target);
        };
        match github
            .get_pull_request(installation, &e.repo, e.issue_number)
            .await
        {
            Ok(pr) => {
                target.venue = if pr.merged == Some(true) {
                    Venue::MergedPullRequest
                } else if pr.state == "open" {
                    Venue::OpenPullRequest
                } else {
                    Venue::ClosedPullRequest
                };
                target.head_sha = Some(CommitSha::new(pr.head.sha));
            }
            Err(err) if err.is_transient() => return Err(transient(err)),
            Err(err) => {
                tracing::warn!(error = %err, pr = e.issue_number, "cannot read the pull request; taking it as open");
            }
        }
        Ok(target)
    }

    // --- buttons ---------------------------------------------------------

    async fn on_check_run(
        &self,
        installation: InstallationId,
        e: &CheckRunEvent,
    ) -> Result<(), HandlerError> {
        if self.app_id != 0
            && let Some(app) = e.app_id
            && u64::try_from(app).ok() != Some(self.app_id)
        {
            return Ok(()); // another App's check run
        }
        let location = commands::check_run_location(e.check_run_id);
        let identifier = match (e.action.as_str(), e.name.as_str()) {
            ("requested_action", _) => match &e.requested_action {
                Some(id) => Some(id.clone()),
                None => return Ok(()),
            },
            ("rerequested", PREFLIGHT_CHECK) => {
                return self.rerun_preflight_check(installation, e, &location).await;
            }
            ("rerequested", ROLLOUT_CHECK) => None,
            _ => return Ok(()),
        };
        let Some(id) = e.external_id.as_deref().map(RolloutId::new) else {
            tracing::info!(
                check_run = e.check_run_id,
                "a click on a check run without a rollout id; ignored"
            );
            return Ok(());
        };
        let Some(record) = self.store().rollout(&id).await.map_err(transient)? else {
            tracing::warn!(rollout = %id, "a click for an unknown rollout; ignored");
            return Ok(());
        };
        if record.repo != e.repo {
            tracing::warn!(rollout = %id, repo = %e.repo, "a click names a rollout of another repository; ignored");
            return Ok(());
        }
        let Some(rollout) = decode(&record) else {
            return Ok(());
        };
        let waves: Vec<_> = rollout.waves.iter().map(|w| w.name.clone()).collect();
        let pull_request = record.pull_request;
        let command = match &identifier {
            Some(identifier) => commands::command_for_action(identifier, &waves),
            None => Ok(commands::Command::Retry {
                target: commands::RetryTarget::Failed,
            }),
        };
        let line = match &command {
            Ok(c) => c.to_line(&self.prefix),
            Err(_) => format!(
                "button {}",
                commands::code_span(identifier.as_deref().unwrap_or(""))
            ),
        };
        let asker = Asker {
            installation,
            repo: &e.repo,
            user: &e.sender,
            line,
            line_no: None,
            pull_request,
        };
        let command = match command {
            Ok(c) => c,
            Err(error) => {
                let outcome = Outcome::Refused(error.to_string());
                self.audit(&asker, Some(&id), &location, &outcome, identifier.clone())
                    .await;
                return Ok(());
            }
        };
        // Without the author, `forbid_self_approval` cannot be checked: a
        // lookup that fails never grants, and the click is answered like
        // any refusal.
        let (pr_author, unreadable) =
            if command.verb() == Verb::Approve && rollout.policy.forbid_self_approval {
                match self.pr_author(installation, &e.repo, pull_request).await? {
                    Ok(author) => (author, None),
                    Err(why) => (None, Some(why)),
                }
            } else {
                (None, None)
            };
        let target = Target {
            venue: Venue::MergedPullRequest,
            rollout: Some((record, rollout)),
            pr_author,
            head_sha: None,
        };
        let handled = match unreadable {
            Some(why) => Handled::Problem(Notice::NotDone {
                reason: format!(
                    "cannot tell who opened the pull request ({why}), so the rule against \
                     approving one's own cannot be checked; approve with a comment on the \
                     pull request instead"
                ),
            }),
            None => self.run(&asker, &command, &target).await?,
        };
        let (reply, _) = self
            .settle(&asker, &target, &location, Some(command.verb()), handled)
            .await;
        // Only problems are answered: success shows in the check run and
        // the comment, which the runtime refreshes.
        if let (Some((text, true)), Some(pr)) = (reply, pull_request) {
            // Refusals already address the clicker; other answers say who.
            let who = commands::reply::mention(&e.sender)
                .filter(|m| !text.starts_with(m.as_str()))
                .map(|m| format!(" by {m}"))
                .unwrap_or_default();
            let body = format!(
                "{}\n\n_(a button on the `{ROLLOUT_CHECK}` check run{who})_\n",
                text.trim_end()
            );
            self.reply(installation, &e.repo, pr, &body).await;
        }
        Ok(())
    }

    /// Who opened the rollout's pull request: `Ok(None)` when it has none;
    /// the inner `Err` says why it could not be read (a transient failure
    /// is the outer one, and the delivery is retried).
    async fn pr_author(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        pull_request: Option<u64>,
    ) -> Result<Result<Option<String>, String>, HandlerError> {
        let Some(number) = pull_request else {
            return Ok(Ok(None));
        };
        let Some(github) = &self.github else {
            return Ok(Err("convoy cannot call GitHub".into()));
        };
        match github.get_pull_request(installation, repo, number).await {
            Ok(pr) => Ok(pr
                .user
                .map(|u| Some(u.login))
                .ok_or_else(|| "GitHub names no author".to_string())),
            Err(e) if e.is_transient() => Err(transient(e)),
            Err(e) => {
                tracing::warn!(error = %e, pr = number, "cannot read the pull request's author");
                Ok(Err("GitHub would not show the pull request".into()))
            }
        }
    }

    async fn rerun_preflight_check(
        &self,
        installation: InstallationId,
        e: &CheckRunEvent,
        location: &str,
    ) -> Result<(), HandlerError> {
        let asker = Asker {
            installation,
            repo: &e.repo,
            user: &e.sender,
            line: format!("{} plan", self.prefix),
            line_no: None,
            pull_request: None,
        };
        let outcome = match &self.hooks.preflight {
            None => {
                tracing::info!(repo = %e.repo, "preflight rerun asked for, but no preflight runner is configured");
                Outcome::Refused("preflight checks are not set up in this convoy".into())
            }
            Some(runner) => {
                let request = PreflightRequest {
                    installation,
                    repo: e.repo.clone(),
                    head_sha: e.head_sha.clone(),
                    pull_request: None,
                    requested_by: e.sender.clone(),
                };
                match runner.rerun(&request).await {
                    Ok(()) => Outcome::Accepted,
                    Err(why) => Outcome::Failed(why),
                }
            }
        };
        self.audit(&asker, None, location, &outcome, Some("rerequested".into()))
            .await;
        Ok(())
    }

    // --- one command -------------------------------------------------------

    /// Checks and carries out one command. `Err` only before anything acted.
    async fn run(
        &self,
        asker: &Asker<'_>,
        command: &commands::Command,
        target: &Target,
    ) -> Result<Handled, HandlerError> {
        let verb = command.verb();
        if let Err(na) = commands::applicable(verb, target.venue) {
            return Ok(Handled::Rejected(na.into()));
        }
        let repo_wide = matches!(verb, Verb::Help | Verb::Freeze | Verb::Unfreeze);
        let drift = matches!(verb, Verb::Adopt | Verb::Resync);
        if drift && self.hooks.drift.is_none() {
            return Ok(Handled::Problem(Notice::Unavailable {
                reason: "drift handling (`adopt`, `resync`) is not part of this convoy yet".into(),
            }));
        }
        if verb == Verb::Status && target.venue == Venue::DriftIssue {
            // Anyone may ask: the drift issue is checked again and shown now.
            let Some(drift) = &self.hooks.drift else {
                return Ok(Handled::Problem(Notice::Unavailable {
                    reason: "drift detection is not running in this convoy".into(),
                }));
            };
            return Ok(match drift.refresh(asker.installation, asker.repo).await {
                Ok(()) => Handled::Done {
                    reply: None,
                    rollouts: Vec::new(),
                    detail: Some("drift checked again".into()),
                },
                Err(reason) => Handled::Problem(Notice::NotDone { reason }),
            });
        }
        let needs_rollout = !repo_wide && !drift && verb != Verb::Plan;
        if needs_rollout && target.rollout.is_none() {
            return Ok(Handled::Problem(Notice::NoRollout));
        }
        if let Some((_, rollout)) = &target.rollout
            && let Err(invalid) = commands::validate(command, &commands::context_of(rollout))
        {
            return Ok(Handled::Rejected(invalid.into()));
        }
        match self.decide(asker, verb, target).await? {
            Decision::Allowed => {}
            Decision::Refused(refusal) => return Ok(Handled::Rejected(refusal.into())),
        }
        let now = self.clock.now();
        let action = commands::action_for(command, asker.user, now);
        Ok(self.act(asker, action, target).await)
    }

    /// The authorization decision, with the lookups it needs.
    async fn decide(
        &self,
        asker: &Asker<'_>,
        verb: Verb,
        target: &Target,
    ) -> Result<Decision, HandlerError> {
        if verb.access() == commands::Access::Anyone {
            return Ok(Decision::Allowed);
        }
        let permission = self
            .permission(asker.installation, asker.repo, asker.user)
            .await?;
        let no_approvers: Vec<String> = Vec::new();
        let policy = target.policy();
        let input = AuthInput {
            verb,
            user: asker.user,
            permission,
            approvers: policy.map_or(&no_approvers, |p| &p.approvers),
            pr_author: target.pr_author.as_deref(),
            forbid_self_approval: policy.is_some_and(|p| p.forbid_self_approval),
        };
        let mut member_of: Vec<TeamRef> = Vec::new();
        for team in commands::teams_to_check(&input) {
            if self
                .is_member(asker.installation, &team, asker.user)
                .await?
            {
                member_of.push(team);
            }
        }
        Ok(commands::authorize(&input, &member_of))
    }

    /// The user's repository permission, from the cache or GitHub. Without
    /// a GitHub client nobody has write: a failed lookup never grants.
    async fn permission(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        user: &str,
    ) -> Result<Permission, HandlerError> {
        let key = (repo.as_str().to_owned(), user.to_ascii_lowercase());
        let now = self.clock.now();
        if let Some(p) = lock(&self.permissions).get(&key, now) {
            return Ok(p);
        }
        let Some(github) = &self.github else {
            tracing::warn!("no GitHub App key configured: cannot check permissions, refusing");
            return Ok(Permission::None);
        };
        let permission = match github.get_permission(installation, repo, user).await {
            Ok(p) => Permission::from_github(p.permission.as_str()),
            Err(e) if e.is_transient() => return Err(transient(e)),
            Err(GitHubError::NotFound(_)) => Permission::None,
            Err(e) => {
                tracing::warn!(error = %e, user, "permission lookup refused; counting as none");
                return Ok(Permission::None); // not cached: may be fixed soon
            }
        };
        lock(&self.permissions).put(key, permission, now);
        Ok(permission)
    }

    async fn is_member(
        &self,
        installation: InstallationId,
        team: &TeamRef,
        user: &str,
    ) -> Result<bool, HandlerError> {
        let key = (
            team.org.to_ascii_lowercase(),
            team.slug.to_ascii_lowercase(),
            user.to_ascii_lowercase(),
        );
        let now = self.clock.now();
        if let Some(m) = lock(&self.teams).get(&key, now) {
            return Ok(m);
        }
        let Some(github) = &self.github else {
            return Ok(false);
        };
        let member = match github
            .get_team_membership(installation, &team.org, &team.slug, user)
            .await
        {
            Ok(m) => m.is_some_and(|m| m.is_active()),
            Err(e) if e.is_transient() => return Err(transient(e)),
            Err(GitHubError::NotFound(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, %team, "team membership lookup refused; not a member");
                return Ok(false);
            }
        };
        lock(&self.teams).put(key, member, now);
        Ok(member)
    }

    /// Carries out an allowed command. Never fails the delivery: whatever
    /// happens is the command's outcome.
    async fn act(&self, asker: &Asker<'_>, action: Action, target: &Target) -> Handled {
        let done = |reply: Option<String>| Handled::Done {
            reply,
            rollouts: Vec::new(),
            detail: None,
        };
        let rollout_id = target.rollout_id().cloned();
        match action {
            Action::Help => done(Some(commands::render_help(&self.prefix))),
            Action::RefreshReport => {
                let Some((record, rollout)) = &target.rollout else {
                    return Handled::Problem(Notice::NoRollout);
                };
                match &self.reporter {
                    Some(reporter) => {
                        reporter
                            .rollout_changed(&record.id, Importance::Matters)
                            .await;
                        done(None)
                    }
                    // Nothing refreshes the comment: answer with the state.
                    None => done(Some(commands::render_notice(
                        &status_notice(record, rollout, self.rollout_url(&record.id)),
                        &self.prefix,
                        &asker.line,
                    ))),
                }
            }
            Action::RerunPreflight => {
                let Some(runner) = &self.hooks.preflight else {
                    return Handled::Problem(Notice::Unavailable {
                        reason: "preflight checks are not set up in this convoy".into(),
                    });
                };
                let Some(head_sha) = target.head_sha.clone() else {
                    return Handled::Problem(Notice::Failed {
                        reason: "the pull request's head commit could not be read from GitHub"
                            .into(),
                    });
                };
                let request = PreflightRequest {
                    installation: asker.installation,
                    repo: asker.repo.clone(),
                    head_sha,
                    pull_request: asker.pull_request,
                    requested_by: asker.user.to_owned(),
                };
                match runner.rerun(&request).await {
                    Ok(()) => done(None),
                    Err(reason) => Handled::Problem(Notice::Failed { reason }),
                }
            }
            Action::Engine(command) => {
                let Some(id) = rollout_id else {
                    return Handled::Problem(Notice::NoRollout);
                };
                match self.runtime.command(&id, command).await {
                    Ok(()) => done(None),
                    Err(e) => problem(e),
                }
            }
            Action::Rollback(environments) => {
                let Some(id) = rollout_id else {
                    return Handled::Problem(Notice::NoRollout);
                };
                match self.runtime.rollback(&id, &environments, asker.user).await {
                    Ok(rb) => Handled::Done {
                        reply: Some(commands::render_notice(
                            &Notice::RolledBack {
                                rollout: rb.to_string(),
                                url: self.rollout_url(&rb),
                            },
                            &self.prefix,
                            &asker.line,
                        )),
                        rollouts: vec![id, rb.clone()],
                        detail: Some(format!("rollback rollout {rb}")),
                    },
                    Err(e) => problem(e),
                }
            }
            Action::RepositoryWide(command) => self.repository_wide(asker, command).await,
            Action::Adopt {
                environment,
                service,
            } => match &self.hooks.drift {
                Some(drift) => match drift
                    .adopt(
                        asker.installation,
                        asker.repo,
                        &environment,
                        service.as_ref(),
                        asker.user,
                    )
                    .await
                {
                    Ok(()) => done(None),
                    Err(reason) => Handled::Problem(Notice::NotDone { reason }),
                },
                None => Handled::Problem(Notice::Unavailable {
                    reason: "drift handling is not part of this convoy yet".into(),
                }),
            },
            Action::Resync { environment } => match &self.hooks.drift {
                Some(drift) => match drift
                    .resync_started(asker.installation, asker.repo, &environment, asker.user)
                    .await
                {
                    Ok(Some(id)) => Handled::Done {
                        reply: None,
                        detail: Some(format!("resync rollout {id}")),
                        rollouts: vec![id],
                    },
                    Ok(None) => done(None),
                    Err(reason) => Handled::Problem(Notice::NotDone { reason }),
                },
                None => Handled::Problem(Notice::Unavailable {
                    reason: "drift handling is not part of this convoy yet".into(),
                }),
            },
        }
    }

    /// `freeze` / `unfreeze`: the repository's emergency stop. The freeze is
    /// recorded, so rollouts that start while it lasts start frozen, and it
    /// is applied to every running rollout of the repository at once.
    async fn repository_wide(&self, asker: &Asker<'_>, command: crate::engine::Command) -> Handled {
        let result = match &command {
            crate::engine::Command::Freeze { until, reason, by } => self
                .runtime
                .freeze(Some(asker.repo), *until, reason.clone(), by)
                .await
                .map(|count| Notice::Frozen {
                    count,
                    until: until.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
                    reason: reason.clone(),
                }),
            crate::engine::Command::Unfreeze { by } => {
                let lifted = self.runtime.unfreeze(Some(asker.repo), by).await;
                // The operator's freeze of every repository outlives this
                // one's unfreeze: say so rather than "unfrozen".
                let all = match &lifted {
                    Ok(_) => self
                        .runtime
                        .freeze_in_force(asker.repo)
                        .await
                        .ok()
                        .flatten()
                        .filter(|f| f.scope == crate::store::Freeze::ALL),
                    Err(_) => None,
                };
                let by_operator = "the operator's freeze of every repository (`convoy freeze \
                                   --all`) holds its rollouts; `convoy unfreeze --all` lifts it";
                match (lifted, all) {
                    (Ok(true), Some(_)) => {
                        return Handled::Problem(Notice::NotDone {
                            reason: format!(
                                "lifted this repository's own freeze, but {by_operator}"
                            ),
                        });
                    }
                    (Ok(false), Some(_)) => {
                        return Handled::Problem(Notice::NotDone {
                            reason: format!(
                                "this repository has no freeze of its own to lift: {by_operator}"
                            ),
                        });
                    }
                    (Ok(true), None) => Ok(Notice::Unfrozen { count: 1 }),
                    (Ok(false), None) => {
                        return Handled::Problem(Notice::NotDone {
                            reason: "this repository is not frozen".into(),
                        });
                    }
                    (Err(e), _) => Err(e),
                }
            }
            _ => {
                return Handled::Problem(Notice::NotDone {
                    reason: "not a repository-wide command".into(),
                });
            }
        };
        match result {
            Ok(notice) => Handled::Done {
                reply: Some(commands::render_notice(&notice, &self.prefix, &asker.line)),
                detail: Some(format!("repository {} ({notice:?})", asker.repo)),
                rollouts: Vec::new(),
            },
            Err(e) => Handled::Problem(Notice::Failed {
                reason: e.to_string(),
            }),
        }
    }

    /// Audits the outcome and returns the reply text with whether it is a
    /// problem (😕), and whether the command was carried out (🚀).
    async fn settle(
        &self,
        asker: &Asker<'_>,
        target: &Target,
        location: &str,
        verb: Option<Verb>,
        handled: Handled,
    ) -> (Option<(String, bool)>, bool) {
        let reply_input = ReplyInput {
            prefix: &self.prefix,
            line: Some(&asker.line),
        };
        let target_id = target.rollout_id();
        match handled {
            Handled::Done {
                reply,
                rollouts,
                detail,
            } => {
                let mut ids: Vec<Option<&RolloutId>> = rollouts.iter().map(Some).collect();
                if ids.is_empty() || target_id.is_some_and(|t| !rollouts.contains(t)) {
                    ids.push(target_id);
                }
                for id in ids {
                    self.audit(asker, id, location, &Outcome::Accepted, detail.clone())
                        .await;
                }
                (reply.map(|r| (r, false)), true)
            }
            Handled::Rejected(rejection) => {
                let outcome = Outcome::Refused(rejection.to_string());
                self.audit(asker, target_id, location, &outcome, verb_detail(verb))
                    .await;
                (
                    Some((commands::render_rejection(&rejection, reply_input), true)),
                    false,
                )
            }
            Handled::Problem(notice) => {
                let outcome = notice.outcome();
                self.audit(asker, target_id, location, &outcome, verb_detail(verb))
                    .await;
                (
                    Some((
                        commands::render_notice(&notice, &self.prefix, &asker.line),
                        notice.is_problem(),
                    )),
                    false,
                )
            }
        }
    }

    async fn audit(
        &self,
        asker: &Asker<'_>,
        rollout: Option<&RolloutId>,
        location: &str,
        outcome: &Outcome,
        detail: Option<String>,
    ) {
        let entry = AuditEntry {
            at: self.clock.now(),
            actor: asker.user.to_owned(),
            repo: Some(asker.repo.clone()),
            rollout_id: rollout.cloned(),
            location: Some(location.to_owned()),
            action: asker.line.clone(),
            result: outcome.audit_result(),
            detail,
            line: asker.line_no,
        };
        tracing::info!(
            actor = %entry.actor,
            repo = %asker.repo,
            rollout = ?entry.rollout_id.as_ref().map(ToString::to_string),
            location,
            action = %entry.action,
            result = %entry.result,
            "command"
        );
        if let Err(e) = self.store().append_audit(&entry).await {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }

    // --- feedback ----------------------------------------------------------

    async fn react(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        comment_id: Option<u64>,
        reaction: GhReaction,
    ) {
        let (Some(github), Some(id)) = (&self.github, comment_id) else {
            return;
        };
        if let Err(e) = github.add_reaction(installation, repo, id, reaction).await {
            tracing::warn!(error = %e, comment = id, ?reaction, "reacting to a command failed");
        }
    }

    async fn reply(&self, installation: InstallationId, repo: &RepoName, issue: u64, body: &str) {
        let Some(github) = &self.github else {
            tracing::info!(issue, "no GitHub App key: command reply not sent");
            return;
        };
        if let Err(e) = github.create_comment(installation, repo, issue, body).await {
            tracing::warn!(error = %e, issue, "replying to a command failed");
        }
    }
}

fn verb_detail(verb: Option<Verb>) -> Option<String> {
    verb.map(|v| format!("command: {}", v.name()))
}

/// The engine's or runtime's answer as a notice.
fn problem(e: RuntimeError) -> Handled {
    match e {
        RuntimeError::Command(c) => Handled::Problem(Notice::NotDone { reason: c.0 }),
        other => Handled::Problem(Notice::Failed {
            reason: other.to_string(),
        }),
    }
}

fn decode(record: &RolloutRecord) -> Option<Rollout> {
    let document = record.document.as_deref()?;
    match serde_json::from_str(document) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(rollout = %record.id, error = %e, "stored rollout cannot be read");
            None
        }
    }
}

fn status_notice(record: &RolloutRecord, rollout: &Rollout, url: Option<String>) -> Notice {
    let steps: Vec<_> = rollout.steps().collect();
    Notice::Status {
        rollout: record.id.to_string(),
        state: rollout.state.as_str().to_owned(),
        url,
        steps: steps.len(),
        succeeded: steps
            .iter()
            .filter(|s| s.state == StepState::Succeeded)
            .count(),
        failed: steps
            .iter()
            .filter(|s| s.state == StepState::Failed)
            .count(),
    }
}

#[async_trait]
impl EventHandler for CommandHandler {
    async fn handle(&self, _: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError> {
        let Some(installation) = envelope.installation else {
            return Ok(());
        };
        match &envelope.event {
            Event::IssueComment(e) => self.on_comment(installation, e).await,
            Event::CheckRun(e) => self.on_check_run(installation, e).await,
            _ => Ok(()),
        }
    }
}
