-- See migrations/0013_rollout_draining.sql.
ALTER TABLE rollouts ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;

-- An aborted rollout already waiting for its deploys when this migration
-- runs is draining: it still holds locks and has steps in flight.
UPDATE rollouts SET draining = TRUE
WHERE state IN ('succeeded', 'failed', 'aborted', 'superseded', 'noop')
  AND id IN (SELECT rollout_id FROM step_locks)
  AND EXISTS (SELECT 1 FROM rollout_steps s WHERE s.rollout_id = rollouts.id
              AND s.step::json ->> 'state' IN ('preflight', 'deploying', 'verifying'));
