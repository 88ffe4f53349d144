//! `convoy.yml`: the repository's rollout file, its model and its validation
//! with `LINE:COL` positions. Untrusted input: never panics.
