//! The `command` driver running real scripts (SPEC 4.2).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use convoy::config::CommandDriver;
use convoy::domain::{CommitSha, EnvName, RolloutId, ServiceName};
use convoy::drivers::{
    AgentStatus, CommandDriverImpl, Driver, Endpoint, FailureKind, PreflightOutcome, StepRequest,
};

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn driver(argv: Vec<String>, timeout: Duration, permanent: Vec<i32>) -> CommandDriverImpl {
    CommandDriverImpl::new(
        "helm",
        &CommandDriver {
            argv,
            status_argv: Vec::new(),
            timeout,
            permanent_exit_codes: permanent,
        },
    )
}

fn request(env: &str) -> StepRequest {
    StepRequest {
        rollout: RolloutId::new("r-7"),
        endpoint: Endpoint {
            environment: EnvName::new(env),
            url: None,
        },
        service: ServiceName::new("api"),
        version: CommitSha::new("abc123"),
        attempt: 1,
    }
}

#[tokio::test]
async fn arguments_are_substituted_and_never_interpreted_by_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("args.txt");
    let pwned = dir.path().join("pwned");
    let prog = script(
        dir.path(),
        "record.sh",
        &format!(
            "for a in \"$@\"; do printf '%s\\n' \"$a\" >> '{}'; done",
            out.display()
        ),
    );
    let evil = format!("$(touch {})", pwned.display());
    let d = driver(
        vec![
            prog,
            "upgrade".into(),
            "{service}".into(),
            "image.tag={version}".into(),
            "--ctx".into(),
            "{environment}".into(),
            "{rollout}".into(),
            evil.clone(),
            "a b;c|d".into(),
        ],
        Duration::from_secs(10),
        vec![],
    );
    d.deploy(&request("acme-eu")).await.unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "upgrade",
            "api",
            "image.tag=abc123",
            "--ctx",
            "acme-eu",
            "r-7",
            evil.as_str(),
            "a b;c|d"
        ]
    );
    assert!(!pwned.exists(), "no shell may interpret an argument");

    // An environment name is substituted literally too.
    d.deploy(&request("$(touch-me)")).await.unwrap();
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("\n$(touch-me)\n")
    );
}

#[tokio::test]
async fn exit_codes_map_to_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "exit.sh", "echo \"oops $1\" >&2; exit \"$1\"");
    let run = |code: &str, permanent: Vec<i32>| {
        let d = driver(
            vec![prog.clone(), code.to_string()],
            Duration::from_secs(10),
            permanent,
        );
        async move { d.deploy(&request("e")).await }
    };
    assert!(run("0", vec![]).await.is_ok());
    let e = run("3", vec![]).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Transient);
    assert_eq!(e.message, "deploy: exit code 3: oops 3");
    let e = run("3", vec![3]).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);

    let missing = driver(
        vec![dir.path().join("nope").display().to_string()],
        Duration::from_secs(10),
        vec![],
    );
    let e = missing.deploy(&request("e")).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(e.message.starts_with("deploy: cannot run"), "{e}");
}

fn alive(pid: i32) -> bool {
    // A zombie (killed, not yet reaped by whoever inherited it) is dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// A script that starts a grandchild `sleep` (its pid written to the
/// returned file) and waits for it.
fn hanging_script(dir: &Path) -> (String, PathBuf) {
    let pidfile = dir.join("child.pid");
    let prog = script(
        dir,
        "hang.sh",
        &format!("sleep 300 &\necho $! > '{}'\nwait", pidfile.display()),
    );
    (prog, pidfile)
}

/// `pid` is gone within a few seconds (SIGKILL is delivered
/// asynchronously).
async fn assert_killed(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid), "the grandchild `sleep` (pid {pid}) survived");
}

/// A command driver that only answers status, through `status_argv`.
fn status_driver(status_argv: Vec<String>) -> CommandDriverImpl {
    CommandDriverImpl::new(
        "helm",
        &CommandDriver {
            argv: vec!["true".into()],
            status_argv,
            timeout: Duration::from_secs(10),
            permanent_exit_codes: vec![],
        },
    )
}

fn acme() -> Endpoint {
    Endpoint {
        environment: EnvName::new("acme"),
        url: None,
    }
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, pidfile) = hanging_script(dir.path());
    let d = driver(vec![prog], Duration::from_millis(500), vec![]);
    let started = Instant::now();
    let e = d.deploy(&request("e")).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Transient);
    assert!(e.message.contains("timed out after 500ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_killed(pid).await;
}

/// The engine's deploy_timeout is a timer around the driver's call: when
/// it fires, the call is dropped mid-run. What the command started must
/// die with it, or a retry runs beside it.
#[tokio::test]
async fn a_deploy_abandoned_by_its_caller_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, pidfile) = hanging_script(dir.path());
    // The driver's own timeout is far away: only the caller stops waiting.
    let d = driver(vec![prog], Duration::from_secs(600), vec![]);
    let req = request("e");
    let mut deploy = Box::pin(d.deploy(&req));
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        tokio::select! {
            r = &mut deploy => panic!("the deploy ended on its own: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the script never started");
    };
    assert!(alive(pid));
    drop(deploy);
    assert_killed(pid).await;
}

#[tokio::test]
async fn a_status_answer_without_its_version_is_an_error_not_never_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "status.sh",
        r#"printf '{"service":"%s","Version":"v1","healthy":true}' "$1""#,
    );
    let d = status_driver(vec![prog, "{service}".into()]);
    let e = d
        .status(&acme(), &ServiceName::new("api"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, FailureKind::Permanent);
    assert!(e.message.contains("missing field `version`"), "{e}");
}

#[tokio::test]
async fn status_argv_prints_the_status_json() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "status.sh",
        r#"printf '{"service":"%s","version":"v-%s","healthy":true,"message":"fine"}' "$2" "$1""#,
    );
    let d = status_driver(vec![prog, "{environment}".into(), "{service}".into()]);
    let endpoint = acme();
    let s = d.status(&endpoint, &ServiceName::new("api")).await.unwrap();
    assert_eq!(
        s,
        AgentStatus {
            service: "api".into(),
            version: Some("v-acme".into()),
            healthy: true,
            message: Some("fine".into()),
        }
    );
    assert_eq!(
        d.preflight(&endpoint, &ServiceName::new("api"), &CommitSha::new("x"))
            .await
            .unwrap(),
        PreflightOutcome::NotProvided
    );

    let garbage = script(dir.path(), "garbage.sh", "echo not json");
    let d = status_driver(vec![garbage]);
    let e = d
        .status(&endpoint, &ServiceName::new("api"))
        .await
        .unwrap_err();
    assert!(
        e.message
            .starts_with("status: output is not the status JSON"),
        "{e}"
    );
}

#[tokio::test]
async fn a_program_still_open_for_writing_a_moment_is_run_once_it_closes() {
    // "Text file busy": a script being written (or a descriptor a forked
    // child holds until it execs) must not fail a deploy.
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "deploy.sh", "exit 0");
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&prog)
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(40));
        drop(writer);
    });
    let d = driver(vec![prog], Duration::from_secs(10), vec![]);
    d.deploy(&request("acme-eu"))
        .await
        .expect("run once the file is closed");
    release.join().unwrap();
}
