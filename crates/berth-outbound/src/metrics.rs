//! Prometheus metrics of the outbound layer. Labels are the provider
//! (integration id) and the status class, never anything tenant-specific:
//! a connection id as a label would make the series count unbounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderStatus {
    pub provider: String,
    /// The HTTP status, or `error` when the provider never answered, or
    /// `rate_limited` when Berth held the call back.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabel {
    pub provider: String,
    /// `waited` (the call went after a wait) or `rejected`.
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<ProviderStatus, Counter>,
    pub latency: Family<ProviderLabel, Histogram>,
    pub retries: Family<ProviderLabel, Counter>,
    pub rate_limit_waits: Family<WaitLabel, Counter>,
    pub request_logs_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_outbound");
        let requests = Family::<ProviderStatus, Counter>::default();
        registry.register(
            "requests",
            "Calls to providers by provider and status",
            requests.clone(),
        );
        let latency = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~33 s
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Latency of provider calls, retries and waits included",
            latency.clone(),
        );
        let retries = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "retries",
            "Provider calls sent again after a failure",
            retries.clone(),
        );
        let rate_limit_waits = Family::<WaitLabel, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Calls held back by a rate-limit budget",
            rate_limit_waits.clone(),
        );
        let request_logs_dropped = Counter::default();
        registry.register(
            "request_logs_dropped",
            "Request-log entries dropped because the writer fell behind",
            request_logs_dropped.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            retries,
            rate_limit_waits,
            request_logs_dropped,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn provider(provider: &str) -> ProviderLabel {
        ProviderLabel {
            provider: provider.to_string(),
        }
    }
}
