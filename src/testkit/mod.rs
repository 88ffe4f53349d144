//! Stand-ins used by the tests and by `convoy demo`: a GitHub API double and
//! a fleet of environment agents, all on 127.0.0.1. Never used by `serve`.

pub mod counting;
pub mod fleet;
pub mod github_standin;
pub mod openapi;
pub mod postgres;
pub mod rollouts;
