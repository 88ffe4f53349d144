//! What convoy shows on GitHub: rendering and coalesced, paced delivery of
//! check runs and the PR comment.

pub mod transport;
