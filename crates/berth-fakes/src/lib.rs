//! Fakes of provider APIs that behave like the real ones where Berth's
//! connectors depend on it: paths, authentication, pagination, incremental
//! filters, tombstones, rate limits and error bodies, written from the
//! official specs (`shared/reference/providers/hubspot`) and Salesforce's
//! documented REST behaviour. Tests, the kill -9 test and the sync benchmark
//! run them on loopback; Berth reaches them through a catalog override, the
//! same way it reaches the real APIs.
//!
//! State lives in memory and is generated deterministically from a seed, so
//! a test can compare Berth's store with the provider record for record.
#![forbid(unsafe_code)]
// Handlers return ready responses as their error; these are not hot paths.
#![allow(clippy::result_large_err)]

pub mod hubspot;
pub mod salesforce;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::Router;

/// Serves `router` on a random loopback port; returns its base URL.
pub async fn serve(router: Router) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(base)
}

/// A rolling-window request limiter (`limit` calls per `window`); a limit
/// of 0 means unlimited.
#[derive(Debug)]
pub(crate) struct Rolling {
    limit: usize,
    window: Duration,
    calls: VecDeque<Instant>,
}

impl Rolling {
    pub(crate) fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            calls: VecDeque::new(),
        }
    }

    /// Counts a call; `Err(remaining window)` when over the limit.
    pub(crate) fn hit(&mut self) -> Result<usize, Duration> {
        if self.limit == 0 {
            return Ok(usize::MAX);
        }
        let now = Instant::now();
        while self
            .calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.calls.pop_front();
        }
        if self.calls.len() >= self.limit {
            let oldest = self.calls.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        self.calls.push_back(now);
        Ok(self.limit - self.calls.len())
    }
}

/// A small deterministic generator (SplitMix64), so fakes need no RNG crate
/// and a seed always yields the same data.
pub(crate) struct Gen(u64);

impl Gen {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub(crate) fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

pub(crate) const FIRST: &[&str] = &[
    "Ava", "Liam", "Noah", "Mia", "Zoe", "Omar", "Ines", "Kai", "Lena", "Ravi", "Sara", "Tom",
];
pub(crate) const LAST: &[&str] = &[
    "Chen", "Okafor", "Silva", "Novak", "Haddad", "Berg", "Ito", "Moreau", "Patel", "Kowalski",
];
pub(crate) const COMPANY: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
];
pub(crate) const INDUSTRY: &[&str] = &["SOFTWARE", "RETAIL", "BANKING", "HEALTHCARE", "LOGISTICS"];

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 with milliseconds, UTC (`2024-01-02T03:04:05.678Z`).
pub(crate) fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time given as RFC 3339 or epoch milliseconds.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis())
        })
}

/// A request id in the shape providers use for correlation ids.
pub(crate) fn correlation_id() -> String {
    use sha2::Digest;
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = hex::encode(sha2::Sha256::digest(n.to_le_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
