//! `convoy check` and `convoy plan` as a user runs them.

use std::path::Path;
use std::process::Command;

fn convoy(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .current_dir(dir)
        .env_remove("CONVOY_GITHUB_WEBHOOK_SECRET")
        .output()
        .expect("convoy runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_example_with_and_without_the_operator_config() {
    let (code, out, err) = convoy(&["check", "config/convoy.example.yml"], root());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "config/convoy.example.yml: OK: 3 services, 12 environments, 3 waves\n"
    );
    // The shipped operator config has no webhook secret; check needs none.
    let (code, out, err) = convoy(
        &[
            "check",
            "config/convoy.example.yml",
            "--config",
            "config/convoy.toml",
        ],
        root(),
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_prints_every_error_with_file_line_col_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("convoy.yml"),
        "version: 1\nservices:\n  api: {}\nenvironments:\n  - name: a\n    driver: agnet\n    url: http://10.0.0.1:1\npolicy:\n  retires: 3\n",
    )
    .unwrap();
    let config = root().join("config/convoy.toml");
    let (code, out, _) = convoy(&["check", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "convoy.yml:6:13: unknown driver `agnet`, did you mean `agent`? (the operator defines: agent)\n\
         convoy.yml:9:3: unknown key `retires` in policy, did you mean `retries`?\n"
    );
    // Without the operator config the driver cannot be judged.
    let (code, out, _) = convoy(&["check", "./convoy.yml"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "./convoy.yml:9:3: unknown key `retires` in policy, did you mean `retries`?\n"
    );
    let (code, _, err) = convoy(&["check", "missing.yml"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("missing.yml: cannot read"), "{err}");
}

#[test]
fn plan_prints_json_for_a_commit_range() {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::copy(
        root().join("config/convoy.example.yml"),
        dir.path().join("convoy.yml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("services/web")).unwrap();
    std::fs::write(dir.path().join("services/web/a.js"), "1").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    std::fs::write(dir.path().join("services/web/a.js"), "2").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    let repo = dir.path().to_str().unwrap();
    let (code, out, err) = convoy(&["plan", "--repo", repo, "--format", "json"], root());
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["affected_services"], serde_json::json!(["web"]));
    // 12 environments, one of which (shared-eu) has no web.
    assert_eq!(json["steps"], 11);
    assert_eq!(json["waves"].as_array().unwrap().len(), 3);
    assert_eq!(json["waves"][2]["failure_budget"], "10%");
    assert_eq!(json["waves"][2]["approval"], true);
    assert!(json["previous_commit"].is_string());
    let (code, out, _) = convoy(&["plan", "--repo", repo, "--format", "markdown"], root());
    assert_eq!(code, 0);
    assert!(out.contains("| wave | environments |"), "{out}");
    let (code, _, err) = convoy(&["plan", "--repo", repo, "--to", "nope"], root());
    assert_eq!(code, 2);
    assert!(err.contains("unknown revision `nope`"), "{err}");
}
