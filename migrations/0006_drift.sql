-- Drift records (SPEC 6.6): what the reconciler and the per-step preflight
-- found running in an environment that is not what convoy last deployed
-- (or pinned, or adopted) there, and environments the reconciler could not
-- reach. At most one open record per (repo, environment, service, kind);
-- resolved ones stay as history (how, by whom).
CREATE TABLE drift (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT NOT NULL,
    environment TEXT NOT NULL,
    service     TEXT NOT NULL,
    -- drift | unreachable
    kind        TEXT NOT NULL,
    -- the baseline's version when last seen
    expected    TEXT NOT NULL,
    -- what the agent reported (drift); NULL when unreachable
    found       TEXT,
    -- the error (unreachable)
    detail      TEXT,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    resolved_at INTEGER,
    -- adopted | resynced | overwritten | converged | reachable
    resolution  TEXT,
    resolved_by TEXT
);

CREATE UNIQUE INDEX drift_open ON drift (repo, environment, service, kind)
    WHERE resolved_at IS NULL;
CREATE INDEX drift_by_repo ON drift (repo, id);
