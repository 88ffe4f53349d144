//! Planning 10,000 environments × 5 services with dependencies: time and
//! peak memory. `cargo bench --bench plan`; the figures go to
//! docs/BENCHMARKS.md ("Planning").
//!
//! A plain `main` (harness = false): one process, so the peak resident set
//! (VmHWM) read from /proc/self/status is this workload's.

use std::fmt::Write;
use std::time::{Duration, Instant};

use convoy::domain::{CommitSha, ServiceName};
use convoy::plan::{Change, History, affected_services, build_plan};
use convoy::spec::{CheckContext, parse_spec};

const ENVIRONMENTS: usize = 10_000;
const HUBS: usize = 20;

/// A convoy.yml (written compactly: 10,000 environments with a URL each
/// only just fit in the 1 MiB cap): 5 services in a dependency chain with a branch, 20 shared
/// hub environments that the 9,980 customer environments depend on, a
/// hub wave, a canary wave by label and three percent waves.
fn fleet_yaml() -> String {
    let mut y = String::from(
        "version: 1\nservices:\n  db:\n    paths: [\"migrations/**\"]\n  api:\n    paths: [\"api/**\"]\n    depends_on: [db]\n  worker:\n    paths: [\"worker/**\"]\n    depends_on: [db]\n  web:\n    paths: [\"web/**\"]\n    depends_on: [api]\n  cron:\n    depends_on: [worker, api]\nenvironments:\n",
    );
    for h in 0..HUBS {
        let _ = writeln!(
            y,
            "  - {{name: h{h}, labels: {{ring: hub}}, driver: agent, url: \"http://127.0.0.1:{}\"}}",
            9000 + h
        );
    }
    for i in 0..ENVIRONMENTS - HUBS {
        let ring = if i % 100 == 0 { "canary" } else { "main" };
        let _ = writeln!(
            y,
            "  - {{name: c{i}, labels: {{ring: {ring}}}, driver: agent, url: \"http://127.0.0.1:{}\", depends_on: [h{}]}}",
            10_000 + i,
            i % HUBS
        );
    }
    y.push_str(
        "waves:\n  - { name: hubs, selector: { ring: hub } }\n  - { name: canary, selector: { ring: canary }, bake: 5m }\n  - { name: early, percent: 10, max_parallel: 50 }\n  - { name: half, percent: 50, max_parallel: 200, failure_budget: 1% }\n  - { name: all, percent: 100, max_parallel: 500, failure_budget: 2%, approval: true }\n",
    );
    y
}

unsafe extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

fn vm_hwm_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

fn vm_rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) of this process so far, from /proc/self/stat,
/// in clock ticks of 10 ms. On a shared, loaded machine wall time includes
/// waiting for a core; CPU time does not.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let yaml = fleet_yaml();
    let before = vm_hwm_kib().unwrap_or(0);

    // Validation of the 10,000-environment file.
    let mut parse_times = Vec::new();
    let mut spec = None;
    for _ in 0..5 {
        let t = Instant::now();
        let s = parse_spec(&yaml, &CheckContext::default()).expect("the bench fleet is valid");
        parse_times.push(t.elapsed());
        spec = Some(s);
    }
    let spec = spec.expect("parsed");
    let after_parse = vm_hwm_kib().unwrap_or(0);
    // Give freed memory back to the OS and reset the peak (Linux: writing 5
    // to clear_refs), so the next reading is the peak while planning, with
    // the parsed file still held.
    // SAFETY: glibc's malloc_trim only releases free heap pages.
    unsafe {
        malloc_trim(0);
    }
    let live_after_parse = vm_rss_kib().unwrap_or(0);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    // Planning: every service affected (the worst case), no history.
    let changed: Vec<String> = ["migrations/1.sql", "api/x.rs", "worker/x.rs", "web/x.js"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut plan_times = Vec::new();
    let mut steps = 0;
    let mut waits = 0;
    let mut plan_cpu = Duration::ZERO;
    for _ in 0..10 {
        let cpu_before = cpu_time();
        let t = Instant::now();
        let affected: Vec<ServiceName> = affected_services(
            &spec,
            Change::Diff {
                paths: &changed,
                previous: Some(&spec),
            },
        );
        assert_eq!(affected.len(), 5, "every service is affected");
        let plan = build_plan(
            &spec,
            CommitSha::new("b".repeat(40)),
            Some(CommitSha::new("a".repeat(40))),
            &affected,
            &History::new(),
        );
        plan_times.push(t.elapsed());
        if let (Some(a), Some(b)) = (cpu_before, cpu_time()) {
            plan_cpu += b.saturating_sub(a);
        }
        steps = plan.step_count();
        waits = plan
            .waves
            .iter()
            .flat_map(|w| w.steps.iter().map(|s| s.waits_for.len()))
            .sum();
        std::hint::black_box(&plan);
    }
    let after_plan = vm_hwm_kib().unwrap_or(0);

    println!("environments: {ENVIRONMENTS}, services: 5, steps: {steps}, waits_for edges: {waits}");
    println!("convoy.yml size: {} bytes", yaml.len());
    println!(
        "validate (parse_spec), median of 5: {:?}",
        median(parse_times)
    );
    println!(
        "plan (impact + build_plan), median of 10: {:?} wall; {:?} CPU on average",
        median(plan_times),
        plan_cpu / 10
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average while measuring: {}", load.trim());
    }
    println!(
        "peak RSS (VmHWM): {:.1} MiB at start, {:.1} MiB through validation, {:.1} MiB held after it, {:.1} MiB through planning{}",
        before as f64 / 1024.0,
        after_parse as f64 / 1024.0,
        live_after_parse as f64 / 1024.0,
        after_plan as f64 / 1024.0,
        if reset {
            " (peak reset before planning)"
        } else {
            " (cumulative: peak reset unavailable)"
        }
    );
}
