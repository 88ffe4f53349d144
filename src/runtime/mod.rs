//! Workers and timers: the inbox worker, effect execution, crash recovery.
