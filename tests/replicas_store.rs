//! The Store's lease, claim and pacing methods as two replicas see them:
//! two store handles (two connection pools, as two processes have) on one
//! database, with the clock passed in. Fast and deterministic; every check
//! runs on SQLite and on PostgreSQL (a throwaway server).

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use convoy::domain::{BranchName, CommitSha, DeliveryId, InstallationId, RepoName, RolloutId};
use convoy::store::{
    Claim, ClaimDue, Created, DeliveryOutcome, DeliveryState, Fence, Finished, InboxWrite,
    LEASE_ROLLOUT, NewDelivery, Payload, PostgresStore, RolloutKind, RolloutRecord, RolloutWrite,
    SqliteStore, Store, StoreError,
};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

/// Two handles on one database: replica A's and replica B's.
async fn two(postgres: bool) -> (tempfile::TempDir, Arc<dyn Store>, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    if postgres {
        let url = tokio::task::spawn_blocking(convoy::testkit::postgres::fresh_database)
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL");
        let a: Arc<dyn Store> = Arc::new(PostgresStore::open(&url).await.unwrap());
        let b: Arc<dyn Store> = Arc::new(PostgresStore::open(&url).await.unwrap());
        return (dir, a, b);
    }
    let path = dir.path().join("convoy.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    (dir, a, b)
}

/// Each check as two tests, one per database.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(false).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(true).await;
            })*
        }
    };
}

on_both!(
    a_lease_is_held_by_one_until_it_expires_and_every_claim_raises_the_generation,
    a_write_under_a_lost_lease_is_refused_and_changes_nothing,
    deliveries_are_claimed_by_one_replica_and_retaken_after_the_claim_expired,
    a_delivery_stored_claimed_is_nobody_elses_until_its_claim_runs_out,
    one_inbox_write_stores_finishes_and_claims_together,
    an_outcome_from_a_replica_whose_claim_was_taken_over_is_not_recorded,
    inputs_for_a_rollout_reach_its_lease_holder_and_are_answered_once,
    github_writes_of_an_installation_share_one_bucket_across_replicas,
    a_branch_left_with_only_queued_rollouts_is_found,
);

async fn a_lease_is_held_by_one_until_it_expires_and_every_claim_raises_the_generation(
    postgres: bool,
) {
    let (_dir, a, b) = two(postgres).await;
    let la = a
        .claim_lease(LEASE_ROLLOUT, "r1", "A", t(0), t(15))
        .await
        .unwrap()
        .expect("free: A takes it");
    assert_eq!(
        b.claim_lease(LEASE_ROLLOUT, "r1", "B", t(14), t(29))
            .await
            .unwrap(),
        None,
        "held by A"
    );
    // A renews: still A's, same generation.
    let kept = a.renew_leases(LEASE_ROLLOUT, "A", t(25)).await.unwrap();
    assert_eq!(kept, vec![("r1".to_owned(), la.generation)]);
    assert_eq!(
        b.claim_lease(LEASE_ROLLOUT, "r1", "B", t(20), t(35))
            .await
            .unwrap(),
        None,
        "renewed until 25"
    );
    // A stops renewing (it died): B takes over at 25.
    let lb = b
        .claim_lease(LEASE_ROLLOUT, "r1", "B", t(25), t(40))
        .await
        .unwrap()
        .expect("expired: B takes it");
    assert_eq!(lb.generation, la.generation + 1);
    // A comes back: its renewal keeps nothing, its release changes nothing.
    assert!(
        a.renew_leases(LEASE_ROLLOUT, "A", t(45))
            .await
            .unwrap()
            .is_empty()
    );
    a.release_lease(LEASE_ROLLOUT, "r1", "A", la.generation)
        .await
        .unwrap();
    let (owner, lease) = a.lease(LEASE_ROLLOUT, "r1").await.unwrap().unwrap();
    assert_eq!(owner.as_deref(), Some("B"));
    assert_eq!(lease, lb);
    // B gives it up: anyone may take it at once.
    b.release_lease(LEASE_ROLLOUT, "r1", "B", lb.generation)
        .await
        .unwrap();
    let again = a
        .claim_lease(LEASE_ROLLOUT, "r1", "A", t(26), t(41))
        .await
        .unwrap()
        .expect("released: free");
    assert_eq!(again.generation, lb.generation + 1);
}

fn record(id: &RolloutId) -> RolloutRecord {
    RolloutRecord {
        id: id.clone(),
        repo: RepoName::new("acme/app"),
        branch: BranchName::new("main"),
        commit: CommitSha::new("c".repeat(40)),
        previous_commit: None,
        pull_request: None,
        installation: None,
        kind: RolloutKind::Deploy,
        parent: None,
        state: "running".into(),
        created_at: t(0),
        updated_at: t(0),
        document: None,
        error: None,
    }
}

async fn a_write_under_a_lost_lease_is_refused_and_changes_nothing(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    let id = RolloutId::new("r1");
    assert_eq!(a.create_rollout(&record(&id)).await.unwrap(), Created::New);
    assert_eq!(a.orphaned_rollouts(t(0)).await.unwrap(), vec![id.clone()]);
    let la = a
        .claim_lease(LEASE_ROLLOUT, id.as_str(), "A", t(0), t(15))
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.orphaned_rollouts(t(1)).await.unwrap().is_empty(),
        "driven"
    );
    let write = |owner: &str, generation: i64, state: &str| RolloutWrite {
        state: state.into(),
        document: "{}".into(),
        fence: Some(Fence {
            owner: owner.into(),
            generation,
        }),
        ..RolloutWrite::default()
    };
    a.save_rollout(&id, &write("A", la.generation, "paused"), t(1))
        .await
        .expect("A holds it");
    // Past its end nobody's writes go through, not even A's own.
    assert!(matches!(
        a.save_rollout(&id, &write("A", la.generation, "running"), t(16))
            .await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(a.orphaned_rollouts(t(16)).await.unwrap(), vec![id.clone()]);
    let lb = b
        .claim_lease(LEASE_ROLLOUT, id.as_str(), "B", t(16), t(31))
        .await
        .unwrap()
        .unwrap();
    // A, paused past its lease, tries again with its old generation.
    assert!(matches!(
        a.save_rollout(&id, &write("A", la.generation, "running"), t(17))
            .await,
        Err(StoreError::Fenced(_))
    ));
    assert_eq!(a.rollout(&id).await.unwrap().unwrap().state, "paused");
    b.save_rollout(&id, &write("B", lb.generation, "succeeded"), t(18))
        .await
        .expect("B holds it");
    assert!(
        b.orphaned_rollouts(t(99)).await.unwrap().is_empty(),
        "finished rollouts are nobody's work"
    );
}

fn delivery(n: usize) -> NewDelivery {
    NewDelivery {
        id: DeliveryId::new(format!("d{n}")),
        event: "ping".into(),
        payload: Payload::compress("{}"),
        received_at: t(0),
        claim: None,
    }
}

async fn deliveries_are_claimed_by_one_replica_and_retaken_after_the_claim_expired(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    a.insert_deliveries(&(0..10).map(delivery).collect::<Vec<_>>())
        .await
        .unwrap();
    let by_a = a.claim_deliveries("A", t(1), t(16), 4).await.unwrap();
    let by_b = b.claim_deliveries("B", t(1), t(16), 100).await.unwrap();
    assert_eq!(by_a.len(), 4);
    assert_eq!(by_b.len(), 6, "the rest, none of A's");
    assert!(by_a.iter().all(|d| by_b.iter().all(|e| e.id != d.id)));
    assert!(
        b.claim_deliveries("B", t(10), t(25), 100)
            .await
            .unwrap()
            .is_empty(),
        "all claimed"
    );
    // A finishes two, keeps working on one (renewed), and dies with the
    // last one: only that one is B's after the claim ran out.
    a.finish_deliveries(
        "A",
        &[
            (by_a[0].id.clone(), DeliveryOutcome::Done),
            (by_a[1].id.clone(), DeliveryOutcome::Done),
        ],
        t(2),
    )
    .await
    .unwrap();
    a.renew_delivery_claims("A", &[by_a[2].id.clone()], t(30))
        .await
        .unwrap();
    b.finish_deliveries(
        "B",
        &by_b
            .iter()
            .map(|d| (d.id.clone(), DeliveryOutcome::Done))
            .collect::<Vec<_>>(),
        t(3),
    )
    .await
    .unwrap();
    let retaken = b.claim_deliveries("B", t(16), t(31), 100).await.unwrap();
    assert_eq!(
        retaken.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![by_a[3].id.clone()]
    );
    // A graceful stop gives A's claims back at once.
    a.release_all_leases("A", t(17)).await.unwrap();
    let back = b.claim_deliveries("B", t(17), t(32), 100).await.unwrap();
    assert_eq!(
        back.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![by_a[2].id.clone()]
    );
}

/// What the intake does for its own worker: the delivery is stored claimed
/// by the replica that received it. If that replica dies before finishing
/// it, another takes it once the claim ran out; nothing is lost.
async fn a_delivery_stored_claimed_is_nobody_elses_until_its_claim_runs_out(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    let mut claimed = delivery(1);
    claimed.claim = Some(Claim {
        owner: "A".into(),
        until: t(15),
    });
    assert_eq!(
        a.insert_deliveries(&[claimed, delivery(2)]).await.unwrap(),
        vec![true, true]
    );
    let taken = b.claim_deliveries("B", t(1), t(16), 100).await.unwrap();
    assert_eq!(
        taken.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["d2"],
        "d1 is A's"
    );
    let after = b.claim_deliveries("B", t(15), t(30), 100).await.unwrap();
    assert_eq!(
        after.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["d1"],
        "A's claim ran out"
    );
    assert_eq!(after[0].payload, "{}", "the body is read back whole");
}

/// A replica cut off past its claim (renewals failing, paused) finishes
/// late, after another replica took the delivery over and finished it:
/// the late outcome neither overwrites the newer one nor sends the
/// delivery back to pending for a third run. Nor may a replica finish a
/// delivery it never claimed.
async fn an_outcome_from_a_replica_whose_claim_was_taken_over_is_not_recorded(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    a.insert_deliveries(&[delivery(1), delivery(2)])
        .await
        .unwrap();
    let by_a = a.claim_deliveries("A", t(1), t(16), 1).await.unwrap();
    assert_eq!(by_a.len(), 1);
    let d = by_a[0].id.clone();
    // A's claim runs out; B takes the delivery and finishes it.
    let by_b = b.claim_deliveries("B", t(16), t(31), 10).await.unwrap();
    assert!(by_b.iter().any(|x| x.id == d), "B took it over");
    b.finish_deliveries("B", &[(d.clone(), DeliveryOutcome::Done)], t(17))
        .await
        .unwrap();
    // A's handler returns at last, failing transiently.
    let retry = DeliveryOutcome::Retry {
        error: "late".into(),
        at: t(19),
    };
    a.finish_deliveries("A", &[(d.clone(), retry)], t(18))
        .await
        .unwrap();
    let item = a.delivery(&d).await.unwrap().unwrap();
    assert_eq!(item.state, DeliveryState::Done, "B's outcome stands");
    assert_eq!(item.attempts, 1);
    assert_eq!(item.last_error, None);
    assert!(
        b.claim_deliveries("B", t(40), t(55), 10)
            .await
            .unwrap()
            .iter()
            .all(|x| x.id != d),
        "not due again"
    );
    // The other delivery is B's: A cannot finish it either.
    let other = by_b.iter().find(|x| x.id != d).unwrap().id.clone();
    a.finish_deliveries("A", &[(other.clone(), DeliveryOutcome::Done)], t(20))
        .await
        .unwrap();
    let item = a.delivery(&other).await.unwrap().unwrap();
    assert_eq!(item.state, DeliveryState::Pending, "still B's to finish");
    assert_eq!(item.attempts, 0);
}

/// The intake's group commit: new deliveries, outcomes and claims in one
/// transaction, in that order.
async fn one_inbox_write_stores_finishes_and_claims_together(postgres: bool) {
    let (_dir, a, _b) = two(postgres).await;
    a.insert_deliveries(&[delivery(1), delivery(2)])
        .await
        .unwrap();
    let first = a.claim_deliveries("A", t(1), t(16), 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let new = [delivery(3), delivery(1), delivery(3)];
    let finished = [Finished {
        id: first[0].id.clone(),
        owner: "A".into(),
        outcome: DeliveryOutcome::Done,
    }];
    let claims = [
        ClaimDue {
            owner: "A".into(),
            until: t(17),
            limit: 2,
        },
        ClaimDue {
            owner: "B".into(),
            until: t(17),
            limit: 10,
        },
    ];
    let written = a
        .write_inbox(
            InboxWrite {
                new: &new,
                finished: &finished,
                claims: &claims,
            },
            t(2),
        )
        .await
        .unwrap();
    assert_eq!(
        written.fresh,
        vec![true, false, false],
        "d1 was stored before and d3 repeats within the write"
    );
    let mut by_a: Vec<&str> = written.claimed[0].iter().map(|d| d.as_str()).collect();
    by_a.sort();
    let other = if first[0].id.as_str() == "d1" {
        "d2"
    } else {
        "d1"
    };
    assert_eq!(
        by_a,
        vec![other, "d3"],
        "the claim sees the delivery stored in the same write, not the finished one"
    );
    assert!(written.claimed[1].is_empty(), "A's claim took the rest");
    let done = a.delivery(&first[0].id).await.unwrap().unwrap();
    assert_eq!(done.state, DeliveryState::Done);
    assert_eq!(done.attempts, 1);
    let items = a.deliveries(&written.claimed[0]).await.unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|d| d.payload == "{}"));
}

async fn inputs_for_a_rollout_reach_its_lease_holder_and_are_answered_once(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    let id = RolloutId::new("r1");
    a.claim_lease(LEASE_ROLLOUT, id.as_str(), "A", t(0), t(15))
        .await
        .unwrap()
        .unwrap();
    let n = b
        .push_rollout_input(&id, r#"{"command":{"command":"pause"}}"#, t(1))
        .await
        .unwrap();
    assert!(b.open_rollout_inputs("B").await.unwrap().is_empty());
    let open = a.open_rollout_inputs("A").await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].0, &open[0].1), (n, &id));
    assert_eq!(b.rollout_input_answer(n).await.unwrap(), None);
    assert!(a.answer_rollout_input(n, "", t(2)).await.unwrap());
    assert!(
        !b.answer_rollout_input(n, "too late", t(3)).await.unwrap(),
        "the first answer stands"
    );
    assert_eq!(
        b.rollout_input_answer(n).await.unwrap().as_deref(),
        Some("")
    );
    assert!(a.open_rollout_inputs("A").await.unwrap().is_empty());
}

async fn github_writes_of_an_installation_share_one_bucket_across_replicas(postgres: bool) {
    let (_dir, a, b) = two(postgres).await;
    let inst = InstallationId(42);
    // 6 a minute: a full bucket of 6, then one every 10 s, whoever asks.
    for n in 0..6 {
        let store = if n % 2 == 0 { &a } else { &b };
        assert_eq!(store.take_write_token(inst, 6, t(0)).await.unwrap(), None);
    }
    let wait = b.take_write_token(inst, 6, t(0)).await.unwrap();
    assert_eq!(wait, Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        a.take_write_token(InstallationId(7), 6, t(0))
            .await
            .unwrap(),
        None,
        "another installation has its own"
    );
    assert!(a.take_write_token(inst, 6, t(5)).await.unwrap().is_some());
    assert_eq!(a.take_write_token(inst, 6, t(10)).await.unwrap(), None);
    assert!(
        b.take_write_token(inst, 6, t(10) + Duration::milliseconds(1))
            .await
            .unwrap()
            .is_some()
    );
}

async fn a_branch_left_with_only_queued_rollouts_is_found(postgres: bool) {
    let (_dir, a, _b) = two(postgres).await;
    let running = RolloutId::new("r1");
    let queued = RolloutId::new("r2");
    a.create_rollout(&record(&running)).await.unwrap();
    let mut q = record(&queued);
    q.state = "queued".into();
    q.commit = CommitSha::new("d".repeat(40));
    a.create_rollout(&q).await.unwrap();
    assert!(
        a.idle_queued_branches().await.unwrap().is_empty(),
        "r1 runs"
    );
    a.save_rollout(
        &running,
        &RolloutWrite {
            state: "succeeded".into(),
            document: "{}".into(),
            ..RolloutWrite::default()
        },
        t(1),
    )
    .await
    .unwrap();
    assert_eq!(
        a.idle_queued_branches().await.unwrap(),
        vec![(RepoName::new("acme/app"), BranchName::new("main"))]
    );
}
