-- Which line of a comment an audit entry is for (1-based; NULL for a
-- button, the command line, and entries written before this column): a
-- comment retried part-way runs the lines not yet audited, and a command
-- written twice in one comment is two lines, not one.
ALTER TABLE audit_log ADD COLUMN line INTEGER;
