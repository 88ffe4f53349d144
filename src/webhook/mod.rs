//! Webhook deliveries: signature check and parsing into typed events.

pub mod events;
pub mod signature;

pub use events::{Envelope, Event, parse};
