-- Several replicas on one database (SPEC 6.5, 6.9): work is claimed through
-- the database with leases, so two replicas never act on the same item and
-- the work of a replica that died is taken over once its lease expired.

-- One row per leased thing: `kind` says what (`rollout`: driving it;
-- `branch`: an admission decision), `key` which. `generation` grows by one
-- on every claim; the holder's writes carry it (fencing), so a replica
-- that lost a lease while paused can no longer write.
CREATE TABLE leases (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    -- The replica holding it; NULL once released.
    owner      TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    -- Unix ms; a lease past it may be taken by anyone.
    expires_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE INDEX leases_by_owner ON leases (owner, kind);

-- Inbox items are claimed by the replica that processes them: the claim
-- moves `next_attempt_at` to the claim's end, so no other replica sees the
-- item as due until the claim expired (its replica died) or was released.
ALTER TABLE inbox ADD COLUMN claimed_by TEXT;

-- Commands and events for a rollout that another replica drives: that
-- replica applies them in order and writes the answer ('' when accepted,
-- else why not) for the sender, who waits for it.
CREATE TABLE rollout_inputs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  TEXT NOT NULL,
    input       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    answered_at INTEGER,
    answer      TEXT
);
CREATE INDEX rollout_inputs_open ON rollout_inputs (rollout_id, id) WHERE answered_at IS NULL;

-- GitHub write pacing per installation (SPEC 7.5), shared by all replicas:
-- a token bucket, refilled at writes_per_minute, taken from atomically.
CREATE TABLE write_pacing (
    installation_id INTEGER PRIMARY KEY,
    tokens          REAL NOT NULL,
    updated_at      INTEGER NOT NULL
);
