//! Prometheus metrics (text format at `GET /metrics`).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub event: String,
    /// accepted, duplicate, rejected (intake); done, dropped, retry, failed
    /// (processing).
    pub outcome: String,
}

/// Every metric convoy exports, registered once.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Deliveries by event and outcome, at intake and after processing.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Deliveries waiting to be processed.
    pub inbox_pending: Gauge,
    /// Deliveries kept as failed after their last attempt.
    pub inbox_failed: Gauge,
    /// Seconds from receipt to the end of processing.
    pub processing_seconds: Histogram,
    /// Installations GitHub has suspended: their reports cannot reach
    /// GitHub until they are unsuspended.
    pub installations_suspended: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("convoy");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by event and outcome",
            deliveries.clone(),
        );
        let inbox_pending = Gauge::default();
        registry.register(
            "inbox_pending",
            "Deliveries stored and not yet processed",
            inbox_pending.clone(),
        );
        let inbox_failed = Gauge::default();
        registry.register(
            "inbox_failed",
            "Deliveries that failed their last processing attempt and are kept with their error",
            inbox_failed.clone(),
        );
        let processing_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "delivery_processing_seconds",
            "Seconds from a delivery's receipt to the end of its processing",
            processing_seconds.clone(),
        );
        let installations_suspended = Gauge::default();
        registry.register(
            "installations_suspended",
            "Installations of the App that GitHub has suspended: convoy's reports to their repositories are refused until they are unsuspended",
            installations_suspended.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            deliveries,
            inbox_pending,
            inbox_failed,
            processing_seconds,
            installations_suspended,
        }
    }

    pub fn count_delivery(&self, event: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Lets other parts (the GitHub client's rate-limit gauge, the engine)
    /// register their own metrics in the same registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.with_registry(|r| prometheus_client::encoding::text::encode(&mut out, r))
            .map(|_| out)
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counted_deliveries() {
        let m = Metrics::new();
        m.count_delivery("push", "accepted");
        m.count_delivery("push", "accepted");
        m.inbox_pending.set(3);
        let text = m.encode();
        assert!(
            text.contains(r#"convoy_deliveries_total{event="push",outcome="accepted"} 2"#),
            "{text}"
        );
        assert!(text.contains("convoy_inbox_pending 3"), "{text}");
    }
}
