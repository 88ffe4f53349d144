-- When GitHub says an installation was last suspended or unsuspended
-- (milliseconds; NULL until the first such event): deliveries can be
-- processed out of order — a retried `suspend` after a later `unsuspend`,
-- or two replicas each taking one — and only the newer change may stand.
ALTER TABLE installations ADD COLUMN suspension_changed_at INTEGER;
