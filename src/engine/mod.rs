//! The rollout state machine: (rollout, event, now) -> (rollout', effects).
//! Pure and deterministic; time and jitter are inputs.
//!
//! How the runtime drives it:
//!
//! ```text
//! let mut rollout = Rollout::new(plan);               // state: queued
//! loop {
//!     let effects = engine::handle(&mut rollout, event, &Ctx { now, jitter });
//!     store.save(&rollout)?;                          // persist first …
//!     for e in effects { runtime.execute(e) }         // … then act
//!     event = next event (driver answer, timer, …)
//! }
//! ```
//!
//! Human commands go through [`command`] (validated; a [`CommandError`] is a
//! reply for the commenter). After a restart, send [`Event::Recover`] to each
//! unfinished rollout: it re-issues what was in flight, re-verifying
//! deploys before repeating them (SPEC 6.9).
//!
//! [`apply`] and [`apply_command`] are the same transitions returning a
//! [`Transition`] that also names the steps that changed, for a store that
//! writes per step instead of the whole rollout. The driver effects can be
//! carried out with [`crate::drivers::exec::perform`], which answers each
//! with the event to feed back.

pub mod freeze;
pub mod machine;
pub mod model;
pub mod view;

pub use machine::{
    Changed, MAX_BACKOFF, MIN_POLL_INTERVAL, Transition, apply, apply_command, backoff_delay,
    bake_rounds, command, handle, rollback_targets, validate, waiting_for_approval,
};
pub use model::*;
pub use view::{RolloutView, StepView, Waiting, WaveView, view, waiting_reason};

use crate::plan::model::Concurrency;

/// What to do with a new rollout for a repository and branch (SPEC 6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// No active rollout: start it now.
    Start,
    /// Wait until the active one ends (`queue`).
    Queue,
    /// Send [`Event::Superseded`] to the active (and any queued) rollout and
    /// start this one once it has ended (`supersede`: the old one starts
    /// nothing new and ends `superseded` when its in-flight steps are done).
    SupersedeActive,
}

/// Decides how a new rollout enters, given whether the branch has an active
/// (not terminal) rollout and the new rollout's `policy.concurrency`.
pub fn admission(active_exists: bool, concurrency: Concurrency) -> Admission {
    match (active_exists, concurrency) {
        (false, _) => Admission::Start,
        (true, Concurrency::Queue) => Admission::Queue,
        (true, Concurrency::Supersede) => Admission::SupersedeActive,
    }
}
