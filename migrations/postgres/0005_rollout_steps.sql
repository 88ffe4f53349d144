-- Per-step storage of rollouts, as SQLite's 0005: `rollouts.document` holds
-- the header, `targets` and `wave_environments` are written once, and
-- `rollout_steps` has one row per step, rewritten only when it changes.
-- SQLite's 0005 also splits rollouts stored whole by earlier versions; no
-- PostgreSQL database predates per-step storage, so there is nothing to
-- convert here.

ALTER TABLE rollouts ADD COLUMN targets TEXT;
ALTER TABLE rollouts ADD COLUMN wave_environments TEXT;

CREATE TABLE rollout_steps (
    rollout_id TEXT NOT NULL,
    wave       BIGINT NOT NULL,
    idx        BIGINT NOT NULL,
    step       TEXT NOT NULL,
    PRIMARY KEY (rollout_id, wave, idx)
);
