//! Workers and timers: intake's group commit, the inbox worker, rollout
//! execution with durable timers and crash recovery.

pub mod commands;
pub mod intake;
pub mod leases;
pub mod merges;
pub mod plans;
pub mod rollouts;
pub mod worker;
