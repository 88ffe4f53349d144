//! Background checkpoints for the SQLite store.
//!
//! With WAL, commits append to the log and a checkpoint copies the log back
//! into the database file. SQLite's automatic checkpoint runs inside the
//! commit that crosses its threshold, and copying megabytes there made one
//! webhook group in a few hundred wait tens of milliseconds (the intake's
//! p99). Here a task with a connection of its own copies the log every
//! [`EVERY`], beside the writer: a passive checkpoint neither waits for nor
//! blocks anyone.
//!
//! The log only starts over from its beginning when a commit finds all of
//! it copied, which under steady writes a checkpoint running beside them
//! never leaves. So the store's writer keeps SQLite's own checkpoint, every
//! [`WRITER_PAGES`] pages: by then the background has copied nearly all of
//! the log, the writer's checkpoint copies the last few milliseconds of it
//! and the log starts over. The inbox's connection (`inbox_commit`), which
//! writes most under load and does so on the runtime's thread, has
//! SQLite's at that length: once a checkpoint here finds the log that long
//! ([`Checkpointer::take_long_log`]), the inbox's next commit finishes the
//! checkpoint itself, beside the runtime and before any other write.
//!
//! An idle store is not checkpointed every few milliseconds: once a
//! checkpoint finds nothing new, the next waits until the store's writer
//! connection has been used (the `wrote` the store notifies), or
//! [`IDLE_EVERY`] for writes of other processes on the file. Checking
//! every 5 ms kept an idle convoy at 6 % of a core, in thread wake-ups
//! alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// How often the log is copied into the database file: often enough that
/// little is left for the writer's own checkpoint, and each copy is a few
/// commits' pages. Under intake load 100 ms made the p99 17–19 ms (each
/// copy and its sync of the database file a burst the commits queued
/// behind), 25 ms 11–12 ms, 10 ms 10–11 ms; with the log synced beside
/// the writer (`log_sync`), 5 ms beat 10 ms in three pairs of runs out of
/// four (p99 7.5–8.4 ms against 8.5–9.1 ms), and 1–2 ms did no better. The
/// total copied goes up a little as pages written by several commits are
/// copied more often.
pub const EVERY: Duration = Duration::from_millis(5);
/// How often an idle store's log is looked at: for what other processes
/// (another replica, the command line) write to the file, which do not
/// wake the checkpointer.
pub const IDLE_EVERY: Duration = Duration::from_secs(2);
/// Pages in the log after which a commit checkpoints: 16 MB of 4 KB pages
/// (64 MB on a database created before pages went back to 4 KB, at 16 KB).
pub const WRITER_PAGES: u32 = 4096;

/// The running checkpointer; stops when dropped (with the last clone of
/// the store).
#[derive(Debug)]
pub struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
    /// The last checkpoint found [`WRITER_PAGES`] or more in the log.
    long_log: Arc<AtomicBool>,
    #[cfg(test)]
    counts: Arc<Counts>,
}

/// What the checkpointer did (a test's).
#[cfg(test)]
#[derive(Debug, Default)]
struct Counts {
    /// Checkpoints made.
    made: std::sync::atomic::AtomicU64,
    /// Waits of an idle checkpointer that a write of the store ended.
    woken: std::sync::atomic::AtomicU64,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one checkpoint reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Another connection was checkpointing (another replica on the file).
    pub busy: bool,
    /// Pages in the log.
    pub log: i64,
    /// Pages of the log now in the database file.
    pub copied: i64,
}

impl Checkpointer {
    /// Starts checkpointing the file `options` open, on a connection of its
    /// own. `wrote` is notified after the store writes.
    pub async fn start(
        options: SqliteConnectOptions,
        wrote: Arc<tokio::sync::Notify>,
    ) -> Result<Checkpointer, sqlx::Error> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options)
            .await?;
        let long_log = Arc::new(AtomicBool::new(false));
        let long = long_log.clone();
        #[cfg(test)]
        let counts = Arc::new(Counts::default());
        #[cfg(test)]
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            let mut last: Option<Checkpoint> = None;
            loop {
                tick.tick().await;
                #[cfg(test)]
                counted.made.fetch_add(1, Ordering::Relaxed);
                match checkpoint(&pool).await {
                    Ok(done) => {
                        failing = false;
                        if done.log >= i64::from(WRITER_PAGES) {
                            long.store(true, Ordering::Release);
                        }
                        if done.is_idle_after(last) {
                            // A write made since the last look woke it
                            // already: the permit is kept.
                            tokio::select! {
                                () = wrote.notified() => {
                                    #[cfg(test)]
                                    counted.woken.fetch_add(1, Ordering::Relaxed);
                                }
                                () = tokio::time::sleep(IDLE_EVERY) => {}
                            }
                            tick.reset();
                        }
                        last = Some(done);
                    }
                    // Logged once per run of failures: a checkpoint that
                    // fails is retried next tick, and SQLite's own
                    // checkpoints in the writers' commits are the fallback
                    // (the inbox's at a longer log, `inbox_commit`).
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Checkpointer {
            task,
            long_log,
            #[cfg(test)]
            counts,
        })
    }

    /// Checkpoints made so far (a test's).
    #[cfg(test)]
    pub(crate) fn made(&self) -> u64 {
        self.counts.made.load(Ordering::Relaxed)
    }

    /// Idle waits that a write of the store ended, so far (a test's).
    #[cfg(test)]
    pub(crate) fn woken(&self) -> u64 {
        self.counts.woken.load(Ordering::Relaxed)
    }

    /// Whether a checkpoint found the log at [`WRITER_PAGES`] or more since
    /// the last call: the inbox's connection, whose SQLite checkpoint waits
    /// for a longer log, then finishes one.
    pub fn take_long_log(&self) -> bool {
        self.long_log.swap(false, Ordering::AcqRel)
    }

    /// Stops checkpointing in the background (a test's).
    #[cfg(test)]
    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    /// As if a checkpoint had found the log long (a test's).
    #[cfg(test)]
    pub(crate) fn mark_long_log(&self) {
        self.long_log.store(true, Ordering::Release);
    }
}

impl Checkpoint {
    /// Nothing was written since `last`, and the log is all copied: the
    /// next checkpoint can wait for a write. Pure.
    pub fn is_idle_after(&self, last: Option<Checkpoint>) -> bool {
        !self.busy && self.copied == self.log && last.is_some_and(|l| l.log == self.log)
    }
}

/// One passive checkpoint: copies what it can without waiting for readers
/// or the writer.
pub async fn checkpoint(pool: &SqlitePool) -> Result<Checkpoint, sqlx::Error> {
    let (busy, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok(Checkpoint {
        busy: busy != 0,
        log,
        copied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(log: i64, copied: i64) -> Checkpoint {
        Checkpoint {
            busy: false,
            log,
            copied,
        }
    }

    #[test]
    fn idle_means_nothing_new_since_the_last_look_and_all_copied() {
        assert!(seen(10, 10).is_idle_after(Some(seen(10, 10))));
        assert!(seen(0, 0).is_idle_after(Some(seen(0, 0))));
        // The first look, a log that grew (or started over), a log not all
        // copied, another connection checkpointing: look again soon.
        assert!(!seen(10, 10).is_idle_after(None));
        assert!(!seen(12, 12).is_idle_after(Some(seen(10, 10))));
        assert!(!seen(3, 3).is_idle_after(Some(seen(10, 10))));
        assert!(!seen(10, 8).is_idle_after(Some(seen(10, 8))));
        let busy = Checkpoint {
            busy: true,
            ..seen(10, 10)
        };
        assert!(!busy.is_idle_after(Some(seen(10, 10))));
    }
}
