//! The drift records and the Store methods the reconciler needs, against
//! a real SQLite database and a real PostgreSQL one (migration 0006).

use chrono::{Duration, TimeZone, Utc};
use convoy::domain::{EnvName, RepoName, RolloutId, ServiceName};
use convoy::store::{DriftKind, DriftObservation, SqliteStore, Store};

/// Each test runs on both stores: SQLite in a temporary folder (kept by
/// the returned guard) and a fresh database on the test PostgreSQL.
async fn sqlite() -> (Box<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db")).await.unwrap();
    (Box::new(store), dir)
}

async fn postgres() -> (Box<dyn Store>, tempfile::TempDir) {
    let store = convoy::testkit::postgres::fresh_store()
        .await
        .expect("test PostgreSQL");
    (Box::new(store), tempfile::tempdir().unwrap())
}

fn obs(env: &str, kind: DriftKind, found: Option<&str>) -> DriftObservation {
    DriftObservation {
        environment: EnvName::new(env),
        service: ServiceName::new("api"),
        kind,
        expected: "v1".into(),
        found: found.map(str::to_owned),
        detail: (kind == DriftKind::Unreachable).then(|| "connection refused".to_owned()),
    }
}

#[tokio::test]
async fn drift_records_open_update_resolve_and_reopen_sqlite() {
    let (store, _dir) = sqlite().await;
    drift_records_open_update_resolve_and_reopen(store).await;
}

#[tokio::test]
async fn drift_records_open_update_resolve_and_reopen_postgres() {
    let (store, _dir) = postgres().await;
    drift_records_open_update_resolve_and_reopen(store).await;
}

async fn drift_records_open_update_resolve_and_reopen(store: Box<dyn Store>) {
    let repo = RepoName::new("acme/app");
    let t0 = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();

    let first = store
        .observe_drift(&repo, &obs("a", DriftKind::Drift, Some("hot-1")), t0)
        .await
        .unwrap();
    assert_eq!(first.first_seen, t0);
    assert!(first.is_open());
    // Seen again, with another version: the same record, first seen kept.
    let again = store
        .observe_drift(
            &repo,
            &obs("a", DriftKind::Drift, Some("hot-2")),
            t0 + Duration::seconds(60),
        )
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.first_seen, t0);
    assert_eq!(again.last_seen, t0 + Duration::seconds(60));
    assert_eq!(again.found.as_deref(), Some("hot-2"));
    // Unreachable is a record of its own kind beside it.
    store
        .observe_drift(&repo, &obs("a", DriftKind::Unreachable, None), t0)
        .await
        .unwrap();
    store
        .observe_drift(&repo, &obs("b", DriftKind::Drift, Some("x")), t0)
        .await
        .unwrap();
    let open = store.drift_records(&repo, false, 100).await.unwrap();
    assert_eq!(open.len(), 3);
    assert_eq!(
        store
            .open_drift(
                &repo,
                &EnvName::new("a"),
                &ServiceName::new("api"),
                DriftKind::Drift
            )
            .await
            .unwrap()
            .map(|r| r.id),
        Some(first.id)
    );

    let t1 = t0 + Duration::seconds(120);
    let n = store
        .resolve_drift(
            &repo,
            &EnvName::new("a"),
            None,
            DriftKind::Drift,
            "adopted",
            "wanda",
            t1,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Resolving again finds nothing open.
    assert_eq!(
        store
            .resolve_drift(
                &repo,
                &EnvName::new("a"),
                None,
                DriftKind::Drift,
                "adopted",
                "wanda",
                t1
            )
            .await
            .unwrap(),
        0
    );
    let all = store.drift_records(&repo, true, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    // Open ones first.
    assert!(all[0].is_open() && all[1].is_open() && !all[2].is_open());
    assert_eq!(all[2].resolution.as_deref(), Some("adopted"));
    assert_eq!(all[2].resolved_by.as_deref(), Some("wanda"));
    assert_eq!(all[2].resolved_at, Some(t1));

    // Drift again: a new record.
    let back = store
        .observe_drift(&repo, &obs("a", DriftKind::Drift, Some("hot-3")), t1)
        .await
        .unwrap();
    assert_ne!(back.id, first.id);
    assert_eq!(back.first_seen, t1);
    // Other repositories see nothing.
    assert!(
        store
            .drift_records(&RepoName::new("acme/other"), true, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn baselines_and_step_locks_are_listed_sqlite() {
    let (store, _dir) = sqlite().await;
    baselines_and_step_locks_are_listed(store).await;
}

#[tokio::test]
async fn baselines_and_step_locks_are_listed_postgres() {
    let (store, _dir) = postgres().await;
    baselines_and_step_locks_are_listed(store).await;
}

async fn baselines_and_step_locks_are_listed(store: Box<dyn Store>) {
    let now = Utc::now();
    for (repo, env) in [("acme/b", "e2"), ("acme/a", "e1"), ("acme/a", "e0")] {
        store
            .set_baseline(
                &RepoName::new(repo),
                &EnvName::new(env),
                &ServiceName::new("api"),
                "v1",
                "deployed",
                None,
                now,
            )
            .await
            .unwrap();
    }
    let all = store.baselines(None).await.unwrap();
    let order: Vec<(&str, &str)> = all
        .iter()
        .map(|b| (b.repo.as_str(), b.environment.as_str()))
        .collect();
    assert_eq!(
        order,
        [("acme/a", "e0"), ("acme/a", "e1"), ("acme/b", "e2")]
    );
    assert_eq!(all[0].baseline.version, "v1");
    assert_eq!(
        store
            .baselines(Some(&RepoName::new("acme/b")))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.held_step_locks().await.unwrap().is_empty());
    assert!(
        store
            .try_lock_step(
                &RepoName::new("acme/a"),
                &EnvName::new("e1"),
                &ServiceName::new("api"),
                &RolloutId::new("r1"),
                now
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.held_step_locks().await.unwrap(),
        vec![(
            RepoName::new("acme/a"),
            EnvName::new("e1"),
            ServiceName::new("api")
        )]
    );
}
