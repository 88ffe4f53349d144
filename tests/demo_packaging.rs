//! Packaging an operator relies on: the GitHub App manifest asks for
//! exactly the permissions and events convoy needs, the container runs as
//! an unprivileged user, and the test dependencies include the browser.

use serde_json::Value;

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_app_manifest_asks_for_exactly_what_convoy_needs() {
    let manifest: Value = serde_json::from_str(&file("config/github-app.json")).unwrap();
    let permissions = manifest["default_permissions"].as_object().unwrap();
    let mut got: Vec<(String, String)> = permissions
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    got.sort();
    let want = [
        ("checks", "write"),
        ("contents", "read"),
        ("issues", "write"),
        ("metadata", "read"),
        ("pull_requests", "write"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(got, want);
    // `installation` and `installation_repositories` reach every App without
    // a subscription (GitHub does not accept them in the list).
    let mut events: Vec<&str> = manifest["default_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    events.sort();
    assert_eq!(
        events,
        ["check_run", "issue_comment", "pull_request", "push"]
    );
    assert!(
        manifest["hook_attributes"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/webhook")
    );
    assert!(manifest["url"].is_string() && manifest["name"] == "convoy");
    let install = file("docs/install.md");
    for needed in [
        "config/github-app.json",
        "installation_repositories",
        "convoy/preflight",
        "webhook_secret",
        "convoy freeze --all",
    ] {
        assert!(
            install.contains(needed),
            "docs/install.md explains {needed}"
        );
    }
}

#[test]
fn the_container_builds_in_stages_and_runs_unprivileged() {
    let docker = file("Dockerfile");
    let stages = docker.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    let user = docker
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(docker.contains("COPY --from=build"));
}

#[test]
fn the_test_dependencies_include_chromium() {
    let deps = file("scripts/install-deps.sh");
    assert!(deps.contains("missing+=(chromium)"));
}
