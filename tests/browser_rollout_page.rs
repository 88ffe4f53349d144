//! A real browser on the rollout page: `convoy demo` runs a rollout, and
//! headless Chromium loads `/rollouts/{id}` while the gated wave waits for
//! its approval and again after the end. Each time it saves a screenshot
//! (under `target/browser-artifacts/`) and the test reads the DOM Chromium
//! built: one cell per environment, the legend's counts equal to the
//! cells', the right state in each wave.
//!
//! Needs Debian's `chromium` (`scripts/install-deps.sh` installs it); the
//! test fails rather than skips without it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const ENVIRONMENTS: usize = 30;

/// Stops the demo when the test ends, however it ends: SIGTERM first, so
/// it removes its scratch folder, then a kill if it does not stop.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: sends a signal to our own child process.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    // The test binary is target/<profile>/deps/<name>: three levels up.
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact folder");
    dir
}

fn chromium(args: &[&str], url: &str) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-deps.sh (apt-get install chromium)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("chromium starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump_dom(url: &str) -> String {
    chromium(&["--dump-dom"], url)
}

fn screenshot(url: &str, name: &str) -> PathBuf {
    let file = artifacts().join(name);
    let _ = std::fs::remove_file(&file);
    chromium(&[&format!("--screenshot={}", file.display())], url);
    let size = std::fs::metadata(&file)
        .map(|m| m.len())
        .unwrap_or_else(|_| panic!("no screenshot at {}", file.display()));
    assert!(size > 1000, "screenshot {} is {size} bytes", file.display());
    file
}

/// Grid cells by state, per wave section (`id="wave-N"`), from the DOM.
fn grid(dom: &str) -> Vec<HashMap<String, usize>> {
    dom.split("id=\"wave-")
        .skip(1)
        .map(|section| {
            let mut counts = HashMap::new();
            for part in section.split("<i class=\"s-").skip(1) {
                if let Some((state, rest)) = part.split_once('"')
                    && rest.starts_with(" title=")
                {
                    *counts.entry(state.to_owned()).or_default() += 1;
                }
            }
            counts
        })
        .collect()
}

/// The legend's count per state.
fn legend(dom: &str) -> HashMap<String, usize> {
    dom.split("data-state=\"")
        .skip(1)
        .filter_map(|p| {
            let (state, rest) = p.split_once("\">")?;
            let n = rest.split('<').next()?.parse().ok()?;
            Some((state.to_owned(), n))
        })
        .collect()
}

fn rollout_state(dom: &str) -> String {
    dom.split("id=\"rollout-state\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("?")
        .to_owned()
}

/// Checks the grid against the legend and returns the total per state.
fn consistent(dom: &str) -> HashMap<String, usize> {
    let waves = grid(dom);
    assert_eq!(waves.len(), 3, "three waves");
    let mut total: HashMap<String, usize> = HashMap::new();
    for w in &waves {
        for (s, n) in w {
            *total.entry(s.clone()).or_default() += n;
        }
    }
    assert_eq!(
        total.values().sum::<usize>(),
        ENVIRONMENTS,
        "one cell per environment: {total:?}"
    );
    let legend = legend(dom);
    for (state, n) in &legend {
        assert_eq!(
            total.get(state).copied().unwrap_or(0),
            *n,
            "legend and grid agree on {state}: {legend:?} / {total:?}"
        );
    }
    total
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, secs: u64, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(what) {
                    return line;
                }
            }
            Err(_) => panic!(
                "no line with {what:?} within {secs} s; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn chromium_shows_every_environment_during_and_after_a_demo_rollout() {
    let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args([
            "demo",
            "--environments",
            &ENVIRONMENTS.to_string(),
            "--port",
            "0",
            "--deploy-time",
            "100ms",
            "--bake",
            "0s",
            // Long enough for a browser to load the page while it waits.
            "--approve-after",
            "20s",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("convoy demo runs");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let line = wait_line(&rx, "Watch it in a browser: ", 120, &mut seen);
    let url = line
        .split("Watch it in a browser: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();

    // During: the last wave waits for its approval.
    wait_line(&rx, "waits for an approval", 180, &mut seen);
    let dom = dump_dom(&url);
    screenshot(&url, "rollout-awaiting-approval.png");
    assert_eq!(rollout_state(&dom), "awaiting_approval", "{dom}");
    assert!(dom.contains("http-equiv=\"refresh\""), "refreshes itself");
    let total = consistent(&dom);
    let waves = grid(&dom);
    let rest: usize = waves[2].values().sum();
    assert_eq!(
        waves[2].get("waiting").copied().unwrap_or(0),
        rest,
        "every environment of the gated wave waits: {waves:?}"
    );
    assert_eq!(
        total.get("succeeded").copied().unwrap_or(0),
        ENVIRONMENTS - rest,
        "the first two waves are done: {total:?}"
    );
    assert!(dom.contains("waits for approval of wave"));
    assert!(dom.contains("/convoy approve rest"));

    // After: every environment succeeded and the page stops refreshing.
    wait_line(&rx, "Rollout page: ", 240, &mut seen);
    let dom = dump_dom(&url);
    let shot = screenshot(&url, "rollout-succeeded.png");
    assert_eq!(rollout_state(&dom), "succeeded");
    assert!(!dom.contains("http-equiv=\"refresh\""));
    let total = consistent(&dom);
    assert_eq!(total.get("succeeded"), Some(&ENVIRONMENTS), "{total:?}");
    // The approval is in the page (the wave line names the approver).
    assert!(dom.contains("approval by sam"), "approver shown");
    // The approval is in the audit log, with who gave it.
    let audit = dom.split("id=\"audit\"").nth(1).expect("an audit section");
    assert!(
        audit.contains("/convoy approve rest") && audit.contains("sam"),
        "{audit}"
    );
    eprintln!("screenshots in {}", shot.parent().unwrap().display());
    drop(demo);
}
