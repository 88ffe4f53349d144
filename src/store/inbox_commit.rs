//! The inbox's group commit, on a SQLite connection of its own that the
//! calling thread runs.
//!
//! The rest of the store goes through sqlx, which runs each connection on
//! a thread of its own: every statement is a round trip to that thread.
//! Under the intake's load that thread, once woken, waited for a core
//! while the runtime's workers parsed requests, and every request of the
//! group waited with it. Committed on the writer task's own thread, with
//! rusqlite on the same SQLite library, a group costs about the same CPU
//! but is answered sooner, and the intake takes more deliveries a second
//! (docs/BENCHMARKS.md, "The inbox's commit on the writer task's thread";
//! committing in `block_in_place`, on another thread, lost the gain).
//!
//! The store's other writes still go through sqlx's one writer connection,
//! and the caller holds that connection while this one writes
//! ([`SqliteStore::write_inbox_unsynced`](super::sqlite::SqliteStore)):
//! the two never wait for each other inside SQLite. Another connection on
//! the same file (another process's, such as `convoy freeze --all`, or
//! another store's in this process) can hold SQLite's write lock; this
//! connection does not then wait in SQLite's busy handler, which would
//! sleep on the runtime's thread, but answers [`CommitError::Busy`] at
//! once, and the caller waits without blocking and tries again.
//!
//! Nor does it leave the log to SQLite's own checkpoint, which would copy
//! the log into the database file and sync both inside a commit, on the
//! runtime's thread: the store calls [`InboxCommitter::checkpoint`] beside
//! the runtime when the background checkpointer finds the log long
//! (`checkpoint`'s module comment), and SQLite's waits for a log four
//! times as long, as a fallback.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode};

use super::checkpoint::WRITER_PAGES;
use super::delivery_order::delivery_order;
use super::sqlite::placeholders;
use super::{InboxWrite, NewDelivery, rows, to_millis};

/// Rows per statement of a group's commit at most, far below SQLite's
/// limit of 32,766 parameters.
const INBOX_ROWS_PER_STATEMENT: usize = 128;

/// How a group's commit cuts `rows` into statements: full chunks of
/// [`INBOX_ROWS_PER_STATEMENT`], then one of the next power of two, filled
/// by repeating its last row. Parsing and planning the group's statements
/// anew took about a fifth of SQLite's CPU under intake load; with a few
/// sizes the statements' texts repeat and their prepared forms are
/// reused. A repeated row changes nothing: an insert that conflicts does
/// nothing, and an `UPDATE … FROM` updates a row once however many rows
/// of `FROM` match it. Pure.
pub(super) fn inbox_chunks<T>(rows: &[T]) -> impl Iterator<Item = (&[T], usize)> {
    rows.chunks(INBOX_ROWS_PER_STATEMENT)
        .map(|chunk| (chunk, chunk.len().next_power_of_two()))
}

/// `rows` followed by its last row until there are `size`.
pub(super) fn padded<T>(rows: &[T], size: usize) -> impl Iterator<Item = &T> {
    let last = rows.last();
    rows.iter()
        .chain(std::iter::repeat_n(last, size - rows.len()).flatten())
}

/// The most bytes of bodies packed into one row of `inbox_bodies`. A
/// compressed 25 KB webhook takes about 3 KB, and a row of its own took a
/// 4 KB page (two do not fit in one): packed, a group's bodies fill their
/// pages, and the intake wrote a quarter fewer bytes to the disk
/// (docs/BENCHMARKS.md). Reading one body reads its whole row, so rows
/// stay small: a delivery is read back only when it is retried, or taken
/// from the database because the worker fell behind.
pub(super) const PACK_BYTES: usize = 32 * 1024;

/// Where one delivery's body is: the `blob`th (from 1) of its chunk's
/// packed rows, `len` bytes from byte `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub(super) blob: i64,
    pub(super) at: i64,
    pub(super) len: i64,
}

/// A chunk's bodies packed into rows, and each delivery's place in them.
#[derive(Debug)]
pub(super) struct Packed {
    pub(super) blobs: Vec<Vec<u8>>,
    pub(super) places: Vec<Place>,
}

/// Packs `chunk`'s bodies, in order, into rows of up to [`PACK_BYTES`]; a
/// body larger than that has a row of its own. A delivery that comes twice
/// is packed once, where it first came: only its first copy is stored
/// (the second is a redelivery), so every row that names a packed body
/// names the right one. Pure.
pub(super) fn pack(chunk: &[NewDelivery]) -> Packed {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut first: std::collections::HashMap<&str, Place> = std::collections::HashMap::new();
    let mut places = Vec::with_capacity(chunk.len());
    for d in chunk {
        if let Some(place) = first.get(d.id.as_str()) {
            places.push(*place);
            continue;
        }
        let bytes = d.payload.as_bytes();
        let fits = blobs
            .last()
            .is_some_and(|blob| blob.len() + bytes.len() <= PACK_BYTES);
        if !fits {
            blobs.push(Vec::with_capacity(bytes.len().max(PACK_BYTES)));
        }
        // At least one: pushed just above when there was none.
        let number = blobs.len();
        let blob = &mut blobs[number - 1];
        let place = Place {
            blob: number as i64,
            at: blob.len() as i64,
            len: bytes.len() as i64,
        };
        blob.extend_from_slice(bytes);
        first.insert(d.id.as_str(), place);
        places.push(place);
    }
    Packed { blobs, places }
}

/// Prepared statements the connection keeps. A group comes in a few dozen
/// shapes in practice ([`inbox_chunks`]), each three statements.
const STATEMENT_CACHE: usize = 256;

/// Why a group was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another connection holds SQLite's write lock: nothing was written.
    /// The store tries again for a while before it reports this.
    #[error("another connection held the database's write lock for too long")]
    Busy,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The inbox's own connection to the database file.
pub struct InboxCommitter {
    file: String,
    /// `None` once a failed write closed it: the next commit opens the
    /// file again.
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for InboxCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxCommitter")
            .field("file", &self.file)
            .finish()
    }
}

impl InboxCommitter {
    /// Opens `file`, which the store has created and migrated already.
    pub fn open(file: &str) -> Result<InboxCommitter, CommitError> {
        Ok(InboxCommitter {
            file: file.to_owned(),
            conn: Mutex::new(Some(connect(file).map_err(busy_or_error)?)),
        })
    }

    /// Commits `write` as one transaction, without syncing the log (the
    /// caller's `LogSyncer` does, and nothing is acknowledged before).
    /// Returns (part, id) for each row the group touched: part 0 for an
    /// inserted delivery, part n for one taken by the nth claim.
    pub fn commit(
        &self,
        write: &InboxWrite<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, String)>, CommitError> {
        // The connection is out of its slot while it writes, so a panic
        // drops it (which rolls back): the poison hides nothing.
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match slot.take() {
            Some(conn) => conn,
            None => connect(&self.file).map_err(busy_or_error)?,
        };
        let result = transaction(&conn, write, now);
        // A connection left inside a failed write's transaction would hold
        // the write lock and put the next group inside it: closed instead,
        // which rolls the failed write back.
        if conn.is_autocommit() {
            *slot = Some(conn);
        }
        result
    }

    /// Copies the log into the database file as far as readers allow
    /// (a passive checkpoint); whether it copied all of it. Run between
    /// commits while no other write of the store runs, it usually does, and
    /// the next commit starts the log over (`checkpoint`'s module comment).
    /// It does not when a reader still reads an older state of the file or
    /// the background checkpointer is copying at that moment; the log then
    /// stays long, and the background's next pass asks again.
    pub fn checkpoint(&self) -> Result<bool, CommitError> {
        let slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = slot.as_ref() else {
            return Ok(false);
        };
        let (busy, log, copied): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
        Ok(busy == 0 && copied == log)
    }
}

/// `Busy` when another connection holds the lock `e` waited for.
fn busy_or_error(e: rusqlite::Error) -> CommitError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => CommitError::Busy,
        _ => e.into(),
    }
}

/// A connection for the inbox's commits.
fn connect(file: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    // No busy handler: it would sleep on the runtime's thread (see the
    // module's comment).
    conn.busy_timeout(std::time::Duration::ZERO)?;
    // Commits are not synced here: `log_sync` syncs the log beside the
    // writer. SQLite's own checkpoint runs inside a commit, on the
    // runtime's thread: `InboxCommitter::checkpoint` does its work first,
    // and SQLite's is left only as the fallback for a log four times as
    // long, should the background checkpointer stop. The rest as the
    // store's connections (`SqliteStore::open`).
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = {};",
        4 * WRITER_PAGES,
        64 * 1024 * 1024
    ))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Begins, writes and commits. A failed write leaves its transaction
/// open (SQLite ends it only for some errors); the caller then closes the
/// connection, which rolls it back.
fn transaction(
    conn: &Connection,
    write: &InboxWrite<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<(i64, String)>, CommitError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(busy_or_error)?;
    let rows = statements(conn, write, to_millis(now))?;
    conn.execute_batch("COMMIT")?;
    Ok(rows)
}

/// Binds parameters from 1 on, in the order of the statement's `?`s.
struct Binder<'a, 'c> {
    statement: &'a mut rusqlite::CachedStatement<'c>,
    next: usize,
}

impl<'a, 'c> Binder<'a, 'c> {
    fn new(statement: &'a mut rusqlite::CachedStatement<'c>) -> Self {
        Binder { statement, next: 1 }
    }

    fn bind(&mut self, value: impl rusqlite::ToSql) -> rusqlite::Result<&mut Self> {
        self.statement.raw_bind_parameter(self.next, value)?;
        self.next += 1;
        Ok(self)
    }
}

/// The group's statements inside its transaction.
fn statements(
    conn: &Connection,
    write: &InboxWrite<'_>,
    now: i64,
) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut rows = Vec::new();
    for (chunk, size) in inbox_chunks(write.new) {
        insert(conn, chunk, size, &mut rows)?;
    }
    for (chunk, size) in inbox_chunks(write.finished) {
        // Only while the claim is still the finisher's (`Finished`).
        let mut statement = conn.prepare_cached(&format!(
            "WITH f (id, ord, state, error, next, processed, owner) AS (VALUES {}) \
             UPDATE inbox SET state = f.state, attempts = attempts + 1, last_error = f.error, \
             next_attempt_at = f.next, processed_at = f.processed, claimed_by = NULL \
             FROM f WHERE inbox.delivery_order = f.ord AND inbox.delivery_id = f.id \
             AND inbox.claimed_by = f.owner AND inbox.state = 'pending'",
            placeholders(size, 7)
        ))?;
        let mut b = Binder::new(&mut statement);
        for f in padded(chunk, size) {
            let (state, error, next, processed) = rows::outcome_columns(&f.outcome, now);
            b.bind(f.id.as_str())?
                .bind(delivery_order(f.id.as_str()))?
                .bind(state.as_str())?
                .bind(error)?
                .bind(next)?
                .bind(processed)?
                .bind(f.owner.as_str())?;
        }
        statement.raw_execute()?;
    }
    for (n, claim) in (1..).zip(write.claims) {
        // Inside the write transaction: SQLite runs one writer at a time,
        // so two replicas cannot both see an item as due and claim it.
        let mut statement = conn.prepare_cached(
            "UPDATE inbox SET claimed_by = ?, next_attempt_at = ? WHERE rowid IN \
               (SELECT rowid FROM inbox WHERE state = 'pending' AND next_attempt_at <= ? \
                ORDER BY next_attempt_at, received_at LIMIT ?) \
             RETURNING delivery_id",
        )?;
        Binder::new(&mut statement)
            .bind(claim.owner.as_str())?
            .bind(to_millis(claim.until))?
            .bind(now)?
            .bind(i64::from(claim.limit))?;
        let mut taken = statement.raw_query();
        while let Some(row) = taken.next()? {
            rows.push((n, row.get(0)?));
        }
    }
    Ok(rows)
}

/// Inserts one chunk of new deliveries and their packed bodies; adds the
/// ids inserted (not seen before) to `rows` as part 0.
fn insert(
    conn: &Connection,
    chunk: &[NewDelivery],
    size: usize,
    rows: &mut Vec<(i64, String)>,
) -> rusqlite::Result<()> {
    let packed = pack(chunk);
    // A row names body MAX(seq) + j, j its body's packed row (`pack`):
    // those are inserted next, each after the last. Numbered inside the
    // write transaction, so two processes on the file cannot take the
    // same. This statement does not write `inbox_bodies`, so every row
    // counts from the same MAX; the next one reads the table it writes,
    // so SQLite works out all its rows (and its uncorrelated MAX, once)
    // before inserting any, from that MAX too.
    let values =
        vec!["(?, ?, ?, ?, ?, ?, (SELECT IFNULL(MAX(seq), 0) FROM inbox_bodies) + ?, ?, ?)"; size];
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO inbox (delivery_id, delivery_order, event, received_at, next_attempt_at, \
         claimed_by, body, body_at, body_len) VALUES {} \
         ON CONFLICT (delivery_order, delivery_id) DO NOTHING RETURNING delivery_id",
        values.join(", ")
    ))?;
    let places: Vec<(&NewDelivery, Place)> = chunk.iter().zip(packed.places).collect();
    let mut b = Binder::new(&mut statement);
    for (d, place) in padded(&places, size) {
        let at = to_millis(d.received_at);
        b.bind(d.id.as_str())?
            .bind(delivery_order(d.id.as_str()))?
            .bind(d.event.as_str())?
            .bind(at)?
            .bind(d.claim.as_ref().map_or(at, |c| to_millis(c.until)))?
            .bind(d.claim.as_ref().map(|c| c.owner.as_str()))?
            .bind(place.blob)?
            .bind(place.at)?
            .bind(place.len)?;
    }
    let mut inserted = statement.raw_query();
    while let Some(row) = inserted.next()? {
        rows.push((0, row.get(0)?));
    }
    drop(inserted);

    // The packed rows under those numbers: (j, bytes), one slot per
    // delivery so that the text depends on the chunk's size only; the
    // slots left over are (0, NULL) and skipped.
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO inbox_bodies (seq, payload) \
         SELECT (SELECT IFNULL(MAX(seq), 0) FROM inbox_bodies) + b.column1, b.column2 \
         FROM (VALUES {}) AS b WHERE b.column2 IS NOT NULL ON CONFLICT (seq) DO NOTHING",
        placeholders(size, 2)
    ))?;
    let blobs = packed.blobs.len() as i64;
    let mut b = Binder::new(&mut statement);
    for (j, blob) in (1..).zip(&packed.blobs) {
        b.bind(j)?.bind(blob)?;
    }
    for _ in packed.blobs.len()..size {
        b.bind(0)?.bind(None::<&[u8]>)?;
    }
    statement.raw_execute()?;

    // A packed row that only redeliveries named (their rows were there
    // already, naming bodies of their own) is taken out again: of the rows
    // just added, the top `?`, those no delivery of the chunk names.
    // Looked up by the ids, as no index is on `inbox.body`.
    let mut statement = conn.prepare_cached(&format!(
        "DELETE FROM inbox_bodies \
         WHERE seq > (SELECT IFNULL(MAX(seq), 0) FROM inbox_bodies) - ? \
         AND seq NOT IN (SELECT inbox.body FROM (VALUES {}) AS v \
           JOIN inbox ON inbox.delivery_order = v.column2 AND inbox.delivery_id = v.column1 \
           WHERE inbox.body IS NOT NULL)",
        placeholders(size, 2)
    ))?;
    let mut b = Binder::new(&mut statement);
    b.bind(blobs)?;
    for d in padded(chunk, size) {
        b.bind(d.id.as_str())?.bind(delivery_order(d.id.as_str()))?;
    }
    statement.raw_execute()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_statements_come_in_powers_of_two_filled_with_the_last_row() {
        let rows: Vec<usize> = (1..=131).collect();
        let shapes: Vec<(usize, usize)> = inbox_chunks(&rows)
            .map(|(chunk, size)| (chunk.len(), size))
            .collect();
        assert_eq!(shapes, vec![(128, 128), (3, 4)]);
        let filled: Vec<&usize> = padded(&rows[128..], 4).collect();
        assert_eq!(filled, vec![&129, &130, &131, &131]);
        assert_eq!(padded(&rows[..0], 0).count(), 0);
    }

    fn sized(id: &str, bytes: usize) -> NewDelivery {
        NewDelivery {
            id: crate::domain::DeliveryId::new(id),
            event: "ping".into(),
            payload: crate::store::Payload::from_stored(vec![7; bytes]),
            received_at: Utc::now(),
            claim: None,
        }
    }

    #[test]
    fn bodies_are_packed_in_order_into_rows_of_at_most_the_limit() {
        let third = PACK_BYTES / 3;
        let chunk = [
            sized("a", third),
            sized("b", third),
            sized("c", third),
            // Does not fit beside the three: a new row.
            sized("d", third),
            // Larger than a row: one of its own.
            sized("e", PACK_BYTES + 1),
            sized("f", 10),
            // A redelivery of b: b's place, nothing packed.
            sized("b", 99),
        ];
        let packed = pack(&chunk);
        let place = |blob, at, len| Place {
            blob,
            at: at as i64,
            len: len as i64,
        };
        assert_eq!(
            packed.places,
            vec![
                place(1, 0, third),
                place(1, third, third),
                place(1, 2 * third, third),
                place(2, 0, third),
                place(3, 0, PACK_BYTES + 1),
                place(4, 0, 10),
                place(1, third, third),
            ]
        );
        let sizes: Vec<usize> = packed.blobs.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3 * third, third, PACK_BYTES + 1, 10]);
        assert!(pack(&[]).blobs.is_empty());
    }
}
