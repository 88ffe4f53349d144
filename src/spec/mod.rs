//! `convoy.yml`: the repository's rollout file, its model and its validation
//! with `LINE:COL` positions. Untrusted input: never panics.

pub mod cli;
pub mod model;
pub mod validate;
pub mod yaml;

pub use model::{ConvoySpec, EnvSpec, ServiceSpec, WaveSpec};
pub use validate::{CheckContext, Limits, MAX_BYTES, SpecError, parse_spec, parse_spec_bytes};
pub use yaml::Pos;
