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
//! The two are driven in turn, in short slices (ceiling, convoy, ceiling,
//! convoy …), so that load from outside this machine's control meets both
//! alike: driven one after the other for the whole run, a busy stretch
//! that met only one of them moved the ratio by ten points. Before each
//! slice of the ceiling convoy has finished its work (its inbox processed,
//! its log checkpointed), and the CPU that takes counts as convoy's.
//!
//! Environment: BENCH_SECONDS (default 10: each server's load in total,
//! rounded down to whole seconds a slice),
//! BENCH_SLICES (default 5: in how many turns), BENCH_CONNECTIONS (default 64),
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
    /// Every request's latency: (µs, how many), from the script's `done`.
    latencies: Vec<(u64, u64)>,
    non_2xx: u64,
    total: u64,
}

/// Runs `wrk` with `script` (made by [`script`], which writes the latencies
/// beside itself) against `url`.
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
    let latencies: Vec<(u64, u64)> = std::fs::read_to_string(script.with_extension("latencies"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (value, count) = l.split_once(' ')?;
            Some((value.parse().ok()?, count.parse().ok()?))
        })
        .collect();
    // wrk adds to a run's latencies those it expects a request sent on
    // time would have met (its correction for coordinated omission), and
    // its own percentiles come from them: so they are at least its
    // requests.
    let seen: u64 = latencies.iter().map(|(_, n)| n).sum();
    assert!(
        seen >= total,
        "wrk's latencies ({seen}) are fewer than its {total} requests"
    );
    WrkResult {
        requests_per_sec: find("Requests/sec:").parse().unwrap_or(0.0),
        latencies,
        non_2xx,
        total,
    }
}

/// CPU time this process has used so far, all its threads, user and
/// system (`/proc/self/stat`, in the kernel's 10 ms ticks). The servers
/// run in this process and take turns, so the difference over a turn is
/// that server's CPU (and the other's while it idles, about 4 ms a second
/// for convoy): a figure less at the mercy of the shared machine than
/// deliveries a second.
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

/// A `wrk` script for one run, named `run`. `stream`: which of the loads
/// that run at once this is (one per convoy replica); each load's threads
/// make their ids with clock sequences of their own, so two loads started
/// in the same millisecond do not send the same ids.
fn script(
    dir: &std::path::Path,
    body: &[u8],
    run: &str,
    stream: u64,
    ids: Ids,
) -> std::path::PathBuf {
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
    math.floor(hi / 65536) % 4096, 32768 + (stream * 2 + thread_id) % 16384,
    node_hi, node_lo)"#
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
local stream = {stream}
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
    math.randomseed(os.time() * 64 + stream * 2 + thread_id)
    node_hi = math.random(0, 65535)
    node_lo = math.random(0, 65535) * 65536 + math.random(0, 65535)
    seeded = true
  end
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = next_id()
  return wrk.format(nil, "/webhook")
end
-- Every latency and how often it was seen (as wrk's own percentiles see
-- them, with its correction), so that the latencies of several runs can
-- be put together (`latency(i)` walks the histogram
-- from its start, but a run sees a few thousand distinct values).
function done(summary, latency, requests)
  local f = io.open("{latencies}", "w")
  for i = 1, #latency do
    local value, count = latency(i)
    f:write(string.format("%d %d\n", value, count))
  end
  f:close()
end
"#,
        body = body_path.display(),
        latencies = dir.join(format!("load-{run}.latencies")).display(),
    );
    let path = dir.join(format!("load-{run}.lua"));
    std::fs::write(&path, lua).unwrap();
    path
}

/// The latency under which `share` of the requests were answered, from
/// (µs, how many) pairs in any order.
fn percentile(latencies: &[(u64, u64)], share: f64) -> Option<u64> {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().map(|(_, n)| n).sum();
    let wanted = (share * total as f64).ceil() as u64;
    let mut seen = 0;
    sorted.into_iter().find_map(|(value, n)| {
        seen += n;
        (seen >= wanted.max(1)).then_some(value)
    })
}

fn shown(latency: Option<u64>) -> String {
    latency.map_or("?".into(), |us| format!("{:.2}ms", us as f64 / 1e3))
}

/// One server's slices together: the mean rate (the slices are equally
/// long), and the percentiles of all their requests' latencies.
struct Phase {
    slices: Vec<WrkResult>,
    cpu: f64,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            slices: Vec::new(),
            cpu: 0.0,
        }
    }

    fn rate(&self) -> f64 {
        let n = self.slices.len().max(1) as f64;
        self.slices.iter().map(|r| r.requests_per_sec).sum::<f64>() / n
    }

    fn total(&self) -> u64 {
        self.slices.iter().map(|r| r.total).sum()
    }

    fn non_2xx(&self) -> u64 {
        self.slices.iter().map(|r| r.non_2xx).sum()
    }

    fn percentile(&self, share: f64) -> String {
        let all: Vec<(u64, u64)> = self
            .slices
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        shown(percentile(&all, share))
    }
}

/// Counts rows of convoy's database from outside convoy.
enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
    async fn count(&self, sql: &'static str) -> i64 {
        match self {
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("counting the inbox")
    }
}

const PENDING: &str = "SELECT COUNT(*) FROM inbox WHERE state = 'pending'";

fn main() {
    let env_number = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env_number("BENCH_SECONDS", 10).max(1);
    let slices = env_number("BENCH_SLICES", 5).clamp(1, seconds);
    let slice_seconds = seconds / slices;
    let connections = env_number("BENCH_CONNECTIONS", 64);
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
        "payload: {} bytes; {connections} connections; {slices} slices of {slice_seconds} s per server, {} s in all",
        body.len(),
        slices * slice_seconds
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

    // convoy's real intake with a durable inbox.
    let postgres = match std::env::var("BENCH_DB").as_deref() {
        Err(_) | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("BENCH_DB={other}: sqlite or postgres"),
    };
    let replicas = env_number("BENCH_REPLICAS", 1).max(1);
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
    let database = runtime.block_on(async {
        if postgres {
            Database::Postgres(sqlx::PgPool::connect(&url).await.unwrap())
        } else {
            Database::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap())
        }
    });

    let mut ceiling = Phase::new();
    let mut convoy = Phase::new();
    let mut backlogs = Vec::new();
    let mut lost = false;
    let mut stored = 0;
    for slice in 0..slices {
        // A new script each time: each one's delivery ids start from the
        // clock when it is made, so no slice repeats another's ids.
        let bare_script = script(dir.path(), &body, &format!("bare{slice}"), 0, ids);
        let before = cpu_seconds();
        let bare_result = run_wrk(
            &format!("http://{bare_addr}"),
            &bare_script,
            slice_seconds,
            connections,
        );
        ceiling.cpu += cpu_seconds() - before;

        let before = cpu_seconds();
        let stored_before = stored;
        let loads: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, running)| {
                let url = format!("http://{}", running.addr);
                let script = script(
                    dir.path(),
                    &body,
                    &format!("convoy{i}-{slice}"),
                    i as u64,
                    ids,
                );
                let share = (connections / replicas).max(1);
                std::thread::spawn(move || run_wrk(&url, &script, slice_seconds, share))
            })
            .collect();
        let results: Vec<WrkResult> = loads.into_iter().map(|h| h.join().unwrap()).collect();
        // What the worker had not processed yet when the load stopped.
        let stopped = std::time::Instant::now();
        let backlog = runtime.block_on(database.count(PENDING));
        // convoy finishes its work before the ceiling's next turn: the
        // worker empties the inbox, and a second more lets the checkpoint
        // that follows the load end. Its CPU meanwhile is convoy's.
        let drained = runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while database.count(PENDING).await > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the worker did not empty the inbox in 2 minutes"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let drained = stopped.elapsed();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drained
        });
        convoy.cpu += cpu_seconds() - before;
        let convoy_result = WrkResult {
            requests_per_sec: results.iter().map(|r| r.requests_per_sec).sum(),
            latencies: results
                .iter()
                .flat_map(|r| r.latencies.iter().copied())
                .collect(),
            non_2xx: results.iter().map(|r| r.non_2xx).sum(),
            total: results.iter().map(|r| r.total).sum(),
        };
        // Every delivery acknowledged in this slice is in the inbox (and
        // perhaps a few more, cut off unanswered as the load stopped).
        stored = runtime.block_on(database.count("SELECT COUNT(*) FROM inbox"));
        let acknowledged = convoy_result.total - convoy_result.non_2xx;
        if ((stored - stored_before) as u64) < acknowledged {
            eprintln!(
                "ERROR: slice {}: {} deliveries stored, {acknowledged} acknowledged",
                slice + 1,
                stored - stored_before
            );
            lost = true;
        }
        println!(
            "slice {}: ceiling {:.0}/s (p99 {}), convoy {:.0}/s (p99 {}): {:.0}%; backlog at the end {backlog}, processed {} ms later",
            slice + 1,
            bare_result.requests_per_sec,
            shown(percentile(&bare_result.latencies, 0.99)),
            convoy_result.requests_per_sec,
            shown(percentile(&convoy_result.latencies, 0.99)),
            100.0 * convoy_result.requests_per_sec / bare_result.requests_per_sec.max(1.0),
            drained.as_millis(),
        );
        backlogs.push(backlog);
        ceiling.slices.push(bare_result);
        convoy.slices.push(convoy_result);
    }
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
    for (name, phase) in [
        ("bare axum: signature + JSON check (ceiling)", &ceiling),
        (convoy_name.as_str(), &convoy),
    ] {
        // The server answered `total` requests in its slices.
        let per = 1e6 * phase.cpu / (phase.total().max(1) as f64);
        println!(
            "| {name} | {:.0} | {} | {} | {} | {per:.0} µs |",
            phase.rate(),
            phase.percentile(0.50),
            phase.percentile(0.99),
            phase.non_2xx()
        );
    }
    println!();
    println!(
        "convoy: {} requests answered, {} deliveries in the inbox, ratio to ceiling {:.1}%",
        convoy.total(),
        stored,
        100.0 * convoy.rate() / ceiling.rate().max(1.0)
    );
    println!(
        "worker: deliveries not yet processed when a slice's load stopped: {}",
        backlogs
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if lost {
        eprintln!("ERROR: fewer deliveries stored than acknowledged");
        std::process::exit(1);
    }
}
