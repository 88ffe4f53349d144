//! Webhook deliveries: signature check and parsing into typed events.
