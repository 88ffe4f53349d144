//! A rollout through the `command` driver: the operator's real script is
//! run per step (no shell in between), and status comes from its
//! `status_argv` JSON.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const DEPLOY: &str = r#"#!/bin/sh
# deploy ENV SERVICE VERSION: records the version as the running one.
mkdir -p "$STATE/$1"
printf '%s' "$3" > "$STATE/$1/$2"
"#;

const STATUS: &str = r#"#!/bin/sh
# status ENV SERVICE: the agent status JSON of SPEC 4.1.
if [ -f "$STATE/$1/$2" ]; then v="\"$(cat "$STATE/$1/$2")\""; else v=null; fi
printf '{"service":"%s","version":%s,"healthy":true}' "$2" "$v"
"#;

fn script(dir: &std::path::Path, name: &str, body: &str, state: &std::path::Path) -> String {
    // The state folder is baked in: the driver passes only the arguments.
    let path = dir.join(name);
    std::fs::write(&path, body.replace("$STATE", &state.display().to_string())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_driver_rolls_out_through_a_real_script() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let deploy = script(dir.path(), "deploy.sh", DEPLOY, &state);
    let status = script(dir.path(), "status.sh", STATUS, &state);
    let git = GitFixture::new(dir.path());
    // Environment names chosen to need quoting if a shell ever saw them.
    let envs = ["alpha", "beta", "gamma-1"];
    let mut spec = String::from(
        "version: 1\nservices:\n  db: {}\n  api:\n    depends_on: [db]\nenvironments:\n",
    );
    for e in envs {
        spec.push_str(&format!("  - name: {e}\n    driver: script\n"));
    }
    spec.push_str("policy:\n  poll_interval: 1s\n  backoff: 1s\n");
    let sha = git.commit(&[("convoy.yml", &spec)], "first");
    let extra = format!(
        "[drivers.script]\nkind = \"command\"\nargv = [\"{deploy}\", \"{{environment}}\", \"{{service}}\", \"{{version}}\"]\nstatus_argv = [\"{status}\", \"{{environment}}\", \"{{service}}\"]\ntimeout = \"30s\"\n"
    );
    let running = start(config(dir.path(), &git, &extra)).await;
    deliver(&running, "pull_request", "pr-1", &merged_pr(1, &sha)).await;
    let rollout = rollout_of(&running, &sha).await;
    let done = wait_state(
        &running,
        &rollout.id,
        &["succeeded", "failed", "halted"],
        60,
    )
    .await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    for e in envs {
        for service in ["db", "api"] {
            let deployed = std::fs::read_to_string(state.join(e).join(service)).unwrap();
            assert_eq!(deployed, sha.as_str(), "{e}/{service}");
        }
    }
    running.stop().await;
}
