-- Foundation (PostgreSQL): the webhook inbox, installations and their
-- repositories, and the audit log. The same tables as SQLite's 0001; times
-- are Unix milliseconds (BIGINT) on both databases.

-- Every accepted delivery, written before it is acknowledged. The primary
-- key on the delivery id is what makes redeliveries harmless, also when
-- several replicas receive them: the insert is ON CONFLICT DO NOTHING.
CREATE TABLE inbox (
    delivery_id     TEXT PRIMARY KEY,
    event           TEXT NOT NULL,
    -- The raw body, LZ4-compressed (size-prepended).
    payload         BYTEA NOT NULL,
    received_at     BIGINT NOT NULL,
    -- pending | done | dropped | failed
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    processed_at    BIGINT
);
-- Already compressed: TOAST need not try again (it would only spend CPU).
ALTER TABLE inbox ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE INDEX inbox_due ON inbox (state, next_attempt_at);

CREATE TABLE installations (
    id          BIGINT PRIMARY KEY,
    account     TEXT NOT NULL,
    suspended   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE installation_repositories (
    repo            TEXT PRIMARY KEY,
    -- No foreign key: a repository event may arrive before (or without)
    -- the installation event that names its installation.
    installation_id BIGINT NOT NULL
);
CREATE INDEX installation_repositories_by_installation
    ON installation_repositories (installation_id);

-- Who did what, when, where, and what came of it. Append-only.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    repo        TEXT,
    rollout_id  TEXT,
    location    TEXT,
    action      TEXT NOT NULL,
    result      TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX audit_log_by_rollout ON audit_log (rollout_id, id);
