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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convoy::config::Config;
use convoy::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};
use convoy::drivers::Drivers;
use convoy::engine::{Rollout, RolloutState};
use convoy::plan::{Change, History, affected_services, build_plan};
use convoy::runtime::rollouts::{RolloutRuntime, new_rollout_id};
use convoy::spec::{CheckContext, parse_spec};
use convoy::store::{
    AuditEntry, Baseline, Created, FirstAttempts, Freeze, InboxCounts, InboxItem, InboxWrite,
    InboxWritten, RolloutKind, RolloutRecord, RolloutSummary, RolloutWrite, SqliteStore, Store,
    StoredTimer,
};

type StoreResult<T> = convoy::store::Result<T>;

const ENVIRONMENTS: usize = 10_000;
const MAX_PARALLEL: u32 = 200;
/// Waves of the big rollout: (name, percent of the environments).
const WAVES: &[(&str, u32)] = &[("canary", 1), ("rest", 100)];

/// Counts what the runtime writes: every call that writes is one
/// transaction (`save_rollout`, `create_rollout` explicitly; the others are
/// single statements, each its own transaction).
struct Counting {
    inner: Arc<dyn Store>,
    writes: AtomicU64,
    saves: AtomicU64,
    bytes: AtomicU64,
    step_rows: AtomicU64,
    /// Rows a save writes beside the steps: timers set, timers fired,
    /// attempts, locks taken, locks released.
    side_rows: [AtomicU64; 5],
    /// Reads on a step's path (the baseline a preflight compares with).
    step_reads: AtomicU64,
}

#[async_trait]
impl Store for Counting {
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn write_inbox(
        &self,
        write: InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxWritten> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_inbox(write, now).await
    }
    async fn deliveries(&self, ids: &[DeliveryId]) -> StoreResult<Vec<InboxItem>> {
        self.inner.deliveries(ids).await
    }
    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<InboxItem>> {
        self.inner.due_deliveries(now, limit).await
    }
    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        self.inner.next_delivery_due().await
    }
    async fn delivery(&self, id: &DeliveryId) -> StoreResult<Option<InboxItem>> {
        self.inner.delivery(id).await
    }
    async fn inbox_counts(&self) -> StoreResult<InboxCounts> {
        self.inner.inbox_counts().await
    }
    async fn upsert_installation(
        &self,
        id: InstallationId,
        account: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.upsert_installation(id, account, now).await
    }
    async fn set_installation_suspended(
        &self,
        id: InstallationId,
        suspended: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .set_installation_suspended(id, suspended, now)
            .await
    }
    async fn delete_installation(&self, id: InstallationId) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_installation(id).await
    }
    async fn add_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.add_installation_repos(id, repos).await
    }
    async fn remove_installation_repos(
        &self,
        id: InstallationId,
        repos: &[RepoName],
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.remove_installation_repos(id, repos).await
    }
    async fn installation_for_repo(&self, repo: &RepoName) -> StoreResult<Option<InstallationId>> {
        self.inner.installation_for_repo(repo).await
    }
    async fn installation_repos(&self, id: InstallationId) -> StoreResult<Vec<RepoName>> {
        self.inner.installation_repos(id).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.append_audit(entry).await
    }
    async fn audit_for_rollout(&self, rollout: &RolloutId) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_for_rollout(rollout).await
    }
    async fn create_rollout(&self, record: &RolloutRecord) -> StoreResult<Created> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.create_rollout(record).await
    }
    async fn attach_pull_request(&self, id: &RolloutId, pull_request: u64) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.attach_pull_request(id, pull_request).await
    }
    async fn save_rollout(
        &self,
        id: &RolloutId,
        write: &RolloutWrite,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.saves.fetch_add(1, Ordering::Relaxed);
        let bytes = write.document.len() + write.steps.iter().map(|s| s.step.len()).sum::<usize>();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.step_rows
            .fetch_add(write.steps.len() as u64, Ordering::Relaxed);
        let side = [
            write.timers.len(),
            write.fired.len(),
            write.attempts.len(),
            write.lock.len(),
            write.unlock.len(),
        ];
        for (counter, n) in self.side_rows.iter().zip(side) {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.inner.save_rollout(id, write, now).await
    }
    async fn rollout(&self, id: &RolloutId) -> StoreResult<Option<RolloutRecord>> {
        self.inner.rollout(id).await
    }
    async fn rollout_for_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        commit: &CommitSha,
    ) -> StoreResult<Option<RolloutRecord>> {
        self.inner.rollout_for_commit(repo, branch, commit).await
    }
    async fn latest_rollout_for_pull_request(
        &self,
        repo: &RepoName,
        pull_request: u64,
    ) -> StoreResult<Option<RolloutRecord>> {
        self.inner
            .latest_rollout_for_pull_request(repo, pull_request)
            .await
    }
    async fn list_rollouts(
        &self,
        repo: Option<&RepoName>,
        limit: u32,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.list_rollouts(repo, limit).await
    }
    async fn unfinished_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        self.inner.unfinished_rollouts().await
    }
    async fn unfinished_deploys(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.unfinished_deploys(repo, branch).await
    }
    async fn deploys_after(
        &self,
        repo: &RepoName,
        branch: &BranchName,
        than: &RolloutRecord,
    ) -> StoreResult<Vec<RolloutSummary>> {
        self.inner.deploys_after(repo, branch, than).await
    }
    async fn last_succeeded_commit(
        &self,
        repo: &RepoName,
        branch: &BranchName,
    ) -> StoreResult<Option<CommitSha>> {
        self.inner.last_succeeded_commit(repo, branch).await
    }
    async fn timers(&self, id: &RolloutId) -> StoreResult<Vec<StoredTimer>> {
        self.inner.timers(id).await
    }
    async fn delete_timer(&self, id: &RolloutId, timer: &str) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_timer(id, timer).await
    }
    async fn first_attempts(
        &self,
        repo: &RepoName,
    ) -> StoreResult<BTreeMap<EnvName, FirstAttempts>> {
        self.inner.first_attempts(repo).await
    }
    async fn last_good_version(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        excluding: Option<&RolloutId>,
    ) -> StoreResult<Option<CommitSha>> {
        self.inner
            .last_good_version(repo, environment, service, excluding)
            .await
    }
    async fn baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
    ) -> StoreResult<Option<Baseline>> {
        self.step_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.baseline(repo, environment, service).await
    }
    async fn baselines_of(
        &self,
        repo: &RepoName,
        keys: &[(EnvName, ServiceName)],
    ) -> StoreResult<Vec<Option<Baseline>>> {
        self.step_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.baselines_of(repo, keys).await
    }
    async fn set_baseline(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        version: &str,
        source: &str,
        rollout: Option<&RolloutId>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .set_baseline(repo, environment, service, version, source, rollout, now)
            .await
    }
    async fn try_lock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .try_lock_step(repo, environment, service, rollout, now)
            .await
    }
    async fn set_freeze(&self, freeze: &Freeze) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.set_freeze(freeze).await
    }
    async fn clear_freeze(&self, scope: &str) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.clear_freeze(scope).await
    }
    async fn freezes_for(&self, repo: &RepoName) -> StoreResult<Vec<Freeze>> {
        self.inner.freezes_for(repo).await
    }
    async fn unlock_step(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        rollout: &RolloutId,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .unlock_step(repo, environment, service, rollout)
            .await
    }
    async fn claim_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Option<convoy::store::Lease>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.claim_lease(kind, key, owner, now, until).await
    }
    async fn renew_leases(
        &self,
        kind: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, i64)>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.renew_leases(kind, owner, until).await
    }
    async fn lease(
        &self,
        kind: &str,
        key: &str,
    ) -> StoreResult<Option<(Option<String>, convoy::store::Lease)>> {
        self.inner.lease(kind, key).await
    }
    async fn release_lease(
        &self,
        kind: &str,
        key: &str,
        owner: &str,
        generation: i64,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release_lease(kind, key, owner, generation).await
    }
    async fn release_all_leases(&self, owner: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release_all_leases(owner, now).await
    }
    async fn orphaned_rollouts(&self, now: DateTime<Utc>) -> StoreResult<Vec<RolloutId>> {
        self.inner.orphaned_rollouts(now).await
    }
    async fn idle_queued_branches(&self) -> StoreResult<Vec<(RepoName, BranchName)>> {
        self.inner.idle_queued_branches().await
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<InboxItem>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.claim_deliveries(owner, now, until, limit).await
    }
    async fn renew_delivery_claims(
        &self,
        owner: &str,
        ids: &[DeliveryId],
        until: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.renew_delivery_claims(owner, ids, until).await
    }
    async fn push_rollout_input(
        &self,
        rollout: &RolloutId,
        input: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.push_rollout_input(rollout, input, now).await
    }
    async fn open_rollout_inputs(&self, owner: &str) -> StoreResult<Vec<(i64, RolloutId, String)>> {
        self.inner.open_rollout_inputs(owner).await
    }
    async fn answer_rollout_input(
        &self,
        id: i64,
        answer: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.answer_rollout_input(id, answer, now).await
    }
    async fn rollout_input_answer(&self, id: i64) -> StoreResult<Option<String>> {
        self.inner.rollout_input_answer(id).await
    }
    async fn take_write_token(
        &self,
        installation: InstallationId,
        per_minute: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<std::time::Duration>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .take_write_token(installation, per_minute, now)
            .await
    }
    async fn baselines(
        &self,
        repo: Option<&RepoName>,
    ) -> StoreResult<Vec<convoy::store::StoredBaseline>> {
        self.inner.baselines(repo).await
    }
    async fn stop_draining(&self, id: &RolloutId) -> StoreResult<()> {
        self.inner.stop_draining(id).await
    }
    async fn draining_rollouts(&self) -> StoreResult<Vec<RolloutId>> {
        self.inner.draining_rollouts().await
    }
    async fn audit_at(&self, repo: &RepoName, location: &str) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_at(repo, location).await
    }
    async fn in_flight_environments(&self) -> StoreResult<Vec<(RepoName, EnvName)>> {
        self.inner.in_flight_environments().await
    }

    async fn held_step_locks(&self) -> StoreResult<Vec<(RepoName, EnvName, ServiceName)>> {
        self.inner.held_step_locks().await
    }
    async fn observe_drift(
        &self,
        repo: &RepoName,
        observation: &convoy::store::DriftObservation,
        now: DateTime<Utc>,
    ) -> StoreResult<convoy::store::DriftRecord> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.observe_drift(repo, observation, now).await
    }
    async fn resolve_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: Option<&ServiceName>,
        kind: convoy::store::DriftKind,
        how: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .resolve_drift(repo, environment, service, kind, how, by, now)
            .await
    }
    async fn open_drift(
        &self,
        repo: &RepoName,
        environment: &EnvName,
        service: &ServiceName,
        kind: convoy::store::DriftKind,
    ) -> StoreResult<Option<convoy::store::DriftRecord>> {
        self.inner
            .open_drift(repo, environment, service, kind)
            .await
    }
    async fn drift_records(
        &self,
        repo: &RepoName,
        include_resolved: bool,
        limit: u32,
    ) -> StoreResult<Vec<convoy::store::DriftRecord>> {
        self.inner
            .drift_records(repo, include_resolved, limit)
            .await
    }
}

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
    let now = Utc::now();
    let id = new_rollout_id();
    let record = RolloutRecord {
        id: id.clone(),
        repo: RepoName::new("acme/bench"),
        branch: BranchName::new("main"),
        commit: CommitSha::new(commit.repeat(40)),
        previous_commit: None,
        pull_request: None,
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: RolloutState::Queued.as_str().into(),
        created_at: now,
        updated_at: now,
        document: None,
        error: None,
    };
    let started = Instant::now();
    let created = runtime.submit(record, rollout).await.expect("submitted");
    assert_eq!(created, Created::New);
    let state = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let list = store.inner.list_rollouts(None, 1).await.expect("listed");
        let s = list.first().map(|r| r.state.clone()).unwrap_or_default();
        if !runtime.is_live(&id) && s != RolloutState::Queued.as_str() {
            break s;
        }
    };
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
        let store = Arc::new(Counting {
            inner,
            writes: AtomicU64::new(0),
            saves: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            step_rows: AtomicU64::new(0),
            side_rows: Default::default(),
            step_reads: AtomicU64::new(0),
        });
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
