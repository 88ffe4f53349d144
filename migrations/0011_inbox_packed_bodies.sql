-- Webhook bodies packed several to a row of `inbox_bodies`. A compressed
-- 25 KB webhook takes about 3 KB, and with a row each, each took a 4 KB
-- page of its own (two do not fit in one): a third of every body page
-- written to the log, and again to the database file, was empty. A group
-- of deliveries now stores its bodies one after another in rows of up to
-- 32 KB, and each inbox row says where its body is in the row it names:
-- `body_len` bytes from byte `body_at` (from 0). Rows stored before this
-- migration keep both NULL: their body is the whole row, as before.
ALTER TABLE inbox ADD COLUMN body_at INTEGER;
ALTER TABLE inbox ADD COLUMN body_len INTEGER;
