-- What convoy last put on GitHub per (repository, rollout, object): the
-- GitHub id of the comment, check run or issue and a hash of the body it
-- sent. Shared by every replica, and kept over restarts, so neither
-- re-creates objects nor re-sends unchanged bodies. As SQLite's 0002.
CREATE TABLE report_ledger (
    repo            TEXT   NOT NULL,
    -- '-repository-' for repository-level objects (the drift issue)
    rollout_id      TEXT   NOT NULL,
    -- 'check_run', 'comment' or 'issue'
    object_kind     TEXT   NOT NULL,
    -- check-run name, issue label; '' for comments
    object_name     TEXT   NOT NULL,
    -- check-run generation, the issue / pull-request number of a comment,
    -- 0 for issues
    object_number   BIGINT NOT NULL,
    installation_id BIGINT NOT NULL,
    github_id       BIGINT,
    body_hash       TEXT   NOT NULL,
    -- Unix milliseconds, like every time in the store
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (repo, rollout_id, object_kind, object_name, object_number)
);
