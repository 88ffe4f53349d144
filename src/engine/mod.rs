//! The rollout state machine: (rollout, event, now) -> (rollout', effects).
//! Pure and deterministic; time and jitter are inputs.
