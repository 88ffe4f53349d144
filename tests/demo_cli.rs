//! The `convoy` binary's demo and operator commands: `convoy demo` runs a
//! whole rollout (with a retried failure and an approval) and exits 0; the
//! seed experiment prints its table; `convoy freeze --all` / `unfreeze
//! --all` write the server's database.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use convoy::domain::RepoName;
use convoy::store::{SqliteStore, Store};

fn convoy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_convoy"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs to the end, killing the child after `limit` (a hung demo fails the
/// test instead of hanging it).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("convoy runs");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "convoy did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_rolls_out_twenty_environments_with_a_retry_and_an_approval() {
    let mut cmd = convoy();
    cmd.args([
        "demo",
        "--environments",
        "20",
        "--exit-when-done",
        "--port",
        "0",
        "--deploy-time",
        "0s",
        "--approve-after",
        "0s",
        "--bake",
        "0s",
    ]);
    let out = run(cmd, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The page's address, the waves, the failure and its retry, the approval.
    assert!(
        stdout.contains("Watch it in a browser: http://127.0.0.1:"),
        "{stdout}"
    );
    for wave in ["canary", "early", "rest"] {
        assert!(stdout.contains(&format!("  {wave} ")), "a bar for {wave}");
    }
    assert!(
        stdout.contains("acme-eu/db-migrations: attempt 1 failed, the agent answered 503"),
        "{stdout}"
    );
    assert!(stdout.contains("the automatic retry worked"), "{stdout}");
    assert!(
        stdout.contains("comments `/convoy approve rest` on PR #42"),
        "{stdout}"
    );
    assert!(stdout.contains("wave `rest` approved by sam"), "{stdout}");
    assert!(stdout.contains(" succeeded in "), "{stdout}");
    // The final comment convoy posted through the GitHub stand-in, as
    // Markdown, with its hidden marker, and the check run's conclusion.
    assert!(
        stdout.contains("The comment convoy posted on PR #42"),
        "{stdout}"
    );
    assert!(stdout.contains("<!-- convoy:rollout:"), "{stdout}");
    assert!(stdout.contains("**State**: `succeeded`"), "{stdout}");
    assert!(
        stdout.contains("Check run convoy/rollout: completed / success"),
        "{stdout}"
    );
}

#[test]
fn the_seed_experiment_prints_its_table() {
    let mut cmd = convoy();
    cmd.args([
        "demo",
        "--runs",
        "3",
        "--environments",
        "10",
        "--failure-rate",
        "0.2",
        "--exit-when-done",
    ]);
    let out = run(cmd, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("run 3/3"), "{stdout}");
    // 1 − 0.8^10 = 89.3%; 1 − (1 − 0.2³)^10 = 7.7%.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 3 | 10 | 20.0% |"))
        .unwrap_or_else(|| panic!("no table row in {stdout}"));
    assert!(
        row.contains("| 89.3% |") && row.ends_with("| 7.7% |"),
        "{row}"
    );
}

#[test]
fn bad_demo_arguments_exit_2() {
    let mut cmd = convoy();
    cmd.args(["demo", "--failure-rate", "1.5"]);
    let out = run(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--failure-rate"));
}

#[test]
fn freeze_all_and_unfreeze_all_write_the_servers_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("convoy.db");
    let config = dir.path().join("convoy.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let mut no_all = convoy();
    no_all.args(["freeze", "--reason", "x", "--config", config]);
    assert_eq!(run(no_all, Duration::from_secs(30)).status.code(), Some(2));

    let mut freeze = convoy();
    freeze.args([
        "freeze",
        "--all",
        "--for",
        "2h",
        "--reason",
        "incident 7",
        "--config",
        config,
    ]);
    let out = run(freeze, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("incident 7"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let freezes = rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        store.freezes_for(&RepoName::new("any/repo")).await.unwrap()
    });
    assert_eq!(freezes.len(), 1);
    let f = &freezes[0];
    assert_eq!(f.scope, "*");
    assert_eq!(f.reason.as_deref(), Some("incident 7"));
    let until = f.until.expect("a duration sets the end");
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(110) && left <= chrono::Duration::hours(2),
        "{left}"
    );

    let mut unfreeze = convoy();
    unfreeze.args(["unfreeze", "--all", "--config", config]);
    let out = run(unfreeze, Duration::from_secs(30));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lifted"));
    let freezes = rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        store.freezes_for(&RepoName::new("any/repo")).await.unwrap()
    });
    assert!(freezes.is_empty());
}
