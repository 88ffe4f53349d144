//! Intake load test (issue: foundation). Run with `cargo bench --bench intake`.
//!
//! Starts, in this process, (1) a bare axum handler that only checks the
//! signature and the JSON — the ceiling — and (2) convoy's real intake with
//! its durable SQLite inbox and the worker running; then drives each with
//! `wrk` (Debian package `wrk`) from a second process: signed 25 KB
//! pull_request deliveries, unique delivery ids made like GitHub's
//! (version 1 UUIDs, from a clock), 64 connections. Prints a
//! Markdown table for docs/BENCHMARKS.md and checks that every acknowledged
//! delivery is in the inbox.
//!
//! Environment: BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 64),
//! BENCH_DB (`sqlite`, the default, or `postgres`: a throwaway PostgreSQL
//! server started by this process, `convoy::testkit::postgres`),
//! BENCH_REPLICAS (default 1; with PostgreSQL, that many convoy servers on
//! the one database, each driven by its own `wrk` with its share of the
//! connections, all at once; the figure is their sum), BENCH_IDS
//! (`github`, the default, or `random`: GUID-like ids in random order).

use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use convoy::config::{Config, Secret};
use convoy::webhook::signature;

const SECRET: &str = "bench-secret";

fn payload() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/github/webhook-examples.json"
    );
    let examples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("webhook examples")).unwrap();
    let group = examples
        .iter()
        .find(|g| g["name"] == "pull_request")
        .expect("pull_request examples");
    let mut body = group["examples"][0].clone();
    body["installation"] = serde_json::json!({"id": 1});
    // Pad to 25 KB, the size the issue asks for.
    let base = serde_json::to_vec(&body).unwrap().len();
    let pad = (25 * 1024usize).saturating_sub(base);
    body["padding"] = serde_json::Value::String("x".repeat(pad.saturating_sub(14)));
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!(
        (24 * 1024..26 * 1024).contains(&bytes.len()),
        "{}",
        bytes.len()
    );
    bytes
}

async fn bare(headers: HeaderMap, body: Bytes) -> StatusCode {
    let secrets = [Secret::new(SECRET)];
    let ok = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| signature::verify(&secrets, &body, sig));
    if !ok {
        return StatusCode::UNAUTHORIZED;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    StatusCode::ACCEPTED
}

struct WrkResult {
    requests_per_sec: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
    total: u64,
}

fn run_wrk(url: &str, script: &std::path::Path, seconds: u64, connections: u64) -> WrkResult {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    WrkResult {
        requests_per_sec: find("Requests/sec:").parse().unwrap_or(0.0),
        p50: find("50%"),
        p99: find("99%"),
        non_2xx,
        total,
    }
}

/// CPU time this process has used so far, all its threads, user and
/// system (`/proc/self/stat`, in the kernel's 10 ms ticks). The servers
/// run in this process one after the other, so the difference over a run
/// is that server's CPU: a figure less at the mercy of the shared machine
/// than deliveries a second.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The delivery ids the load sends (`BENCH_IDS`).
#[derive(Clone, Copy)]
enum Ids {
    /// Like GitHub's: version 1 UUIDs, made from a clock (the default).
    Github,
    /// Random GUID-like ids, each at a random place in any index.
    Random,
}

/// A version 1 UUID's timestamp now: 100 ns intervals since 1582-10-15,
/// split at bit 32 so that Lua's doubles hold each part exactly.
fn uuid_clock() -> (u64, u64) {
    let since_1970 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ticks = (since_1970.as_nanos() / 100) as u64 + 0x01b2_1dd2_1381_4000;
    (ticks >> 32, ticks & 0xffff_ffff)
}

fn script(dir: &std::path::Path, body: &[u8], run: &str, ids: Ids) -> std::path::PathBuf {
    let body_path = dir.join(format!("body-{run}.json"));
    std::fs::write(&body_path, body).unwrap();
    let sig = signature::sign(SECRET, body);
    let (clock_hi, clock_lo) = uuid_clock();
    let next_id = match ids {
        // Each thread counts its own clock up from the run's start, 10 µs
        // a delivery, and has its own clock sequence: the ids are unique,
        // and the two threads' ids interleave in time as GitHub's servers'
        // do. A random node per thread, like a host's.
        Ids::Github => r#"
  lo = lo + 100
  if lo >= 4294967296 then
    lo = lo - 4294967296
    hi = hi + 1
  end
  return string.format("%08x-%04x-1%03x-%04x-%04x%08x", lo, hi % 65536,
    math.floor(hi / 65536) % 4096, 32768 + thread_id, node_hi, node_lo)"#
            .to_owned(),
        // The tail keeps them unique.
        Ids::Random => format!(
            r#"
  local guid = string.format("%04x%04x-%04x-%04x", math.random(0, 65535),
    math.random(0, 65535), math.random(0, 65535), math.random(0, 65535))
  return guid .. "-{run}-" .. tostring(thread_id) .. "-" .. counter"#
        ),
    };
    let lua = format!(
        r#"
-- Each wrk thread has its own Lua state; setup() runs in the main one and
-- hands every thread its own number, so delivery ids never repeat.
local next_thread = 0
function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "pull_request"
wrk.headers["X-Hub-Signature-256"] = "{sig}"
local counter = 0
local seeded = false
local hi = {clock_hi}
local lo = {clock_lo}
local node_hi = 0
local node_lo = 0
local function next_id()
  {next_id}
end
request = function()
  if not seeded then
    math.randomseed(os.time() * 64 + thread_id)
    node_hi = math.random(0, 65535)
    node_lo = math.random(0, 65535) * 65536 + math.random(0, 65535)
    seeded = true
  end
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = next_id()
  return wrk.format(nil, "/webhook")
end
"#,
        body = body_path.display()
    );
    let path = dir.join(format!("load-{run}.lua"));
    std::fs::write(&path, lua).unwrap();
    path
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let connections: u64 = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ids = match std::env::var("BENCH_IDS").as_deref() {
        Err(_) | Ok("github") => Ids::Github,
        Ok("random") => Ids::Random,
        Ok(other) => panic!("BENCH_IDS={other}: github or random"),
    };
    let dir = tempfile::tempdir().unwrap();
    let body = payload();
    println!(
        "payload: {} bytes; {connections} connections; {seconds} s per run",
        body.len()
    );

    // The ceiling.
    let bare_addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/webhook", post(bare))
            .layer(axum::extract::DefaultBodyLimit::max(26 * 1024 * 1024));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let bare_script = script(dir.path(), &body, "bare", ids);
    let before = cpu_seconds();
    let bare_result = run_wrk(
        &format!("http://{bare_addr}"),
        &bare_script,
        seconds,
        connections,
    );
    let bare_cpu = cpu_seconds() - before;

    // convoy's real intake with a durable inbox.
    let postgres = match std::env::var("BENCH_DB").as_deref() {
        Err(_) | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("BENCH_DB={other}: sqlite or postgres"),
    };
    let replicas: u64 = std::env::var("BENCH_REPLICAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    assert!(
        postgres || replicas == 1,
        "several replicas need BENCH_DB=postgres"
    );
    let db = dir.path().join("convoy.db");
    let url = if postgres {
        convoy::testkit::postgres::fresh_database().expect("test PostgreSQL")
    } else {
        format!("sqlite://{}", db.display())
    };
    let config = Config::from_toml(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[github]\nwebhook_secret = \"{SECRET}\"\n[database]\nurl = \"{url}\"\n"
        ),
        "bench.toml",
        &[],
    )
    .unwrap();
    let servers: Vec<convoy::app::Running> = (0..replicas)
        .map(|_| {
            runtime
                .block_on(convoy::app::start(
                    config.clone(),
                    convoy::app::Services::default(),
                ))
                .unwrap()
        })
        .collect();
    let before = cpu_seconds();
    let loads: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, running)| {
            let url = format!("http://{}", running.addr);
            let script = script(dir.path(), &body, &format!("convoy{i}"), ids);
            let share = (connections / replicas).max(1);
            std::thread::spawn(move || run_wrk(&url, &script, seconds, share))
        })
        .collect();
    let results: Vec<WrkResult> = loads.into_iter().map(|h| h.join().unwrap()).collect();
    let convoy_cpu = cpu_seconds() - before;
    let convoy_result = WrkResult {
        requests_per_sec: results.iter().map(|r| r.requests_per_sec).sum(),
        p50: results
            .iter()
            .map(|r| r.p50.as_str())
            .collect::<Vec<_>>()
            .join(" / "),
        p99: results
            .iter()
            .map(|r| r.p99.as_str())
            .collect::<Vec<_>>()
            .join(" / "),
        non_2xx: results.iter().map(|r| r.non_2xx).sum(),
        total: results.iter().map(|r| r.total).sum(),
    };
    // Deliveries the worker had finished when the load stopped, then all
    // of them.
    let count = |sql: &'static str| {
        runtime.block_on(async {
            if postgres {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            } else {
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        })
    };
    let processed = count("SELECT COUNT(*) FROM inbox WHERE state <> 'pending'");
    // Give in-flight requests a moment to finish their commit.
    std::thread::sleep(Duration::from_millis(500));
    let stored = count("SELECT COUNT(*) FROM inbox");
    for running in servers {
        runtime.block_on(running.stop());
    }

    let convoy_name = if postgres {
        format!("convoy intake, PostgreSQL inbox, {replicas} replica(s)")
    } else {
        "convoy intake, durable SQLite inbox".to_owned()
    };
    println!();
    println!("| server | deliveries/s | p50 | p99 | non-2xx | server CPU per delivery |");
    println!("|---|---|---|---|---|---|");
    for (name, r, cpu) in [
        (
            "bare axum: signature + JSON check (ceiling)",
            &bare_result,
            bare_cpu,
        ),
        (convoy_name.as_str(), &convoy_result, convoy_cpu),
    ] {
        // The server answered `total` requests in the run.
        let per = 1e6 * cpu / (r.total.max(1) as f64);
        println!(
            "| {name} | {:.0} | {} | {} | {} | {per:.0} µs |",
            r.requests_per_sec, r.p50, r.p99, r.non_2xx
        );
    }
    println!();
    println!(
        "convoy: {} requests answered, {} deliveries in the inbox, ratio to ceiling {:.0}%",
        convoy_result.total,
        stored,
        100.0 * convoy_result.requests_per_sec / bare_result.requests_per_sec.max(1.0)
    );
    println!(
        "worker: {processed} deliveries processed while the load ran ({:.0}/s)",
        processed as f64 / seconds as f64
    );
    if (stored as u64) < convoy_result.total.saturating_sub(convoy_result.non_2xx) {
        eprintln!("ERROR: fewer deliveries stored than acknowledged");
        std::process::exit(1);
    }
}
