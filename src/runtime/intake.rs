//! Group commit for the inbox, and the handoff from intake to the worker.
//!
//! Concurrent webhook requests hand their delivery to one writer task,
//! which commits everything waiting in one transaction and answers each
//! request with its own result. One commit per delivery caps intake at the
//! disk's sync rate; one per group does not. The worker's outcomes go
//! through the same writer, so they share the group's commit instead of
//! queueing a transaction of their own in front of the next group.
//!
//! A delivery that this replica's worker has room for is stored already
//! claimed by this replica and handed to the worker in memory: the worker
//! neither claims it through the database nor reads its body back. If the
//! process dies first, the claim runs out like any other and a replica
//! claims the delivery from the database; nothing is lost. When the worker
//! falls behind, deliveries are stored unclaimed and it takes them from the
//! database, oldest first; the handoff resumes once that backlog is gone,
//! so deliveries are not handled out of order for long.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{Notify, oneshot};

use crate::domain::DeliveryId;
use crate::runtime::leases::Replica;
use crate::store::{
    Claim, ClaimDue, DeliveryOutcome, DeliveryState, InboxItem, InboxWrite, NewDelivery, Store,
};
use crate::webhook::events::Parsed;

/// The most deliveries committed together.
const MAX_GROUP: usize = 512;
/// Requests waiting for the writer before new ones wait for room.
const QUEUE: usize = 8192;
/// Deliveries handed to the worker and not yet taken, at most. About a
/// second of processing: more would only hold bodies in memory that the
/// database holds anyway.
pub const HANDOFF: usize = 2048;

/// A delivery handed to the worker in memory, claimed for this replica at
/// `claimed_at` (the claim in the database runs a lease from then).
#[derive(Debug)]
pub struct Handed {
    pub item: InboxItem,
    pub claimed_at: Instant,
    /// The event as the intake parsed it, when it did: the worker need
    /// not parse the body again.
    pub parsed: Option<Parsed>,
}

/// The intake's end of the handoff.
#[derive(Clone)]
pub struct HandoffSender {
    tx: mpsc::Sender<Handed>,
    replica: Replica,
    backlog: Arc<Backlog>,
}

/// The worker's end of the handoff.
pub struct HandoffReceiver {
    rx: tokio::sync::Mutex<mpsc::Receiver<Handed>>,
    backlog: Arc<Backlog>,
}

/// Deliveries stored unclaimed because the worker had no room: while there
/// are any, new ones go to the database unclaimed too, behind them, until
/// the worker has taken every one. Zero for none; otherwise a count that
/// moves whenever the intake routes a delivery to the database and again
/// once that delivery is committed. The worker clears it only if it has not
/// moved since before the claim that found the database empty: a delivery
/// committed after that claim keeps the backlog, so it is taken before
/// newer deliveries handed over in memory, not up to `IDLE_POLL` later.
#[derive(Default)]
struct Backlog(AtomicU64);

impl Backlog {
    fn on(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }

    /// A delivery goes, or went, to the database unclaimed.
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A handoff of up to `capacity` deliveries, claimed for `replica`.
pub fn handoff(replica: Replica, capacity: usize) -> (HandoffSender, HandoffReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let backlog = Arc::new(Backlog::default());
    (
        HandoffSender {
            tx,
            replica,
            backlog: backlog.clone(),
        },
        HandoffReceiver {
            rx: tokio::sync::Mutex::new(rx),
            backlog,
        },
    )
}

/// Room in the handoff for one delivery, taken before it is stored.
struct Reserved {
    permit: OwnedPermit<Handed>,
    claimed_at: Instant,
    body: String,
    parsed: Option<Parsed>,
}

impl HandoffSender {
    /// Claims `delivery` for this replica when the worker has room and no
    /// backlog in the database.
    fn reserve(
        &self,
        delivery: &mut NewDelivery,
        body: String,
        parsed: Option<Parsed>,
    ) -> Option<Box<Reserved>> {
        if self.backlog.on() {
            return None;
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => {
                // The instant is taken before the claim's end is computed,
                // so the worker never believes in more of the claim than
                // the database holds.
                let claimed_at = Instant::now();
                delivery.claim = Some(Claim {
                    owner: self.replica.id.clone(),
                    until: self.replica.until(Utc::now()),
                });
                Some(Box::new(Reserved {
                    permit,
                    claimed_at,
                    body,
                    parsed,
                }))
            }
            Err(_) => {
                self.backlog.bump();
                None
            }
        }
    }
}

impl HandoffReceiver {
    /// Up to `limit` handed deliveries, without waiting.
    pub async fn take(&self, limit: usize) -> Vec<Handed> {
        let mut rx = self.rx.lock().await;
        let mut taken = Vec::new();
        while taken.len() < limit {
            match rx.try_recv() {
                Ok(handed) => taken.push(handed),
                Err(_) => break,
            }
        }
        taken
    }

    /// Whether deliveries were stored unclaimed because the worker had no
    /// room: the mark to give [`HandoffReceiver::clear_backlog`], taken
    /// before claiming from the database; `None` when there is no backlog.
    pub fn backlog(&self) -> Option<u64> {
        Some(self.backlog.0.load(Ordering::Acquire)).filter(|&n| n != 0)
    }

    /// The worker's claim, made after `seen` was read, took everything due
    /// in the database: the handoff resumes, unless a delivery went to the
    /// database unclaimed since (`false`: the worker claims again).
    pub fn clear_backlog(&self, seen: u64) -> bool {
        self.backlog
            .0
            .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    Insert {
        delivery: NewDelivery,
        handed: Option<Box<Reserved>>,
        reply: Reply<bool>,
    },
    Finish {
        results: Vec<(DeliveryId, DeliveryOutcome)>,
        reply: Reply<()>,
    },
    Claim {
        claim: ClaimDue,
        reply: Reply<Vec<DeliveryId>>,
    },
}

/// The one writer of the inbox in this process.
#[derive(Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<Op>,
    handoff: Option<HandoffSender>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the inbox could not be written: {0}")]
    Store(String),
    #[error("convoy is shutting down")]
    Closed,
}

impl InboxWriter {
    /// Starts the writer task. `wake` is notified after each commit that
    /// stored something new, so the worker starts at once. With `handoff`,
    /// new deliveries go to the worker in memory while it has room.
    pub fn spawn(
        store: Arc<dyn Store>,
        wake: Arc<Notify>,
        handoff: Option<HandoffSender>,
    ) -> InboxWriter {
        let (tx, mut rx) = mpsc::channel::<Op>(QUEUE);
        let backlog = handoff.as_ref().map(|h| h.backlog.clone());
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                let group = std::mem::take(&mut group);
                commit_group(store.as_ref(), group, &wake, backlog.as_deref()).await;
            }
        });
        InboxWriter { tx, handoff }
    }

    /// Stores the delivery (`body` is its uncompressed payload, `parsed`
    /// what `events::parse` made of it, if known); `Ok(true)` when new,
    /// `Ok(false)` when its id was seen before. Returns only once the
    /// delivery is committed.
    pub async fn write(
        &self,
        mut delivery: NewDelivery,
        body: String,
        parsed: Option<Parsed>,
    ) -> Result<bool, IntakeError> {
        let handed = self
            .handoff
            .as_ref()
            .and_then(|h| h.reserve(&mut delivery, body, parsed));
        self.ask(|reply| Op::Insert {
            delivery,
            handed,
            reply,
        })
        .await
    }

    /// Records processing outcomes (`Store::finish_deliveries`) in the next
    /// group's commit. Returns once they are committed.
    pub async fn finish(
        &self,
        results: Vec<(DeliveryId, DeliveryOutcome)>,
    ) -> Result<(), IntakeError> {
        self.ask(|reply| Op::Finish { results, reply }).await
    }

    /// Claims due deliveries (`Store::claim_deliveries`) in the next
    /// group's commit; the ids it took, once committed.
    pub async fn claim(&self, claim: ClaimDue) -> Result<Vec<DeliveryId>, IntakeError> {
        self.ask(|reply| Op::Claim { claim, reply }).await
    }

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| IntakeError::Closed)?;
        answer
            .await
            .map_err(|_| IntakeError::Closed)?
            .map_err(IntakeError::Store)
    }
}

/// Commits one group and answers everyone in it; hands the new deliveries
/// that had room to the worker, and keeps the `backlog` of the handoff, if
/// there is one, from clearing while deliveries it sent to the database are
/// still arriving there.
async fn commit_group(store: &dyn Store, group: Vec<Op>, wake: &Notify, backlog: Option<&Backlog>) {
    let mut new = Vec::new();
    let mut inserts = Vec::new();
    let mut finished = Vec::new();
    let mut finishes = Vec::new();
    let mut claims = Vec::new();
    let mut claimers = Vec::new();
    for op in group {
        match op {
            Op::Insert {
                delivery,
                handed,
                reply,
            } => {
                new.push(delivery);
                inserts.push((handed, reply));
            }
            Op::Finish { results, reply } => {
                finished.extend(results);
                finishes.push(reply);
            }
            Op::Claim { claim, reply } => {
                claims.push(claim);
                claimers.push(reply);
            }
        }
    }
    let write = InboxWrite {
        new: &new,
        finished: &finished,
        claims: &claims,
    };
    match store.write_inbox(write, Utc::now()).await {
        Ok(written) => {
            let mut woke = false;
            let stored_unclaimed = inserts
                .iter()
                .zip(&written.fresh)
                .any(|((handed, _), &is_new)| is_new && handed.is_none());
            if let (true, Some(backlog)) = (stored_unclaimed, backlog) {
                backlog.bump();
            }
            for ((delivery, (handed, reply)), is_new) in
                new.into_iter().zip(inserts).zip(written.fresh)
            {
                if let (true, Some(handed)) = (is_new, handed) {
                    handed.permit.send(Handed {
                        item: InboxItem {
                            id: delivery.id,
                            event: delivery.event,
                            payload: handed.body,
                            received_at: delivery.received_at,
                            state: DeliveryState::Pending,
                            attempts: 0,
                            last_error: None,
                        },
                        claimed_at: handed.claimed_at,
                        parsed: handed.parsed,
                    });
                }
                woke |= is_new;
                let _ = reply.send(Ok(is_new));
            }
            for reply in finishes {
                let _ = reply.send(Ok(()));
            }
            for (reply, ids) in claimers.into_iter().zip(written.claimed) {
                let _ = reply.send(Ok(ids));
            }
            if woke {
                wake.notify_one();
            }
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                new = new.len(),
                finished = finished.len(),
                claims = claims.len(),
                "writing the inbox failed"
            );
            // Nothing was written: the requests answer 503 and GitHub may
            // redeliver; the worker's claims run out and it tries again.
            let error = e.to_string();
            for (_, reply) in inserts {
                let _ = reply.send(Err(error.clone()));
            }
            for reply in finishes {
                let _ = reply.send(Err(error.clone()));
            }
            for reply in claimers {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{Payload, SqliteStore};

    fn delivery(n: u32) -> (NewDelivery, String) {
        let body = format!("{{\"n\":{n}}}");
        let new = NewDelivery {
            id: DeliveryId::new(format!("d{n}")),
            event: "ping".into(),
            payload: Payload::compress(&body),
            received_at: Utc::now(),
            claim: None,
        };
        (new, body)
    }

    async fn writer(
        capacity: usize,
    ) -> (
        tempfile::TempDir,
        Arc<dyn Store>,
        InboxWriter,
        HandoffReceiver,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("convoy.db"))
                .await
                .unwrap(),
        );
        let (tx, rx) = handoff(Replica::new("me", Duration::from_secs(15)), capacity);
        let writer = InboxWriter::spawn(store.clone(), Arc::new(Notify::new()), Some(tx));
        (dir, store, writer, rx)
    }

    /// Claims another replica could make now.
    async fn claimable(store: &dyn Store) -> Vec<String> {
        let now = Utc::now();
        let mut ids: Vec<String> = store
            .claim_deliveries("other", now, now + chrono::Duration::seconds(15), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id.as_str().to_owned())
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn deliveries_with_room_are_handed_over_claimed_and_the_rest_wait_in_the_database() {
        let (_dir, store, writer, handed) = writer(2).await;
        for n in 1..=3 {
            let (new, body) = delivery(n);
            let parsed = crate::webhook::events::parse("ping", body.as_bytes());
            assert!(writer.write(new, body, Some(parsed)).await.unwrap());
        }
        assert!(handed.backlog().is_some(), "the third found no room");
        let taken = handed.take(10).await;
        let ids: Vec<&str> = taken.iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids, vec!["d1", "d2"]);
        assert_eq!(taken[0].item.payload, "{\"n\":1}", "the body, from memory");
        assert!(
            matches!(taken[0].parsed, Some(Ok(Some(_)))),
            "the event as the intake parsed it"
        );
        // While the backlog lasts, new deliveries wait in the database too
        // (behind the older ones), though there is room again.
        let seen = handed.backlog().unwrap();
        let (new, body) = delivery(4);
        assert!(writer.write(new, body, None).await.unwrap());
        assert!(handed.take(10).await.is_empty());
        assert_eq!(
            claimable(store.as_ref()).await,
            vec!["d3", "d4"],
            "the handed ones are claimed for this replica"
        );
        // A claim that began before d4 was stored may have missed it: the
        // backlog stays until a claim that began after it.
        assert!(!handed.clear_backlog(seen), "d4 went to the database since");
        assert!(handed.backlog().is_some());
        assert!(handed.clear_backlog(handed.backlog().unwrap()));
        assert_eq!(handed.backlog(), None);
        let (new, body) = delivery(5);
        assert!(writer.write(new, body, None).await.unwrap());
        assert_eq!(handed.take(10).await.len(), 1, "handed again");
        assert!(claimable(store.as_ref()).await.is_empty());
    }

    #[tokio::test]
    async fn a_redelivery_is_neither_stored_nor_handed_over_again() {
        let (_dir, _store, writer, handed) = writer(8).await;
        let (new, body) = delivery(1);
        assert!(writer.write(new.clone(), body.clone(), None).await.unwrap());
        assert!(!writer.write(new, body, None).await.unwrap());
        assert_eq!(handed.take(10).await.len(), 1);
    }

    #[tokio::test]
    async fn outcomes_and_claims_go_through_the_group_commit() {
        let (_dir, store, writer, handed) = writer(1).await;
        for n in 1..=2 {
            let (new, body) = delivery(n);
            writer.write(new, body, None).await.unwrap();
        }
        let now = Utc::now();
        let ids = writer
            .claim(ClaimDue {
                owner: "me".into(),
                until: now + chrono::Duration::seconds(15),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(ids, vec![DeliveryId::new("d2")], "d1 was handed over");
        let first = handed.take(1).await.remove(0).item.id;
        writer
            .finish(vec![
                (first.clone(), DeliveryOutcome::Done),
                (ids[0].clone(), DeliveryOutcome::Done),
            ])
            .await
            .unwrap();
        for id in [first, ids[0].clone()] {
            let item = store.delivery(&id).await.unwrap().unwrap();
            assert_eq!(item.state, DeliveryState::Done);
        }
    }
}
