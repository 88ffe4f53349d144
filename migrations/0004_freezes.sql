-- Emergency freezes: `/convoy freeze` for one repository, `convoy freeze
-- --all` (scope '*') for every repository. While one is active no rollout
-- in its scope starts a new step.
CREATE TABLE freezes (
    scope      TEXT PRIMARY KEY,
    until      INTEGER,
    reason     TEXT,
    frozen_by  TEXT NOT NULL,
    at         INTEGER NOT NULL
);
