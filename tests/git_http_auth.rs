//! Authenticated fetch over git's smart HTTP protocol: `git http-backend`
//! run as CGI behind a small HTTP server on 127.0.0.1 that demands basic auth
//! with user `x-access-token`, as GitHub does for installation tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use convoy::config::Secret;
use convoy::domain::CommitSha;
use convoy::git::{GitError, RepoCache};

const TOKEN: &str = "ghs_right-token";

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

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Serves `root` (a directory of bare repositories) until the test ends.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = format!(
        "Basic {}",
        base64(format!("x-access-token:{TOKEN}").as_bytes())
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &root, &expected);
            });
        }
    });
    format!("http://127.0.0.1:{}", addr.port())
}

fn handle(stream: TcpStream, root: &Path, expected_auth: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // The body: by length or chunked.
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    if header("authorization").as_deref() != Some(expected_auth) {
        out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let backend = Path::new(
        &String::from_utf8(Command::new("git").arg("--exec-path").output()?.stdout)
            .unwrap_or_default()
            .trim()
            .to_string(),
    )
    .join("git-http-backend");
    let mut child = Command::new(backend)
        .env_clear()
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let output = child.wait_with_output()?;
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, payload) = match split {
        Some((i, n)) => (
            String::from_utf8_lossy(&raw[..i]).to_string(),
            &raw[i + n..],
        ),
        None => (String::new(), &raw[..]),
    };
    let mut status = "200 OK".to_string();
    let mut response_headers = String::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !line.trim().is_empty() {
            response_headers.push_str(line.trim());
            response_headers.push_str("\r\n");
        }
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    out.write_all(payload)?;
    out.flush()
}

/// A bare repository `acme/app.git` with one commit, under a served root.
fn upstream() -> (tempfile::TempDir, CommitSha) {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("convoy.yml"), "version: 1\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let sha = CommitSha::new(git(&work, &["rev-parse", "HEAD"]));
    std::fs::create_dir_all(root.path().join("acme")).unwrap();
    git(
        root.path(),
        &["clone", "-q", "--bare", "work", "acme/app.git"],
    );
    (root, sha)
}

/// Runs a sync on a thread so that a hang fails the test instead of
/// blocking it forever.
fn sync_with(url: String, token: Option<&str>, want: CommitSha) -> Result<bool, GitError> {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RepoCache::new(cache_dir.path().to_path_buf());
    let token = token.map(Secret::new);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = cache
            .sync(
                "acme",
                "app",
                &url,
                token.as_ref(),
                std::slice::from_ref(&want),
            )
            .map(|repo| repo.has_commit(&want));
        let _ = tx.send(r);
        drop(cache_dir);
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the fetch must end, not hang")
}

#[test]
fn the_right_token_fetches() {
    let (root, sha) = upstream();
    let base = serve(root.path().to_path_buf());
    let url = convoy::git::repo_url(&format!("{base}/{{owner}}/{{repo}}.git"), "acme", "app");
    assert_eq!(sync_with(url, Some(TOKEN), sha), Ok(true));
}

#[test]
fn a_wrong_token_fails_clearly() {
    let (root, sha) = upstream();
    let base = serve(root.path().to_path_buf());
    let url = format!("{base}/acme/app.git");
    let err = sync_with(url.clone(), Some("ghs_wrong"), sha.clone()).unwrap_err();
    match &err {
        GitError::Auth { url: shown, detail } => {
            assert_eq!(shown, &url);
            assert!(detail.contains("rejected"), "{detail}");
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
    // The token never appears in the message.
    assert!(!err.to_string().contains("ghs_wrong"));
    // No token at all: also an authentication error, saying so.
    let err = sync_with(url, None, sha).unwrap_err();
    assert!(
        matches!(&err, GitError::Auth { detail, .. } if detail.contains("no token")),
        "{err:?}"
    );
}
