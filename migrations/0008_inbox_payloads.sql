-- Webhook bodies apart from their inbox rows. A row is updated two or three
-- times (claimed, finished, retried); with its ~3 KB compressed body inline
-- each update rewrote a whole page, which made every commit of the inbox
-- write several times the bytes it changed. Bodies are written once and
-- never updated. (PostgreSQL already keeps them out of line: TOAST.)
CREATE TABLE inbox_payloads (
    delivery_id TEXT PRIMARY KEY,
    payload     BLOB NOT NULL
);
INSERT INTO inbox_payloads (delivery_id, payload) SELECT delivery_id, payload FROM inbox;
ALTER TABLE inbox DROP COLUMN payload;
