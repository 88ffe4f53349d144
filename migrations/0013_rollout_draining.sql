-- An ended rollout (aborted) whose deploys in flight have not ended yet:
-- it still needs a task to see them end. Its step locks stay taken until
-- then, and a process that stops meanwhile (or another replica) drives it
-- again. Set and cleared with the rollout's own saves.
ALTER TABLE rollouts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
