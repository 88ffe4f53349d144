-- The audit log read by where a command was written (a comment): a
-- redelivered comment, or one retried after a failure part-way, runs only
-- the lines not yet audited there, also where no rollout is involved (an
-- open pull request, the drift issue).
CREATE INDEX audit_log_by_location ON audit_log (location, id);
