//! Planning: which services a merge affects, which steps that makes, in which
//! waves and in which dependency order, and how risky it is. Pure: every
//! input (convoy.yml, changed paths, history) is given, nothing is fetched.

pub mod build;
pub mod cli;
pub mod impact;
pub mod model;
pub mod render;
pub mod risk;
pub mod waves;

pub use build::build_plan;
pub use impact::{Change, affected_services};
pub use render::format_percent;
pub use risk::{EnvHistory, History};
