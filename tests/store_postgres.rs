//! What the PostgreSQL store must do beyond what the SQLite one is tested
//! for: hold its guarantees when several processes (replicas) write to one
//! database at once, keep the report ledger, migrate a database that
//! already holds data; and the test server itself must never outlive its
//! test process.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use convoy::domain::{
    BranchName, CommitSha, DeliveryId, EnvName, InstallationId, RepoName, RolloutId, ServiceName,
};
use convoy::report::transport::ledger::{LedgerEntry, PostgresLedger, ReportLedger};
use convoy::report::transport::{ReportKey, ReportObject};
use convoy::store::{
    Created, NewDelivery, Payload, PostgresStore, RolloutKind, RolloutRecord, RolloutWrite, Store,
};
use convoy::testkit::postgres;

/// Two stores on one fresh database: two replicas, each with its own pool.
async fn two_replicas() -> (Arc<PostgresStore>, Arc<PostgresStore>) {
    let url = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap()
        .expect("test PostgreSQL");
    let a = PostgresStore::open(&url).await.expect("first replica");
    let b = PostgresStore::open(&url).await.expect("second replica");
    (Arc::new(a), Arc::new(b))
}

fn delivery(n: usize) -> NewDelivery {
    NewDelivery {
        id: DeliveryId::new(format!("d-{n}")),
        event: "push".into(),
        payload: Payload::compress(format!("{{\"n\":{n}}}")),
        received_at: Utc
            .timestamp_millis_opt(1_700_000_000_000 + n as i64)
            .unwrap(),
        claim: None,
    }
}

fn record(id: &str, commit: &str, kind: RolloutKind) -> RolloutRecord {
    let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    RolloutRecord {
        id: RolloutId::new(id),
        repo: RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new(commit),
        previous_commit: None,
        pull_request: Some(7),
        installation: Some(InstallationId(42)),
        kind,
        parent: None,
        state: "planned".into(),
        created_at: at,
        updated_at: at,
        document: None,
        error: None,
    }
}

#[tokio::test]
async fn each_delivery_is_new_exactly_once_across_replicas() {
    let (a, b) = two_replicas().await;
    // Overlapping batches written at once by both, with a repeat inside one
    // batch: every id is new for exactly one of them, once.
    let first: Vec<NewDelivery> = (0..300).map(delivery).collect();
    let mut second: Vec<NewDelivery> = (150..450).map(delivery).collect();
    second.push(delivery(449));
    let (x, y) = tokio::join!(a.insert_deliveries(&first), b.insert_deliveries(&second));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len(), first.len());
    assert_eq!(y.len(), second.len());
    let mut new_ids: Vec<&str> = first
        .iter()
        .zip(&x)
        .chain(second.iter().zip(&y))
        .filter(|(_, new)| **new)
        .map(|(d, _)| d.id.as_str())
        .collect();
    new_ids.sort();
    let before = new_ids.len();
    new_ids.dedup();
    assert_eq!(before, new_ids.len(), "an id was new twice");
    assert_eq!(new_ids.len(), 450, "every id was new once");
    assert!(!y[y.len() - 1], "a repeat within a batch is a duplicate");
    // Redelivered later to either: a duplicate.
    assert_eq!(
        a.insert_deliveries(&[delivery(3)]).await.unwrap(),
        vec![false]
    );
    let stored = b.delivery(&DeliveryId::new("d-3")).await.unwrap().unwrap();
    assert_eq!(stored.payload, "{\"n\":3}");
    assert_eq!(b.inbox_counts().await.unwrap().pending, 450);
}

#[tokio::test]
async fn two_replicas_creating_the_same_rollout_make_one() {
    let (a, b) = two_replicas().await;
    for round in 0..20 {
        let commit = format!("{round:040}");
        let ra = record(&format!("ra-{round}"), &commit, RolloutKind::Deploy);
        let rb = record(&format!("rb-{round}"), &commit, RolloutKind::Deploy);
        let (x, y) = tokio::join!(a.create_rollout(&ra), b.create_rollout(&rb));
        let (x, y) = (x.unwrap(), y.unwrap());
        match (&x, &y) {
            (Created::New, Created::Existing(id)) => assert_eq!(id, &ra.id),
            (Created::Existing(id), Created::New) => assert_eq!(id, &rb.id),
            other => panic!("round {round}: {other:?}"),
        }
    }
    // Rollbacks of the same commit are separate rollouts.
    let commit = "f".repeat(40);
    for n in 0..2 {
        let r = record(&format!("back-{n}"), &commit, RolloutKind::Rollback);
        assert_eq!(a.create_rollout(&r).await.unwrap(), Created::New);
    }
}

/// The push creates the rollout without a pull request; the pull
/// request's merge, which planned at the same time, loses the race but
/// knows the number: the rollout takes it, and keeps the first it had.
#[tokio::test]
async fn the_loser_of_a_creation_race_gives_the_rollout_its_pull_request() {
    let (_dir, sqlite, postgres) = both_stores().await;
    for (name, store) in [("SQLite", &sqlite as &dyn Store), ("PostgreSQL", &postgres)] {
        let commit = "a".repeat(40);
        let mut push = record("from-push", &commit, RolloutKind::Deploy);
        push.pull_request = None;
        assert_eq!(store.create_rollout(&push).await.unwrap(), Created::New);
        let mut merge = record("from-merge", &commit, RolloutKind::Deploy);
        merge.pull_request = Some(12);
        assert_eq!(
            store.create_rollout(&merge).await.unwrap(),
            Created::Existing(push.id.clone()),
            "{name}"
        );
        let stored = store.rollout(&push.id).await.unwrap().unwrap();
        assert_eq!(stored.pull_request, Some(12), "{name}");
        merge.pull_request = Some(13);
        store.create_rollout(&merge).await.unwrap();
        let stored = store.rollout(&push.id).await.unwrap().unwrap();
        assert_eq!(stored.pull_request, Some(12), "{name}: the first stays");
    }
}

#[tokio::test]
async fn a_step_lock_is_held_by_one_rollout_whichever_replica_asks() {
    let (a, b) = two_replicas().await;
    let repo = RepoName::new("acme/app");
    let service = ServiceName::new("api");
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    for n in 0..2 {
        let r = record(&format!("r{n}"), &format!("{n:040}"), RolloutKind::Deploy);
        a.create_rollout(&r).await.unwrap();
    }
    let (r0, r1) = (RolloutId::new("r0"), RolloutId::new("r1"));
    for round in 0..30 {
        let env = EnvName::new(format!("e{round}"));
        // One replica through try_lock_step, the other through a save.
        let write = RolloutWrite {
            state: "running".into(),
            document: "{}".into(),
            lock: vec![(env.clone(), service.clone())],
            ..RolloutWrite::default()
        };
        let (x, y) = tokio::join!(
            a.try_lock_step(&repo, &env, &service, &r0, now),
            b.save_rollout(&r1, &write, now)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(y.len(), 1);
        assert!(x != y[0], "round {round}: both or neither held the lock");
        // Asking again for the holder succeeds; for the other, fails.
        let holder = if x { &r0 } else { &r1 };
        let other = if x { &r1 } else { &r0 };
        assert!(
            b.try_lock_step(&repo, &env, &service, holder, now)
                .await
                .unwrap()
        );
        assert!(
            !a.try_lock_step(&repo, &env, &service, other, now)
                .await
                .unwrap()
        );
        // Released by its holder, it can be taken by the other.
        b.unlock_step(&repo, &env, &service, holder).await.unwrap();
        assert!(
            a.try_lock_step(&repo, &env, &service, other, now)
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn locks_taken_in_different_orders_at_once_do_not_deadlock() {
    let (a, b) = two_replicas().await;
    for n in 0..2 {
        let r = record(&format!("r{n}"), &format!("{n:040}"), RolloutKind::Deploy);
        a.create_rollout(&r).await.unwrap();
    }
    let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let keys: Vec<(EnvName, ServiceName)> = (0..40)
        .map(|n| (EnvName::new(format!("e{n:02}")), ServiceName::new("api")))
        .collect();
    let reversed: Vec<(EnvName, ServiceName)> = keys.iter().rev().cloned().collect();
    let write = |lock: Vec<(EnvName, ServiceName)>| RolloutWrite {
        state: "running".into(),
        document: "{}".into(),
        lock,
        ..RolloutWrite::default()
    };
    let (wa, wb) = (write(keys.clone()), write(reversed));
    let (r0, r1) = (RolloutId::new("r0"), RolloutId::new("r1"));
    let (x, y) = tokio::join!(a.save_rollout(&r0, &wa, now), b.save_rollout(&r1, &wb, now));
    let (x, y) = (x.expect("no deadlock"), y.expect("no deadlock"));
    // Answers come in the order asked; each key went to exactly one.
    let y: Vec<bool> = y.into_iter().rev().collect();
    for (n, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!(p != q, "key {n}: both or neither");
    }
}

fn key(rollout: &str, object: ReportObject) -> ReportKey {
    ReportKey {
        installation: InstallationId(42),
        repo: RepoName::new("acme/app"),
        rollout: RolloutId::new(rollout),
        object,
    }
}

#[tokio::test]
async fn the_report_ledger_is_shared_and_survives_a_restart() {
    let (a, b) = two_replicas().await;
    let first = PostgresLedger::new(a.pool().clone());
    let comment = key("r1", ReportObject::Comment { issue: 7 });
    let check = key(
        "r1",
        ReportObject::CheckRun {
            name: "convoy/rollout".into(),
            generation: 2,
        },
    );
    let issue = key(
        "-repository-",
        ReportObject::Issue {
            label: "convoy-drift".into(),
        },
    );
    let entry = |id: Option<u64>, digest: &str| LedgerEntry {
        object_id: id,
        digest: digest.into(),
    };
    first
        .record(&comment, &entry(Some(9001), "c1"))
        .await
        .unwrap();
    first.record(&check, &entry(None, "k1")).await.unwrap();
    first
        .record(&issue, &entry(Some(u64::from(u32::MAX) + 5), "i1"))
        .await
        .unwrap();
    first
        .record(&comment, &entry(Some(9001), "c2"))
        .await
        .unwrap();

    // Another replica, or the same after a restart: a new pool.
    let second = PostgresLedger::new(b.pool().clone());
    assert_eq!(
        second.get(&comment).await.unwrap(),
        Some(entry(Some(9001), "c2"))
    );
    assert_eq!(second.get(&check).await.unwrap(), Some(entry(None, "k1")));
    assert_eq!(
        second
            .get(&key("r2", ReportObject::Comment { issue: 7 }))
            .await
            .unwrap(),
        None
    );
    let mut all = second.load_all().await.unwrap();
    all.sort_by_key(|(k, _)| format!("{k:?}"));
    let mut expected = vec![
        (comment, entry(Some(9001), "c2")),
        (check, entry(None, "k1")),
        (issue, entry(Some(u64::from(u32::MAX) + 5), "i1")),
    ];
    expected.sort_by_key(|(k, _)| format!("{k:?}"));
    assert_eq!(all, expected);
}

#[tokio::test]
async fn migrations_apply_to_a_database_that_already_holds_data() {
    let url = tokio::task::spawn_blocking(postgres::fresh_database)
        .await
        .unwrap()
        .expect("test PostgreSQL");
    let store = PostgresStore::open(&url).await.unwrap();
    store.insert_deliveries(&[delivery(1)]).await.unwrap();
    store
        .create_rollout(&record("r1", &"a".repeat(40), RolloutKind::Deploy))
        .await
        .unwrap();
    store.pool().close().await;
    // Opening again (a restart, or a second replica starting) migrates
    // nothing and loses nothing.
    let again = PostgresStore::open(&url).await.unwrap();
    assert!(
        again
            .delivery(&DeliveryId::new("d-1"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        again
            .rollout(&RolloutId::new("r1"))
            .await
            .unwrap()
            .is_some()
    );
}

/// The child side of the next test: starts the server, says its pid and
/// folder, then ends as asked.
fn child_main(mode: &str) {
    let server = postgres::server().expect("test PostgreSQL");
    println!("PG {} {}", server.pid(), server.base().display());
    match mode {
        "panic" => panic!("a failing test"),
        "kill" => std::thread::sleep(Duration::from_secs(120)),
        _ => {}
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn the_test_server_is_stopped_however_its_process_ends() {
    if let Ok(mode) = std::env::var("CONVOY_PG_CHILD") {
        child_main(&mode);
        return;
    }
    use std::io::BufRead as _;
    for mode in ["exit", "panic", "kill"] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_test_server_is_stopped_however_its_process_ends",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CONVOY_PG_CHILD", mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok);
        let line = lines
            .find_map(|l| l.split_once("PG ").map(|(_, rest)| rest.to_owned()))
            .unwrap_or_else(|| panic!("{mode}: the child started no server"));
        // Read the rest, so the child's output never hits a closed pipe.
        let drain = std::thread::spawn(move || lines.count());
        let mut parts = line.split(' ');
        let pid: i32 = parts.next().unwrap().parse().unwrap();
        let base = std::path::PathBuf::from(parts.next().unwrap());
        assert!(alive(pid), "{mode}: server {pid} runs");
        if mode == "kill" {
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        drain.join().unwrap();
        assert_eq!(status.success(), mode == "exit", "{mode}: {status}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while (alive(pid) || base.exists()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(pid), "{mode}: server {pid} still runs");
        assert!(!base.exists(), "{mode}: {} left behind", base.display());
    }
}

/// SPEC 6.8: a rollback goes back to what ran "before this rollout", not
/// to what a later rollout deployed; and the branch's last rolled-out
/// commit is the newest by merge, whatever was re-saved since.
#[tokio::test]
async fn the_last_good_version_is_from_before_the_rollout_rolled_back() {
    use convoy::store::{AttemptRecord, RolloutWrite};
    let (_dir, sqlite, postgres) = both_stores().await;
    for (name, store) in [("SQLite", &sqlite as &dyn Store), ("PostgreSQL", &postgres)] {
        let at = |s: i64| {
            Utc.timestamp_millis_opt(1_700_000_000_000 + s * 1000)
                .unwrap()
        };
        let (repo, env, api) = (
            RepoName::new("acme/app"),
            EnvName::new("e1"),
            ServiceName::new("api"),
        );
        // Three merges, each rolled out in turn: c0, c1, c2.
        for n in 0..3i64 {
            let mut r = record(
                &format!("r{n}"),
                &format!("c{n}").repeat(20),
                RolloutKind::Deploy,
            );
            r.created_at = at(n * 10);
            r.state = "succeeded".into();
            store.create_rollout(&r).await.unwrap();
            let write = RolloutWrite {
                state: "succeeded".into(),
                document: "{}".into(),
                attempts: vec![AttemptRecord {
                    environment: env.clone(),
                    service: api.clone(),
                    version: r.commit.clone(),
                    attempt: 1,
                    succeeded: true,
                    error: None,
                }],
                ..RolloutWrite::default()
            };
            store
                .save_rollout(&r.id, &write, at(n * 10 + 1))
                .await
                .unwrap();
        }
        let good = |excluding: &'static str| {
            let id = RolloutId::new(excluding);
            let (repo, env, api) = (repo.clone(), env.clone(), api.clone());
            async move {
                store
                    .last_good_version(&repo, &env, &api, Some(&id))
                    .await
                    .unwrap()
                    .map(|c| c.to_string())
            }
        };
        assert_eq!(good("r1").await, Some("c0".repeat(20)), "{name}");
        assert_eq!(good("r2").await, Some("c1".repeat(20)), "{name}");
        assert_eq!(good("r0").await, None, "{name}: nothing ran before");
        // r1 is re-saved later (as when it is rolled back): r2 stays the
        // branch's last rolled-out commit.
        let resave = RolloutWrite {
            state: "succeeded".into(),
            document: "{}".into(),
            ..RolloutWrite::default()
        };
        store
            .save_rollout(&RolloutId::new("r1"), &resave, at(100))
            .await
            .unwrap();
        assert_eq!(
            store
                .last_succeeded_commit(&repo, &BranchName::new("main"))
                .await
                .unwrap()
                .map(|c| c.to_string()),
            Some("c2".repeat(20)),
            "{name}"
        );
    }
}

/// A save's side tables, asked the same questions of both stores: deploy
/// history (last known good, first attempts), baselines, timers (replaced
/// by kind, deleted when fired), locks (asked twice in one save, released
/// and taken in one save), freezes, audit.
async fn side_tables(store: &dyn Store) -> Vec<String> {
    use convoy::store::{AttemptRecord, AuditEntry, Freeze, StoredTimer};
    let t = |s: i64| {
        Utc.timestamp_millis_opt(1_700_000_000_000 + s * 1000)
            .unwrap()
    };
    let repo = RepoName::new("acme/app");
    let (e1, e2) = (EnvName::new("e1"), EnvName::new("e2"));
    let api = ServiceName::new("api");
    let r1 = RolloutId::new("r1");
    let r2 = RolloutId::new("r2");
    store
        .create_rollout(&record("r1", &"1".repeat(40), RolloutKind::Deploy))
        .await
        .unwrap();
    store
        .create_rollout(&record("r2", &"2".repeat(40), RolloutKind::Deploy))
        .await
        .unwrap();
    let attempt = |env: &EnvName, version: char, attempt: u32, ok: bool| AttemptRecord {
        environment: env.clone(),
        service: api.clone(),
        version: CommitSha::new(version.to_string().repeat(40)),
        attempt,
        succeeded: ok,
        error: (!ok).then(|| "boom".to_owned()),
    };
    let timer = |name: &str, s: i64| StoredTimer {
        timer: name.into(),
        at: t(s),
    };
    let mut out = Vec::new();
    let first = RolloutWrite {
        state: "running".into(),
        document: "{}".into(),
        timers: vec![timer("bake", 5), timer("poll", 9), timer("bake", 7)],
        attempts: vec![
            attempt(&e1, 'a', 1, false),
            attempt(&e1, 'a', 2, true),
            attempt(&e2, 'a', 1, true),
        ],
        lock: vec![(e1.clone(), api.clone()), (e1.clone(), api.clone())],
        ..RolloutWrite::default()
    };
    out.push(format!(
        "{:?}",
        store.save_rollout(&r1, &first, t(1)).await.unwrap()
    ));
    let second = RolloutWrite {
        state: "running".into(),
        document: "{}".into(),
        fired: vec!["poll".into()],
        attempts: vec![attempt(&e1, 'b', 1, true), attempt(&e1, 'c', 2, true)],
        unlock: vec![(e1.clone(), api.clone())],
        lock: vec![(e2.clone(), api.clone()), (e1.clone(), api.clone())],
        ..RolloutWrite::default()
    };
    out.push(format!(
        "{:?}",
        store.save_rollout(&r2, &second, t(2)).await.unwrap()
    ));
    out.push(format!("{:?}", store.timers(&r1).await.unwrap()));
    for excluding in [None, Some(&r2)] {
        out.push(format!(
            "{:?}",
            store
                .last_good_version(&repo, &e1, &api, excluding)
                .await
                .unwrap()
        ));
    }
    out.push(format!(
        "{:?}",
        store.baseline(&repo, &e1, &api).await.unwrap()
    ));
    // A preflight batch's read: in the order asked, none where none.
    let asked = [
        (e2.clone(), api.clone()),
        (EnvName::new("e9"), api.clone()),
        (e1.clone(), api.clone()),
    ];
    let versions: Vec<Option<String>> = store
        .baselines_of(&repo, &asked)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.map(|b| b.version))
        .collect();
    out.push(format!("{versions:?}"));
    out.push(format!("{:?}", store.first_attempts(&repo).await.unwrap()));
    out.push(format!(
        "{:?}",
        store
            .try_lock_step(&repo, &e1, &api, &r1, t(3))
            .await
            .unwrap()
    ));
    store
        .set_freeze(&Freeze {
            scope: "*".into(),
            until: Some(t(60)),
            reason: Some("incident".into()),
            by: "operator".into(),
            at: t(4),
        })
        .await
        .unwrap();
    store
        .set_freeze(&Freeze {
            scope: repo.as_str().into(),
            until: None,
            reason: None,
            by: "octocat".into(),
            at: t(5),
        })
        .await
        .unwrap();
    out.push(format!("{:?}", store.freezes_for(&repo).await.unwrap()));
    out.push(format!("{:?}", store.clear_freeze("*").await.unwrap()));
    out.push(format!("{:?}", store.clear_freeze("*").await.unwrap()));
    for n in 0..2 {
        store
            .append_audit(&AuditEntry {
                at: t(n),
                actor: "octocat".into(),
                repo: Some(repo.clone()),
                rollout_id: Some(r1.clone()),
                location: Some("pr#7".into()),
                action: format!("/convoy retry {n}"),
                result: "accepted".into(),
                detail: None,
                line: (n == 1).then_some(3),
            })
            .await
            .unwrap();
    }
    out.push(format!("{:?}", store.audit_for_rollout(&r1).await.unwrap()));
    let at = store.audit_at(&repo, "pr#7").await.unwrap();
    assert_eq!(at.len(), 2, "both lines written at pr#7");
    assert_eq!(
        (at[0].line, at[1].line),
        (None, Some(3)),
        "line numbers kept"
    );
    assert!(
        store
            .audit_at(&RepoName::new("acme/other"), "pr#7")
            .await
            .unwrap()
            .is_empty(),
        "another repository's pr#7"
    );
    out.push(format!("{at:?}"));
    out.push(format!(
        "{:?}",
        store.list_rollouts(Some(&repo), 10).await.unwrap()
    ));
    out.push(format!(
        "{:?}",
        store
            .latest_rollout_for_pull_request(&repo, 7)
            .await
            .unwrap()
            .map(|r| r.id)
    ));
    store
        .upsert_installation(InstallationId(9), "acme", t(1))
        .await
        .unwrap();
    store
        .add_installation_repos(
            InstallationId(9),
            &[
                repo.clone(),
                RepoName::new("acme/Zeta"),
                RepoName::new("acme/app"),
            ],
        )
        .await
        .unwrap();
    out.push(format!(
        "{:?}",
        store.installation_repos(InstallationId(9)).await.unwrap()
    ));
    store
        .remove_installation_repos(InstallationId(9), std::slice::from_ref(&repo))
        .await
        .unwrap();
    out.push(format!(
        "{:?}",
        store.installation_for_repo(&repo).await.unwrap()
    ));
    store
        .upsert_installation(InstallationId(3), "globex", t(1))
        .await
        .unwrap();
    // (installation, suspended, when GitHub changed it, applied): a
    // suspension older than the unsuspension recorded is ignored, and so
    // is one as old (GitHub dates an unsuspension as the suspension it
    // lifts); a newer one applies, its unsuspension at the same time too;
    // an undated change applies.
    for (id, suspended, at, applies) in [
        (9, true, Some(2), true),
        (3, true, Some(3), true),
        (3, false, Some(5), true),
        (3, true, Some(4), false),
        (3, true, Some(5), false),
        (3, true, Some(6), true),
        (3, false, Some(6), true),
        (9, false, None, true),
    ] {
        let applied = store
            .set_installation_suspended(InstallationId(id), suspended, at.map(t), t(7))
            .await
            .unwrap();
        assert_eq!(applied, applies, "installation {id} at {at:?}");
        out.push(format!(
            "{applied} {:?}",
            store.suspended_installations().await.unwrap()
        ));
    }
    out
}

/// A fresh SQLite store (its folder lives as long as the guard) and a
/// fresh PostgreSQL one, to ask both the same.
async fn both_stores() -> (tempfile::TempDir, convoy::store::SqliteStore, PostgresStore) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = convoy::store::SqliteStore::open(&dir.path().join("convoy.db"))
        .await
        .unwrap();
    let postgres = postgres::fresh_store().await.expect("test PostgreSQL");
    (dir, sqlite, postgres)
}

#[tokio::test]
async fn both_stores_answer_alike() {
    let (_dir, sqlite, postgres) = both_stores().await;
    let a = side_tables(&sqlite).await;
    let b = side_tables(&postgres).await;
    // What the answers must be, not only that they agree.
    assert_eq!(a[0], "[true, true]", "a lock asked twice in one save");
    assert_eq!(
        a[1], "[true, false]",
        "r2 takes e2; e1 stays r1's (r2 cannot release a lock it does not hold)"
    );
    assert!(
        a[3].contains("cccc"),
        "last good: the newest success, {}",
        a[3]
    );
    assert!(a[4].contains("aaaa"), "last good not counting r2: {}", a[4]);
    assert_eq!(
        a[6],
        format!(
            "[Some({:?}), None, Some({:?})]",
            "a".repeat(40),
            "c".repeat(40)
        ),
        "baselines of a preflight batch, in the order asked"
    );
    let n = a.len();
    assert_eq!(
        a[n - 8..],
        [
            r#"true [(InstallationId(9), "acme")]"#,
            r#"true [(InstallationId(3), "globex"), (InstallationId(9), "acme")]"#,
            r#"true [(InstallationId(9), "acme")]"#,
            r#"false [(InstallationId(9), "acme")]"#,
            r#"false [(InstallationId(9), "acme")]"#,
            r#"true [(InstallationId(3), "globex"), (InstallationId(9), "acme")]"#,
            r#"true [(InstallationId(9), "acme")]"#,
            r#"true []"#,
        ],
        "suspended installations, by id, as suspend and unsuspend come"
    );
    for (n, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "answer {n} differs between SQLite and PostgreSQL");
    }
}

/// Admission's question, asked of both stores: the branch's unfinished
/// deploy rollouts, oldest first, whatever else is stored.
async fn branch_queue(store: &dyn Store) -> Vec<(String, String)> {
    let at = |s: i64| {
        Utc.timestamp_millis_opt(1_700_000_000_000 + s * 1000)
            .unwrap()
    };
    let rows: [(&str, &str, &str, RolloutKind, &str, i64); 8] = [
        (
            "r-queued-later",
            "acme/app",
            "main",
            RolloutKind::Deploy,
            "queued",
            5,
        ),
        (
            "r-running",
            "acme/app",
            "main",
            RolloutKind::Deploy,
            "running",
            2,
        ),
        (
            "r-queued",
            "acme/app",
            "main",
            RolloutKind::Deploy,
            "queued",
            3,
        ),
        (
            "r-done",
            "acme/app",
            "main",
            RolloutKind::Deploy,
            "succeeded",
            1,
        ),
        (
            "r-halted",
            "acme/app",
            "main",
            RolloutKind::Deploy,
            "halted",
            4,
        ),
        (
            "r-rollback",
            "acme/app",
            "main",
            RolloutKind::Rollback,
            "running",
            2,
        ),
        (
            "r-other-branch",
            "acme/app",
            "release",
            RolloutKind::Deploy,
            "running",
            2,
        ),
        (
            "r-other-repo",
            "acme/web",
            "main",
            RolloutKind::Deploy,
            "running",
            2,
        ),
    ];
    for (n, (id, repo, branch, kind, state, second)) in rows.into_iter().enumerate() {
        let mut r = record(id, &format!("{n:040x}"), kind);
        r.repo = RepoName::new(repo);
        r.branch = BranchName::new(branch);
        r.state = state.into();
        r.created_at = at(second);
        r.updated_at = at(second);
        assert_eq!(store.create_rollout(&r).await.unwrap(), Created::New);
    }
    store
        .unfinished_deploys(&RepoName::new("acme/app"), &BranchName::new("main"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id.to_string(), s.state))
        .collect()
}

#[tokio::test]
async fn a_branch_s_unfinished_deploys_are_listed_alike_by_both_stores() {
    let (_dir, sqlite, postgres) = both_stores().await;
    let expected: Vec<(String, String)> = [
        ("r-running", "running"),
        ("r-queued", "queued"),
        ("r-halted", "halted"),
        ("r-queued-later", "queued"),
    ]
    .iter()
    .map(|(id, state)| (id.to_string(), state.to_string()))
    .collect();
    assert_eq!(branch_queue(&sqlite).await, expected, "SQLite");
    assert_eq!(branch_queue(&postgres).await, expected, "PostgreSQL");
}

/// A step lock is released by the rollout that holds it. One whose holder
/// has ended and that no replica drives any more (it crashed while an
/// aborted rollout waited for its deploys in flight) is free to take;
/// while the ended rollout is driven, or while the holder runs, it is not.
#[tokio::test]
async fn a_lock_of_an_ended_rollout_is_free_once_it_stops_draining_in_both_stores() {
    let (_dir, sqlite, postgres) = both_stores().await;
    for (name, store) in [("SQLite", &sqlite as &dyn Store), ("PostgreSQL", &postgres)] {
        let now = Utc.timestamp_millis_opt(1_700_000_100_000).unwrap();
        let (repo, env, service) = (
            RepoName::new("acme/app"),
            EnvName::new("e1"),
            ServiceName::new("api"),
        );
        for (id, state) in [("r-aborted", "aborted"), ("r-running", "running")] {
            let mut r = record(id, &format!("{:0>40}", id.len()), RolloutKind::Deploy);
            r.state = state.into();
            r.commit = CommitSha::new(format!("{id:0>40}"));
            store.create_rollout(&r).await.unwrap();
        }
        let aborted = RolloutId::new("r-aborted");
        let running = RolloutId::new("r-running");
        let next = RolloutId::new("r-next");
        let lock = |holder: &'static str| {
            let holder = RolloutId::new(holder);
            let (repo, env, service) = (repo.clone(), env.clone(), service.clone());
            async move {
                store
                    .try_lock_step(&repo, &env, &service, &holder, now)
                    .await
            }
        };
        let drain = |draining: bool| RolloutWrite {
            state: "aborted".into(),
            document: "{}".into(),
            draining,
            ..RolloutWrite::default()
        };
        assert!(lock("r-aborted").await.unwrap(), "{name}");
        store
            .save_rollout(&aborted, &drain(true), now)
            .await
            .unwrap();
        let ids = |v: Vec<RolloutId>| v.into_iter().map(|r| r.to_string()).collect::<Vec<_>>();
        // Draining (its deploys in flight): the lock holds, driven or not,
        // and the rollout is one to drive: at a start whoever holds it, and
        // as an orphan while nobody does.
        assert!(!lock("r-next").await.unwrap(), "{name}: draining, undriven");
        let draining = ids(store.draining_rollouts().await.unwrap());
        assert_eq!(draining, ["r-aborted"], "{name}");
        let orphans = ids(store.orphaned_rollouts(now).await.unwrap());
        assert_eq!(orphans, ["r-aborted", "r-running"], "{name}: undriven");
        let lease = store
            .claim_lease(
                "rollout",
                "r-aborted",
                "replica-1",
                now,
                now + chrono::Duration::seconds(15),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(!lock("r-next").await.unwrap(), "{name}: draining, driven");
        let orphans = ids(store.orphaned_rollouts(now).await.unwrap());
        assert_eq!(orphans, ["r-running"], "{name}: r-aborted is driven");
        // Its deploys ended: a lock it still holds was left behind, free
        // once no replica drives it (one of a version that does not mark
        // rollouts draining may still be waiting for its deploys).
        store
            .save_rollout(&aborted, &drain(false), now)
            .await
            .unwrap();
        assert!(
            store.draining_rollouts().await.unwrap().is_empty(),
            "{name}"
        );
        assert!(!lock("r-next").await.unwrap(), "{name}: still driven");
        store
            .release_lease("rollout", "r-aborted", "replica-1", lease.generation)
            .await
            .unwrap();
        assert!(lock("r-next").await.unwrap(), "{name}: ended, not draining");
        assert!(
            lock("r-next").await.unwrap(),
            "{name}: taken again by its holder"
        );
        // A running holder keeps its lock, driven or not.
        let other = ServiceName::new("web");
        assert!(
            store
                .try_lock_step(&repo, &env, &other, &running, now)
                .await
                .unwrap()
        );
        assert!(
            !store
                .try_lock_step(&repo, &env, &other, &next, now)
                .await
                .unwrap(),
            "{name}: running holder"
        );
    }
}

/// A retry's question, asked of both stores: the branch's deploy rollouts
/// made after a given one (by time, then id), on the rows of
/// `branch_queue`: other branches, repositories and rollbacks are not.
#[tokio::test]
async fn a_branch_s_later_deploys_are_listed_alike_by_both_stores() {
    let (_dir, sqlite, postgres) = both_stores().await;
    for (name, store) in [("SQLite", &sqlite as &dyn Store), ("PostgreSQL", &postgres)] {
        branch_queue(store).await;
        let after = |id: &'static str, second: i64| {
            let mut than = record(id, &"0".repeat(40), RolloutKind::Deploy);
            than.created_at = Utc
                .timestamp_millis_opt(1_700_000_000_000 + second * 1000)
                .unwrap();
            async move {
                store
                    .deploys_after(&RepoName::new("acme/app"), &BranchName::new("main"), &than)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|s| s.id.to_string())
                    .collect::<Vec<_>>()
            }
        };
        // Queued ones have changed nothing yet.
        assert_eq!(
            after("r-done", 1).await,
            ["r-running", "r-halted"],
            "{name}"
        );
        assert_eq!(after("r-running", 2).await, ["r-halted"], "{name}");
        // Made in the same millisecond: the id decides.
        assert_eq!(after("r-a", 2).await[0], "r-running", "{name}");
        assert_eq!(after("r-z", 2).await[0], "r-halted", "{name}");
        assert!(after("r-queued-later", 5).await.is_empty(), "{name}");
        // An ended one counts once it deployed something.
        assert!(after("r-start", 0).await.contains(&"r-running".to_owned()));
        assert!(!after("r-start", 0).await.contains(&"r-done".to_owned()));
        let write = convoy::store::RolloutWrite {
            state: "succeeded".into(),
            document: "{}".into(),
            attempts: vec![convoy::store::AttemptRecord {
                environment: EnvName::new("e1"),
                service: ServiceName::new("api"),
                version: CommitSha::new("d".repeat(40)),
                attempt: 1,
                succeeded: true,
                error: None,
            }],
            ..convoy::store::RolloutWrite::default()
        };
        store
            .save_rollout(&RolloutId::new("r-done"), &write, Utc::now())
            .await
            .unwrap();
        assert_eq!(after("r-start", 0).await[0], "r-done", "{name}");
    }
}

/// The drift pass's question, asked of both stores: environments with a
/// step in flight in an unfinished rollout, each once, sorted.
async fn in_flight(store: &dyn Store) -> Vec<(String, String)> {
    let doc = |steps: &[(&str, &str, &str)]| {
        let steps: Vec<serde_json::Value> = steps
            .iter()
            .map(|(env, service, state)| {
                serde_json::json!({"environment": env, "service": service, "state": state})
            })
            .collect();
        serde_json::json!({"targets": {}, "waves": [{"environments": [], "steps": steps}]})
            .to_string()
    };
    let rollouts = [
        (
            "r-run",
            "acme/app",
            "running",
            doc(&[
                ("e1", "api", "deploying"),
                ("e2", "api", "pending"),
                ("e3", "api", "verifying"),
                ("e1", "web", "preflight"),
                ("e6", "api", "failed"),
            ]),
        ),
        (
            "r-done",
            "acme/app",
            "succeeded",
            doc(&[("e4", "api", "deploying")]),
        ),
        (
            "r-other",
            "acme/other",
            "halted",
            doc(&[("e1", "api", "preflight")]),
        ),
        (
            "r-queued",
            "acme/app",
            "queued",
            doc(&[("e5", "api", "pending")]),
        ),
    ];
    for (n, (id, repo, state, document)) in rollouts.into_iter().enumerate() {
        store
            .create_rollout(&RolloutRecord {
                repo: RepoName::new(repo),
                state: state.into(),
                document: Some(document),
                ..record(id, &format!("{n:040}"), RolloutKind::Deploy)
            })
            .await
            .unwrap();
    }
    let mut found: Vec<(String, String)> = store
        .in_flight_environments()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, e)| (r.as_str().to_owned(), e.as_str().to_owned()))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn environments_in_flight_are_listed_alike_by_both_stores() {
    let (_dir, sqlite, postgres) = both_stores().await;
    let expected: Vec<(String, String)> =
        [("acme/app", "e1"), ("acme/app", "e3"), ("acme/other", "e1")]
            .iter()
            .map(|(r, e)| (r.to_string(), e.to_string()))
            .collect();
    assert_eq!(in_flight(&sqlite).await, expected, "SQLite");
    assert_eq!(in_flight(&postgres).await, expected, "PostgreSQL");
}
