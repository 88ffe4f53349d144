-- See migrations/0014_audit_line.sql.
ALTER TABLE audit_log ADD COLUMN line BIGINT;
