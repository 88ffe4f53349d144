//! Rolling out 10,000 environments × 2 services through the real runtime
//! and SQLite, against agents that answer at once: total time, overhead
//! over the ideal, peak memory and database writes per step.
//! `cargo bench --bench rollout`; the figures go to docs/BENCHMARKS.md
//! ("Rollout"). `ROLLOUT_BENCH_ENVS` sets the number of environments;
//! `ROLLOUT_BENCH_DB=postgres` runs on a throwaway PostgreSQL server
//! (`convoy::testkit::postgres`) instead of SQLite.
//!
//! A plain `main` (harness = false). The fleet of agents runs in a child
//! process (this same binary with `--fleet`), so the peak resident set
//! (VmHWM) read from /proc/self/status is convoy's alone, not the test
//! agents' request logs.
//!
//! The ideal is what a perfect orchestrator would take given the agents'
//! real speed on this machine: the latency of one step, measured by rolling
//! out a single environment, times the number of rounds each wave needs at
//! `max_parallel` environments at once, summed over waves. After the big
//! rollout the bench sends the same HTTP requests from a bare client with
//! nothing else (`http_floor`): the floor no orchestrator on these cores
//! can go under, to set beside the ideal.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use convoy::config::Config;
use convoy::domain::{CommitSha, EnvName, ServiceName};
use convoy::drivers::Drivers;
use convoy::engine::Rollout;
use convoy::plan::{Change, History, affected_services, build_plan};
use convoy::runtime::rollouts::{RolloutRuntime, new_rollout_id};
use convoy::spec::{CheckContext, parse_spec};
use convoy::store::{Created, SqliteStore, Store};
use convoy::testkit::counting::Counting;
use convoy::testkit::rollouts::{ended_state, queued_deploy};

const ENVIRONMENTS: usize = 10_000;
const MAX_PARALLEL: u32 = 200;
/// Waves of the big rollout: (name, percent of the environments).
const WAVES: &[(&str, u32)] = &[("canary", 1), ("rest", 100)];

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat, in
/// clock ticks of 10 ms. On a shared machine wall time includes waiting for
/// a core; CPU time does not.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn env_name(i: usize) -> String {
    format!("e{i:05}")
}

/// The child: a fleet of `n` agents; prints its address, then serves until
/// its input closes (the parent ended).
fn run_fleet(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let fleet = convoy::testkit::fleet::Fleet::start((0..n).map(env_name), 7)
            .await
            .expect("fleet starts");
        println!("{}", fleet.addr());
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
}

fn start_fleet(n: usize) -> (Child, String) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("--fleet")
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fleet process starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("fleet prints its address");
    (child, line.trim().to_owned())
}

fn convoy_yml(n: usize, addr: &str, waves: &[(&str, u32)]) -> String {
    let mut y = format!(
        "version: 1\nservices:\n  api: {{}}\n  web: {{}}\npolicy:\n  max_parallel: {MAX_PARALLEL}\n  poll_interval: 1s\nenvironments:\n"
    );
    for i in 0..n {
        let e = env_name(i);
        let _ = writeln!(
            y,
            "  - {{name: {e}, driver: agent, url: \"http://{addr}/env/{e}\"}}"
        );
    }
    y.push_str("waves:\n");
    for (name, percent) in waves {
        let _ = writeln!(y, "  - {{name: {name}, percent: {percent}}}");
    }
    y
}

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
[github]
webhook_secret = "bench"
[database]
url = "sqlite://{db}"
[drivers.agent]
kind = "http-agent"
allowed_hosts = ["127.0.0.1"]
timeout = "30s"
"#,
        data = dir.join("data").display(),
        db = dir.join("convoy.db").display(),
    );
    Config::from_toml(&text, "bench.toml", &[]).expect("bench config")
}

struct Outcome {
    elapsed: Duration,
    state: String,
    steps: usize,
    /// Environments per wave.
    wave_envs: Vec<usize>,
    document_bytes: usize,
}

async fn roll_out(
    runtime: &RolloutRuntime,
    store: &Arc<Counting>,
    yaml: &str,
    commit: &str,
) -> Outcome {
    let spec = parse_spec(yaml, &CheckContext::default()).expect("bench convoy.yml is valid");
    let affected: Vec<ServiceName> = affected_services(&spec, Change::FirstRollout);
    let plan = build_plan(
        &spec,
        CommitSha::new(commit.repeat(40)),
        None,
        &affected,
        &History::new(),
    );
    drop(spec);
    let wave_envs: Vec<usize> = plan
        .waves
        .iter()
        .map(|w| {
            let mut envs: Vec<&EnvName> = w.steps.iter().map(|s| &s.environment).collect();
            envs.sort();
            envs.dedup();
            envs.len()
        })
        .collect();
    let rollout = Rollout::new(plan);
    let steps = rollout.step_count();
    let document_bytes = serde_json::to_string(&rollout).map_or(0, |d| d.len());
    let id = new_rollout_id();
    let record = queued_deploy(id.clone(), "acme/bench", CommitSha::new(commit.repeat(40)));
    let started = Instant::now();
    let created = runtime.submit(record, rollout).await.expect("submitted");
    assert_eq!(created, Created::New);
    let state = ended_state(runtime, &*store.inner, &id, Duration::from_secs(24 * 3600))
        .await
        .expect("the rollout ends");
    Outcome {
        elapsed: started.elapsed(),
        state,
        steps,
        wave_envs,
        document_bytes,
    }
}

/// The HTTP requests of a rollout's steps with nothing else: for each
/// environment, both services at once, each `GET status`, `GET preflight`,
/// `POST deploy` and `GET status` in turn (what a step sends to an agent
/// that answers at once), `MAX_PARALLEL` environments at a time, a new one
/// starting as soon as one ends, wave after wave; from a bare reqwest
/// client, with no engine, store or runtime. No orchestrator that speaks
/// SPEC 4.1 to these agents on these cores can be faster, so this is the
/// floor under the big rollout's time, to set beside the ideal.
async fn http_floor(addr: &str, wave_envs: &[usize], version: &str) -> Duration {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let started = Instant::now();
    let mut first = 0;
    for &count in wave_envs {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PARALLEL as usize));
        let mut tasks = tokio::task::JoinSet::new();
        for i in first..first + count {
            let permit = permits.clone().acquire_owned().await.expect("open");
            let client = client.clone();
            let url = format!("http://{addr}/env/{}", env_name(i));
            let version = version.to_owned();
            tasks.spawn(async move {
                let step = |service: &'static str| {
                    let (client, url, version) = (&client, &url, &version);
                    async move {
                        let ok = |r: reqwest::Result<reqwest::Response>| {
                            assert!(r.expect("agent answers").status().is_success());
                        };
                        ok(client
                            .get(format!("{url}/status?service={service}"))
                            .send()
                            .await);
                        let preflight = client
                            .get(format!(
                                "{url}/preflight?service={service}&version={version}"
                            ))
                            .send()
                            .await
                            .expect("agent answers");
                        assert!(preflight.status().is_success() || preflight.status() == 404);
                        let body = serde_json::json!({
                            "rollout": "floor", "environment": env_of(url), "service": service,
                            "version": version, "attempt": 1,
                        });
                        ok(client
                            .post(format!("{url}/deploy"))
                            .json(&body)
                            .send()
                            .await);
                        ok(client
                            .get(format!("{url}/status?service={service}"))
                            .send()
                            .await);
                    }
                };
                tokio::join!(step("api"), step("web"));
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        first += count;
    }
    started.elapsed()
}

fn env_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(p) = args.iter().position(|a| a == "--fleet") {
        let n = args
            .get(p + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(ENVIRONMENTS);
        run_fleet(n);
        return;
    }
    let n: usize = std::env::var("ROLLOUT_BENCH_ENVS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ENVIRONMENTS);
    let (mut fleet, addr) = start_fleet(n);
    let fleet_pid = fleet.id().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        let drivers = Drivers::from_config(&config.drivers).expect("drivers");
        let inner: Arc<dyn Store> = match std::env::var("ROLLOUT_BENCH_DB").as_deref() {
            Err(_) | Ok("sqlite") => Arc::new(
                SqliteStore::open(&dir.path().join("convoy.db"))
                    .await
                    .expect("database"),
            ),
            Ok("postgres") => Arc::new(
                convoy::testkit::postgres::fresh_store()
                    .await
                    .expect("test PostgreSQL"),
            ),
            Ok(other) => panic!("ROLLOUT_BENCH_DB={other}: sqlite or postgres"),
        };
        println!(
            "database: {}",
            std::env::var("ROLLOUT_BENCH_DB").unwrap_or_else(|_| "sqlite".into())
        );
        let store = Arc::new(Counting::new(inner));
        let runtime = RolloutRuntime::new(store.clone(), drivers, None);

        // Step latency: one environment (both services), several times;
        // the median.
        let one = convoy_yml(1, &addr, &[("all", 100)]);
        let mut latencies = Vec::new();
        for (k, c) in ["1", "2", "3", "4", "5", "6", "7"].iter().enumerate() {
            let o = roll_out(&runtime, &store, &one, c).await;
            assert_eq!(o.state, "succeeded", "1-environment rollout {k}");
            latencies.push(o.elapsed);
        }
        latencies.sort();
        let latency = latencies[latencies.len() / 2];

        let before = (
            store.writes.load(Ordering::Relaxed),
            store.saves.load(Ordering::Relaxed),
            store.bytes.load(Ordering::Relaxed),
            store.step_rows.load(Ordering::Relaxed),
            store.side_rows.each_ref().map(|c| c.load(Ordering::Relaxed)),
            store.step_reads.load(Ordering::Relaxed),
        );
        let big = convoy_yml(n, &addr, WAVES);
        let cpu_before = (cpu_time("self"), cpu_time(&fleet_pid));
        let o = roll_out(&runtime, &store, &big, "b").await;
        let cpu_after = (cpu_time("self"), cpu_time(&fleet_pid));
        let writes = store.writes.load(Ordering::Relaxed) - before.0;
        let saves = store.saves.load(Ordering::Relaxed) - before.1;
        let bytes = store.bytes.load(Ordering::Relaxed) - before.2;
        let step_rows = store.step_rows.load(Ordering::Relaxed) - before.3;
        let side_rows: Vec<u64> = store
            .side_rows
            .iter()
            .zip(before.4)
            .map(|(c, b)| c.load(Ordering::Relaxed) - b)
            .collect();
        let step_reads = store.step_reads.load(Ordering::Relaxed) - before.5;

        let rounds: Vec<u64> = o
            .wave_envs
            .iter()
            .map(|e| (*e as u64).div_ceil(u64::from(MAX_PARALLEL)))
            .collect();
        let ideal = latency * rounds.iter().sum::<u64>() as u32;
        let overhead = o.elapsed.as_secs_f64() / ideal.as_secs_f64() - 1.0;
        println!(
            "environments: {n}, services: 2, steps: {}, waves (environments): {:?}, max_parallel: {MAX_PARALLEL}",
            o.steps, o.wave_envs
        );
        println!("final state: {}", o.state);
        println!(
            "step latency (1-environment rollout, median of {}): {latency:?} (all: {latencies:?})",
            latencies.len()
        );
        println!("rounds per wave: {rounds:?}; ideal: {ideal:?}");
        println!(
            "total: {:?}; overhead over the ideal: {:.1} %",
            o.elapsed,
            overhead * 100.0
        );
        println!(
            "database: {writes} write transactions ({:.2} per step), of which {saves} rollout saves ({:.2} per step); {step_rows} step rows written ({:.2} per step); {:.1} MiB of rollout JSON written ({:.0} bytes per step)",
            writes as f64 / o.steps as f64,
            saves as f64 / o.steps as f64,
            step_rows as f64 / o.steps as f64,
            bytes as f64 / (1024.0 * 1024.0),
            bytes as f64 / o.steps as f64,
        );
        let per_step = |n: u64| n as f64 / o.steps as f64;
        println!(
            "other rows saved per step: timers set {:.2}, timers fired {:.2}, attempts {:.2}, locks taken {:.2}, locks released {:.2}; baseline reads (queries) per step {:.2}",
            per_step(side_rows[0]),
            per_step(side_rows[1]),
            per_step(side_rows[2]),
            per_step(side_rows[3]),
            per_step(side_rows[4]),
            per_step(step_reads),
        );
        println!(
            "whole rollout document: {:.1} MiB (what every save wrote before per-step storage)",
            o.document_bytes as f64 / (1024.0 * 1024.0)
        );
        if let ((Some(a), Some(b)), (Some(c), Some(d))) = (cpu_before, cpu_after) {
            println!(
                "CPU during the big rollout: convoy {:?}, the fleet (agents) {:?}",
                c.saturating_sub(a),
                d.saturating_sub(b)
            );
        }
        // Convoy's peak is read before the floor's client adds its own; the
        // floor runs with a new version, so that every deploy changes
        // something.
        let peak_kib = vm_hwm_kib();
        let cpu_before = (cpu_time("self"), cpu_time(&fleet_pid));
        let floor = http_floor(&addr, &o.wave_envs, &"f".repeat(40)).await;
        let cpu_after = (cpu_time("self"), cpu_time(&fleet_pid));
        println!(
            "HTTP alone (the same {} requests from a bare client, {MAX_PARALLEL} environments at a time, no engine or store): {floor:?}, {:.1} % over the ideal; the big rollout took {:.2}× that",
            o.steps * 4,
            (floor.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0,
            o.elapsed.as_secs_f64() / floor.as_secs_f64(),
        );
        if let ((Some(a), Some(b)), (Some(c), Some(d))) = (cpu_before, cpu_after) {
            println!(
                "CPU of HTTP alone: the client {:?}, the fleet (agents) {:?}",
                c.saturating_sub(a),
                d.saturating_sub(b)
            );
        }
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            println!("load average after: {}", load.trim());
        }
        println!(
            "peak RSS (VmHWM) of convoy (the fleet runs in another process): {:.1} MiB",
            peak_kib.unwrap_or(0) as f64 / 1024.0
        );
    });
    let _ = fleet.kill();
    let _ = fleet.wait();
}
