//! What convoy shows on GitHub: rendering (one Tera template per message
//! kind, pure), the reporter that turns stored rollouts into check runs and
//! the PR comment, the PR-time preflight, and the coalesced, paced
//! transport that delivers them.

pub mod preflight;
pub mod render;
pub mod reporter;
pub mod setup;
pub mod suspension;
pub mod text;
pub mod transport;

pub use preflight::{
    PREFLIGHT_CHECK, Preflight, PreflightFacts, PreflightOutcome, Probe, render_preflight,
};
pub use render::{RenderOptions, RolloutReport, render_rollout};
pub use reporter::Reporter;
