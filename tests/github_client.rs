//! The real GitHub client against the stand-in: every call, App auth,
//! GitHub's limits, and injected faults. Every test ends with zero contract
//! violations (the stand-in also fails a test at drop if any were left).

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use convoy::config::Secret;
use convoy::domain::{InstallationId, RepoName};
use convoy::github::limits::{CHECK_RUN_OUTPUT_MAX_BYTES, TRUNCATED_NOTE};
use convoy::github::*;
use convoy::testkit::github_standin::{
    Fault, FaultKind, GitHubStandIn, StandInConfig, TEST_APP_ID, TEST_APP_PRIVATE_KEY_PEM,
};

const INST: InstallationId = InstallationId(77);

fn repo() -> RepoName {
    RepoName::new("acme/app")
}

/// Waits shrunk so fault tests take milliseconds; the rules are unchanged.
fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        secondary_min: Duration::from_millis(10),
        max_wait: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
    }
}

fn client_for(standin: &GitHubStandIn, policy: RetryPolicy) -> GitHubClient {
    let mut cfg = GitHubClientConfig::new(
        standin.url(),
        TEST_APP_ID,
        Secret::new(TEST_APP_PRIVATE_KEY_PEM),
    );
    cfg.retry = policy;
    GitHubClient::new(cfg).unwrap_or_else(|e| panic!("client: {e}"))
}

async fn setup() -> (GitHubStandIn, GitHubClient) {
    let standin = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .unwrap_or_else(|e| panic!("stand-in: {e}"));
    standin.add_repo("acme/app", "trunk");
    standin.add_pull_request(
        "acme/app",
        42,
        "alice",
        &"a".repeat(40),
        "feature",
        "trunk",
        false,
    );
    let client = client_for(&standin, fast_policy());
    (standin, client)
}

fn ok<T>(r: GitHubResult<T>) -> T {
    r.unwrap_or_else(|e| panic!("GitHub call failed: {e}"))
}

fn annotation(i: u32) -> Annotation {
    Annotation {
        path: "convoy.yml".into(),
        start_line: i,
        end_line: i,
        start_column: Some(1),
        end_column: Some(4),
        annotation_level: AnnotationLevel::Failure,
        message: format!("problem {i}"),
        title: Some("convoy.yml".into()),
    }
}

#[tokio::test]
async fn jwt_claims_follow_github_rules_and_tokens_are_cached() {
    let (standin, client) = setup().await;
    let before = chrono::Utc::now().timestamp();
    ok(client.get_repository(INST, &repo()).await);
    ok(client.get_repository(INST, &repo()).await);
    ok(client.get_pull_request(INST, &repo(), 42).await);
    let state = standin.state();
    assert_eq!(
        state.tokens_issued.get(&INST.0),
        Some(&1),
        "one token for three calls"
    );
    let claims = &state.jwt_claims[0];
    assert_eq!(claims.iss, TEST_APP_ID.to_string());
    assert!(
        claims.iat <= before - 59 && claims.iat >= before - 62,
        "iat 60 s back"
    );
    assert!(claims.exp - claims.iat <= 600, "at most 10 minutes");
    // Another installation gets its own token.
    ok(client.get_repository(InstallationId(78), &repo()).await);
    assert_eq!(standin.state().tokens_issued.get(&78), Some(&1));
    standin.assert_no_violations();
}

#[tokio::test]
async fn a_token_close_to_expiry_is_renewed() {
    let mut cfg = StandInConfig::for_tests();
    // Shorter than the client's 5-minute renew margin: never worth reusing.
    cfg.token_ttl = Duration::from_secs(4 * 60);
    let standin = GitHubStandIn::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    standin.add_repo("acme/app", "main");
    let client = client_for(&standin, fast_policy());
    ok(client.get_repository(INST, &repo()).await);
    ok(client.get_repository(INST, &repo()).await);
    assert_eq!(standin.state().tokens_issued.get(&INST.0), Some(&2));
    standin.assert_no_violations();
}

#[tokio::test]
async fn check_runs_with_actions_annotations_and_completion() {
    let (standin, client) = setup().await;
    let mut run = NewCheckRun::new("convoy/rollout", "b".repeat(40));
    run.external_id = Some("r-123".into());
    run.details_url = Some("http://127.0.0.1:3000/rollouts/r-123".into());
    run.output = Some(CheckRunOutput {
        title: "Rollout halted".into(),
        summary: "2 failed".into(),
        text: Some("details".into()),
        annotations: (1..=120).map(annotation).collect(),
    });
    run.conclusion = Some(CheckRunConclusion::ActionRequired);
    run.status = CheckRunStatus::Completed;
    run.actions = vec![
        CheckRunAction {
            label: "Retry failed".into(),
            description: "Retry the failed environments".into(),
            identifier: "retry".into(),
        },
        CheckRunAction {
            label: "Roll back".into(),
            description: "Deploy the last good version".into(),
            identifier: "rollback".into(),
        },
        CheckRunAction {
            label: "Abort".into(),
            description: "Stop the rollout".into(),
            identifier: "abort".into(),
        },
    ];
    let created = ok(client.create_check_run(INST, &repo(), &run).await);
    let state = standin.state();
    assert_eq!(state.annotations[&created.id].len(), 120);
    assert_eq!(state.count_requests(&Method::POST, "/check-runs"), 1);
    assert_eq!(
        state.count_requests(&Method::PATCH, "/check-runs/"),
        2,
        "50 + 50 + 20"
    );
    let current = state.check_run(created.id).cloned().unwrap_or_default();
    assert_eq!(current["external_id"], "r-123");
    assert_eq!(current["conclusion"], "action_required");
    assert_eq!(current["actions"].as_array().map(Vec::len), Some(3));

    // Update: a new in-progress state, then success.
    let update = CheckRunUpdate {
        status: Some(CheckRunStatus::InProgress),
        output: Some(CheckRunOutput {
            title: "Rolling out".into(),
            summary: "3/10".into(),
            text: None,
            annotations: vec![],
        }),
        actions: Some(vec![]),
        ..Default::default()
    };
    ok(client
        .update_check_run(INST, &repo(), created.id, &update)
        .await);
    let done = CheckRunUpdate {
        conclusion: Some(CheckRunConclusion::Success),
        status: Some(CheckRunStatus::Completed),
        ..Default::default()
    };
    let finished = ok(client
        .update_check_run(INST, &repo(), created.id, &done)
        .await);
    assert_eq!(finished.conclusion.as_deref(), Some("success"));
    let history = &standin.state().check_runs[&created.id];
    assert_eq!(
        history.len(),
        5,
        "create, two annotation batches, two updates"
    );
    assert_eq!(history[3]["output"]["summary"], "3/10");
    standin.assert_no_violations();
}

#[tokio::test]
async fn too_many_or_too_long_actions_are_refused_before_sending() {
    let (standin, client) = setup().await;
    let mut run = NewCheckRun::new("convoy/rollout", "b".repeat(40));
    run.actions = vec![CheckRunAction {
        label: "x".repeat(21),
        description: "d".into(),
        identifier: "i".into(),
    }];
    let err = client.create_check_run(INST, &repo(), &run).await;
    assert!(matches!(err, Err(GitHubError::Request(_))), "{err:?}");
    assert_eq!(
        standin.state().count_requests(&Method::POST, "/check-runs"),
        0
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn output_is_cut_to_65535_bytes_on_a_char_boundary() {
    let (standin, client) = setup().await;
    let mut run = NewCheckRun::new("convoy/preflight", "c".repeat(40));
    run.output = Some(CheckRunOutput {
        title: "Plan".into(),
        summary: "é".repeat(40_000),       // 80,000 bytes
        text: Some("日本".repeat(20_000)), // 120,000 bytes
        annotations: vec![],
    });
    let created = ok(client.create_check_run(INST, &repo(), &run).await);
    let state = standin.state();
    let out = &state.check_run(created.id).cloned().unwrap_or_default()["output"];
    for (field, unit) in [("summary", "é"), ("text", "日本")] {
        let s = out[field].as_str().unwrap_or_default();
        assert!(
            s.len() <= CHECK_RUN_OUTPUT_MAX_BYTES,
            "{field}: {} bytes",
            s.len()
        );
        assert!(s.ends_with(TRUNCATED_NOTE), "{field} says it was cut");
        let kept = s.strip_suffix(TRUNCATED_NOTE).unwrap_or_default();
        assert!(
            kept.chars().all(|c| unit.contains(c)),
            "{field} kept whole characters"
        );
        assert!(kept.len() + unit.len() + TRUNCATED_NOTE.len() > CHECK_RUN_OUTPUT_MAX_BYTES);
    }
    standin.assert_no_violations();
}

#[tokio::test]
async fn comments_create_update_list_and_react() {
    let (standin, client) = setup().await;
    let body = "<!-- convoy:rollout:r1 -->\nRolling out";
    let c = ok(client.create_comment(INST, &repo(), 42, body).await);
    assert_eq!(c.body.as_deref(), Some(body));
    assert_eq!(
        c.user.as_ref().map(|u| u.login.as_str()),
        Some("convoy[bot]")
    );
    let edited = ok(client
        .update_comment(INST, &repo(), c.id, "<!-- convoy:rollout:r1 -->\nDone")
        .await);
    assert_eq!(edited.id, c.id);
    // Enough human comments to need a second page.
    for i in 0..105 {
        standin.add_user_comment("acme/app", 42, "bob", &format!("comment {i}"));
    }
    let all = ok(client.list_comments(INST, &repo(), 42).await);
    assert_eq!(all.len(), 106);
    assert_eq!(all[0].id, c.id);
    ok(client
        .add_reaction(INST, &repo(), all[5].id, Reaction::Eyes)
        .await);
    ok(client
        .add_reaction(INST, &repo(), all[5].id, Reaction::Rocket)
        .await);
    ok(client
        .add_reaction(INST, &repo(), all[5].id, Reaction::Eyes)
        .await);
    let state = standin.state();
    let contents: Vec<&str> = state.reactions.iter().map(|r| r.content.as_str()).collect();
    assert_eq!(contents, vec!["eyes", "rocket"]);
    let history = &state.comments[&c.id];
    assert_eq!(history.len(), 2);
    assert!(
        history[1]["body"]
            .as_str()
            .unwrap_or_default()
            .ends_with("Done")
    );
    assert_eq!(
        state.count_requests(&Method::PATCH, "/issues/comments/"),
        1,
        "PATCH, not POST"
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn permissions_pull_requests_repositories_and_teams() {
    let (standin, client) = setup().await;
    standin.set_permission("acme/app", "alice", "write", "maintain");
    standin.set_permission("acme/app", "carol", "read", "triage");
    let p = ok(client.get_permission(INST, &repo(), "alice").await);
    assert_eq!(p.permission, PermissionLevel::Write);
    assert_eq!(p.role_name, "maintain");
    assert!(p.can_write());
    let p = ok(client.get_permission(INST, &repo(), "carol").await);
    assert!(!p.can_write());
    assert_eq!(p.role_name, "triage");
    let p = ok(client.get_permission(INST, &repo(), "mallory").await);
    assert_eq!(p.permission, PermissionLevel::None);

    let pr = ok(client.get_pull_request(INST, &repo(), 42).await);
    assert_eq!(pr.head.sha, "a".repeat(40));
    assert_eq!(pr.base.ref_name, "trunk");
    assert_eq!(pr.user.map(|u| u.login), Some("alice".into()));
    assert!(matches!(
        client.get_pull_request(INST, &repo(), 999).await,
        Err(GitHubError::NotFound(_))
    ));

    let r = ok(client.get_repository(INST, &repo()).await);
    assert_eq!(r.default_branch, "trunk");
    assert_eq!(r.full_name, "acme/app");

    standin.add_team_member("acme", "sre", "alice", "member", "active");
    standin.add_team_member("acme", "sre", "dave", "member", "pending");
    let m = ok(client
        .get_team_membership(INST, "acme", "sre", "alice")
        .await);
    assert!(m.is_some_and(|m| m.is_active()));
    let m = ok(client
        .get_team_membership(INST, "acme", "sre", "dave")
        .await);
    assert!(m.is_some_and(|m| !m.is_active()));
    assert_eq!(
        ok(client.get_team_membership(INST, "acme", "sre", "eve").await),
        None
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn issues_by_label() {
    let (standin, client) = setup().await;
    let issue = ok(client
        .create_issue(
            INST,
            &repo(),
            &NewIssue {
                title: "convoy: drift detected".into(),
                body: "acme-eu: api".into(),
                labels: vec!["convoy-drift".into()],
            },
        )
        .await);
    ok(client
        .create_issue(
            INST,
            &repo(),
            &NewIssue {
                title: "unrelated".into(),
                body: String::new(),
                labels: vec!["bug".into()],
            },
        )
        .await);
    assert!(issue.number > 42, "issue numbers follow PR numbers");
    let open = ok(client
        .list_issues_by_label(INST, &repo(), "convoy-drift", IssueFilter::Open)
        .await);
    assert_eq!(
        open.iter().map(|i| i.number).collect::<Vec<_>>(),
        vec![issue.number]
    );
    let closed = ok(client
        .update_issue(
            INST,
            &repo(),
            issue.number,
            &IssueUpdate {
                body: Some("no drift remains".into()),
                state: Some(IssueState::Closed),
                ..Default::default()
            },
        )
        .await);
    assert_eq!(closed.state, IssueState::Closed);
    assert!(
        ok(client
            .list_issues_by_label(INST, &repo(), "convoy-drift", IssueFilter::Open)
            .await)
        .is_empty()
    );
    assert_eq!(
        ok(client
            .list_issues_by_label(INST, &repo(), "convoy-drift", IssueFilter::All)
            .await)
        .len(),
        1
    );
    assert_eq!(
        standin.state().issues[&("acme/app".to_owned(), issue.number)].len(),
        2
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn a_502_storm_is_survived() {
    let (standin, client) = setup().await;
    ok(client.get_repository(INST, &repo()).await);
    standin.inject(Fault::new(FaultKind::BadGateway, 4));
    let r = ok(client.get_repository(INST, &repo()).await);
    assert_eq!(r.default_branch, "trunk");
    // PATCH is repeated too; a comment POST is looked up, then repeated.
    let c = ok(client
        .create_comment(INST, &repo(), 42, "<!-- convoy:rollout:x -->")
        .await);
    standin.inject(Fault::new(FaultKind::BadGateway, 3).on(Method::POST, "/comments"));
    let c2 = ok(client
        .create_comment(INST, &repo(), 42, "<!-- convoy:rollout:y -->")
        .await);
    assert_ne!(c.id, c2.id);
    assert_eq!(
        standin.state().comments_on("acme/app", 42).len(),
        2,
        "no duplicates"
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn a_storm_that_outlasts_the_retries_is_a_typed_error() {
    let (standin, client) = setup().await;
    ok(client.get_repository(INST, &repo()).await);
    standin.inject(Fault::new(FaultKind::BadGateway, 100));
    let err = client.get_repository(INST, &repo()).await;
    assert_eq!(err, Err(GitHubError::Server { status: 502 }));
    assert!(err.err().is_some_and(|e| e.is_transient()));
    standin.clear_faults();
    standin.assert_no_violations();
}

#[tokio::test]
async fn secondary_and_primary_rate_limits_are_waited_out() {
    let (standin, client) = setup().await;
    ok(client.get_repository(INST, &repo()).await);
    standin.inject(Fault::new(
        FaultKind::SecondaryRateLimit {
            retry_after_secs: 1,
        },
        2,
    ));
    standin.inject(Fault::new(FaultKind::SecondaryRateLimitBare, 2));
    standin.inject(Fault::new(
        FaultKind::PrimaryRateLimit { reset_in_secs: 1 },
        1,
    ));
    ok(client
        .create_comment(INST, &repo(), 42, "<!-- convoy:rollout:z -->")
        .await);
    let state = standin.state();
    assert_eq!(state.comments_on("acme/app", 42).len(), 1);
    // 5 refusals, then the POST that landed.
    let statuses: Vec<u16> = state
        .requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/comments"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![403, 403, 403, 403, 403, 201]);
    standin.assert_no_violations();
}

#[tokio::test]
async fn a_timed_out_comment_post_is_not_duplicated() {
    let (standin, _) = setup().await;
    let mut policy = fast_policy();
    policy.request_timeout = Duration::from_millis(300);
    let client = client_for(&standin, policy);
    ok(client.get_repository(INST, &repo()).await);
    // GitHub creates the comment but answers too late.
    standin.inject(
        Fault::new(FaultKind::Slow(Duration::from_secs(2)), 1).on(Method::POST, "/comments"),
    );
    let body = "<!-- convoy:rollout:r9 -->\nstarted";
    let c = ok(client.create_comment(INST, &repo(), 42, body).await);
    let state = standin.state();
    assert_eq!(
        state.comments_on("acme/app", 42).len(),
        1,
        "exactly one comment"
    );
    assert_eq!(state.comments_on("acme/app", 42)[0]["id"], c.id);
    assert_eq!(
        state.count_requests(&Method::POST, "/comments"),
        1,
        "never re-posted"
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn concurrency_per_installation_is_bounded_and_rate_limit_is_exported() {
    let (standin, client) = setup().await;
    ok(client.get_repository(INST, &repo()).await);
    standin.inject(
        Fault::new(FaultKind::Slow(Duration::from_millis(100)), 40).on(Method::GET, "/pulls/"),
    );
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.get_pull_request(INST, &repo(), 42).await
        }));
    }
    for t in tasks {
        ok(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let max = standin.max_concurrent_requests();
    assert!(max <= 10, "{max} requests in flight at once");
    assert!(max >= 2, "requests did run concurrently ({max})");
    let remaining = client.rate_limits().get(INST);
    assert_eq!(remaining, Some(5000 - 31));
    let mut registry = prometheus_client::registry::Registry::default();
    client.rate_limits().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains("convoy_github_ratelimit_remaining{installation=\"77\"} 4969"),
        "{text}"
    );
    standin.assert_no_violations();
}

#[tokio::test]
async fn a_timed_out_check_run_post_is_not_duplicated() {
    let (standin, _) = setup().await;
    let mut policy = fast_policy();
    policy.request_timeout = Duration::from_millis(300);
    let client = client_for(&standin, policy);
    ok(client.get_repository(INST, &repo()).await);
    // An older generation with the same external_id must not be mistaken
    // for the lost one.
    let mut old = NewCheckRun::new("convoy/rollout", "d".repeat(40));
    old.external_id = Some("r-5".into());
    old.status = CheckRunStatus::Completed;
    old.conclusion = Some(CheckRunConclusion::ActionRequired);
    let old = ok(client.create_check_run(INST, &repo(), &old).await);
    standin.inject(
        Fault::new(FaultKind::Slow(Duration::from_secs(2)), 1).on(Method::POST, "/check-runs"),
    );
    let mut run = NewCheckRun::new("convoy/rollout", "d".repeat(40));
    run.external_id = Some("r-5".into());
    run.output = Some(CheckRunOutput {
        title: "Rolling out".into(),
        summary: "resumed".into(),
        text: None,
        annotations: vec![],
    });
    let created = ok(client.create_check_run(INST, &repo(), &run).await);
    assert_ne!(created.id, old.id);
    let state = standin.state();
    assert_eq!(
        state.check_runs.len(),
        2,
        "the old one and exactly one new one"
    );
    assert_eq!(state.count_requests(&Method::POST, "/check-runs"), 2);
    let listed = ok(client
        .list_check_runs(INST, &repo(), &"d".repeat(40), Some("convoy/rollout"))
        .await);
    assert_eq!(listed.len(), 2);
    standin.assert_no_violations();
}

#[tokio::test]
async fn an_exhausted_primary_limit_is_reported_and_recovered_from() {
    let (standin, client) = setup().await;
    ok(client.get_repository(INST, &repo()).await);
    standin.set_rate_limit_remaining(INST.0, 1);
    ok(client.get_repository(INST, &repo()).await);
    assert_eq!(client.rate_limits().get(INST), Some(0));
    // The next call waits for the reset (capped by the shrunk policy) and
    // then goes through.
    ok(client.get_repository(INST, &repo()).await);
    standin.assert_no_violations();
}
