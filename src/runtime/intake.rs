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
//!
//! A group is answered once its commit is durable, but the writer does
//! not wait for that: it commits the next group while the store syncs
//! the last one (`Store::write_inbox_unsynced`), and a second task answers
//! the groups, in order, as their syncs finish. Before taking a group the
//! writer lets the requests that are ready to run have their turn, so that
//! they join this group rather than start the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{Notify, oneshot};

use crate::domain::DeliveryId;
use crate::runtime::leases::Replica;
use crate::store::{
    Claim, ClaimDue, DeliveryOutcome, DeliveryState, Durable, Finished, InboxItem, InboxWrite,
    InboxWritten, NewDelivery, Store,
};
use crate::webhook::events::Parsed;

/// The most deliveries committed together.
const MAX_GROUP: usize = 512;
/// Requests waiting for the writer before new ones wait for room.
const QUEUE: usize = 8192;
/// Committed groups waiting behind the one being answered, at most; the
/// writer waits for room beyond that. One sync covers every commit before
/// it, so committing further ahead would only make smaller groups (and
/// more commits and syncs) for the same deliveries: under load one ahead
/// did at least as well as four.
const UNSYNCED_GROUPS: usize = 1;
/// Deliveries handed to the worker and not yet taken, at most. About a
/// second of processing: more would only hold bodies in memory that the
/// database holds anyway.
pub const HANDOFF: usize = 2048;

/// A delivery handed to the worker in memory, claimed for this replica at
/// `claimed_at` (the claim in the database runs a lease from then).
#[derive(Debug)]
pub struct Handed {
    /// Its `payload` is empty: the intake keeps no body it has parsed
    /// (the database has it compressed); the worker acts on `parsed`.
    pub item: InboxItem,
    pub claimed_at: Instant,
    /// The event as the intake parsed it: the worker does not read the
    /// body again.
    pub parsed: Parsed,
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

/// Deliveries sent to the database unclaimed because the worker had no
/// room. While `on`, new ones go there too, behind them, until a claim of
/// the worker's takes every one due; then the handoff resumes. Deliveries
/// sent to the database just before that may still be on their way to the
/// commit, and a claim made before they arrive misses them: the worker
/// owes one more claim (`sweep`), made once none is on its way
/// (`unsettled` is zero when the claim begins), before it takes newer
/// deliveries from memory. So a delivery is never left in the database
/// behind newer ones for up to `IDLE_POLL`.
#[derive(Default)]
struct Backlog {
    on: AtomicBool,
    /// Sent to the database unclaimed and not yet committed (or failed).
    unsettled: AtomicU64,
    /// The worker's: a claim is owed before deliveries from memory.
    sweep: AtomicBool,
}

impl Backlog {
    /// A delivery goes to the database unclaimed.
    fn send_to_database(&self) {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
        self.on.store(true, Ordering::Release);
    }

    /// `n` deliveries sent to the database unclaimed are committed, or
    /// failed to be.
    fn settled(&self, n: u64) {
        self.unsettled.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What the worker knew before claiming from the database
/// ([`HandoffReceiver::before_claim`]).
#[derive(Clone, Copy, Debug)]
pub struct ClaimMark {
    /// No delivery was on its way to the database unclaimed: the claim
    /// sees every one sent there.
    settled: bool,
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
    parsed: Parsed,
}

impl HandoffSender {
    /// Claims `delivery` for this replica when the worker has room and no
    /// backlog in the database.
    fn reserve(&self, delivery: &mut NewDelivery, parsed: Parsed) -> Option<Box<Reserved>> {
        if self.backlog.on.load(Ordering::Acquire) {
            self.backlog.send_to_database();
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
                    parsed,
                }))
            }
            Err(_) => {
                self.backlog.send_to_database();
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

    /// Whether deliveries were sent to the database unclaimed because the
    /// worker had no room, and not all taken yet.
    pub fn backlog(&self) -> bool {
        self.backlog.on.load(Ordering::Acquire)
    }

    /// Whether the worker must claim from the database before it takes
    /// deliveries from memory: the backlog just ended and deliveries sent
    /// to the database before that may not have been claimed.
    pub fn database_first(&self) -> bool {
        self.backlog.sweep.load(Ordering::Acquire)
    }

    /// To read just before claiming from the database.
    pub fn before_claim(&self) -> ClaimMark {
        ClaimMark {
            settled: self.backlog.unsettled.load(Ordering::Acquire) == 0,
        }
    }

    /// After a claim begun at `mark` that took everything due
    /// (`took_all`): ends the backlog (the handoff resumes; one more claim
    /// is owed for deliveries sent to the database just before), or pays
    /// that claim if nothing was on its way to the database when it began.
    pub fn after_claim(&self, mark: ClaimMark, took_all: bool) {
        if !took_all {
            return;
        }
        let backlog = &self.backlog;
        if backlog.on.swap(false, Ordering::AcqRel) {
            backlog.sweep.store(true, Ordering::Release);
        } else if mark.settled {
            backlog.sweep.store(false, Ordering::Release);
        }
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
        results: Vec<Finished>,
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
        let (committed_tx, mut committed_rx) = mpsc::channel::<Committed>(UNSYNCED_GROUPS);
        tokio::spawn(async move {
            while let Some(committed) = committed_rx.recv().await {
                committed.answer(&wake).await;
            }
        });
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(MAX_GROUP);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                // Requests woken by the last commit's answers, or just
                // read from their sockets, are about to ask: one turn of
                // the scheduler lets them into this group. Fewer, larger
                // commits cost the database less per delivery.
                tokio::task::yield_now().await;
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(op) => group.push(op),
                        Err(_) => break,
                    }
                }
                let group = std::mem::take(&mut group);
                let committed = commit_group(store.as_ref(), group, backlog.as_deref()).await;
                if committed_tx.send(committed).await.is_err() {
                    // Only if the answering task died: nobody could be
                    // answered any more.
                    tracing::error!("the inbox's answering task stopped; intake stops");
                    break;
                }
            }
        });
        InboxWriter { tx, handoff }
    }

    /// Stores the delivery (`parsed` is what `events::parse` made of its
    /// body, which the worker gets if it is handed over in memory);
    /// `Ok(true)` when new, `Ok(false)` when its id was seen before.
    /// Returns only once the delivery is committed.
    pub async fn write(
        &self,
        mut delivery: NewDelivery,
        parsed: Parsed,
    ) -> Result<bool, IntakeError> {
        let handed = self
            .handoff
            .as_ref()
            .and_then(|h| h.reserve(&mut delivery, parsed));
        self.ask(|reply| Op::Insert {
            delivery,
            handed,
            reply,
        })
        .await
    }

    /// Records processing outcomes by `owner` (`Store::finish_deliveries`)
    /// in the next group's commit. Returns once they are committed.
    pub async fn finish(
        &self,
        owner: &str,
        results: Vec<(DeliveryId, DeliveryOutcome)>,
    ) -> Result<(), IntakeError> {
        let results = Finished::by(owner, results);
        self.ask(|reply| Op::Finish { results, reply }).await
    }

    /// Claims due deliveries (`Store::claim_deliveries`) in the next
    /// group's commit; the ids it took, once committed.
    pub async fn claim(&self, claim: ClaimDue) -> Result<Vec<DeliveryId>, IntakeError> {
        self.ask(|reply| Op::Claim { claim, reply }).await
    }

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, IntakeError> {
        let (reply, answer) = oneshot::channel();
        let op = op(reply);
        // A delivery sent to the database unclaimed is settled by its
        // group's commit once it is in the writer's queue; until then, by
        // this guard: the writer may be gone, or the request dropped while
        // the queue is full (a client that gave up), and a backlog left
        // unsettled would keep the worker off the handoff for good.
        let mut unsent = Unsent(match (&op, &self.handoff) {
            (Op::Insert { handed: None, .. }, Some(h)) => Some(&*h.backlog),
            _ => None,
        });
        if self.tx.send(op).await.is_err() {
            return Err(IntakeError::Closed);
        }
        unsent.0 = None;
        answer
            .await
            .map_err(|_| IntakeError::Closed)?
            .map_err(IntakeError::Store)
    }
}

/// A delivery counted in the backlog that is not in the writer's queue
/// yet: settled when dropped, unless it got there (`None`).
struct Unsent<'a>(Option<&'a Backlog>);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(backlog) = self.0.take() {
            backlog.settled(1);
        }
    }
}

/// Commits one group; [`Committed::answer`] answers everyone in it once
/// the commit is durable. Counts the new deliveries sent to the database
/// unclaimed as settled in the handoff's `backlog` at once: the commit is
/// visible to claims from now on.
async fn commit_group(store: &dyn Store, group: Vec<Op>, backlog: Option<&Backlog>) -> Committed {
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
    let result = store.write_inbox_unsynced(write, Utc::now()).await;
    if let Some(backlog) = backlog {
        // Committed or not, they are no longer on their way: a claim from
        // now on sees every one that was stored.
        let unclaimed = inserts
            .iter()
            .filter(|(handed, _)| handed.is_none())
            .count();
        backlog.settled(unclaimed as u64);
    }
    if let Err(e) = &result {
        tracing::error!(
            error = %e,
            new = new.len(),
            finished = finished.len(),
            claims = claims.len(),
            "writing the inbox failed"
        );
    }
    Committed {
        result,
        new,
        inserts,
        finishes,
        claimers,
    }
}

/// A group committed, perhaps not yet durable, and who waits for it.
struct Committed {
    result: crate::store::Result<(InboxWritten, Durable)>,
    new: Vec<NewDelivery>,
    inserts: Vec<(Option<Box<Reserved>>, Reply<bool>)>,
    finishes: Vec<Reply<()>>,
    claimers: Vec<Reply<Vec<DeliveryId>>>,
}

impl Committed {
    /// Waits until the commit is durable, then answers everyone in the
    /// group and hands the new deliveries that had room to the worker;
    /// if it failed or cannot be made durable, answers with the error and
    /// hands nothing over.
    async fn answer(self, wake: &Notify) {
        let result = match self.result {
            Ok((written, durable)) => durable.wait().await.map(|()| written),
            Err(e) => Err(e),
        };
        match result {
            Ok(written) => {
                let woke = hand_over(self.new, self.inserts, written.fresh);
                for reply in self.finishes {
                    let _ = reply.send(Ok(()));
                }
                for (reply, ids) in self.claimers.into_iter().zip(written.claimed) {
                    let _ = reply.send(Ok(ids));
                }
                if woke {
                    wake.notify_one();
                }
            }
            Err(e) => {
                // Nothing acknowledged: the requests answer 503 and GitHub
                // may redeliver; the worker's claims run out and it tries
                // again. A commit whose sync failed is in the log but not
                // known to be on disk: this replica answers 503 to every
                // write from then on and `/readyz` fails until it restarts;
                // after the restart SQLite recovers whatever of the log is
                // whole, and a redelivery of the rest is new again.
                let error = e.to_string();
                for (_, reply) in self.inserts {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in self.finishes {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in self.claimers {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Answers each durable new delivery with whether it was new, and hands
/// the new ones that had room to the worker; `true` when any was new.
fn hand_over(
    new: Vec<NewDelivery>,
    inserts: Vec<(Option<Box<Reserved>>, Reply<bool>)>,
    fresh: Vec<bool>,
) -> bool {
    let mut any = false;
    for ((delivery, (handed, reply)), is_new) in new.into_iter().zip(inserts).zip(fresh) {
        if let (true, Some(handed)) = (is_new, handed) {
            handed.permit.send(Handed {
                item: InboxItem {
                    id: delivery.id,
                    event: delivery.event,
                    payload: String::new(),
                    received_at: delivery.received_at,
                    state: DeliveryState::Pending,
                    attempts: 0,
                    last_error: None,
                    damaged: None,
                },
                claimed_at: handed.claimed_at,
                parsed: handed.parsed,
            });
        }
        any |= is_new;
        let _ = reply.send(Ok(is_new));
    }
    any
}

#[cfg(test)]
pub(crate) fn test_delivery(n: u32) -> (NewDelivery, Parsed) {
    let body = format!("{{\"n\":{n}}}");
    let new = NewDelivery {
        id: DeliveryId::new(format!("d{n}")),
        event: "ping".into(),
        payload: crate::store::Payload::compress(&body),
        received_at: Utc::now(),
        claim: None,
    };
    (new, crate::webhook::events::parse("ping", &body))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::SqliteStore;

    use super::test_delivery as delivery;

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

    /// A request dropped while the writer's queue is full (its client
    /// gave up) must not leave its delivery counted as on its way to the
    /// database: the worker would never take the handoff again.
    #[tokio::test]
    async fn a_write_dropped_before_the_queue_took_it_leaves_no_backlog() {
        let (hs, hr) = handoff(Replica::new("me", Duration::from_secs(15)), 1);
        let (tx, _queue) = mpsc::channel::<Op>(1);
        let (reply, _answer) = oneshot::channel();
        tx.send(Op::Finish {
            results: Vec::new(),
            reply,
        })
        .await
        .unwrap_or_else(|_| panic!("the queue takes one"));
        // The worker fell behind: deliveries go to the database unclaimed.
        hs.backlog.on.store(true, Ordering::Release);
        let writer = InboxWriter {
            tx,
            handoff: Some(hs),
        };
        let (d, parsed) = delivery(1);
        let write = tokio::time::timeout(Duration::from_millis(50), writer.write(d, parsed)).await;
        assert!(write.is_err(), "the full queue kept it waiting");
        assert_eq!(hr.backlog.unsettled.load(Ordering::Acquire), 0);
        assert!(hr.before_claim().settled);
    }

    /// The writer commits the next group while the last one's sync is
    /// still running, and answers each only once its sync is done (fails
    /// if the writer waits for a group's sync before the next commit).
    #[tokio::test]
    async fn the_next_group_commits_while_the_last_one_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(
            SqliteStore::open(&dir.path().join("convoy.db"))
                .await
                .unwrap(),
        );
        let store: Arc<dyn Store> = sqlite.clone();
        let writer = InboxWriter::spawn(store.clone(), Arc::new(Notify::new()), None);
        let hold = sqlite.hold_log_syncs();
        let send = |n: u32| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let (new, parsed) = delivery(n);
                writer.write(new, parsed).await
            })
        };
        let visible = |n: u32| {
            let store = store.clone();
            async move {
                let id = DeliveryId::new(format!("d{n}"));
                let deadline = Instant::now() + Duration::from_secs(10);
                while store.delivery(&id).await.unwrap().is_none() {
                    assert!(Instant::now() < deadline, "d{n} was never committed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let first = send(1);
        visible(1).await;
        let second = send(2);
        visible(2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !first.is_finished() && !second.is_finished(),
            "answered before the sync"
        );
        drop(hold);
        assert!(first.await.unwrap().unwrap());
        assert!(second.await.unwrap().unwrap());
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
            let (new, parsed) = delivery(n);
            assert!(writer.write(new, parsed).await.unwrap());
        }
        assert!(handed.backlog(), "the third found no room");
        let taken = handed.take(10).await;
        let ids: Vec<&str> = taken.iter().map(|h| h.item.id.as_str()).collect();
        assert_eq!(ids, vec!["d1", "d2"]);
        assert!(
            matches!(taken[0].parsed, Ok(Some(_))),
            "the event as the intake parsed it"
        );
        assert_eq!(taken[0].item.payload, "", "a parsed body is not kept");
        // While the backlog lasts, new deliveries wait in the database too
        // (behind the older ones), though there is room again.
        let (new, parsed) = delivery(4);
        assert!(writer.write(new, parsed).await.unwrap());
        assert!(handed.take(10).await.is_empty());
        assert_eq!(
            claimable(store.as_ref()).await,
            vec!["d3", "d4"],
            "the handed ones are claimed for this replica"
        );
        // The worker's claim took everything due (here "other" took it):
        // the backlog ends, and one more claim is owed before memory.
        let mark = handed.before_claim();
        handed.after_claim(mark, true);
        assert!(!handed.backlog());
        assert!(handed.database_first());
        let (new, parsed) = delivery(5);
        assert!(writer.write(new, parsed).await.unwrap());
        assert_eq!(handed.take(10).await.len(), 1, "handed again");
        assert!(claimable(store.as_ref()).await.is_empty());
        // Nothing was on its way to the database when this claim began.
        handed.after_claim(handed.before_claim(), true);
        assert!(!handed.database_first());
    }

    /// A delivery on its way to the database when the backlog ends may be
    /// missed by the claim that ended it, and by any claim begun before it
    /// is committed: the claim owed is paid only by one begun after.
    #[tokio::test]
    async fn the_claim_owed_after_a_backlog_waits_for_deliveries_on_their_way() {
        let (tx, rx) = handoff(Replica::new("me", Duration::from_secs(15)), 1);
        let mut kept = Vec::new();
        for n in 1..=2 {
            let (mut new, parsed) = delivery(n);
            let reserved = tx.reserve(&mut new, parsed);
            assert_eq!(reserved.is_some(), n == 1, "room for one");
            kept.push(reserved);
        }
        assert!(rx.backlog());
        // The second is on its way to the commit.
        let early = rx.before_claim();
        rx.after_claim(early, false);
        assert!(rx.backlog(), "a full batch: more may be due");
        rx.after_claim(early, true);
        assert!(!rx.backlog() && rx.database_first());
        rx.after_claim(rx.before_claim(), true);
        assert!(
            rx.database_first(),
            "begun before the delivery was committed"
        );
        tx.backlog.settled(1);
        rx.after_claim(rx.before_claim(), true);
        assert!(!rx.database_first());
    }

    #[tokio::test]
    async fn a_redelivery_is_neither_stored_nor_handed_over_again() {
        let (_dir, _store, writer, handed) = writer(8).await;
        let (new, parsed) = delivery(1);
        let (_, again) = delivery(1);
        assert!(writer.write(new.clone(), parsed).await.unwrap());
        assert!(!writer.write(new, again).await.unwrap());
        assert_eq!(handed.take(10).await.len(), 1);
    }

    #[tokio::test]
    async fn outcomes_and_claims_go_through_the_group_commit() {
        let (_dir, store, writer, handed) = writer(1).await;
        for n in 1..=2 {
            let (new, parsed) = delivery(n);
            writer.write(new, parsed).await.unwrap();
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
            .finish(
                "me",
                vec![
                    (first.clone(), DeliveryOutcome::Done),
                    (ids[0].clone(), DeliveryOutcome::Done),
                ],
            )
            .await
            .unwrap();
        for id in [first, ids[0].clone()] {
            let item = store.delivery(&id).await.unwrap().unwrap();
            assert_eq!(item.state, DeliveryState::Done);
        }
    }
}
