-- Rollouts and everything the runtime must not lose: the engine's state as
-- a JSON document, its timers, the deploy history (last known good, risk),
-- the baseline convoy expects in each environment (drift), and the locks that
-- keep two deploys of one (environment, service) apart.

CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,
    repo            TEXT NOT NULL,
    branch          TEXT NOT NULL,
    commit_sha      TEXT NOT NULL,
    previous_commit TEXT,
    pull_request    INTEGER,
    installation_id INTEGER,
    -- deploy | rollback | resync
    kind            TEXT NOT NULL,
    parent_id       TEXT,
    state           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- The engine's Rollout; NULL when planning failed (see error).
    document        TEXT,
    error           TEXT
);
-- A merge sends a push and a pull_request event: whichever comes first
-- creates the rollout, the other finds it here.
CREATE UNIQUE INDEX rollouts_one_per_commit
    ON rollouts (repo, branch, commit_sha) WHERE kind = 'deploy';
CREATE INDEX rollouts_by_repo ON rollouts (repo, created_at);
CREATE INDEX rollouts_by_state ON rollouts (state);

CREATE TABLE rollout_timers (
    rollout_id TEXT NOT NULL,
    timer      TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, timer)
);

CREATE TABLE deploy_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    version     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    succeeded   INTEGER NOT NULL,
    error       TEXT,
    at          INTEGER NOT NULL
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
    at          INTEGER NOT NULL,
    PRIMARY KEY (repo, environment, service)
);

CREATE TABLE step_locks (
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    PRIMARY KEY (repo, environment, service)
);
