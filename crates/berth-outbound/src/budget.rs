//! Rate-limit budgets: Berth spends a customer's provider quota on purpose
//! instead of discovering it is gone from a 429.
//!
//! A budget key is either one connection or one provider account (shared by
//! every connection to it, e.g. all HubSpot connections of one portal).
//! Each key may have:
//! - a declared limit from the catalog, enforced with a `governor` token
//!   bucket (burst = the whole window's allowance);
//! - a learned block: the provider said, in `X-RateLimit-*`-style headers or
//!   a 429's `Retry-After`, that nothing more is allowed until some instant.
//!
//! A call waits for its budget up to `max_wait`; past that it is refused with
//! Berth's own 429, before a single byte reaches the provider.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::retry::parse_retry_after;

/// A declared limit: `requests` per `per_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub per_seconds: u32,
}

/// A provider's own rate-limit headers, as its catalog entry declares
/// them (the generic `X-RateLimit-*`, `RateLimit-*` and `Retry-After`
/// need none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRule {
    /// `header` says how many calls are left; at 0 the quota is gone for
    /// the window the `window_ms` header names (milliseconds), or until
    /// the `reset` header's time (seconds from now or a Unix time), else
    /// for `wait`. HubSpot: `X-HubSpot-RateLimit-Remaining` with
    /// `-Interval-Milliseconds`.
    Remaining {
        header: String,
        window_ms: Option<String>,
        reset: Option<String>,
        wait: Duration,
    },
    /// `header` holds `key=used/max` pairs; at `used >= max` the quota is
    /// gone for `wait`. Salesforce: `Sforce-Limit-Info: api-usage=…`.
    Usage {
        header: String,
        key: String,
        wait: Duration,
    },
}

impl HeaderRule {
    fn header(&self) -> &str {
        match self {
            HeaderRule::Remaining { header, .. } | HeaderRule::Usage { header, .. } => header,
        }
    }

    fn exhausted_for(&self, h: &HeaderMap, now: SystemTime) -> Option<Duration> {
        match self {
            HeaderRule::Remaining {
                header,
                window_ms,
                reset,
                wait,
            } => {
                if !number(h, header).is_some_and(|r| r <= 0.0) {
                    return None;
                }
                let from_window = window_ms
                    .as_deref()
                    .and_then(|w| number(h, w))
                    .map(|ms| Duration::from_millis(ms.clamp(0.0, 86_400_000.0) as u64));
                let from_reset = reset
                    .as_deref()
                    .and_then(|r| number(h, r))
                    .map(|v| reset_in(v, now));
                Some(from_window.or(from_reset).unwrap_or(*wait))
            }
            HeaderRule::Usage { header, key, wait } => {
                let v = self::header(h, header)?;
                let usage = v
                    .split(',')
                    .find_map(|p| p.trim().strip_prefix(key.as_str())?.strip_prefix('='))?;
                let (used, max) = usage.split_once('/')?;
                let (used, max) = (
                    used.trim().parse::<u64>().ok()?,
                    max.trim().parse::<u64>().ok()?,
                );
                (max > 0 && used >= max).then_some(*wait)
            }
        }
    }
}

/// Which budget a call draws from.
#[derive(Debug, Clone)]
pub struct BudgetKey {
    /// `provider:account` or `provider:connection-id`; shown in errors only
    /// as its scope, never as its value.
    pub key: String,
    /// `"account"` or `"connection"`.
    pub scope: &'static str,
    pub limit: Option<Limit>,
    /// The provider's own rate-limit headers this key learns from.
    pub headers: Arc<[HeaderRule]>,
    /// The key's entry once looked up: a key lives in a connection's call
    /// context (cached per thread), so most calls skip the shared map.
    pub slot: Slot,
}

impl BudgetKey {
    pub fn new(key: String, scope: &'static str, limit: Option<Limit>) -> Self {
        BudgetKey {
            key,
            scope,
            limit,
            headers: Arc::from(Vec::new()),
            slot: Slot::default(),
        }
    }

    /// The same key, learning from `rules` too.
    pub fn with_headers(mut self, rules: Arc<[HeaderRule]>) -> Self {
        self.headers = rules;
        self
    }
}

/// See [`BudgetKey::slot`]. Clones share the entry once it is looked up.
#[derive(Debug, Clone, Default)]
pub struct Slot(OnceLock<Arc<Entry>>);

/// One key's state, shared by every call of the key on every thread.
#[derive(Debug, Default)]
pub struct Entry {
    limiter: Mutex<Option<(Limit, DefaultDirectRateLimiter)>>,
    /// Nanoseconds after [`base`] until which the provider said no (0: it
    /// did not). An atomic: every call reads it, and a read of a line
    /// nobody writes costs nothing between cores, unlike a lock.
    blocked_until: AtomicU64,
}

/// The instant `blocked_until` counts from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos_after_base(t: Instant) -> u64 {
    // 1 at least: 0 means "not blocked".
    (t.saturating_duration_since(base()).as_nanos() as u64).max(1)
}

impl Entry {
    fn blocked_until(&self) -> Option<Instant> {
        match self.blocked_until.load(Ordering::Acquire) {
            0 => None,
            n => Some(base() + Duration::from_nanos(n)),
        }
    }
}

#[derive(Default)]
pub struct Budgets {
    /// foldhash: keys are ids Berth made (provider and connection ids).
    entries: Mutex<HashMap<String, Arc<Entry>, foldhash::fast::RandomState>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Budgets")
    }
}

/// The budget is spent for longer than the caller may wait.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub retry_after: Duration,
    pub scope: &'static str,
    /// Whether the provider said so (learned) or the catalog's limit did.
    pub learned: bool,
}

/// Most keys ever tracked before idle ones are forgotten.
const MAX_KEYS: usize = 100_000;

impl Budgets {
    fn entry<'k>(&self, key: &'k BudgetKey) -> &'k Arc<Entry> {
        key.slot.0.get_or_init(|| self.lookup(&key.key))
    }

    fn lookup(&self, key: &str) -> Arc<Entry> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            let now = Instant::now();
            map.retain(|_, e| {
                Arc::strong_count(e) > 1 || e.blocked_until().is_some_and(|b| b > now)
            });
        }
        match map.get(key) {
            Some(e) => e.clone(),
            None => map.entry(key.to_string()).or_default().clone(),
        }
    }

    /// How long `key` must wait before a call may go, taking one unit of
    /// the declared budget when it returns zero.
    fn wait_for(&self, key: &BudgetKey) -> (Duration, bool) {
        let e = self.entry(key);
        if let Some(b) = e.blocked_until() {
            let now = Instant::now();
            if b > now {
                return (b - now, true);
            }
        }
        let Some(limit) = key.limit else {
            return (Duration::ZERO, false);
        };
        let mut lim = e.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if lim.as_ref().map(|(l, _)| *l) != Some(limit) {
            *lim = limiter(limit).map(|r| (limit, r));
        }
        if let Some((_, lim)) = lim.as_ref()
            && let Err(not_until) = lim.check()
        {
            return (not_until.wait_time_from(self.clock.now()), false);
        }
        (Duration::ZERO, false)
    }

    /// Waits (up to `max_wait` in all) until every key allows a call.
    /// Returns the time spent sleeping (zero when the call went at once).
    pub async fn acquire(
        &self,
        keys: &[BudgetKey],
        max_wait: Duration,
    ) -> Result<Duration, Exhausted> {
        let mut slept = Duration::ZERO;
        'outer: loop {
            for key in keys {
                let (wait, learned) = self.wait_for(key);
                if wait.is_zero() {
                    continue;
                }
                // Time asleep so far stands in for time waited: the calls
                // that get here are the rare ones, and this keeps a clock
                // read off every other call.
                if slept + wait > max_wait {
                    return Err(Exhausted {
                        retry_after: wait,
                        scope: key.scope,
                        learned,
                    });
                }
                tokio::time::sleep(wait).await;
                slept += wait;
                // Units already taken from earlier keys are spent; that
                // errs on the side of sending less.
                continue 'outer;
            }
            return Ok(slept);
        }
    }

    /// Blocks `key` until `until` (keeps the later of two blocks).
    pub fn block(&self, key: &BudgetKey, until: Instant) {
        self.entry(key)
            .blocked_until
            .fetch_max(nanos_after_base(until), Ordering::AcqRel);
    }

    /// Learns from a provider answer: a 429, or headers saying the quota is
    /// used up, block the key until the quota returns.
    pub fn learn(&self, key: &BudgetKey, status: u16, headers: &HeaderMap) {
        if !signals_limit(status, headers, &key.headers) {
            return;
        }
        if let Some(d) = exhausted_for(status, headers, SystemTime::now(), &key.headers) {
            self.block(key, Instant::now() + d);
        }
    }
}

fn limiter(limit: Limit) -> Option<DefaultDirectRateLimiter> {
    let burst = NonZeroU32::new(limit.requests)?;
    let period = Duration::from_secs(limit.per_seconds.max(1) as u64) / limit.requests;
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?.allow_burst(burst);
    Some(RateLimiter::direct(quota))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn number(h: &HeaderMap, name: &str) -> Option<f64> {
    header(h, name).and_then(|v| v.parse::<f64>().ok())
}

/// A reset header: seconds from now, or a Unix time in seconds or ms.
fn reset_in(value: f64, now: SystemTime) -> Duration {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let secs = if value > 1e12 {
        value / 1000.0 - now_s
    } else if value > 1e9 {
        value - now_s
    } else {
        value
    };
    Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))
}

/// Whether an answer may say the quota is gone. Most answers carry none of
/// the headers: one pass over the names instead of a lookup per spelling.
fn signals_limit(status: u16, h: &HeaderMap, rules: &[HeaderRule]) -> bool {
    status == 429
        || h.keys().any(|k| {
            let k = k.as_str();
            k.contains("rate") || rules.iter().any(|r| r.header().eq_ignore_ascii_case(k))
        })
}

/// For how long the provider says its quota is gone, if it says so: a
/// 429's `Retry-After` or reset header, the generic `X-RateLimit-*`
/// spellings, then the provider's own headers (`rules`, from the catalog).
pub fn exhausted_for(
    status: u16,
    h: &HeaderMap,
    now: SystemTime,
    rules: &[HeaderRule],
) -> Option<Duration> {
    if !signals_limit(status, h, rules) {
        return None;
    }
    if status == 429 {
        let ra = header(h, "retry-after").and_then(|v| parse_retry_after(v, now));
        let reset = ["x-ratelimit-reset", "ratelimit-reset", "x-rate-limit-reset"]
            .iter()
            .find_map(|n| number(h, n))
            .map(|v| reset_in(v, now));
        return Some(ra.or(reset).unwrap_or(Duration::from_secs(1)));
    }
    // Generic `X-RateLimit-*` (and the IETF draft / Twitter spellings).
    for (remaining, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
        ("x-rate-limit-remaining", "x-rate-limit-reset"),
    ] {
        if number(h, remaining).is_some_and(|r| r <= 0.0) {
            let d = number(h, reset).map(|v| reset_in(v, now));
            return Some(d.unwrap_or(Duration::from_secs(1)));
        }
    }
    rules.iter().find_map(|r| r.exhausted_for(h, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn learns_from_provider_headers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // As the catalog declares HubSpot's and Salesforce's.
        let rules = [
            HeaderRule::Remaining {
                header: "x-hubspot-ratelimit-remaining".into(),
                window_ms: Some("x-hubspot-ratelimit-interval-milliseconds".into()),
                reset: None,
                wait: Duration::from_secs(10),
            },
            HeaderRule::Usage {
                header: "sforce-limit-info".into(),
                key: "api-usage".into(),
                wait: Duration::from_secs(300),
            },
        ];
        let d = |s, p: &[(&'static str, &str)]| exhausted_for(s, &hm(p), now, &rules);
        // Without the rules, a provider's own header means nothing.
        assert_eq!(
            exhausted_for(
                200,
                &hm(&[("sforce-limit-info", "api-usage=15000/15000")]),
                now,
                &[]
            ),
            None
        );
        assert_eq!(d(200, &[("x-ratelimit-remaining", "5")]), None);
        assert_eq!(
            d(
                200,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")]
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            d(
                200,
                &[
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", "1700000045")
                ]
            ),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            d(
                200,
                &[
                    ("x-hubspot-ratelimit-remaining", "0"),
                    ("x-hubspot-ratelimit-interval-milliseconds", "10000")
                ]
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            d(200, &[("sforce-limit-info", "api-usage=15000/15000")]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(d(200, &[("sforce-limit-info", "api-usage=10/15000")]), None);
        assert_eq!(
            d(429, &[("retry-after", "3")]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(d(429, &[]), Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn declared_limit_queues_then_refuses() {
        let b = Budgets::default();
        let key = BudgetKey::new(
            "p:acct".into(),
            "account",
            Some(Limit {
                requests: 2,
                per_seconds: 1,
            }),
        );
        let keys = [key];
        assert!(b.acquire(&keys, Duration::ZERO).await.is_ok());
        assert!(b.acquire(&keys, Duration::ZERO).await.is_ok());
        let e = b.acquire(&keys, Duration::ZERO).await.unwrap_err();
        assert_eq!(e.scope, "account");
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_millis(500));
        // Waiting is allowed: the call goes once a unit returns.
        let waited = b.acquire(&keys, Duration::from_secs(2)).await.unwrap();
        assert!(waited > Duration::from_millis(100), "{waited:?}");
    }

    #[tokio::test]
    async fn learned_block_applies_to_every_caller_of_the_key() {
        let b = Budgets::default();
        let key = BudgetKey::new("p:c1".into(), "connection", None);
        b.learn(&key, 429, &hm(&[("retry-after", "60")]));
        let e = b
            .acquire(std::slice::from_ref(&key), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.learned && e.retry_after > Duration::from_secs(55));
        // Another key value of the same budget (another thread's context).
        let same = BudgetKey::new("p:c1".into(), "connection", None);
        assert!(b.acquire(&[same], Duration::from_secs(1)).await.is_err());
        let other = BudgetKey::new("p:c2".into(), "connection", None);
        assert!(b.acquire(&[other], Duration::ZERO).await.is_ok());
    }
}
