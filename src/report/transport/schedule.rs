//! The transport's decisions, pure: which desired body goes to GitHub next
//! and when (SPEC 7.5). Time is an input (`now`, time since the transport
//! started); nothing here sleeps or does I/O.
//!
//! Rules:
//! - per key, the newest desired body wins; a body equal to what GitHub
//!   shows (or is about to show) is never sent;
//! - a terminal state goes at once; a change that matters (or a waiting
//!   state) goes at once after a quiet period, else `min_update_interval`
//!   after the previous send; a change of counts alone waits
//!   `progress_interval` after the previous send;
//! - the request budget over time, per object: a token bucket of
//!   `edit_burst` edits refilled one per `edit_refill` (a GCRA, kept as one
//!   time per object). Every send spends a token; edits that are neither
//!   terminal nor waiting (halted, awaiting approval, frozen, paused) wait
//!   for one, and a change of counts alone leaves half the bucket to
//!   changes that matter. So a lone failure is shown within
//!   `min_update_interval` however old the rollout, a storm of them is
//!   coalesced to one edit per `edit_refill`, and an object costs at most
//!   `edit_burst + duration / edit_refill` edits (docs/reporting.md);
//! - all writes of one installation share one pace, `writes_per_minute`,
//!   and the most important waiting body goes first;
//! - a failed send is retried with backoff; the newest body is what is
//!   retried.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::{InstallationId, RepoName, RolloutId};
use crate::github::types::NewCheckRun;

/// Which GitHub object of a rollout a body is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReportObject {
    /// A check run by name. Resuming after `action_required` starts a new
    /// check run of the same name: bump `generation`.
    CheckRun { name: String, generation: u32 },
    /// The rollout's comment on an issue or pull request.
    Comment { issue: u64 },
    /// A repository's tracking issue found by its label (the drift issue,
    /// `convoy-drift`): edited in place, closed when it has nothing to say.
    /// Not tied to one rollout: use [`ReportKey::repository`].
    Issue { label: String },
}

/// One object of one rollout, with where it lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportKey {
    pub installation: InstallationId,
    pub repo: RepoName,
    pub rollout: RolloutId,
    pub object: ReportObject,
}

impl ReportKey {
    /// The key of a repository-level object (no rollout).
    pub fn repository(installation: InstallationId, repo: RepoName, object: ReportObject) -> Self {
        ReportKey {
            installation,
            repo,
            rollout: RolloutId::new(REPOSITORY_SCOPE),
            object,
        }
    }
}

/// The `rollout` of repository-level keys. Not a valid rollout id (those are
/// URL-safe and never start with `-`), so it cannot collide.
pub const REPOSITORY_SCOPE: &str = "-repository-";

/// The state convoy wants GitHub to show for a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Desired {
    /// A comment body (with its hidden marker).
    Comment { body: String },
    /// The whole check run. Annotations are sent only when the check run is
    /// created (GitHub appends annotations on every update).
    CheckRun(Box<NewCheckRun>),
    /// A tracking issue: `open: false` closes it (and creates nothing when
    /// there is none).
    Issue {
        title: String,
        body: String,
        open: bool,
    },
}

impl Desired {
    /// A stable digest of what would be sent.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Desired::Comment { body } => {
                h.update(b"comment\0");
                h.update(body.as_bytes());
            }
            Desired::Issue { title, body, open } => {
                h.update(b"issue\0");
                h.update(title.as_bytes());
                h.update(b"\0");
                h.update(body.as_bytes());
                h.update(if *open { b"\0open" } else { b"\0shut" });
            }
            Desired::CheckRun(run) => {
                h.update(b"check_run\0");
                // Serializing our own struct cannot fail; an empty string
                // would only make the digest less precise.
                h.update(serde_json::to_string(run).unwrap_or_default().as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// How urgent a change is: the engine's own type (its `Effect::Report`
/// carries it), ordered so that the last is the most urgent.
pub use crate::engine::model::Importance;

/// The pace, from the operator's `[github]` section.
#[derive(Clone, Debug)]
pub struct PacingConfig {
    pub min_update_interval: Duration,
    pub progress_interval: Duration,
    pub writes_per_minute: u32,
    /// First retry delay after a failed send; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The request budget over time, per object: at most this many edits
    /// at once after a quiet period...
    pub edit_burst: u32,
    /// ...and one more per this much time. Zero turns the budget off.
    pub edit_refill: Duration,
}

/// The default [`PacingConfig::edit_burst`] and [`PacingConfig::edit_refill`]:
/// two objects per rollout (comment and check run) then cost at most
/// 2 × (14 + 2) edits in a minute and 2 × (14 + 120) in an hour, inside the
/// 40 and 300 requests a 1,000-environment rollout may cost (SPEC 7.5).
pub const DEFAULT_EDIT_BURST: u32 = 14;
pub const DEFAULT_EDIT_REFILL: Duration = Duration::from_secs(30);

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            min_update_interval: Duration::from_secs(5),
            progress_interval: Duration::from_secs(30),
            writes_per_minute: 60,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(5 * 60),
            edit_burst: DEFAULT_EDIT_BURST,
            edit_refill: DEFAULT_EDIT_REFILL,
        }
    }
}

impl PacingConfig {
    pub fn from_config(github: &crate::config::GithubConfig) -> Self {
        PacingConfig {
            min_update_interval: github.min_update_interval,
            progress_interval: github.progress_interval,
            writes_per_minute: github.writes_per_minute,
            // Steady progress (one edit per progress_interval) then never
            // drains the bucket; the burst stays for changes that matter.
            edit_refill: github.progress_interval,
            ..Default::default()
        }
    }

    /// How far ahead of `now` an object's budget time may run while an
    /// edit of this importance still conforms: the whole bucket for a
    /// change that matters, half of it for counts alone.
    fn tolerance(&self, importance: Importance) -> Duration {
        let whole = self
            .edit_refill
            .saturating_mul(self.edit_burst.saturating_sub(1));
        match importance {
            Importance::CountsOnly => whole / 2,
            _ => whole,
        }
    }

    /// Time between two writes of one installation.
    pub fn spacing(&self) -> Duration {
        Duration::from_secs(60) / self.writes_per_minute.max(1)
    }
}

#[derive(Clone, Debug)]
struct Pending {
    desired: Desired,
    digest: String,
    importance: Importance,
    since: Duration,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    /// Digest of what GitHub shows (as far as we know).
    sent: Option<String>,
    object_id: Option<u64>,
    last_sent_at: Option<Duration>,
    pending: Option<Pending>,
    /// Digest of the body being sent right now.
    in_flight: Option<String>,
    failures: u32,
    retry_at: Option<Duration>,
    /// The budget's theoretical arrival time (GCRA): every send moves it
    /// `edit_refill` past `max(it, now)`; an edit conforms while it is at
    /// most the importance's tolerance ahead of now.
    budget_at: Duration,
}

/// A send the I/O loop should perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub key: ReportKey,
    pub desired: Desired,
    pub digest: String,
    pub importance: Importance,
    /// The GitHub id already known for this key.
    pub object_id: Option<u64>,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these now (at most the installation's pace allows).
    Send(Vec<Job>),
    /// Nothing is due before this time.
    WaitUntil(Duration),
    /// Nothing is pending.
    Idle,
}

/// The coalescing and pacing state of all keys.
#[derive(Debug)]
pub struct Scheduler {
    cfg: PacingConfig,
    entries: HashMap<ReportKey, Entry>,
    /// Earliest time the installation may write again.
    next_write: HashMap<InstallationId, Duration>,
}

impl Scheduler {
    pub fn new(cfg: PacingConfig) -> Self {
        Scheduler {
            cfg,
            entries: HashMap::new(),
            next_write: HashMap::new(),
        }
    }

    /// Seeds a key with what GitHub already shows (from the ledger, after a
    /// restart).
    pub fn restore(&mut self, key: ReportKey, object_id: Option<u64>, digest: String) {
        let e = self.entries.entry(key).or_default();
        e.sent = Some(digest);
        e.object_id = object_id.or(e.object_id);
    }

    /// Hands over the newest desired state of a key.
    pub fn desire(
        &mut self,
        key: ReportKey,
        desired: Desired,
        importance: Importance,
        now: Duration,
    ) {
        let digest = desired.digest();
        let e = self.entries.entry(key).or_default();
        // What GitHub will show once the send in flight (if any) lands.
        let shown = e.in_flight.as_ref().or(e.sent.as_ref());
        if shown == Some(&digest) {
            // Unchanged: whatever was pending is superseded by "as is".
            e.pending = None;
            return;
        }
        match &mut e.pending {
            Some(p) => {
                // The pending body has not been shown yet; it keeps the
                // urgency of everything it coalesces.
                p.importance = p.importance.max(importance);
                p.desired = desired;
                p.digest = digest;
            }
            None => {
                e.pending = Some(Pending {
                    desired,
                    digest,
                    importance,
                    since: now,
                })
            }
        }
    }

    /// When a key's pending body may go, ignoring the installation's pace.
    fn due(&self, e: &Entry) -> Option<Duration> {
        if e.in_flight.is_some() {
            return None;
        }
        let p = e.pending.as_ref()?;
        let after = |gap: Duration| e.last_sent_at.map_or(p.since, |t| (t + gap).max(p.since));
        // The budget over time: routine edits wait for a token. Terminal
        // and waiting states are exempt: they are few (each needs a human
        // or a wave to move) and must go promptly.
        let token = e.budget_at.saturating_sub(self.cfg.tolerance(p.importance));
        let due = match p.importance {
            Importance::Terminal => p.since,
            Importance::Waiting => after(self.cfg.min_update_interval),
            Importance::Matters => after(self.cfg.min_update_interval).max(token),
            Importance::CountsOnly => after(self.cfg.progress_interval).max(token),
        };
        Some(e.retry_at.map_or(due, |r| due.max(r)))
    }

    /// The sends due at `now`, or when to look again.
    pub fn next(&mut self, now: Duration) -> Next {
        let spacing = self.cfg.spacing();
        let mut jobs = Vec::new();
        let mut wake: Option<Duration> = None;
        // Candidates per installation, most urgent first.
        let mut by_inst: HashMap<InstallationId, Vec<(Importance, Duration, ReportKey)>> =
            HashMap::new();
        for (key, e) in &self.entries {
            if let (Some(due), Some(p)) = (self.due(e), &e.pending) {
                by_inst
                    .entry(key.installation)
                    .or_default()
                    .push((p.importance, due, key.clone()));
            }
        }
        for (inst, mut cands) in by_inst {
            // Most important first, then the longest waiting, then by key
            // so the order is deterministic.
            cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut slot = self.next_write.get(&inst).copied().unwrap_or_default();
            for (_, due, key) in cands {
                let at = due.max(slot);
                if at > now {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                let Some(e) = self.entries.get_mut(&key) else {
                    continue;
                };
                let Some(p) = e.pending.take() else { continue };
                e.in_flight = Some(p.digest.clone());
                jobs.push(Job {
                    key,
                    desired: p.desired,
                    digest: p.digest,
                    importance: p.importance,
                    object_id: e.object_id,
                });
                slot = now.max(slot) + spacing;
                self.next_write.insert(inst, slot);
            }
        }
        if !jobs.is_empty() {
            jobs.sort_by(|a, b| b.importance.cmp(&a.importance).then(a.key.cmp(&b.key)));
            Next::Send(jobs)
        } else if let Some(w) = wake {
            Next::WaitUntil(w)
        } else {
            Next::Idle
        }
    }

    /// The job landed: GitHub shows `job.digest` as object `object_id`.
    pub fn sent(&mut self, job: &Job, object_id: u64, now: Duration) {
        let e = self.entries.entry(job.key.clone()).or_default();
        e.in_flight = None;
        e.sent = Some(job.digest.clone());
        e.object_id = Some(object_id);
        e.last_sent_at = Some(now);
        e.budget_at = e.budget_at.max(now) + self.cfg.edit_refill;
        e.failures = 0;
        e.retry_at = None;
        if e.pending.as_ref().is_some_and(|p| p.digest == job.digest) {
            e.pending = None;
        }
    }

    /// The ledger says GitHub already shows this body: nothing was sent.
    pub fn already_shown(&mut self, job: &Job, object_id: Option<u64>) {
        let e = self.entries.entry(job.key.clone()).or_default();
        e.in_flight = None;
        e.sent = Some(job.digest.clone());
        e.object_id = object_id.or(e.object_id);
        if e.pending.as_ref().is_some_and(|p| p.digest == job.digest) {
            e.pending = None;
        }
    }

    /// The send failed transiently (GitHub down): try again later with the
    /// newest body. `jitter` in [0, 1).
    pub fn failed(&mut self, job: Job, now: Duration, jitter: f64) {
        let e = self.entries.entry(job.key.clone()).or_default();
        e.in_flight = None;
        e.failures = e.failures.saturating_add(1);
        let exp = e.failures.saturating_sub(1).min(16);
        let full = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.retry_max);
        let wait = full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0));
        e.retry_at = Some(now + wait);
        match &mut e.pending {
            // A newer body arrived meanwhile: it replaces the failed one
            // and inherits its urgency.
            Some(p) => p.importance = p.importance.max(job.importance),
            None => {
                e.pending = Some(Pending {
                    desired: job.desired,
                    digest: job.digest,
                    importance: job.importance,
                    since: now,
                })
            }
        }
    }

    /// GitHub refused the body (a bug in convoy, not an outage): it is not
    /// retried; a newer desired body still goes.
    pub fn refused(&mut self, job: &Job) {
        if let Some(e) = self.entries.get_mut(&job.key) {
            e.in_flight = None;
        }
    }

    /// Drops everything known of a key (its body in flight was not sent);
    /// a later `desire` starts it afresh, reading the ledger again.
    pub fn forget(&mut self, key: &ReportKey) {
        self.entries.remove(key);
    }

    /// Bodies waiting or in flight.
    pub fn pending(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.pending.is_some() || e.in_flight.is_some())
            .count()
    }

    /// The GitHub id known for a key.
    pub fn object_id(&self, key: &ReportKey) -> Option<u64> {
        self.entries.get(key).and_then(|e| e.object_id)
    }
}
