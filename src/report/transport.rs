//! The reporter's transport (SPEC 7.5): takes the newest desired body per
//! (rollout, object) from the engine's side without ever blocking it, and
//! delivers it to GitHub coalesced, paced per installation and retried
//! through outages. Rendering is elsewhere; this only moves bodies.
//!
//! The decisions are in [`schedule`] (pure, tested with a hand-moved clock);
//! this file is the thin I/O loop. What was sent is recorded in a
//! [`ledger::ReportLedger`], so after a restart the caller re-derives the
//! desired bodies from stored rollout state, hands them over again, and
//! only what GitHub does not already show is sent.

pub mod ledger;
pub mod schedule;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::github::limits::hidden_marker;
use crate::github::{
    CheckRunUpdate, GitHubApi, GitHubError, IssueFilter, IssueState, IssueUpdate, NewIssue,
};
pub use ledger::{LedgerEntry, LedgerError, MemoryLedger, ReportLedger, SqliteLedger};
pub use schedule::{
    DEFAULT_EDIT_BURST, DEFAULT_EDIT_REFILL, Desired, Importance, Job, Next, PacingConfig,
    REPOSITORY_SCOPE, ReportKey, ReportObject, Scheduler,
};

/// Asked right before each send whether this process may still report the
/// key's rollout (several replicas: only the one driving a rollout may).
pub type SendGate =
    Arc<dyn Fn(ReportKey) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

struct Shared {
    sched: Mutex<Scheduler>,
    wake: Notify,
    start: tokio::time::Instant,
    stopped: AtomicBool,
    gate: std::sync::OnceLock<SendGate>,
}

impl Shared {
    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The handle the engine side holds. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Reads the ledger and starts the delivery loop on the current tokio
    /// runtime. The loop ends after [`Transport::stop`].
    pub async fn start(
        api: Arc<dyn GitHubApi>,
        ledger: Arc<dyn ReportLedger>,
        cfg: PacingConfig,
    ) -> Result<(Transport, JoinHandle<()>), LedgerError> {
        let mut sched = Scheduler::new(cfg);
        for (key, entry) in ledger.load_all().await? {
            sched.restore(key, entry.object_id, entry.digest);
        }
        let shared = Arc::new(Shared {
            sched: Mutex::new(sched),
            wake: Notify::new(),
            start: tokio::time::Instant::now(),
            stopped: AtomicBool::new(false),
            gate: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(run(shared.clone(), api, ledger));
        Ok((Transport { shared }, task))
    }

    /// Hands over the newest desired state of one object. Never blocks on
    /// GitHub; an unchanged body is dropped here.
    pub fn desire(&self, key: ReportKey, desired: Desired, importance: Importance) {
        let now = self.shared.now();
        self.shared.sched().desire(key, desired, importance, now);
        self.shared.wake.notify_one();
    }

    /// Bodies not yet on GitHub (waiting or being sent).
    pub fn pending(&self) -> usize {
        self.shared.sched().pending()
    }

    /// The GitHub id of a key's comment or check run, once known.
    pub fn object_id(&self, key: &ReportKey) -> Option<u64> {
        self.shared.sched().object_id(key)
    }

    /// Waits until nothing is pending (tests; graceful shutdown with a
    /// timeout around it).
    pub async fn wait_idle(&self) {
        while self.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Installs the check made before every send (set once). A body the
    /// gate refuses is dropped with everything pending for its key: after a
    /// pause, a replica that lost a rollout must not send what it rendered
    /// before over what the new owner shows.
    pub fn set_gate(&self, gate: SendGate) {
        let _ = self.shared.gate.set(gate);
    }

    /// Stops the loop; sends in flight finish.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

async fn run(shared: Arc<Shared>, api: Arc<dyn GitHubApi>, ledger: Arc<dyn ReportLedger>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        let next = {
            let now = shared.now();
            shared.sched().next(now)
        };
        match next {
            Next::Send(jobs) => {
                for job in jobs {
                    tokio::spawn(deliver(shared.clone(), api.clone(), ledger.clone(), job));
                }
            }
            Next::WaitUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.start + at) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            Next::Idle => shared.wake.notified().await,
        }
    }
}

enum Outcome {
    Sent(u64),
    AlreadyShown(Option<u64>),
    Failed(GitHubError),
}

async fn deliver(
    shared: Arc<Shared>,
    api: Arc<dyn GitHubApi>,
    ledger: Arc<dyn ReportLedger>,
    job: Job,
) {
    if let Some(gate) = shared.gate.get()
        && !gate(job.key.clone()).await
    {
        tracing::info!(
            rollout = %job.key.rollout,
            "another replica reports this rollout now; dropping this one's update"
        );
        shared.sched().forget(&job.key);
        shared.wake.notify_one();
        return;
    }
    let outcome = execute(api.as_ref(), ledger.as_ref(), &job).await;
    let now = shared.now();
    {
        let mut sched = shared.sched();
        match outcome {
            Outcome::Sent(id) => sched.sent(&job, id, now),
            Outcome::AlreadyShown(id) => sched.already_shown(&job, id),
            Outcome::Failed(e) if e.is_transient() => {
                tracing::warn!(
                    rollout = %job.key.rollout,
                    repo = %job.key.repo,
                    error = %e,
                    "GitHub update delayed"
                );
                sched.failed(job, now, fastrand::f64());
            }
            Outcome::Failed(e) => {
                tracing::error!(
                    rollout = %job.key.rollout,
                    repo = %job.key.repo,
                    error = %e,
                    "GitHub refused an update; it will not be retried"
                );
                sched.refused(&job);
            }
        }
    }
    shared.wake.notify_one();
}

async fn execute(api: &dyn GitHubApi, ledger: &dyn ReportLedger, job: &Job) -> Outcome {
    let key = &job.key;
    let known = match ledger.get(key).await {
        Ok(k) => k,
        Err(e) => {
            // The ledger only saves requests; without it we still deliver.
            tracing::warn!(error = %e, "report ledger unreadable");
            None
        }
    };
    if let Some(k) = &known
        && k.digest == job.digest
    {
        return Outcome::AlreadyShown(k.object_id);
    }
    let object_id = job.object_id.or(known.and_then(|k| k.object_id));
    let inst = key.installation;
    let result: Result<u64, GitHubError> = match (&key.object, &job.desired) {
        (ReportObject::Comment { issue }, Desired::Comment { body }) => {
            deliver_comment(api, job, *issue, body, object_id).await
        }
        (ReportObject::CheckRun { .. }, Desired::CheckRun(run)) => match object_id {
            Some(id) => {
                let mut update = CheckRunUpdate::from(run.as_ref());
                // GitHub appends annotations on every update; they went
                // with the create.
                if let Some(o) = &mut update.output {
                    o.annotations.clear();
                }
                api.update_check_run(inst, &key.repo, id, &update)
                    .await
                    .map(|r| r.id)
            }
            None => api
                .create_check_run(inst, &key.repo, run)
                .await
                .map(|r| r.id),
        },
        (ReportObject::Issue { label }, Desired::Issue { title, body, open }) => {
            match deliver_issue(api, job, label, title, body, *open, object_id).await {
                Ok(Some(n)) => Ok(n),
                // Closed and nothing to close: GitHub already shows that.
                Ok(None) => return Outcome::AlreadyShown(None),
                Err(e) => Err(e),
            }
        }
        _ => Err(GitHubError::Request(format!(
            "a {} body cannot be shown as {:?}",
            match job.desired {
                Desired::Comment { .. } => "comment",
                Desired::CheckRun(_) => "check-run",
                Desired::Issue { .. } => "issue",
            },
            key.object
        ))),
    };
    match result {
        Ok(id) => {
            let entry = LedgerEntry {
                object_id: Some(id),
                digest: job.digest.clone(),
            };
            if let Err(e) = ledger.record(key, &entry).await {
                tracing::warn!(error = %e, "report ledger not updated");
            }
            Outcome::Sent(id)
        }
        Err(e) => Outcome::Failed(e),
    }
}

/// The tracking issue: the known one, else the open one with the label,
/// else a new one (only when it should be open). `None`: nothing exists and
/// nothing should.
async fn deliver_issue(
    api: &dyn GitHubApi,
    job: &Job,
    label: &str,
    title: &str,
    body: &str,
    open: bool,
    object_id: Option<u64>,
) -> Result<Option<u64>, GitHubError> {
    let key = &job.key;
    let inst = key.installation;
    let update = IssueUpdate {
        title: Some(title.to_owned()),
        body: Some(body.to_owned()),
        state: Some(if open {
            IssueState::Open
        } else {
            IssueState::Closed
        }),
        labels: None,
    };
    let mut target = object_id;
    if target.is_none() {
        target = api
            .list_issues_by_label(inst, &key.repo, label, IssueFilter::Open)
            .await?
            .first()
            .map(|i| i.number);
    }
    if let Some(number) = target {
        match api.update_issue(inst, &key.repo, number, &update).await {
            Ok(i) => return Ok(Some(i.number)),
            Err(GitHubError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if !open {
        return Ok(None);
    }
    let issue = NewIssue {
        title: title.to_owned(),
        body: body.to_owned(),
        labels: vec![label.to_owned()],
    };
    api.create_issue(inst, &key.repo, &issue)
        .await
        .map(|i| Some(i.number))
}

async fn deliver_comment(
    api: &dyn GitHubApi,
    job: &Job,
    issue: u64,
    body: &str,
    object_id: Option<u64>,
) -> Result<u64, GitHubError> {
    let key = &job.key;
    let inst = key.installation;
    if let Some(id) = object_id {
        match api.update_comment(inst, &key.repo, id, body).await {
            Ok(c) => return Ok(c.id),
            // Deleted by a human: post it again.
            Err(GitHubError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    } else if let Some(marker) = hidden_marker(body) {
        // No id known (first send, or a crash before the ledger was
        // written): the comment may exist already.
        // Only a bot's: a person may quote the marker, and convoy must not
        // take over (or fail to edit) their comment.
        let existing = api.list_comments(inst, &key.repo, issue).await?;
        if let Some(c) = existing.iter().find(|c| {
            c.user
                .as_ref()
                .is_some_and(|u| u.kind.as_deref() == Some("Bot"))
                && c.body.as_deref().is_some_and(|b| b.contains(marker))
        }) {
            if c.body.as_deref() == Some(body) {
                return Ok(c.id);
            }
            return api
                .update_comment(inst, &key.repo, c.id, body)
                .await
                .map(|c| c.id);
        }
    }
    api.create_comment(inst, &key.repo, issue, body)
        .await
        .map(|c| c.id)
}
