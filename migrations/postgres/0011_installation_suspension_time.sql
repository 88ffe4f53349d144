-- See migrations/0015_installation_suspension_time.sql.
ALTER TABLE installations ADD COLUMN suspension_changed_at BIGINT;
