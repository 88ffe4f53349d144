-- The inbox's unique index ordered by when GitHub made each delivery id.
-- GitHub's ids are version 1 UUIDs, whose text starts with the lowest
-- digits of their timestamp: indexed as text, every new id went to a
-- random page of the index, one more page written per delivery in every
-- commit and checkpoint. `delivery_order` is the timestamp, high digits
-- first (empty for an id of any other shape), so new entries go together
-- at the end. The order is a function of the id alone, so the pair is
-- unique exactly when the id is: a redelivery is still a no-op. The same
-- function is `store::delivery_order::delivery_order` in Rust; a test
-- holds the two equal.
--
-- SQLite cannot drop a primary key, so the table is built anew, keeping
-- each row's rowid.
CREATE TABLE inbox_new (
    delivery_id     TEXT NOT NULL,
    delivery_order  TEXT NOT NULL,
    event           TEXT NOT NULL,
    received_at     INTEGER NOT NULL,
    -- pending | done | dropped | failed
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    processed_at    INTEGER,
    claimed_by      TEXT,
    -- `inbox_bodies.seq` of this delivery's body.
    body            INTEGER
);
INSERT INTO inbox_new (rowid, delivery_id, delivery_order, event, received_at, state,
                       attempts, next_attempt_at, last_error, processed_at, claimed_by, body)
SELECT rowid, delivery_id,
       CASE WHEN length(CAST(delivery_id AS BLOB)) = 36
             AND length(delivery_id) = 36
             AND delivery_id GLOB '????????-????-1???-????-????????????'
            THEN substr(delivery_id, 16, 3) || substr(delivery_id, 10, 4) || substr(delivery_id, 1, 8)
            ELSE '' END,
       event, received_at, state, attempts, next_attempt_at, last_error, processed_at,
       claimed_by, body
FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
CREATE UNIQUE INDEX inbox_by_delivery ON inbox (delivery_order, delivery_id);
-- Only pending deliveries are looked up by when they are due: with the
-- index holding only them, finishing a delivery removes its entry instead
-- of moving it to the done ones, one page fewer in a commit. Failed ones,
-- few, are counted for the metrics.
CREATE INDEX inbox_due ON inbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX inbox_failed ON inbox (state) WHERE state = 'failed';
