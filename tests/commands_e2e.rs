//! Slash commands and buttons end to end: signed `issue_comment` and
//! `check_run` webhooks in, the real GitHub client talking to the stand-in
//! (every request checked against GitHub's API description), a real local
//! fleet, and the rollout's audit log read back through the JSON API.

mod common;

use std::time::Duration;

use common::*;
use convoy::app::Services;
use convoy::domain::RolloutId;
use convoy::engine::Importance;
use convoy::runtime::commands::{CommandHooks, PreflightRequest, PreflightRunner};
use convoy::runtime::rollouts::ReportSink;
use convoy::testkit::fleet::{AgentKnobs, Fleet};
use convoy::testkit::github_standin::GitHubStandIn;
use serde_json::Value;

const PR: u64 = 7;
/// Opens the pull request; has write.
const AUTHOR: &str = "paula";
/// Write permission.
const WRITER: &str = "wanda";
/// Read permission only.
const READER: &str = "reggie";
/// Write permission and a member of `@acme/sre`.
const SRE: &str = "sam";
const FAILING: &str = "cust-005";

struct World {
    _dir: tempfile::TempDir,
    _git: GitFixture,
    fleet: Fleet,
    standin: GitHubStandIn,
    running: convoy::app::Running,
    rollout: RolloutId,
    sha: convoy::domain::CommitSha,
    deliveries: std::sync::atomic::AtomicUsize,
}

async fn fleet_of(n: usize) -> (Fleet, Vec<(String, String)>) {
    let names: Vec<String> = (0..n).map(|i| format!("cust-{i:03}")).collect();
    let fleet = Fleet::start(names.clone(), 11).await.unwrap();
    let envs = names.iter().map(|n| (n.clone(), fleet.url(n))).collect();
    (fleet, envs)
}

/// Convoy with a GitHub client, a fleet of 10, and PR 7 merged. With
/// `failing`, cust-005 refuses every deploy, so the rollout halts.
async fn world(policy: &str, rest_wave: &str, failing: bool) -> World {
    world_with(policy, rest_wave, failing, None).await
}

/// Records every "rollout changed" the reporter is told about.
#[derive(Default)]
struct FakeReporter {
    told: std::sync::Mutex<Vec<(RolloutId, Importance)>>,
}

#[async_trait::async_trait]
impl ReportSink for FakeReporter {
    async fn rollout_changed(&self, id: &RolloutId, importance: Importance) {
        self.told.lock().unwrap().push((id.clone(), importance));
    }
}

async fn world_with(
    policy: &str,
    rest_wave: &str,
    failing: bool,
    reporter: Option<std::sync::Arc<dyn ReportSink>>,
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(10).await;
    if failing {
        fleet.set_knobs(
            FAILING,
            AgentKnobs {
                permanent_failure: true,
                ..AgentKnobs::default()
            },
        );
    }
    let spec = fleet_spec(&envs, &format!("  retries: 1\n{policy}"), rest_wave);
    let sha = git.commit(&[("convoy.yml", &spec)], "first");
    let (standin, github) = github_standin().await;
    standin.add_pull_request(REPO, PR, AUTHOR, sha.as_str(), "feature", "main", true);
    standin.set_permission(REPO, AUTHOR, "write", "write");
    standin.set_permission(REPO, WRITER, "write", "maintain");
    standin.set_permission(REPO, READER, "read", "triage");
    standin.set_permission(REPO, SRE, "admin", "admin");
    standin.add_team_member("acme", "sre", SRE, "member", "active");
    let running = start_with(
        config(dir.path(), &git, ""),
        Services {
            github: Some(github),
            reporter,
            ..Services::default()
        },
    )
    .await;
    assert_eq!(
        deliver(&running, "pull_request", "merge-7", &merged_pr(PR, &sha)).await,
        202
    );
    let rollout = rollout_of(&running, &sha).await.id;
    World {
        _dir: dir,
        _git: git,
        fleet,
        standin,
        running,
        rollout,
        sha,
        deliveries: std::sync::atomic::AtomicUsize::new(0),
    }
}

impl World {
    /// `user` writes `body` on the pull request; returns the comment id.
    async fn say(&self, user: &str, body: &str) -> u64 {
        let id = self.standin.add_user_comment(REPO, PR, user, body);
        let n = self
            .deliveries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let status = deliver(
            &self.running,
            "issue_comment",
            &format!("comment-{n}"),
            &pr_comment(PR, id, user, AUTHOR, body),
        )
        .await;
        assert_eq!(status, 202);
        id
    }

    /// Waits (bounded) for convoy's reaction `content` on the comment.
    async fn reaction(&self, comment: u64, content: &str) {
        for _ in 0..400 {
            if self.reactions(comment).iter().any(|r| r == content) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {content} on comment {comment} within 20 s; reactions: {:?}; replies: {:?}",
            self.reactions(comment),
            self.replies()
        );
    }

    fn reactions(&self, comment: u64) -> Vec<String> {
        self.standin
            .state()
            .reactions
            .iter()
            .filter(|r| r.comment_id == comment && r.user == "convoy[bot]")
            .map(|r| r.content.clone())
            .collect()
    }

    /// The bodies of convoy's comments on the pull request, oldest first.
    fn replies(&self) -> Vec<String> {
        self.standin
            .state()
            .comments_on(REPO, PR)
            .into_iter()
            .filter(|c| c["user"]["login"] == "convoy[bot]")
            .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn audit(&self, id: &RolloutId) -> Vec<Value> {
        api_rollout(&self.running, id).await["audit"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn state(&self) -> String {
        api_rollout(&self.running, &self.rollout).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn halted(&self) {
        let r = wait_state(&self.running, &self.rollout, &["halted", "succeeded"], 60).await;
        assert_eq!(r.state, "halted", "the rollout should halt on {FAILING}");
        // A halt lets steps in flight finish (SPEC 6.2): wait for them, so
        // "nothing changed" below is measured from a still rollout.
        for _ in 0..400 {
            let view = api_rollout(&self.running, &self.rollout).await;
            if view["counts"]["in_progress"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("steps still in flight 20 s after the halt");
    }

    async fn finish(self) {
        self.standin.assert_no_violations();
        self.running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_retries_a_halted_rollout_once_even_when_the_comment_comes_twice() {
    let w = world("", "", true).await;
    w.halted().await;
    w.fleet.set_knobs(FAILING, AgentKnobs::default());
    let deploys_before = w.fleet.deploys().len();

    let said = "Fixed the agent.\n\n/convoy retry\n\nThanks!";
    let comment = w.say(WRITER, said).await;
    w.reaction(comment, "eyes").await;
    w.reaction(comment, "rocket").await;
    let done = wait_state(&w.running, &w.rollout, &["succeeded", "failed"], 60).await;
    assert_eq!(done.state, "succeeded");
    assert!(w.fleet.deploys().len() > deploys_before);
    assert_eq!(
        w.fleet.version_of(FAILING, "web").as_deref(),
        Some(w.sha.as_str())
    );

    // The same delivery again is deduplicated at the door; the same comment
    // under another delivery id is found in the audit log and not re-run
    // (a second retry would now fail: "nothing to retry").
    let body = pr_comment(PR, comment, WRITER, AUTHOR, said);
    assert_eq!(
        deliver(&w.running, "issue_comment", "comment-0", &body).await,
        200
    );
    assert_eq!(
        deliver(&w.running, "issue_comment", "redelivered", &body).await,
        202
    );
    // Let the worker take it, then a marker comment proves it has.
    let marker = w.say(WRITER, "/convoy help").await;
    w.reaction(marker, "rocket").await;
    assert!(!w.reactions(comment).contains(&"confused".to_owned()));

    let audit = w.audit(&w.rollout).await;
    let retries: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "/convoy retry")
        .collect();
    assert_eq!(retries.len(), 1, "{audit:#?}");
    assert_eq!(retries[0]["actor"], WRITER);
    assert_eq!(retries[0]["result"], "accepted");
    assert_eq!(
        retries[0]["location"],
        format!("pr#{PR} comment {comment}").as_str()
    );
    assert_eq!(retries[0]["repo"], REPO);
    // Only `help` was answered with a comment: a done retry needs no reply.
    let replies = w.replies();
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert!(replies[0].contains("convoy commands"), "{}", replies[0]);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_is_refused_and_typos_and_code_blocks_change_nothing() {
    let reporter = std::sync::Arc::new(FakeReporter::default());
    let w = world_with("", "", true, Some(reporter.clone())).await;
    w.halted().await;
    let deploys_before = w.fleet.deploys().len();

    // Anyone may ask for a fresh report: the reporter is told, no reply.
    // (First let the steps in flight at the halt finish reporting.)
    let mut told_before = usize::MAX;
    for _ in 0..100 {
        let now = reporter.told.lock().unwrap().len();
        if now == told_before {
            break;
        }
        told_before = now;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let status = w.say(READER, "/convoy status").await;
    w.reaction(status, "rocket").await;
    {
        let told = reporter.told.lock().unwrap();
        assert_eq!(told.len(), told_before + 1, "{told:?}");
        assert_eq!(
            told.last().unwrap(),
            &(w.rollout.clone(), Importance::Matters)
        );
    }
    assert!(w.replies().is_empty());

    // A reader may not retry.
    let refused = w.say(READER, "/convoy retry").await;
    w.reaction(refused, "confused").await;
    assert!(!w.reactions(refused).contains(&"rocket".to_owned()));
    let replies = w.replies();
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert!(
        replies[0].contains("@reggie") && replies[0].contains("needs **write**"),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains("**read**"), "{}", replies[0]);

    // An unknown environment: the closest name is suggested.
    let typo = w.say(WRITER, "/convoy retry cust-05").await;
    w.reaction(typo, "confused").await;
    let replies = w.replies();
    assert_eq!(replies.len(), 2);
    assert!(
        replies[1].contains("did you mean `cust-005`?"),
        "{}",
        replies[1]
    );

    // Inside a code block or a quote a command is only shown, never run.
    let quoted = w
        .say(
            WRITER,
            "To stop it, one would write:\n\n```\n/convoy abort\n```\n\n> /convoy abort\n",
        )
        .await;
    let marker = w.say(WRITER, "/convoy help").await;
    w.reaction(marker, "rocket").await;
    assert!(w.reactions(quoted).is_empty(), "{:?}", w.reactions(quoted));

    // Nothing changed.
    assert_eq!(w.state().await, "halted");
    assert_eq!(w.fleet.deploys().len(), deploys_before);
    let audit = w.audit(&w.rollout).await;
    let results: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap_or_default(),
                a["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        results
            .iter()
            .any(|(who, r)| *who == READER && r.starts_with("refused: ") && r.contains("write")),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|(who, r)| *who == WRITER && r.starts_with("refused: ") && r.contains("cust-05")),
        "{results:?}"
    );
    assert!(
        !audit.iter().any(|a| a["action"] == "/convoy abort"),
        "{audit:#?}"
    );

    // Re-running the rollout check run retries the failed steps.
    w.fleet.set_knobs(FAILING, AgentKnobs::default());
    let rerun = check_run_click(700, &w.rollout, None, WRITER);
    deliver(&w.running, "check_run", "rerun", &rerun).await;
    let done = wait_state(&w.running, &w.rollout, &["succeeded", "failed"], 60).await;
    assert_eq!(done.state, "succeeded");
    w.finish().await;
}

/// `/convoy unfreeze` lifts the repository's own freeze only; when the
/// operator's freeze of every repository still holds it, the reply says so
/// and names what lifts that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfreeze_under_the_operator_s_freeze_says_what_still_holds() {
    let w = world("", "", true).await;
    w.halted().await;
    w.running
        .runtime
        .freeze(None, None, Some("kill switch".into()), "operator")
        .await
        .unwrap();
    let unfreeze = w.say(WRITER, "/convoy unfreeze").await;
    w.reaction(unfreeze, "confused").await;
    let replies = w.replies();
    let last = replies.last().unwrap();
    assert!(
        last.contains("this repository has no freeze of its own to lift")
            && last.contains("`convoy unfreeze --all` lifts it"),
        "{last}"
    );
    let view = api_rollout(&w.running, &w.rollout).await;
    assert_eq!(view["emergency_freeze"]["reason"], "kill switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_runs_each_command_on_a_halted_rollout() {
    let w = world("", "", true).await;
    w.halted().await;

    let status = w.say(WRITER, "/convoy status").await;
    w.reaction(status, "rocket").await;
    assert!(
        w.replies().last().unwrap().contains("is **halted**"),
        "{:?}",
        w.replies()
    );

    let pause = w.say(WRITER, "/convoy pause").await;
    w.reaction(pause, "rocket").await;
    let resume = w.say(WRITER, "/convoy resume").await;
    w.reaction(resume, "rocket").await;

    // Several commands in one comment run in order.
    let freeze = w
        .say(WRITER, "/convoy freeze 2h incident 4711\n/convoy unfreeze")
        .await;
    w.reaction(freeze, "rocket").await;
    let replies = w.replies();
    let last = replies.last().unwrap();
    assert!(
        last.contains("froze this repository")
            && last.contains("1 running rollout")
            && last.contains("incident 4711"),
        "{last}"
    );
    assert!(last.contains("lifted this repository's freeze"), "{last}");

    // Nothing waits for approval: a clear answer, nothing done.
    let approve = w.say(WRITER, "/convoy approve").await;
    w.reaction(approve, "confused").await;
    assert!(
        w.replies()
            .last()
            .unwrap()
            .contains("no wave is waiting for approval"),
        "{:?}",
        w.replies()
    );

    // Skipping the failed environment lets the rollout finish without it.
    let skip = w.say(WRITER, "/convoy skip cust-005").await;
    w.reaction(skip, "rocket").await;
    let done = wait_state(&w.running, &w.rollout, &["succeeded", "failed"], 60).await;
    assert_eq!(done.state, "succeeded");
    let view = api_rollout(&w.running, &w.rollout).await;
    let skipped = steps_in(&view, &["skipped"]).len();
    assert!(skipped > 0);

    let audit = w.audit(&w.rollout).await;
    let accepted: Vec<&str> = audit
        .iter()
        .filter(|a| a["result"] == "accepted")
        .map(|a| a["action"].as_str().unwrap_or_default())
        .collect();
    for action in [
        "/convoy status",
        "/convoy pause",
        "/convoy resume",
        "/convoy freeze 2h incident 4711",
        "/convoy unfreeze",
        "/convoy skip cust-005",
    ] {
        assert!(accepted.contains(&action), "{action} in {accepted:?}");
    }
    // One permission lookup served every command (cached up to 60 s).
    assert_eq!(
        w.standin.state().count_requests(
            &axum::http::Method::GET,
            &format!("/collaborators/{WRITER}/permission")
        ),
        1
    );
    assert!(
        audit.iter().any(|a| a["action"] == "/convoy approve"
            && a["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed: "))),
        "{audit:#?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_then_abort_from_the_pull_request() {
    // The first merge (PR 6) succeeds everywhere; PR 7 changes web, fails
    // on cust-005 and halts.
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let (fleet, envs) = fleet_of(10).await;
    let spec = fleet_spec(&envs, "  retries: 1\n", "");
    let first = git.commit(&[("convoy.yml", &spec)], "first");
    let (standin, github) = github_standin().await;
    standin.add_pull_request(REPO, PR, AUTHOR, "a".repeat(40).as_str(), "f", "main", true);
    standin.set_permission(REPO, WRITER, "write", "write");
    let running = start_with(
        config(dir.path(), &git, ""),
        Services {
            github: Some(github),
            ..Services::default()
        },
    )
    .await;
    deliver(&running, "pull_request", "merge-6", &merged_pr(6, &first)).await;
    let r1 = rollout_of(&running, &first).await;
    let done = wait_state(&running, &r1.id, &["succeeded", "halted", "failed"], 60).await;
    assert_eq!(done.state, "succeeded");
    fleet.set_knobs(
        FAILING,
        AgentKnobs {
            permanent_failure: true,
            ..AgentKnobs::default()
        },
    );
    let second = git.commit(&[("services/web/index.html", "v2")], "web v2");
    deliver(&running, "pull_request", "merge-7", &merged_pr(PR, &second)).await;
    let r2 = rollout_of(&running, &second).await;
    let w = World {
        _dir: dir,
        _git: git,
        fleet,
        standin,
        running,
        rollout: r2.id.clone(),
        sha: second.clone(),
        deliveries: std::sync::atomic::AtomicUsize::new(0),
    };
    w.halted().await;
    assert_eq!(
        w.fleet.version_of("cust-000", "web").as_deref(),
        Some(second.as_str())
    );

    let rollback = w.say(WRITER, "/convoy rollback cust-000").await;
    w.reaction(rollback, "rocket").await;
    let reply = w.replies().last().cloned().unwrap_or_default();
    assert!(reply.contains("rolling back as rollout"), "{reply}");
    // The rollback is a rollout of its own, linked to this one, and puts
    // the last good version back.
    let list: Value = reqwest::get(format!(
        "http://{}/api/rollouts?repo={REPO}",
        w.running.addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rb_id = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .find(|id| id != r1.id.as_str() && id != r2.id.as_str())
        .expect("a rollback rollout");
    let rb_id = RolloutId::new(rb_id);
    let rb = wait_state(&w.running, &rb_id, &["succeeded", "halted", "failed"], 60).await;
    assert_eq!(rb.state, "succeeded");
    assert_eq!(
        w.fleet.version_of("cust-000", "web").as_deref(),
        Some(first.as_str())
    );
    let audit = w.audit(&rb_id).await;
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "/convoy rollback cust-000" && a["result"] == "accepted"),
        "the rollback's own audit shows what started it: {audit:#?}"
    );

    let abort = w.say(WRITER, "/convoy abort").await;
    w.reaction(abort, "rocket").await;
    let aborted = wait_state(&w.running, &w.rollout, &["aborted"], 30).await;
    assert_eq!(aborted.state, "aborted");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_needs_a_listed_approver_who_is_not_the_author() {
    let w = world(
        "  approvers: [\"@acme/sre\"]\n  forbid_self_approval: true\n",
        "    approval: true\n",
        false,
    )
    .await;
    let waiting = wait_state(&w.running, &w.rollout, &["awaiting_approval"], 60).await;
    assert_eq!(waiting.state, "awaiting_approval");

    let own = w.say(AUTHOR, "/convoy approve").await;
    w.reaction(own, "confused").await;
    let reply = w.replies().last().cloned().unwrap_or_default();
    assert!(reply.contains("you opened this pull request"), "{reply}");

    let writer = w.say(WRITER, "/convoy approve").await;
    w.reaction(writer, "confused").await;
    let reply = w.replies().last().cloned().unwrap_or_default();
    assert!(reply.contains("`@acme/sre`"), "{reply}");
    assert_eq!(w.state().await, "awaiting_approval");

    let sre = w.say(SRE, "/convoy approve rest").await;
    w.reaction(sre, "rocket").await;
    let done = wait_state(
        &w.running,
        &w.rollout,
        &["succeeded", "halted", "failed"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded");

    let audit = w.audit(&w.rollout).await;
    let approvals: Vec<(String, String)> = audit
        .iter()
        .filter(|a| {
            a["action"]
                .as_str()
                .is_some_and(|s| s.starts_with("/convoy approve"))
        })
        .map(|a| {
            (
                a["actor"].as_str().unwrap_or_default().to_owned(),
                a["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    assert!(approvals[0].0 == AUTHOR && approvals[0].1.contains("may not approve"));
    assert!(approvals[1].0 == WRITER && approvals[1].1.contains("approvers"));
    assert_eq!(approvals[2], (SRE.to_owned(), "accepted".to_owned()));
    // The team was asked about through the API.
    assert!(
        w.standin.state().count_requests(
            &axum::http::Method::GET,
            "/orgs/acme/teams/sre/memberships/"
        ) >= 1
    );
    w.finish().await;
}

/// With `forbid_self_approval`, a click on Approve needs the pull
/// request's author, which only GitHub knows: when it will not say, the
/// click is refused (a failed lookup never grants), with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approve_click_is_refused_when_the_author_cannot_be_read() {
    let w = world(
        "  forbid_self_approval: true\n",
        "    approval: true\n",
        false,
    )
    .await;
    let waiting = wait_state(&w.running, &w.rollout, &["awaiting_approval"], 60).await;
    assert_eq!(waiting.state, "awaiting_approval");
    w.standin.inject(
        convoy::testkit::github_standin::Fault::new(
            convoy::testkit::github_standin::FaultKind::NotFound,
            1,
        )
        .on(axum::http::Method::GET, &format!("/pulls/{PR}")),
    );
    let replies_before = w.replies().len();
    let click = check_run_click(601, &w.rollout, Some("approve:rest"), AUTHOR);
    deliver(&w.running, "check_run", "click-approve", &click).await;
    for _ in 0..400 {
        if w.replies().len() > replies_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replies = w.replies();
    let last = replies.last().unwrap();
    assert!(
        last.contains("cannot tell who opened the pull request")
            && last.contains(&format!(
                "(a button on the `convoy/rollout` check run by @{AUTHOR})"
            )),
        "{last}"
    );
    assert_eq!(w.state().await, "awaiting_approval");
    let audit = w.audit(&w.rollout).await;
    assert!(
        audit.iter().any(|a| a["actor"] == AUTHOR
            && a["result"]
                .as_str()
                .is_some_and(|r| r.contains("cannot tell who opened"))),
        "{audit:#?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_click_retries_the_failed_steps_for_a_writer_only() {
    let w = world("", "", true).await;
    w.halted().await;
    w.fleet.set_knobs(FAILING, AgentKnobs::default());
    let deploys_before = w.fleet.deploys().len();

    // A reader's click is refused, with a reply on the pull request.
    let click = check_run_click(501, &w.rollout, Some("retry-failed"), READER);
    assert_eq!(
        deliver(&w.running, "check_run", "click-1", &click).await,
        202
    );
    for _ in 0..400 {
        if !w.replies().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replies = w.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("@reggie, `/convoy retry` needs **write**")
            && replies[0].contains("(a button on the `convoy/rollout` check run)"),
        "{}",
        replies[0]
    );
    assert_eq!(w.state().await, "halted");
    assert_eq!(w.fleet.deploys().len(), deploys_before);

    // A writer's click retries.
    let click = check_run_click(502, &w.rollout, Some("retry-failed"), WRITER);
    deliver(&w.running, "check_run", "click-2", &click).await;
    let done = wait_state(&w.running, &w.rollout, &["succeeded", "failed"], 60).await;
    assert_eq!(done.state, "succeeded");
    assert_eq!(
        w.fleet.version_of(FAILING, "web").as_deref(),
        Some(w.sha.as_str())
    );

    let audit = w.audit(&w.rollout).await;
    let clicks: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|a| {
            a["location"]
                .as_str()
                .is_some_and(|l| l.starts_with("check_run"))
        })
        .map(|a| {
            (
                a["location"].as_str().unwrap_or_default(),
                a["actor"].as_str().unwrap_or_default(),
                a["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(clicks.len(), 2, "{clicks:?}");
    assert_eq!(clicks[0].0, "check_run 501");
    assert!(clicks[0].2.starts_with("refused: "), "{clicks:?}");
    assert_eq!(clicks[1], ("check_run 502", WRITER, "accepted"));
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "/convoy retry failed" && a["actor"] == WRITER)
    );
    w.finish().await;
}

/// Records what `/convoy plan` and a preflight rerun ask for.
#[derive(Default)]
struct FakePreflight {
    asked: std::sync::Mutex<Vec<PreflightRequest>>,
}

#[async_trait::async_trait]
impl PreflightRunner for FakePreflight {
    async fn rerun(&self, request: &PreflightRequest) -> Result<(), String> {
        self.asked.lock().unwrap().push(request.clone());
        Ok(())
    }
}

/// Bot reactions on one comment.
fn reactions_on(standin: &GitHubStandIn, comment: u64) -> Vec<String> {
    standin
        .state()
        .reactions
        .iter()
        .filter(|r| r.comment_id == comment)
        .map(|r| r.content.clone())
        .collect()
}

async fn wait_reaction(standin: &GitHubStandIn, comment: u64, content: &str) {
    for _ in 0..400 {
        if reactions_on(standin, comment).iter().any(|r| r == content) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no {content} on comment {comment}: {:?}",
        reactions_on(standin, comment)
    );
}

fn bot_replies(standin: &GitHubStandIn, issue: u64) -> Vec<String> {
    standin
        .state()
        .comments_on(REPO, issue)
        .into_iter()
        .filter(|c| c["user"]["login"] == "convoy[bot]")
        .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_on_an_open_pull_request_and_commands_on_the_drift_issue() {
    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    git.commit(&[("README.md", "hi")], "first");
    let (standin, github) = github_standin().await;
    const OPEN: u64 = 9;
    let head = "b".repeat(40);
    standin.add_pull_request(REPO, OPEN, AUTHOR, &head, "feature", "main", false);
    standin.set_permission(REPO, WRITER, "write", "write");
    let issue = github
        .create_issue(
            convoy::domain::InstallationId(INSTALLATION),
            &convoy::domain::RepoName::new(REPO),
            &convoy::github::NewIssue {
                title: "Drift".into(),
                body: "tracking".into(),
                labels: vec!["convoy-drift".into()],
            },
        )
        .await
        .unwrap()
        .number;
    let preflight = std::sync::Arc::new(FakePreflight::default());
    let running = start_with(
        config(dir.path(), &git, ""),
        Services {
            github: Some(github),
            command_hooks: CommandHooks {
                preflight: Some(preflight.clone()),
                drift: None,
            },
            ..Services::default()
        },
    )
    .await;
    let mut n = 0;
    let mut say = async |issue_number: u64, on_pr: bool, user: &str, body: &str, action: &str| {
        let id = standin.add_user_comment(REPO, issue_number, user, body);
        let mut payload = pr_comment(issue_number, id, user, AUTHOR, body);
        payload["action"] = action.into();
        if !on_pr {
            if let Some(issue) = payload["issue"].as_object_mut() {
                issue.remove("pull_request");
            }
            payload["issue"]["labels"] = serde_json::json!([{ "name": "convoy-drift" }]);
        }
        if user.ends_with("[bot]") {
            payload["comment"]["user"]["type"] = "Bot".into();
        }
        n += 1;
        assert_eq!(
            deliver(&running, "issue_comment", &format!("c-{n}"), &payload).await,
            202
        );
        id
    };

    // Anyone may rerun the preflight of an open pull request.
    let plan = say(OPEN, true, READER, "/convoy plan", "created").await;
    wait_reaction(&standin, plan, "rocket").await;
    {
        let asked = preflight.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].head_sha.as_str(), head);
        assert_eq!(asked[0].pull_request, Some(OPEN));
        assert_eq!(asked[0].requested_by, READER);
    }
    // Rollout commands have nothing to act on before the merge.
    let early = say(OPEN, true, WRITER, "/convoy retry", "created").await;
    wait_reaction(&standin, early, "confused").await;
    let replies = bot_replies(&standin, OPEN);
    assert!(
        replies.last().unwrap().contains("not merged yet"),
        "{replies:?}"
    );
    // Bots (convoy itself included) and edited comments are not read.
    let by_bot = say(OPEN, true, "convoy[bot]", "/convoy plan", "created").await;
    let edited = say(OPEN, true, WRITER, "/convoy plan", "edited").await;
    // Rerunning the preflight check run does the same as `/convoy plan`.
    let mut rerun = check_run_click(600, &RolloutId::new("unused"), None, WRITER);
    rerun["check_run"]["name"] = "convoy/preflight".into();
    rerun["check_run"]["head_sha"] = head.as_str().into();
    rerun["check_run"]["external_id"] = serde_json::Value::Null;
    assert_eq!(deliver(&running, "check_run", "rerun-1", &rerun).await, 202);

    // On the drift issue: a drift command about an environment convoy never
    // deployed to says it does not know it; rollout commands
    // point to the pull request; a freeze with nothing running says so.
    let adopt = say(issue, false, WRITER, "/convoy adopt cust-000", "created").await;
    wait_reaction(&standin, adopt, "confused").await;
    let freeze = say(
        issue,
        false,
        WRITER,
        "/convoy retry\n/convoy freeze 1h",
        "created",
    )
    .await;
    wait_reaction(&standin, freeze, "confused").await;
    let replies = bot_replies(&standin, issue);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(
        replies[0].contains("was not carried out")
            && replies[0].contains("unknown environment `cust-000`"),
        "{}",
        replies[0]
    );
    // The freeze is the repository's, so it holds from the drift issue too.
    assert!(
        replies[1].contains("froze this repository"),
        "{}",
        replies[1]
    );
    assert!(reactions_on(&standin, by_bot).is_empty());
    assert!(reactions_on(&standin, edited).is_empty());
    assert_eq!(
        preflight.asked.lock().unwrap().len(),
        2,
        "plan, then the rerun"
    );
    // The same comment again under another delivery id (GitHub's
    // redelivery, or the worker's retry after a failure part-way): its
    // lines are in the audit log at that comment, so nothing runs or
    // answers twice, with no rollout involved.
    let mut again = pr_comment(
        issue,
        freeze,
        WRITER,
        AUTHOR,
        "/convoy retry\n/convoy freeze 1h",
    );
    again["action"] = "created".into();
    if let Some(fields) = again["issue"].as_object_mut() {
        fields.remove("pull_request");
    }
    again["issue"]["labels"] = serde_json::json!([{ "name": "convoy-drift" }]);
    assert_eq!(
        deliver(&running, "issue_comment", "freeze-again", &again).await,
        202
    );
    let marker = say(issue, false, WRITER, "/convoy help", "created").await;
    wait_reaction(&standin, marker, "rocket").await;
    let replies = bot_replies(&standin, issue);
    assert_eq!(
        replies.len(),
        3,
        "only the marker's answer is new: {replies:#?}"
    );
    assert!(replies[2].contains("convoy commands"), "{}", replies[2]);

    // A command written twice is two lines: when the first run of the
    // comment did line 1 and then failed, its retry runs line 2 only.
    let body = "/convoy plan\n/convoy plan";
    let twice = standin.add_user_comment(REPO, OPEN, READER, body);
    running
        .store
        .append_audit(&convoy::store::AuditEntry {
            at: chrono::Utc::now(),
            actor: READER.into(),
            repo: Some(convoy::domain::RepoName::new(REPO)),
            rollout_id: None,
            location: Some(format!("pr#{OPEN} comment {twice}")),
            action: "/convoy plan".into(),
            result: "accepted".into(),
            detail: None,
            line: Some(1),
        })
        .await
        .unwrap();
    let payload = pr_comment(OPEN, twice, READER, AUTHOR, body);
    assert_eq!(
        deliver(&running, "issue_comment", "twice-retried", &payload).await,
        202
    );
    wait_reaction(&standin, twice, "rocket").await;
    assert_eq!(
        preflight.asked.lock().unwrap().len(),
        3,
        "line 2 ran; line 1 had run before"
    );
    let audit = running.store.list_rollouts(None, 10).await.unwrap();
    assert!(audit.is_empty(), "no rollout was created");
    standin.assert_no_violations();
    running.stop().await;
}

/// The handler on its own, with a clock the test moves: a permission is
/// looked up once, trusted for under 60 s, and looked up again after; a
/// revoked permission stops working within the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_cached_for_at_most_sixty_seconds() {
    use convoy::domain::{DeliveryId, InstallationId, RepoName};
    use convoy::github::ManualClock;
    use convoy::runtime::commands::CommandHandler;
    use convoy::runtime::worker::EventHandler;

    let dir = tempfile::tempdir().unwrap();
    let git = GitFixture::new(dir.path());
    let config = config(dir.path(), &git, "");
    let store = open_store(&dir.path().join("handler.db")).await;
    let drivers = convoy::drivers::Drivers::from_config(&config.drivers).unwrap();
    let runtime = convoy::runtime::rollouts::RolloutRuntime::new(store.clone(), drivers, None);
    let (standin, github) = github_standin().await;
    standin.set_permission(REPO, WRITER, "write", "write");
    let issue = github
        .create_issue(
            InstallationId(INSTALLATION),
            &RepoName::new(REPO),
            &convoy::github::NewIssue {
                title: "Drift".into(),
                body: String::new(),
                labels: vec!["convoy-drift".into()],
            },
        )
        .await
        .unwrap()
        .number;
    let clock = std::sync::Arc::new(ManualClock::new(chrono::Utc::now()));
    let handler = CommandHandler::new(
        &config,
        runtime,
        Some(github),
        None,
        CommandHooks::default(),
    )
    .with_clock(clock.clone());

    // `/convoy unfreeze` needs write; with nothing frozen it is answered
    // "not done" when allowed, and refused otherwise.
    let mut n = 0;
    let mut ask = async || {
        n += 1;
        let id = standin.add_user_comment(REPO, issue, WRITER, "/convoy unfreeze");
        let mut payload = pr_comment(issue, id, WRITER, AUTHOR, "/convoy unfreeze");
        if let Some(i) = payload["issue"].as_object_mut() {
            i.remove("pull_request");
        }
        payload["issue"]["labels"] = serde_json::json!([{ "name": "convoy-drift" }]);
        let body = serde_json::to_string(&payload).unwrap();
        let envelope = convoy::webhook::events::parse("issue_comment", &body)
            .unwrap()
            .unwrap();
        handler
            .handle(&DeliveryId::new(format!("d-{n}")), &envelope)
            .await
            .unwrap();
        bot_replies(&standin, issue)
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let lookups = || {
        standin.state().count_requests(
            &axum::http::Method::GET,
            &format!("/collaborators/{WRITER}/permission"),
        )
    };

    assert!(ask().await.contains("not frozen"));
    assert_eq!(lookups(), 1);
    clock.advance(Duration::from_secs(59));
    assert!(ask().await.contains("not frozen"));
    assert_eq!(lookups(), 1, "still fresh at 59 s");

    standin.set_permission(REPO, WRITER, "read", "read");
    clock.advance(Duration::from_secs(1));
    let reply = ask().await;
    assert_eq!(lookups(), 2, "looked up again at 60 s");
    assert!(reply.contains("needs **write**"), "{reply}");
    standin.assert_no_violations();
}

/// Which rollout a command on a pull request acts on: the newest deploy
/// rollout of that pull request in that repository, never a rollback.
#[tokio::test]
async fn the_newest_deploy_rollout_of_a_pull_request_is_found() {
    use convoy::domain::{BranchName, CommitSha, RepoName};
    use convoy::store::{RolloutKind, RolloutRecord};

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("s.db")).await;
    let t0 = chrono::Utc::now();
    let record =
        |id: &str, repo: &str, pr: Option<u64>, kind: RolloutKind, secs: i64| RolloutRecord {
            id: RolloutId::new(id),
            repo: RepoName::new(repo),
            branch: BranchName::new("main"),
            commit: CommitSha::new(format!("{id:0>40}")),
            previous_commit: None,
            pull_request: pr,
            installation: None,
            kind,
            parent: None,
            state: "running".into(),
            created_at: t0 + chrono::Duration::seconds(secs),
            updated_at: t0 + chrono::Duration::seconds(secs),
            document: None,
            error: None,
        };
    for r in [
        record("a1", REPO, Some(PR), RolloutKind::Deploy, 0),
        record("a2", REPO, Some(PR), RolloutKind::Deploy, 10),
        record("a3", REPO, Some(PR), RolloutKind::Rollback, 20),
        record("a4", REPO, Some(8), RolloutKind::Deploy, 30),
        record("a5", "acme/other", Some(PR), RolloutKind::Deploy, 40),
        record("a6", REPO, None, RolloutKind::Deploy, 50),
    ] {
        store.create_rollout(&r).await.unwrap();
    }
    let repo = RepoName::new(REPO);
    let found = store
        .latest_rollout_for_pull_request(&repo, PR)
        .await
        .unwrap();
    assert_eq!(found.map(|r| r.id), Some(RolloutId::new("a2")));
    let none = store
        .latest_rollout_for_pull_request(&repo, 99)
        .await
        .unwrap();
    assert!(none.is_none());
}
