//! Prometheus metrics of the outbound layer. Labels are the provider
//! (integration id) and the status class, never anything tenant-specific:
//! a connection id as a label would make the series count unbounded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Tells this registry's handles apart in a thread's cache.
    id: u64,
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
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
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
    /// Appends the metrics in the OpenMetrics text format, without the
    /// closing `# EOF` (for a page that serves several registries).
    pub fn encode_into(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }

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

    /// Counts a finished call and its latency. The handles of a
    /// (provider, status) are looked up in the registry once per thread and
    /// kept: the registry's label sets are allocated and SipHashed per
    /// lookup, which showed on every proxied call.
    pub(crate) fn observe_call(&self, provider: &str, status: StatusKey, latency_secs: f64) {
        HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let per = cache.entry(self.id).or_default();
            let handles = match per.get_mut(provider) {
                Some(h) => h,
                None => per.entry(provider.to_string()).or_insert_with(|| Handles {
                    latency: self
                        .latency
                        .get_or_create(&Self::provider(provider))
                        .clone(),
                    statuses: Vec::new(),
                }),
            };
            handles.latency.observe(latency_secs);
            match handles.statuses.iter().find(|(k, _)| *k == status) {
                Some((_, c)) => {
                    c.inc();
                }
                None => {
                    let c = self
                        .requests
                        .get_or_create(&ProviderStatus {
                            provider: provider.to_string(),
                            status: status.label(),
                        })
                        .clone();
                    c.inc();
                    handles.statuses.push((status, c));
                }
            }
        });
    }
}

/// The `status` label of a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StatusKey {
    Code(u16),
    Error,
    RateLimited,
}

impl StatusKey {
    fn label(self) -> String {
        match self {
            StatusKey::Code(c) => c.to_string(),
            StatusKey::Error => "error".into(),
            StatusKey::RateLimited => "rate_limited".into(),
        }
    }
}

/// A provider's metric handles, as one thread keeps them.
struct Handles {
    latency: Histogram,
    statuses: Vec<(StatusKey, Counter)>,
}

thread_local! {
    /// Registry id -> provider -> handles.
    static HANDLES: RefCell<HashMap<u64, HashMap<String, Handles, foldhash::fast::RandomState>>> =
        RefCell::new(HashMap::new());
}
