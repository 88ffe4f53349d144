-- An ended rollout (aborted) whose deploys in flight have not ended yet:
-- it still needs a task to see them end. Its step locks stay taken until
-- then, and a process that stops meanwhile (or another replica) drives it
-- again. Set and cleared with the rollout's own saves.
ALTER TABLE rollouts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;

-- An aborted rollout already waiting for its deploys when this migration
-- runs is draining: it still holds locks and has steps in flight (in its
-- step rows, or inside a document stored whole).
UPDATE rollouts SET draining = 1
WHERE state IN ('succeeded', 'failed', 'aborted', 'superseded', 'noop')
  AND id IN (SELECT rollout_id FROM step_locks)
  AND (EXISTS (SELECT 1 FROM rollout_steps s WHERE s.rollout_id = rollouts.id
               AND json_extract(s.step, '$.state') IN ('preflight', 'deploying', 'verifying'))
       OR EXISTS (SELECT 1 FROM
                    json_each(CASE WHEN json_valid(rollouts.document) THEN rollouts.document
                              ELSE '{}' END, '$.waves') AS w,
                    json_each(w.value, '$.steps') AS s
                  WHERE json_extract(s.value, '$.state')
                        IN ('preflight', 'deploying', 'verifying')));
