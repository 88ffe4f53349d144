-- Foundation: the webhook inbox, installations and their repositories, and
-- the audit log. Times are Unix milliseconds (INTEGER), the same on SQLite
-- and PostgreSQL.

-- Every accepted delivery, written before it is acknowledged. The primary
-- key on the delivery id is what makes redeliveries harmless.
CREATE TABLE inbox (
    delivery_id     TEXT PRIMARY KEY,
    event           TEXT NOT NULL,
    -- The raw body, LZ4-compressed (size-prepended): webhook JSON shrinks
    -- several times, and intake is bound by the bytes the writer writes.
    payload         BLOB NOT NULL,
    received_at     INTEGER NOT NULL,
    -- pending | done | dropped | failed
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    processed_at    INTEGER
);
CREATE INDEX inbox_due ON inbox (state, next_attempt_at);

CREATE TABLE installations (
    id          INTEGER PRIMARY KEY,
    account     TEXT NOT NULL,
    suspended   INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE installation_repositories (
    repo            TEXT PRIMARY KEY,
    -- No foreign key: a repository event may arrive before (or without)
    -- the installation event that names its installation.
    installation_id INTEGER NOT NULL
);
CREATE INDEX installation_repositories_by_installation
    ON installation_repositories (installation_id);

-- Who did what, when, where, and what came of it. Append-only.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    repo        TEXT,
    rollout_id  TEXT,
    location    TEXT,
    action      TEXT NOT NULL,
    result      TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX audit_log_by_rollout ON audit_log (rollout_id, id);
