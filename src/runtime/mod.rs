//! Workers and timers: intake's group commit, the inbox worker, and (with the
//! engine) effect execution and crash recovery.

pub mod intake;
pub mod worker;
