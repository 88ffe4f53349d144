-- What convoy last put on GitHub per (repository, rollout, object): the
-- GitHub id of the comment, check run or issue and a hash of the body it
-- sent. The reporter's transport reads it at startup so a restart neither
-- re-creates objects nor re-sends unchanged bodies.
CREATE TABLE report_ledger (
    repo            TEXT    NOT NULL,
    -- '-repository-' for repository-level objects (the drift issue)
    rollout_id      TEXT    NOT NULL,
    -- 'check_run', 'comment' or 'issue'
    object_kind     TEXT    NOT NULL,
    -- check-run name, issue label; '' for comments
    object_name     TEXT    NOT NULL,
    -- check-run generation, the issue / pull-request number of a comment,
    -- 0 for issues
    object_number   INTEGER NOT NULL,
    installation_id INTEGER NOT NULL,
    github_id       INTEGER,
    body_hash       TEXT    NOT NULL,
    -- Unix milliseconds, like every time in the store
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (repo, rollout_id, object_kind, object_name, object_number)
);
