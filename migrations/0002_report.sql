-- What convoy last put on GitHub per (rollout, object): the GitHub id of the
-- comment or check run and a hash of the body it sent. The reporter's
-- transport reads it at startup so a restart neither re-creates objects nor
-- re-sends unchanged bodies.
CREATE TABLE report_ledger (
    rollout_id      TEXT    NOT NULL,
    -- 'check_run' or 'comment'
    object_kind     TEXT    NOT NULL,
    -- check-run name; '' for comments
    object_name     TEXT    NOT NULL,
    -- check-run generation, or the issue / pull-request number of a comment
    object_number   INTEGER NOT NULL,
    installation_id INTEGER NOT NULL,
    repo            TEXT    NOT NULL,
    github_id       INTEGER,
    body_hash       TEXT    NOT NULL,
    -- Unix milliseconds, like every time in the store
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, object_kind, object_name, object_number)
);
