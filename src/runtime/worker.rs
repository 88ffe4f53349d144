//! The inbox worker: takes stored deliveries in order, turns each into a
//! typed event and hands it to the handler. A failure is retried with
//! backoff; after `MAX_ATTEMPTS` the delivery is kept as `failed` with its
//! error. Nothing is lost: the inbox row stays either way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::domain::{DeliveryId, InstallationId};
use crate::metrics::Metrics;
use crate::runtime::intake::{HandoffReceiver, InboxWriter, IntakeError};
use crate::runtime::leases::{DEFAULT_LEASE, Replica};
use crate::store::{ClaimDue, DeliveryOutcome, InboxItem, Store, StoreError};
use crate::webhook::events::{self, Parsed};
use crate::webhook::{Envelope, Event};

/// Attempts before a delivery is kept as failed.
pub const MAX_ATTEMPTS: u32 = 8;
/// Deliveries taken per round.
const BATCH: u32 = 64;
/// The longest the worker sleeps without looking at the inbox: a wake-up
/// may be missed, and deliveries another replica took in wake nobody here.
/// Also how often a worker busy with handed deliveries looks at the
/// database, where retries fall due.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Why a round stopped: the inbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: GitHub or git unreachable, database busy.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help; kept as failed at once.
    #[error("{0}")]
    Permanent(String),
}

/// What acts on typed events. The worker owns retries and bookkeeping; the
/// handler only acts.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    async fn handle(&self, delivery: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError>;
}

/// Records installations and the repositories each can act on, then passes
/// repository events on to `next` (the rollout side, when present).
pub struct Dispatcher {
    store: Arc<dyn Store>,
    next: Option<Arc<dyn EventHandler>>,
    /// Repositories known to belong to an installation, so a busy
    /// repository's events do not each cost a database write.
    known: std::sync::Mutex<std::collections::HashMap<crate::domain::RepoName, InstallationId>>,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, next: Option<Arc<dyn EventHandler>>) -> Dispatcher {
        Dispatcher {
            store,
            next,
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn forget(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

#[async_trait]
impl EventHandler for Dispatcher {
    async fn handle(&self, delivery: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError> {
        let now = Utc::now();
        let store = &self.store;
        if matches!(
            envelope.event,
            Event::Installation(_) | Event::InstallationRepositories(_)
        ) {
            // Repositories may move or go: learn them again from the store.
            self.forget();
        }
        match (&envelope.event, envelope.installation) {
            (Event::Ping { zen, hook_id }, _) => {
                tracing::info!(?zen, ?hook_id, "ping from GitHub");
            }
            (Event::Installation(e), Some(id)) => match e.action.as_str() {
                "deleted" => store.delete_installation(id).await.map_err(transient)?,
                "suspend" | "unsuspend" => {
                    store
                        .upsert_installation(id, &e.account, now)
                        .await
                        .map_err(transient)?;
                    // Dated by GitHub, so that a change processed late (a
                    // retry, or another replica's) cannot undo a newer one.
                    let applied = store
                        .set_installation_suspended(id, e.action == "suspend", e.changed_at, now)
                        .await
                        .map_err(transient)?;
                    if !applied {
                        tracing::info!(
                            installation = id.0,
                            action = %e.action,
                            changed_at = ?e.changed_at,
                            "a newer suspension change is recorded already; this older one is ignored"
                        );
                    }
                }
                _ => {
                    store
                        .upsert_installation(id, &e.account, now)
                        .await
                        .map_err(transient)?;
                    store
                        .add_installation_repos(id, &e.repositories)
                        .await
                        .map_err(transient)?;
                }
            },
            (Event::InstallationRepositories(e), Some(id)) => {
                store
                    .upsert_installation(id, &e.account, now)
                    .await
                    .map_err(transient)?;
                store
                    .add_installation_repos(id, &e.added)
                    .await
                    .map_err(transient)?;
                store
                    .remove_installation_repos(id, &e.removed)
                    .await
                    .map_err(transient)?;
            }
            (event, Some(id)) => {
                // Any repository event proves the installation can act on
                // it, which also covers installations made before convoy ran.
                if let Some(repo) = event.repo() {
                    let known = self
                        .known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(repo)
                        == Some(&id);
                    if !known {
                        store
                            .add_installation_repos(id, std::slice::from_ref(repo))
                            .await
                            .map_err(transient)?;
                        self.known
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(repo.clone(), id);
                    }
                }
            }
            (_, None) => {}
        }
        if let Some(next) = &self.next {
            next.handle(delivery, envelope).await?;
        }
        Ok(())
    }
}

/// Several handlers, each given every event in order; the first error
/// stops the chain (and the delivery is retried whole, so handlers must be
/// idempotent — the rollout side is, by the commit's uniqueness).
pub struct Chain(pub Vec<Arc<dyn EventHandler>>);

#[async_trait]
impl EventHandler for Chain {
    async fn handle(&self, delivery: &DeliveryId, envelope: &Envelope) -> Result<(), HandlerError> {
        for handler in &self.0 {
            handler.handle(delivery, envelope).await?;
        }
        Ok(())
    }
}

/// The pure decision after a failed attempt: when to try again, or give up.
/// `attempts` counts the attempts made before this one.
pub fn after_failure(error: &HandlerError, attempts: u32, now: DateTime<Utc>) -> DeliveryOutcome {
    let attempt = attempts + 1;
    match error {
        HandlerError::Permanent(msg) => DeliveryOutcome::Failed(msg.clone()),
        HandlerError::Transient(msg) if attempt >= MAX_ATTEMPTS => {
            DeliveryOutcome::Failed(format!("gave up after {attempt} attempts: {msg}"))
        }
        HandlerError::Transient(msg) => {
            // 2 s, 4 s, 8 s … capped at 10 minutes.
            let secs = (1u64 << attempt.min(20)).min(600);
            DeliveryOutcome::Retry {
                error: msg.clone(),
                at: now + chrono::Duration::seconds(secs as i64),
            }
        }
    }
}

pub struct Worker {
    store: Arc<dyn Store>,
    handler: Arc<dyn EventHandler>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// Deliveries are claimed as this replica, for a lease each.
    replica: Replica,
    /// Deliveries handed over by this process's intake, and the writer
    /// that commits outcomes together with the intake's groups.
    intake: Option<(HandoffReceiver, InboxWriter)>,
    /// When the database was last asked for due deliveries.
    last_claim: std::sync::Mutex<std::time::Instant>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        handler: Arc<dyn EventHandler>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Worker {
        Worker {
            store,
            handler,
            metrics,
            wake,
            replica: Replica::new(format!("local-{:08x}", fastrand::u32(..)), DEFAULT_LEASE),
            intake: None,
            last_claim: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Takes deliveries handed over by the intake (claimed for this
    /// worker's replica: make it the one the handoff claims for) and
    /// writes outcomes through the intake's group commit.
    pub fn with_intake(mut self, handoff: HandoffReceiver, writer: InboxWriter) -> Worker {
        self.intake = Some((handoff, writer));
        self
    }

    /// Claims deliveries as `replica` (beside other replicas on the same
    /// database).
    pub fn as_replica(mut self, replica: Replica) -> Worker {
        self.replica = replica;
        self
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.round().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "reading the inbox failed; retrying"),
            }
            let wait = match self.store.next_delivery_due().await {
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Processes one batch of due deliveries; `true` when there was any.
    /// The batch is claimed first, so no other replica takes the same
    /// deliveries, and the claims are renewed while the batch is worked on;
    /// the claims of a replica that died run out and another takes them.
    pub async fn round(&self) -> Result<bool, RoundError> {
        let Some(Batch {
            items,
            mut parsed,
            mut claimed_at,
        }) = self.next_batch().await?
        else {
            return Ok(false);
        };
        if renew_first(claimed_at.elapsed(), self.replica.lease) {
            // Handed deliveries that waited: their claims began before this
            // batch, and the renewer's first turn (a third of a lease from
            // now) could come after they ran out.
            let started = std::time::Instant::now();
            let ids: Vec<DeliveryId> = items.iter().map(|i| i.id.clone()).collect();
            match self
                .store
                .renew_delivery_claims(&self.replica.id, &ids, self.replica.until(Utc::now()))
                .await
            {
                Ok(()) => claimed_at = started,
                Err(e) => tracing::warn!(error = %e, "renewing delivery claims failed"),
            }
        }
        let (done_tx, done_rx) = watch::channel(0usize);
        // Until when (by this process's clock) the claims are surely ours.
        let held = std::sync::Mutex::new(claimed_at + self.replica.lease);
        let renewer = self.renew_claims(&items, done_rx, &held);
        let work = async {
            let mut results = Vec::with_capacity(items.len());
            for (n, item) in items.iter().enumerate() {
                let until = *held.lock().unwrap_or_else(|e| e.into_inner());
                if !claim_still_ours(std::time::Instant::now(), until, self.replica.lease) {
                    // Paused or cut off past the lease: another replica may
                    // have taken the rest; leave it to whoever holds it.
                    tracing::warn!(
                        left = items.len() - n,
                        "delivery claims lapsed; leaving the rest of the batch"
                    );
                    break;
                }
                let outcome = self
                    .process(item, parsed.get_mut(n).and_then(Option::take))
                    .await;
                let _ = done_tx.send(n + 1);
                results.push((item, outcome));
            }
            drop(done_tx);
            results
        };
        let (processed, ()) = tokio::join!(work, renewer);
        let mut results = Vec::with_capacity(processed.len());
        for (item, outcome) in processed {
            let label = match &outcome {
                DeliveryOutcome::Done => "done",
                DeliveryOutcome::Dropped(_) => "dropped",
                DeliveryOutcome::Retry { .. } => "retry",
                DeliveryOutcome::Failed(_) => "failed",
            };
            self.metrics.count_delivery(&item.event, label);
            if !matches!(outcome, DeliveryOutcome::Retry { .. }) {
                let latency = (Utc::now() - item.received_at)
                    .num_microseconds()
                    .unwrap_or(0);
                self.metrics
                    .processing_seconds
                    .observe(latency.max(0) as f64 / 1e6);
            }
            results.push((item.id.clone(), outcome));
        }
        match self.grouped_writer() {
            Some(writer) => writer.finish(&self.replica.id, results).await?,
            None => {
                self.store
                    .finish_deliveries(&self.replica.id, &results, Utc::now())
                    .await?
            }
        }
        Ok(true)
    }

    /// The intake's writer, when this worker's inbox writes should join its
    /// group commits (`Store::one_writer`).
    fn grouped_writer(&self) -> Option<&InboxWriter> {
        self.intake
            .as_ref()
            .filter(|_| self.store.one_writer())
            .map(|(_, writer)| writer)
    }

    /// The next batch and when its claims began (by this process's clock):
    /// handed deliveries first, as they are the oldest this replica has;
    /// the database when none are waiting, and at least every `IDLE_POLL`
    /// so that retries falling due there are not starved.
    async fn next_batch(&self) -> Result<Option<Batch>, RoundError> {
        let last_claim = *self.last_claim.lock().unwrap_or_else(|e| e.into_inner());
        let database_first = self
            .intake
            .as_ref()
            .is_some_and(|(handoff, _)| handoff.database_first());
        let database_turn = last_claim.elapsed() >= IDLE_POLL || database_first;
        if let (Some((handoff, _)), false) = (&self.intake, database_turn)
            && let Some(batch) = handed_batch(handoff.take(BATCH as usize).await)
        {
            return Ok(Some(batch));
        }
        let started = std::time::Instant::now();
        let now = Utc::now();
        let mark = self
            .intake
            .as_ref()
            .map(|(handoff, _)| handoff.before_claim());
        let items = match self.grouped_writer() {
            // In the intake's next commit rather than a transaction of its
            // own: one sync of the disk for both.
            Some(writer) => {
                let claim = ClaimDue {
                    owner: self.replica.id.clone(),
                    until: self.replica.until(now),
                    limit: BATCH,
                };
                let ids = writer.claim(claim).await?;
                if ids.is_empty() {
                    Vec::new()
                } else {
                    self.store.deliveries(&ids).await?
                }
            }
            None => {
                self.store
                    .claim_deliveries(&self.replica.id, now, self.replica.until(now), BATCH)
                    .await?
            }
        };
        *self.last_claim.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        if let Some((handoff, _)) = &self.intake {
            if let Some(mark) = mark {
                handoff.after_claim(mark, items.len() < BATCH as usize);
            }
            if items.is_empty() && !handoff.database_first() {
                return Ok(handed_batch(handoff.take(BATCH as usize).await));
            }
        }
        Ok((!items.is_empty()).then(|| Batch {
            parsed: Vec::new(),
            items,
            claimed_at: started,
        }))
    }

    /// Renews the claims of the batch's deliveries not yet processed, every
    /// third of a lease, until the batch is done (`done` closes).
    async fn renew_claims(
        &self,
        items: &[InboxItem],
        mut done: watch::Receiver<usize>,
        held: &std::sync::Mutex<std::time::Instant>,
    ) {
        // An interval, not a sleep: items finishing must not put the next
        // renewal off.
        let mut tick = tokio::time::interval(self.replica.renew_every());
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = done.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let from = *done.borrow();
            let left: Vec<DeliveryId> = items[from.min(items.len())..]
                .iter()
                .map(|i| i.id.clone())
                .collect();
            let started = std::time::Instant::now();
            let until = self.replica.until(Utc::now());
            match self
                .store
                .renew_delivery_claims(&self.replica.id, &left, until)
                .await
            {
                Ok(()) => {
                    let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                    // A claim that lapsed (this process was paused past
                    // it) is not ours to revive: someone may hold it now.
                    if started < *h {
                        *h = started + self.replica.lease;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing delivery claims failed"),
            }
        }
    }

    /// Processes one delivery; `parsed` is its event when the intake
    /// already parsed it.
    async fn process(&self, item: &InboxItem, parsed: Option<Parsed>) -> DeliveryOutcome {
        let span = tracing::info_span!(
            "delivery",
            delivery = %item.id,
            event = %item.event,
            attempt = item.attempts + 1,
            repo = tracing::field::Empty,
            installation = tracing::field::Empty,
        );
        async {
            if let Some(damage) = &item.damaged {
                // Retrying reads the same bytes.
                tracing::error!(%damage, "the stored delivery cannot be read back; kept as failed");
                return DeliveryOutcome::Failed(damage.clone());
            }
            let parsed =
                parsed.unwrap_or_else(|| events::parse(&item.event, &item.payload));
            let envelope = match parsed {
                Ok(Some(envelope)) => envelope,
                Ok(None) => {
                    tracing::debug!("event not handled by convoy; dropped");
                    return DeliveryOutcome::Dropped(format!(
                        "`{}` events are not handled by convoy",
                        item.event
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delivery cannot be parsed; kept as failed");
                    return DeliveryOutcome::Failed(e.to_string());
                }
            };
            let span = tracing::Span::current();
            if let Some(repo) = envelope.event.repo() {
                span.record("repo", tracing::field::display(repo));
            }
            if let Some(id) = envelope.installation {
                span.record("installation", id.0);
            }
            if envelope.installation.is_none() && !matches!(envelope.event, Event::Ping { .. }) {
                tracing::info!("delivery without installation; dropped");
                return DeliveryOutcome::Dropped("the delivery names no installation".into());
            }
            match CatchPanic(self.handler.handle(&item.id, &envelope)).await {
                Ok(Ok(())) => DeliveryOutcome::Done,
                Ok(Err(e)) => {
                    let outcome = after_failure(&e, item.attempts, Utc::now());
                    tracing::warn!(error = %e, kept_as_failed = matches!(outcome, DeliveryOutcome::Failed(_)), "processing the delivery failed");
                    outcome
                }
                Err(panic) => {
                    // A bug, not the delivery's fault or a passing one:
                    // retrying would panic again. Kept as failed, and the
                    // worker goes on with the next delivery instead of
                    // ending and leaving every later one unprocessed.
                    tracing::error!(%panic, "processing the delivery panicked; kept as failed");
                    DeliveryOutcome::Failed(format!(
                        "convoy failed internally while processing it (a bug; see its log): {panic}"
                    ))
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// A handler's future, with a panic while it runs turned into an error
/// carrying the panic's message. The future is not polled again after it
/// panicked.
struct CatchPanic<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        // The handler's state may be left half-changed by the panic; the
        // shared state it reaches is in the database (transactions) or
        // behind mutexes whose poisoning is ignored on purpose.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => std::task::Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// What a panic said, when it said it with text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Whether a batch whose claims began `age` ago must renew them before it
/// starts: the renewer's first turn comes a third of a lease after the
/// start, and the claims must still hold then (with the quarter of a lease
/// `claim_still_ours` keeps). Only claims still held are renewed: one that
/// ran out is left to whoever takes it. Pure.
pub fn renew_first(age: Duration, lease: Duration) -> bool {
    age >= lease / 3 && age < lease - lease / 4
}

/// Deliveries to process together.
struct Batch {
    items: Vec<InboxItem>,
    /// The events the intake parsed, by position in `items` (shorter, or
    /// empty, when it parsed none).
    parsed: Vec<Option<Parsed>>,
    /// When the oldest of their claims began, by this process's clock.
    claimed_at: std::time::Instant,
}

/// Handed deliveries as a batch.
fn handed_batch(handed: Vec<crate::runtime::intake::Handed>) -> Option<Batch> {
    let claimed_at = handed.iter().map(|h| h.claimed_at).min()?;
    let (items, parsed) = handed.into_iter().map(|h| (h.item, Some(h.parsed))).unzip();
    Some(Batch {
        items,
        parsed,
        claimed_at,
    })
}

/// Whether a batch's claims, surely held until `until`, leave enough of the
/// lease (a quarter) to start processing another delivery. Pure.
pub fn claim_still_ours(
    now: std::time::Instant,
    until: std::time::Instant,
    lease: Duration,
) -> bool {
    now + lease / 4 < until
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::runtime::intake::{handoff, test_delivery};
    use crate::store::SqliteStore;

    #[test]
    fn handed_deliveries_that_waited_renew_their_claims_before_they_start() {
        let lease = Duration::from_secs(15);
        assert!(!super::renew_first(Duration::ZERO, lease), "fresh");
        assert!(!super::renew_first(Duration::from_secs(4), lease));
        assert!(super::renew_first(Duration::from_secs(5), lease));
        assert!(super::renew_first(Duration::from_secs(11), lease));
        assert!(
            !super::renew_first(Duration::from_millis(11_250), lease),
            "too little left to act on: not revived"
        );
    }

    #[test]
    fn a_claim_needs_a_quarter_of_the_lease_left() {
        let lease = Duration::from_secs(15);
        let t0 = std::time::Instant::now();
        let until = t0 + lease;
        assert!(super::claim_still_ours(t0, until, lease));
        assert!(super::claim_still_ours(
            t0 + Duration::from_secs(11),
            until,
            lease
        ));
        assert!(!super::claim_still_ours(
            t0 + Duration::from_secs(12),
            until,
            lease
        ));
        assert!(!super::claim_still_ours(
            t0 + Duration::from_secs(60),
            until,
            lease
        ));
    }
    use super::*;

    #[test]
    fn transient_failures_back_off_then_fail() {
        let now = Utc::now();
        let e = HandlerError::Transient("github down".into());
        let DeliveryOutcome::Retry { at, .. } = after_failure(&e, 0, now) else {
            panic!("first failure should retry");
        };
        assert_eq!((at - now).num_seconds(), 2);
        let DeliveryOutcome::Retry { at, .. } = after_failure(&e, 3, now) else {
            panic!("fourth failure should retry");
        };
        assert_eq!((at - now).num_seconds(), 16);
        let DeliveryOutcome::Failed(msg) = after_failure(&e, MAX_ATTEMPTS - 1, now) else {
            panic!("last attempt should fail");
        };
        assert!(msg.contains("gave up after 8 attempts"), "{msg}");
    }

    #[test]
    fn permanent_failures_fail_at_once() {
        let e = HandlerError::Permanent("bad".into());
        assert!(matches!(
            after_failure(&e, 0, Utc::now()),
            DeliveryOutcome::Failed(_)
        ));
    }

    /// Records the deliveries it is given, in order; panics on `d13`.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl EventHandler for Recording {
        async fn handle(&self, delivery: &DeliveryId, _: &Envelope) -> Result<(), HandlerError> {
            // Await once first, so the panic comes from a later poll.
            tokio::task::yield_now().await;
            if delivery.as_str() == "d13" {
                panic!("d13 is cursed");
            }
            self.0.lock().unwrap().push(delivery.as_str().to_owned());
            Ok(())
        }
    }

    /// A delivery whose stored body cannot be read back (its packed row
    /// gone, or its bytes damaged) is kept as failed on its own; the
    /// deliveries claimed with it are processed as usual, instead of the
    /// whole claim failing again each time it runs out.
    #[tokio::test]
    async fn a_delivery_whose_body_cannot_be_read_fails_alone() {
        let WithIntake {
            store,
            worker,
            seen,
            _dir,
            ..
        } = with_intake(8).await;
        // Stored unclaimed, so the worker reads them back from the database.
        let batch: Vec<_> = [21, 22, 23].map(|n| test_delivery(n).0).into();
        store.insert_deliveries(&batch).await.unwrap();
        let raw = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            _dir.path().join("convoy.db").display()
        ))
        .await
        .unwrap();
        for sql in [
            "UPDATE inbox SET body = body + 1000 WHERE delivery_id = 'd22'",
            "UPDATE inbox SET body_len = 3 WHERE delivery_id = 'd23'",
        ] {
            sqlx::query(sql).execute(&raw).await.unwrap();
        }
        raw.close().await;
        while worker.round().await.unwrap() {}
        assert_eq!(*seen.0.lock().unwrap(), ["d21"]);
        for (id, why) in [("d22", "missing"), ("d23", "damaged")] {
            let item = store.delivery(&DeliveryId::new(id)).await.unwrap().unwrap();
            assert_eq!(item.state, crate::store::DeliveryState::Failed, "{id}");
            let error = item.last_error.unwrap_or_default();
            assert!(error.contains(why), "{id}: {error}");
        }
    }

    /// A handler that panics fails its delivery for good, and the worker
    /// goes on with the next ones.
    #[tokio::test]
    async fn a_panicking_handler_fails_its_delivery_and_the_worker_goes_on() {
        let WithIntake {
            store,
            writer,
            worker,
            seen,
            _dir,
        } = with_intake(8).await;
        for n in [12, 13, 14] {
            let (new, parsed) = test_delivery(n);
            assert!(writer.write(new, parsed).await.unwrap());
        }
        while worker.round().await.unwrap() {}
        assert_eq!(*seen.0.lock().unwrap(), ["d12", "d14"]);
        let cursed = store
            .delivery(&DeliveryId::new("d13"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cursed.state, crate::store::DeliveryState::Failed);
        let error = cursed.last_error.unwrap_or_default();
        assert!(error.contains("d13 is cursed"), "{error}");
        // And it still takes new deliveries.
        let (new, parsed) = test_delivery(15);
        assert!(writer.write(new, parsed).await.unwrap());
        while worker.round().await.unwrap() {}
        assert_eq!(*seen.0.lock().unwrap(), ["d12", "d14", "d15"]);
    }

    /// A worker taking deliveries from an intake whose handoff holds
    /// `capacity`, on a SQLite store, recording what it handles.
    struct WithIntake {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        writer: InboxWriter,
        worker: Worker,
        seen: Arc<Recording>,
    }

    async fn with_intake(capacity: usize) -> WithIntake {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("convoy.db"))
                .await
                .unwrap(),
        );
        let replica = Replica::new("me", Duration::from_secs(15));
        let wake = Arc::new(Notify::new());
        let (tx, rx) = handoff(replica.clone(), capacity);
        let writer = InboxWriter::spawn(store.clone(), wake.clone(), Some(tx));
        let seen = Arc::new(Recording::default());
        let worker = Worker::new(store.clone(), seen.clone(), Arc::new(Metrics::new()), wake)
            .as_replica(replica)
            .with_intake(rx, writer.clone());
        WithIntake {
            _dir: dir,
            store,
            writer,
            worker,
            seen,
        }
    }

    /// The worker acts on the event as the intake parsed it, and does not
    /// parse the body again: here the intake's word (an event convoy does
    /// not handle) differs from what the body would give (a ping).
    #[tokio::test]
    async fn a_handed_delivery_is_not_parsed_again() {
        let WithIntake {
            store,
            writer,
            worker,
            seen,
            _dir,
        } = with_intake(8).await;
        let (new, _) = test_delivery(1);
        assert!(writer.write(new, Ok(None)).await.unwrap());
        assert!(worker.round().await.unwrap());
        assert!(seen.0.lock().unwrap().is_empty());
        let item = store
            .delivery(&DeliveryId::new("d1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.state, crate::store::DeliveryState::Dropped);
    }

    /// A delivery that reaches the database unclaimed after the claim that
    /// ended a backlog (it was on its way) is processed before a newer one
    /// handed over in memory.
    #[tokio::test]
    async fn after_a_backlog_the_database_comes_before_memory() {
        let WithIntake {
            store,
            writer,
            worker,
            seen,
            _dir,
        } = with_intake(1).await;

        // d1 handed over; the handoff is then full: d2, d3 to the database.
        for n in 1..=3 {
            let (new, parsed) = test_delivery(n);
            assert!(writer.write(new, parsed).await.unwrap());
        }
        assert!(worker.round().await.unwrap(), "d1, from memory");
        assert!(
            worker.round().await.unwrap(),
            "d2 and d3, from the database"
        );
        // The claim took everything due: the backlog is over. d5 was on its
        // way to the database and arrives now; d4 is handed over after it.
        let (late, _) = test_delivery(5);
        store.insert_deliveries(&[late]).await.unwrap();
        let (new, parsed) = test_delivery(4);
        assert!(writer.write(new, parsed).await.unwrap());
        while worker.round().await.unwrap() {}
        assert_eq!(*seen.0.lock().unwrap(), ["d1", "d2", "d3", "d5", "d4"]);
    }
}
