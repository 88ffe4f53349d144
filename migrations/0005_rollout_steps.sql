-- Per-step storage of rollouts. A 10,000-environment rollout is megabytes of
-- JSON; rewriting all of it on every event made persistence cost grow with
-- the fleet. Now `rollouts.document` holds the rollout without its steps,
-- targets and waves' environment lists (the header, rewritten on every
-- event, small), `targets` the environments' driver and URL and
-- `wave_environments` each wave's environments (both written once: they
-- never change), and `rollout_steps` one row per step (rewritten only when
-- that step changes). Reading puts them back together.

ALTER TABLE rollouts ADD COLUMN targets TEXT;
ALTER TABLE rollouts ADD COLUMN wave_environments TEXT;

CREATE TABLE rollout_steps (
    rollout_id TEXT NOT NULL,
    wave       INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    step       TEXT NOT NULL,
    PRIMARY KEY (rollout_id, wave, idx)
) WITHOUT ROWID;

-- Rollouts stored whole by earlier versions: split them the same way, so
-- every row with a document has the new form.
INSERT INTO rollout_steps (rollout_id, wave, idx, step)
SELECT r.id, w.key, s.key, s.value
FROM rollouts r, json_each(r.document, '$.waves') w, json_each(w.value, '$.steps') s
WHERE r.document IS NOT NULL AND json_valid(r.document);

UPDATE rollouts
SET targets = json_extract(document, '$.targets'),
    wave_environments = (
        SELECT json_group_array(json_extract(w.value, '$.environments'))
        FROM (SELECT value FROM json_each(rollouts.document, '$.waves') ORDER BY key) w
    ),
    document = json_set(
        document,
        '$.targets', json('{}'),
        -- json(): a subquery's result is plain text; this makes it JSON
        -- again so it is set as an array, not a string.
        '$.waves', json((
            SELECT json_group_array(
                json_set(w.value, '$.steps', json('[]'), '$.environments', json('[]')))
            FROM (SELECT value FROM json_each(rollouts.document, '$.waves') ORDER BY key) w
        ))
    )
WHERE document IS NOT NULL AND json_valid(document);
