-- See migrations/0013_rollout_draining.sql.
ALTER TABLE rollouts ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;
