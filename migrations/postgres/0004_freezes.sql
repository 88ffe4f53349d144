-- Emergency freezes: `/convoy freeze` for one repository, `convoy freeze
-- --all` (scope '*') for every repository. As SQLite's 0004.
CREATE TABLE freezes (
    scope      TEXT PRIMARY KEY,
    until      BIGINT,
    reason     TEXT,
    frozen_by  TEXT NOT NULL,
    at         BIGINT NOT NULL
);
