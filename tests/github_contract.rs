//! The stand-in's contract check itself: a request GitHub would refuse is
//! caught, recorded and fails the test that sent it.

use std::sync::Arc;

use convoy::config::Secret;
use convoy::github::{AppAuth, SystemClock};
use convoy::testkit::github_standin::{
    GitHubStandIn, StandInConfig, TEST_APP_ID, TEST_APP_PRIVATE_KEY_PEM,
};
use convoy::testkit::openapi::OpenApi;
use serde_json::{Value, json};

struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Raw {
    async fn new(standin: &GitHubStandIn) -> Raw {
        let auth = AppAuth::new(
            TEST_APP_ID,
            &Secret::new(TEST_APP_PRIVATE_KEY_PEM),
            Arc::new(SystemClock),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let jwt = auth.jwt().unwrap_or_else(|e| panic!("{e}"));
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!(
                "{}/app/installations/1/access_tokens",
                standin.url()
            ))
            .bearer_auth(jwt.expose())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let token = answer["token"].as_str().unwrap_or_default().to_owned();
        assert!(token.starts_with("ghs_") && token.len() != 40);
        Raw {
            http,
            base: standin.url(),
            token,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .status()
            .as_u16()
    }
}

async fn standin() -> GitHubStandIn {
    let s = GitHubStandIn::start(StandInConfig::for_tests())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.add_repo("acme/app", "main");
    s.add_pull_request("acme/app", 1, "alice", &"a".repeat(40), "f", "main", false);
    s
}

#[tokio::test]
async fn an_unknown_conclusion_is_a_violation() {
    let s = standin().await;
    let raw = Raw::new(&s).await;
    let status = raw
        .send(
            reqwest::Method::POST,
            "/repos/acme/app/check-runs",
            Some(json!({"name": "convoy/rollout", "head_sha": "a".repeat(40), "conclusion": "ok"})),
        )
        .await;
    assert_eq!(status, 422, "GitHub would refuse it, so does the stand-in");
    let v = s.take_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].message.contains("\"ok\" is not one of"), "{}", v[0]);
    assert!(v[0].message.contains("conclusion"), "{}", v[0]);
}

#[tokio::test]
async fn a_21_character_action_label_and_a_fourth_action_are_violations() {
    let s = standin().await;
    let raw = Raw::new(&s).await;
    let action = |label: &str| json!({"label": label, "description": "d", "identifier": "i"});
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/check-runs",
        Some(json!({
            "name": "convoy/rollout", "head_sha": "a".repeat(40),
            "actions": [action(&"x".repeat(21)), action("b"), action("c"), action("d")]
        })),
    )
    .await;
    let all: Vec<String> = s
        .take_violations()
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = all.join("\n");
    assert!(text.contains("21 characters, at most 20"), "{text}");
    assert!(text.contains("4 items, at most 3"), "{text}");
}

#[tokio::test]
async fn missing_fields_wrong_methods_and_unknown_paths_are_violations() {
    let s = standin().await;
    let raw = Raw::new(&s).await;
    // No head_sha.
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/check-runs",
        Some(json!({"name": "x"})),
    )
    .await;
    // octocrab's old update_comment mistake: POST where GitHub wants PATCH.
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/issues/comments/5",
        Some(json!({"body": "x"})),
    )
    .await;
    raw.send(reqwest::Method::GET, "/repos/acme/app/no-such-thing", None)
        .await;
    // A reaction GitHub does not have.
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/issues/comments/5/reactions",
        Some(json!({"content": "party"})),
    )
    .await;
    // Completed without a conclusion (GitHub's anyOf on update).
    raw.send(
        reqwest::Method::PATCH,
        "/repos/acme/app/check-runs/5",
        Some(json!({"status": "completed"})),
    )
    .await;
    // A comment over GitHub's 65,536-character limit.
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/issues/1/comments",
        Some(json!({"body": "x".repeat(65_537)})),
    )
    .await;
    let v = s.take_violations();
    let text: Vec<String> = v.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    for expected in [
        "required field \"head_sha\" missing",
        "GitHub documents no POST here",
        "no such path",
        "\"party\" is not one of",
        "required field \"conclusion\" missing",
        "65537 characters",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[tokio::test]
async fn assert_no_violations_fails_the_test() {
    let s = standin().await;
    let raw = Raw::new(&s).await;
    raw.send(
        reqwest::Method::POST,
        "/repos/acme/app/check-runs",
        Some(json!({"name": "x", "head_sha": "y", "status": "done"})),
    )
    .await;
    let caught =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.assert_no_violations()));
    assert!(caught.is_err(), "a violation must fail the test");
    s.take_violations();
    s.assert_no_violations();
}

#[tokio::test]
async fn a_wrong_app_key_gets_no_token() {
    let s = standin().await;
    let status = reqwest::Client::new()
        .post(format!("{}/app/installations/1/access_tokens", s.url()))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status();
    assert_eq!(status, 401);
    let status = reqwest::Client::new()
        .get(format!("{}/repos/acme/app", s.url()))
        .bearer_auth("ghs_madeup")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .status();
    assert_eq!(status, 401);
    s.assert_no_violations();
}

#[test]
fn github_description_knows_every_route_convoy_uses() {
    let api = OpenApi::shared().unwrap_or_else(|| panic!("shared OpenAPI description missing"));
    for (method, path) in [
        ("POST", "/app/installations/1/access_tokens"),
        ("POST", "/repos/a/b/check-runs"),
        ("PATCH", "/repos/a/b/check-runs/1"),
        ("POST", "/repos/a/b/issues/1/comments"),
        ("GET", "/repos/a/b/issues/1/comments"),
        ("PATCH", "/repos/a/b/issues/comments/1"),
        ("POST", "/repos/a/b/issues/comments/1/reactions"),
        ("GET", "/repos/a/b/collaborators/alice/permission"),
        ("GET", "/repos/a/b/pulls/1"),
        ("POST", "/repos/a/b/issues"),
        ("PATCH", "/repos/a/b/issues/1"),
        ("GET", "/repos/a/b/issues"),
        ("GET", "/repos/a/b"),
        ("GET", "/orgs/acme/teams/sre/memberships/alice"),
    ] {
        let body = match method {
            "POST" | "PATCH" if path.ends_with("/reactions") => Some(json!({"content": "eyes"})),
            "POST" if path.ends_with("check-runs") => Some(json!({"name": "n", "head_sha": "s"})),
            "POST" if path.ends_with("/issues") => Some(json!({"title": "t"})),
            "POST" | "PATCH" if path.contains("/comments") => Some(json!({"body": "b"})),
            "PATCH" => Some(json!({})),
            _ => None,
        };
        let (matched, v) = api.check_request(method, path, None, body.as_ref());
        assert!(matched.is_some() && v.is_empty(), "{method} {path}: {v:?}");
    }
}
