//! Planning: which services a merge affects, which steps that makes, in which
//! waves and in which dependency order, and how risky it is. Pure: every
//! input (convoy.yml, changed paths, history) is given, nothing is fetched.

pub mod model;
