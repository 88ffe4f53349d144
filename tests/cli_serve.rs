//! `convoy serve` as a process: configuration errors exit 2 with one line
//! naming the key.

use std::process::Command;

fn serve(config_text: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convoy.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convoy"));
    cmd.arg("serve").arg("--config").arg(&path);
    cmd.env_remove("CONVOY_GITHUB_WEBHOOK_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

fn assert_config_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn missing_webhook_secret_exits_2() {
    let out = serve("[server]\nlisten = \"127.0.0.1:0\"\n", &[]);
    assert_config_error(&out, "github.webhook_secret is required");
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let out = serve(
        "[github]\nwebhook_secret = \"s\"\nwebhook_secrets = \"x\"\n",
        &[],
    );
    assert_config_error(&out, "webhook_secrets");
}

#[test]
fn bad_listen_address_exits_2() {
    let out = serve(
        "[github]\nwebhook_secret = \"s\"\n",
        &[("CONVOY_SERVER_LISTEN", "localhost:http")],
    );
    assert_config_error(&out, "server.listen");
}

#[test]
fn unparsable_private_key_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    std::fs::write(
        &key,
        "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = serve(
        &format!(
            "[github]\nwebhook_secret = \"s\"\nprivate_key_path = \"{}\"\n",
            key.display()
        ),
        &[],
    );
    assert_config_error(&out, "github.private_key_path");
}

#[test]
fn bad_database_url_exits_2() {
    let out = serve(
        "[github]\nwebhook_secret = \"s\"\n",
        &[("CONVOY_DATABASE_URL", "mysql://localhost/x")],
    );
    assert_config_error(&out, "database.url");
}

#[test]
fn missing_config_file_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["serve", "--config", "/nonexistent/convoy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/convoy.toml"));
}
