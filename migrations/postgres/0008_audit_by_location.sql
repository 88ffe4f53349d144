-- See migrations/0012_audit_by_location.sql: the audit log read by where
-- a command was written.
CREATE INDEX audit_log_by_location ON audit_log (location, id);
