-- Rollouts and everything the runtime must not lose (PostgreSQL; the same
-- tables as SQLite's 0003): the engine's state as a JSON document, its
-- timers, the deploy history, baselines, and the locks that keep two deploys
-- of one (environment, service) apart across rollouts and replicas.

CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    repo            TEXT NOT NULL,
    branch          TEXT NOT NULL,
    commit_sha      TEXT NOT NULL,
    previous_commit TEXT,
    pull_request    BIGINT,
    installation_id BIGINT,
    -- deploy | rollback | resync
    kind            TEXT NOT NULL,
    parent_id       TEXT,
    state           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- The engine's Rollout; NULL when planning failed (see error). TEXT,
    -- not JSONB: the document is read back byte for byte (numbers keep
    -- their exact digits), and the database never looks inside.
    document        TEXT,
    error           TEXT
);
-- A merge sends a push and a pull_request event: whichever comes first
-- creates the rollout (INSERT … ON CONFLICT on this index, so two replicas
-- racing cannot both create one), the other finds it here.
CREATE UNIQUE INDEX rollouts_one_per_commit
    ON rollouts (repo, branch, commit_sha) WHERE kind = 'deploy';
CREATE INDEX rollouts_by_repo ON rollouts (repo, created_at);
CREATE INDEX rollouts_by_state ON rollouts (state);

CREATE TABLE rollout_timers (
    rollout_id TEXT NOT NULL,
    timer      TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, timer)
);

CREATE TABLE deploy_history (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    version     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    succeeded   BOOLEAN NOT NULL,
    error       TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX deploy_history_by_target ON deploy_history (repo, environment, service, id);
CREATE INDEX deploy_history_by_env ON deploy_history (repo, environment, id);

-- What convoy expects to run in each (environment, service): the last
-- version it deployed, or what a human adopted, or a rollback's pin.
CREATE TABLE baselines (
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    version     TEXT NOT NULL,
    -- deployed | adopted | pinned
    source      TEXT NOT NULL,
    rollout_id  TEXT,
    at          BIGINT NOT NULL,
    PRIMARY KEY (repo, environment, service)
);

-- The primary key is the mutual exclusion: one row per (environment,
-- service), whichever replica writes it.
CREATE TABLE step_locks (
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    PRIMARY KEY (repo, environment, service)
);
