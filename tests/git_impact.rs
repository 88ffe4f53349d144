//! Git access and change impact against real repositories built in a temp
//! dir with the `git` command.

use std::path::Path;
use std::process::Command;

use convoy::domain::{CommitSha, ServiceName};
use convoy::git::{ChangeSet, GitError, GitRepo, RepoCache, SpecLoadError, run_blocking};
use convoy::plan::cli::{PlanFormat, plan_range, render};
use convoy::plan::{Change, History, affected_services};
use convoy::spec::CheckContext;

const SPEC: &str = "\
version: 1
services:
  db:
    paths: [\"migrations/**\"]
  api:
    paths: [\"services/api/**\", \"libs/**\"]
    depends_on: [db]
  web:
    paths: [\"services/web/**\"]
    depends_on: [api]
  cron: {}
environments:
  - { name: one, driver: agent, labels: { ring: canary } }
  - { name: two, driver: agent }
  - { name: three, driver: agent, services: [api] }
waves:
  - { name: canary, selector: { ring: canary } }
";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(dir: &Path, path: &str, content: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn commit(dir: &Path, msg: &str) -> CommitSha {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", msg]);
    CommitSha::new(git(dir, &["rev-parse", "HEAD"]))
}

/// A repository with convoy.yml and a file per service.
fn repo() -> (tempfile::TempDir, CommitSha) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    write(dir.path(), "convoy.yml", SPEC);
    write(dir.path(), "services/web/app.js", "web\n");
    write(
        dir.path(),
        "services/api/main.rs",
        "fn main() { println!(\"a long enough line for rename detection\"); }\n",
    );
    write(
        dir.path(),
        "migrations/001.sql",
        "create table t (x int);\n",
    );
    write(dir.path(), "README.md", "hello\n");
    let first = commit(dir.path(), "first");
    (dir, first)
}

fn affected_between(dir: &Path, from: &CommitSha, to: &CommitSha) -> Vec<String> {
    let repo = GitRepo::open(dir).unwrap();
    let ctx = CheckContext::default();
    let change = ChangeSet::read(&repo, to.clone(), Some(from.clone()), &ctx).unwrap();
    let spec = change.spec.unwrap();
    affected_services(
        &spec,
        Change::Diff {
            paths: change.changed_paths.as_deref().unwrap(),
            previous: change.previous_spec.as_ref(),
        },
    )
    .into_iter()
    .map(ServiceName::into_inner)
    .collect()
}

#[test]
fn a_web_change_affects_only_web_and_pathless_services() {
    let (dir, first) = repo();
    write(dir.path(), "services/web/app.js", "web 2\n");
    let second = commit(dir.path(), "web");
    let repo = GitRepo::open(dir.path()).unwrap();
    assert_eq!(
        repo.changed_paths(&first, &second).unwrap(),
        ["services/web/app.js"]
    );
    assert_eq!(
        affected_between(dir.path(), &first, &second),
        ["web", "cron"]
    );
}

#[test]
fn an_unmapped_file_affects_only_services_without_paths() {
    let (dir, first) = repo();
    write(dir.path(), "README.md", "changed\n");
    let second = commit(dir.path(), "docs");
    assert_eq!(affected_between(dir.path(), &first, &second), ["cron"]);
}

#[test]
fn a_rename_counts_as_both_paths() {
    let (dir, first) = repo();
    git(
        dir.path(),
        &["mv", "services/api/main.rs", "services/web/main.rs"],
    );
    let second = commit(dir.path(), "move");
    let repo = GitRepo::open(dir.path()).unwrap();
    assert_eq!(
        repo.changed_paths(&first, &second).unwrap(),
        ["services/api/main.rs", "services/web/main.rs"]
    );
    assert_eq!(
        affected_between(dir.path(), &first, &second),
        ["api", "web", "cron"]
    );
}

#[test]
fn convoy_yml_changes_count_only_through_changed_services() {
    let (dir, first) = repo();
    // A new environment: no service changed.
    write(
        dir.path(),
        "convoy.yml",
        &SPEC.replace("waves:", "  - { name: four, driver: agent }\nwaves:"),
    );
    let second = commit(dir.path(), "env");
    assert_eq!(affected_between(dir.path(), &first, &second), ["cron"]);
    // web's paths changed: web is affected.
    write(
        dir.path(),
        "convoy.yml",
        &SPEC.replace("services/web/**", "web/**"),
    );
    let third = commit(dir.path(), "web paths");
    assert_eq!(
        affected_between(dir.path(), &second, &third),
        ["web", "cron"]
    );
}

#[test]
fn reordering_a_service_s_paths_changes_nothing() {
    let (dir, first) = repo();
    let reordered = SPEC.replace(
        "paths: [\"services/api/**\", \"libs/**\"]",
        "paths: [\"libs/**\", \"services/api/**\"]",
    );
    assert_ne!(reordered, SPEC, "SPEC lists api's paths as expected");
    write(dir.path(), "convoy.yml", &reordered);
    let second = commit(dir.path(), "the same paths in another order");
    assert_eq!(affected_between(dir.path(), &first, &second), ["cron"]);
}

/// A submodule bump is one changed entry, the submodule's folder; the
/// service whose globs reach into it is affected.
#[test]
fn a_submodule_bump_affects_the_service_that_holds_it() {
    let (dir, first) = repo();
    let gitlink = |sha: &str| {
        git(
            dir.path(),
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sha},services/api/vendor"),
            ],
        );
        git(dir.path(), &["commit", "-q", "-m", "submodule"]);
        CommitSha::new(git(dir.path(), &["rev-parse", "HEAD"]))
    };
    let added = gitlink(&"1".repeat(40));
    let bumped = gitlink(&"2".repeat(40));
    let repo = GitRepo::open(dir.path()).unwrap();
    assert_eq!(
        repo.changed_paths(&added, &bumped).unwrap(),
        ["services/api/vendor/"]
    );
    assert_eq!(
        repo.changed_paths(&first, &added).unwrap(),
        ["services/api/vendor/"],
        "added: one entry, not also its absent old side"
    );
    assert_eq!(
        affected_between(dir.path(), &added, &bumped),
        ["api", "cron"]
    );
}

#[test]
fn a_file_name_that_is_not_utf8_still_counts_for_its_folder() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, first) = repo();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(dir.path().join("services/api").join(name), "latin-1\n").unwrap();
    let second = commit(dir.path(), "a latin-1 name");
    assert_eq!(
        affected_between(dir.path(), &first, &second),
        ["api", "cron"]
    );
}

#[test]
fn missing_or_broken_convoy_yml_is_a_reportable_error() {
    let (dir, _) = repo();
    let repo_handle = GitRepo::open(dir.path()).unwrap();
    let ctx = CheckContext::default();
    write(dir.path(), "convoy.yml", "version: 1\nservices: [\n");
    let broken = commit(dir.path(), "broken");
    match repo_handle.read_spec(&broken, &ctx) {
        Err(SpecLoadError::Invalid { errors, .. }) => {
            assert_eq!(
                errors[0].render("convoy.yml"),
                "convoy.yml:2:11: unclosed bracket '['"
            );
        }
        other => panic!("{other:?}"),
    }
    git(dir.path(), &["rm", "-q", "convoy.yml"]);
    let missing = commit(dir.path(), "gone");
    assert!(matches!(
        repo_handle.read_spec(&missing, &ctx),
        Err(SpecLoadError::Missing(_))
    ));
    // The plan command reports it rather than crashing.
    let r = plan_range(&repo_handle, None, None, &ctx, &History::new());
    assert!(r.is_err());
    assert!(matches!(
        repo_handle.resolve("no-such-branch"),
        Err(GitError::UnknownRevision(_))
    ));
}

#[test]
fn plan_for_a_range_first_rollout_and_formats() {
    let (dir, first) = repo();
    write(dir.path(), "services/api/main.rs", "fn main() {}\n");
    commit(dir.path(), "api");
    let repo_handle = GitRepo::open(dir.path()).unwrap();
    let ctx = CheckContext::default();
    let plan = plan_range(&repo_handle, None, None, &ctx, &History::new()).unwrap();
    assert_eq!(plan.previous_commit.as_ref(), Some(&first));
    let services: Vec<&str> = plan.affected_services.iter().map(|s| s.as_str()).collect();
    assert_eq!(services, ["api", "cron"]);
    // one: api, cron; two: api, cron; three: api only.
    assert_eq!(plan.step_count(), 5);
    let json: serde_json::Value = serde_json::from_str(&render(&plan, PlanFormat::Json)).unwrap();
    assert_eq!(json["steps"], 5);
    assert_eq!(json["waves"][0]["name"], "canary");
    assert_eq!(json["waves"][0]["environments"][0], "one");
    assert_eq!(json["affected_services"][0], "api");
    assert_eq!(json["risk"]["steps"], 5);
    assert!(json["risk"]["riskiest"][0]["p"].is_number());
    assert!(render(&plan, PlanFormat::Markdown).contains("| canary | one |"));
    assert!(render(&plan, PlanFormat::Text).contains("affected services: api, cron"));

    // The root commit: a first rollout, every service.
    let root = plan_range(
        &repo_handle,
        None,
        Some(first.as_str()),
        &ctx,
        &History::new(),
    )
    .unwrap();
    assert_eq!(root.previous_commit, None);
    assert_eq!(root.affected_services.len(), 4);
}

#[test]
fn the_cache_clones_over_file_urls_and_fetches_only_what_is_missing() {
    let (dir, first) = repo();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RepoCache::new(cache_dir.path().join("git"));
    let url = format!("file://{}", dir.path().display());
    let cached = cache
        .sync("acme", "app", &url, None, std::slice::from_ref(&first))
        .unwrap();
    assert!(cached.has_commit(&first));
    assert!(cache.path_for("acme", "app").exists());

    // Everything wanted is there: the remote is not contacted at all.
    let again = cache
        .sync(
            "acme",
            "app",
            "file:///nonexistent/nowhere",
            None,
            std::slice::from_ref(&first),
        )
        .unwrap();
    assert!(again.has_commit(&first));

    // A new commit upstream is fetched on demand, from a plain path too.
    write(dir.path(), "services/web/app.js", "web 3\n");
    let second = commit(dir.path(), "more");
    let plain = dir.path().display().to_string();
    let updated = cache
        .sync("acme", "app", &plain, None, std::slice::from_ref(&second))
        .unwrap();
    assert_eq!(
        updated.changed_paths(&first, &second).unwrap(),
        ["services/web/app.js"]
    );

    // A commit that exists nowhere is reported as such.
    let ghost = CommitSha::new("1".repeat(40));
    assert!(matches!(
        cache.sync("acme", "app", &plain, None, &[ghost]),
        Err(GitError::UnknownRevision(_))
    ));
}

#[tokio::test]
async fn blocking_calls_run_from_async_code() {
    let (dir, first) = repo();
    let path = dir.path().to_path_buf();
    let spec = run_blocking(move || {
        let repo = GitRepo::open(&path)?;
        repo.read_spec(&first, &CheckContext::default())
            .map_err(|e| GitError::Other(e.to_string()))
    })
    .await
    .unwrap();
    assert_eq!(spec.services.len(), 4);
}

#[test]
fn commits_no_branch_reaches_are_fetched_by_id() {
    // Like a pull request head on GitHub: only under refs/pull/1/head.
    let (dir, first) = repo();
    git(dir.path(), &["checkout", "-q", "-b", "feature"]);
    write(dir.path(), "services/web/app.js", "pr\n");
    let pr_head = commit(dir.path(), "pr");
    git(
        dir.path(),
        &["update-ref", "refs/pull/1/head", pr_head.as_str()],
    );
    git(dir.path(), &["checkout", "-q", "main"]);
    git(dir.path(), &["branch", "-q", "-D", "feature"]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RepoCache::new(cache_dir.path());
    let url = format!("file://{}", dir.path().display());
    let repo = cache
        .sync("acme", "app", &url, None, &[first.clone(), pr_head.clone()])
        .unwrap();
    assert!(repo.has_commit(&pr_head));
}

#[test]
fn an_oversized_convoy_yml_is_reported_with_its_size() {
    let (dir, _) = repo();
    write(
        dir.path(),
        "convoy.yml",
        &format!("{SPEC}#{}\n", "x".repeat(2 * 1024 * 1024)),
    );
    let big = commit(dir.path(), "big");
    let repo = GitRepo::open(dir.path()).unwrap();
    match repo.read_spec(&big, &CheckContext::default()) {
        Err(SpecLoadError::Invalid { errors, .. }) => assert_eq!(
            errors[0].render("convoy.yml"),
            format!(
                "convoy.yml:1:1: file is {} bytes; at most 1048576 bytes are allowed",
                SPEC.len() + 2 * 1024 * 1024 + 2
            )
        ),
        other => panic!("{other:?}"),
    }
}
