//! Syncing SQLite's write-ahead log beside the writer, not inside it.
//!
//! With `synchronous = FULL` every commit syncs the log before it returns,
//! and the one writer connection waits for the disk: the next group of
//! deliveries cannot start its transaction until the last one's sync is
//! done, and under intake load the two cores sat idle through it. The
//! inbox's transactions commit with `synchronous = NORMAL` instead (the
//! log is written, not synced) and ask this thread for a sync: one
//! `fdatasync` of the log covers every commit made before it started, so
//! the syncs of several groups fold into one, and the writer is already
//! committing the next group meanwhile. Nothing is acknowledged before the
//! sync that covers it — the same guarantee as `FULL`, which syncs the
//! same file at the same point.
//!
//! The log is synced through one file descriptor, opened when the store
//! opens and kept: Linux reports a failed write-back to each descriptor
//! that was open when it happened, once, so a descriptor opened afresh for
//! each sync could miss a failure another one (the checkpointer's) had
//! already seen. It is opened again only if the log at the path is another
//! file (SQLite made a new one), and then the folder is synced too, as
//! SQLite does for a new log.
//!
//! A sync that fails poisons the log for this process: the kernel may have
//! dropped the pages it could not write, so a later sync that succeeds
//! proves nothing about them (PostgreSQL learned this the hard way). Every
//! commit from then on is reported failed, and `/readyz` says so, until
//! convoy restarts and SQLite recovers the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use super::{Result, StoreError};

/// How far the log is synced: through commit `through` (commits are
/// numbered from 1 as they ask), or poisoned from commit `first` on.
#[derive(Clone, Debug, Default)]
pub struct Synced {
    through: u64,
    poisoned: Option<(u64, Arc<str>)>,
}

/// When a write is durable: at once, or when the sync of its commit is.
#[derive(Debug)]
pub enum Durable {
    Now,
    After(watch::Receiver<Synced>, u64),
}

impl Durable {
    /// Waits until the write is durable; an error if its sync failed or
    /// the syncer stopped first.
    pub async fn wait(self) -> Result<()> {
        let Durable::After(mut synced, ticket) = self else {
            return Ok(());
        };
        let state = synced
            .wait_for(|s| s.through >= ticket || s.poisoned.is_some())
            .await
            .map_err(|_| StoreError::Sync("the database log's syncer stopped".into()))?;
        match &state.poisoned {
            Some((first, error)) if ticket >= *first => Err(StoreError::Sync(format!(
                "syncing the database log failed ({error}); restart convoy"
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Default)]
struct Asked {
    /// The number of the last commit that asked for a sync.
    requested: u64,
    stop: bool,
    /// Tests hold syncs back to see what waits for them, and make them
    /// fail.
    #[cfg(test)]
    held: bool,
    #[cfg(test)]
    failing: bool,
}

struct Shared {
    asked: Mutex<Asked>,
    changed: Condvar,
}

/// The syncing thread; stops when dropped (commits still waiting for a
/// sync then fail: they are in the log, but nothing says they are on disk).
pub struct LogSyncer {
    shared: Arc<Shared>,
    synced: watch::Receiver<Synced>,
}

impl std::fmt::Debug for LogSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSyncer")
            .field("synced", &*self.synced.borrow())
            .finish()
    }
}

impl LogSyncer {
    /// Opens the log at `log` (the database file as SQLite names it, with
    /// `-wal` appended) and starts the thread that syncs it.
    pub fn start(log: PathBuf) -> std::io::Result<LogSyncer> {
        let file = LogFile::open(&log)?;
        let shared = Arc::new(Shared {
            asked: Mutex::new(Asked::default()),
            changed: Condvar::new(),
        });
        let (tx, synced) = watch::channel(Synced::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("convoy-log-sync".into())
            .spawn(move || run(&thread_shared, file, &log, &tx))?;
        Ok(LogSyncer { shared, synced })
    }

    /// Why the log can no longer be made durable, once a sync failed.
    pub fn poisoned(&self) -> Option<String> {
        self.synced
            .borrow()
            .poisoned
            .as_ref()
            .map(|(_, e)| format!("syncing the database log failed ({e}); restart convoy"))
    }

    /// Asks for a sync covering every commit made so far; call it after
    /// the commit returned.
    pub fn after_commit(&self) -> Durable {
        let mut asked = lock(&self.shared.asked);
        asked.requested += 1;
        let ticket = asked.requested;
        drop(asked);
        self.shared.changed.notify_one();
        Durable::After(self.synced.clone(), ticket)
    }

    /// Makes every sync from now on fail, as a disk that cannot write.
    #[cfg(test)]
    pub fn fail_syncs(&self) {
        lock(&self.shared.asked).failing = true;
    }

    /// Holds syncs back until the guard is dropped.
    #[cfg(test)]
    pub fn hold(&self) -> HoldGuard<'_> {
        lock(&self.shared.asked).held = true;
        HoldGuard(self)
    }
}

#[cfg(test)]
pub struct HoldGuard<'a>(&'a LogSyncer);

/// Whether `waiting` is still unfinished after a moment: a wait that
/// should last until a held sync is let go.
#[cfg(test)]
pub async fn still_waiting<F: std::future::Future + Unpin>(waiting: &mut F) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(50), waiting)
        .await
        .is_err()
}

#[cfg(test)]
impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.shared.asked).held = false;
        self.0.shared.changed.notify_one();
    }
}

impl Drop for LogSyncer {
    fn drop(&mut self) {
        lock(&self.shared.asked).stop = true;
        self.shared.changed.notify_one();
    }
}

/// The lock, also after a panic elsewhere: the state is two numbers and
/// two flags, consistent at every step.
fn lock(m: &Mutex<Asked>) -> std::sync::MutexGuard<'_, Asked> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The open log, and which file it is.
struct LogFile {
    file: std::fs::File,
    id: (u64, u64),
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = std::fs::File::open(path)?;
        let id = file_id(&file.metadata()?);
        Ok(LogFile { file, id })
    }

    /// Syncs the log at `path`: through the open descriptor while it is
    /// still that file; otherwise opens the new one and syncs its folder
    /// as well, so the new file's name is on disk too.
    fn sync(&mut self, path: &Path) -> std::io::Result<()> {
        let now = match std::fs::metadata(path) {
            Ok(meta) => file_id(&meta),
            // SQLite removes the log only after copying all of it into the
            // database file and syncing that; what the open one holds is
            // on disk either way.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.id,
            Err(e) => return Err(e),
        };
        if now != self.id {
            *self = LogFile::open(path)?;
            if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(folder)?.sync_all()?;
            }
        }
        self.file.sync_data()
    }
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn run(shared: &Shared, mut file: LogFile, log: &Path, synced: &watch::Sender<Synced>) {
    let mut done = 0;
    loop {
        let (target, failing) = {
            let mut asked = lock(&shared.asked);
            loop {
                #[cfg(test)]
                let held = asked.held;
                #[cfg(not(test))]
                let held = false;
                if asked.stop {
                    return;
                }
                if asked.requested > done && !held {
                    #[cfg(test)]
                    let failing = asked.failing;
                    #[cfg(not(test))]
                    let failing = false;
                    break (asked.requested, failing);
                }
                asked = shared
                    .changed
                    .wait(asked)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        // `failing` only ever set by tests.
        let result = if failing {
            Err(std::io::Error::other("injected write-back failure"))
        } else {
            file.sync(log)
        };
        match result {
            Ok(()) => {
                synced.send_modify(|s| s.through = target);
            }
            Err(e) => {
                tracing::error!(error = %e, log = %log.display(), "syncing the database log failed");
                synced.send_modify(|s| {
                    if s.poisoned.is_none() {
                        s.poisoned = Some((done + 1, e.to_string().into()));
                    }
                });
            }
        }
        done = target;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with a log file in it, as SQLite leaves one.
    fn a_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("convoy.db-wal");
        std::fs::write(&log, b"frames").unwrap();
        (dir, log)
    }

    #[tokio::test]
    async fn a_commit_is_durable_once_a_sync_after_it_is_done() {
        let (_dir, log) = a_log();
        let syncer = LogSyncer::start(log).unwrap();
        let hold = syncer.hold();
        let first = syncer.after_commit();
        let second = syncer.after_commit();
        let mut first = Box::pin(first.wait());
        assert!(still_waiting(&mut first).await, "durable before its sync");
        drop(hold);
        first.await.unwrap();
        second.wait().await.unwrap();
        Durable::Now.wait().await.unwrap();
    }

    /// A log that cannot be synced fails every commit that waited for it,
    /// and every later one, and says so.
    #[tokio::test]
    async fn a_failed_sync_fails_its_commits_and_all_after() {
        let (_dir, log) = a_log();
        let syncer = LogSyncer::start(log.clone()).unwrap();
        let first = syncer.after_commit();
        first.wait().await.unwrap();
        assert_eq!(syncer.poisoned(), None);
        syncer.fail_syncs();
        let error = syncer.after_commit().wait().await.unwrap_err();
        assert!(error.to_string().contains("restart convoy"), "{error}");
        assert!(
            syncer.after_commit().wait().await.is_err(),
            "poisoned for good"
        );
        assert!(syncer.poisoned().is_some());
    }

    /// A log SQLite removed (after copying it into the database) or made
    /// anew is no failure; a new one is opened and synced from then on.
    #[tokio::test]
    async fn a_removed_or_new_log_at_the_path_is_no_failure() {
        let (_dir, log) = a_log();
        let syncer = LogSyncer::start(log.clone()).unwrap();
        std::fs::remove_file(&log).unwrap();
        syncer.after_commit().wait().await.unwrap();
        std::fs::write(&log, b"new frames").unwrap();
        syncer.after_commit().wait().await.unwrap();
        assert_eq!(syncer.poisoned(), None);
    }
}
