//! Prometheus metrics of webhook delivery, served with the outbound
//! layer's on `/metrics`. Counters are this process's deliveries; the
//! backlog gauges describe the whole store (every node agrees on them).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered` (2xx), `retrying` (failed, another attempt is
    /// scheduled), `dead` (failed, no attempts left), `gone` (410: the
    /// endpoint is disabled).
    pub outcome: &'static str,
}

pub struct WebhookMetrics {
    registry: Registry,
    pub(crate) attempts: Family<OutcomeLabel, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) disabled: Counter,
    pending: Gauge,
    due: Gauge,
    oldest_due: Gauge<f64, AtomicU64>,
}

impl std::fmt::Debug for WebhookMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookMetrics")
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_webhooks");
        let attempts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts made by this process, by outcome",
            attempts.clone(),
        );
        // 5 ms .. ~82 s: receivers answer in milliseconds, timeouts are 15 s.
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "delivery_duration_seconds",
            "Time from sending a delivery to the receiver's answer (or failure)",
            duration.clone(),
        );
        let disabled = Counter::default();
        registry.register(
            "endpoints_disabled",
            "Endpoints this process disabled (410 Gone, or failing for too long)",
            disabled.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "pending_messages",
            "Messages not yet delivered or dead-lettered, due or waiting for a retry",
            pending.clone(),
        );
        let due = Gauge::default();
        registry.register(
            "due_messages",
            "Pending messages whose next attempt is due now",
            due.clone(),
        );
        let oldest_due = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_due_seconds",
            "How long the longest-waiting due message has been due (0 when none is)",
            oldest_due.clone(),
        );
        Self {
            registry,
            attempts,
            duration,
            disabled,
            pending,
            due,
            oldest_due,
        }
    }
}

impl WebhookMetrics {
    pub(crate) fn set_backlog(&self, b: &berth_store::WebhookBacklog, now_ms: i64) {
        self.pending.set(b.pending);
        self.due.set(b.due);
        let age = b
            .oldest_due_at
            .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        self.oldest_due.set(age);
    }

    /// Appends the metrics in the OpenMetrics text format, without the
    /// closing `# EOF` (the caller adds it after every registry).
    pub fn encode_into(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}
