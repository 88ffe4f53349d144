-- Webhook bodies keyed by a number that grows, not by the delivery id.
-- GitHub's delivery ids are GUIDs: keyed by them, every new body also
-- wrote an index entry at a random place, one more page per delivery in
-- every commit of the intake (about 40 % of its throughput with random
-- ids). A growing key appends every body after the last: no index beside
-- the table. The inbox row names its body (`inbox.body`); the inbox's own
-- index on `delivery_id` stays, as it makes a redelivery a no-op.
CREATE TABLE inbox_bodies (
    seq     INTEGER PRIMARY KEY,
    payload BLOB NOT NULL
);
ALTER TABLE inbox ADD COLUMN body INTEGER;
INSERT INTO inbox_bodies (seq, payload) SELECT rowid, payload FROM inbox_payloads;
UPDATE inbox SET body = (
    SELECT p.rowid FROM inbox_payloads AS p WHERE p.delivery_id = inbox.delivery_id
);
DROP TABLE inbox_payloads;
