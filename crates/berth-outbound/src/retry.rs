//! When a failed provider call is tried again, and after how long.
//!
//! The rules, in order:
//! - A connection that never opened (DNS, refused, TLS) sent no bytes, so
//!   any method is retried.
//! - Anything else (a 429/502/503/504 answer, a timeout, a reset) is retried
//!   only when repeating the request is safe: an idempotent method, or a
//!   caller-supplied `Idempotency-Key`. A POST that reached the provider is
//!   never sent twice on Berth's initiative.
//! - A `Retry-After` (seconds or HTTP date) sets the delay; one longer than
//!   the policy's `max_retry_after` is not waited for: the answer goes back
//!   to the caller, who can decide.
//! - Otherwise the delay is exponential with "equal jitter" (half fixed,
//!   half random), so retries of many callers spread out but never collapse
//!   to zero.

use std::time::{Duration, SystemTime};

use http::Method;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` Berth waits out itself.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// What happened on one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Attempt {
    /// The provider answered with this status (and maybe a Retry-After).
    Status(u16, Option<Duration>),
    /// No connection was made: nothing was sent.
    NotConnected,
    /// Sent (maybe partly) but no usable answer: timeout, reset.
    Failed,
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), or `None` to stop.
    pub fn delay(&self, retry: u32, attempt: Attempt, repeatable: bool) -> Option<Duration> {
        if retry > self.max_retries {
            return None;
        }
        let retry_after = match attempt {
            Attempt::NotConnected => None,
            Attempt::Failed if repeatable => None,
            Attempt::Status(s, ra) if repeatable && retryable_status(s) => ra,
            _ => return None,
        };
        if let Some(ra) = retry_after {
            return (ra <= self.max_retry_after).then_some(ra);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << (retry - 1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter = rand::random_range(0..=half.as_millis() as u64);
        Some(half + Duration::from_millis(jitter))
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(12))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn only_safe_requests_are_repeated() {
        let p = RetryPolicy::default();
        // Not connected: even a POST.
        assert!(p.delay(1, Attempt::NotConnected, false).is_some());
        // A POST that reached the provider: never without a key.
        assert!(p.delay(1, Attempt::Status(503, None), false).is_none());
        assert!(p.delay(1, Attempt::Failed, false).is_none());
        assert!(p.delay(1, Attempt::Status(503, None), true).is_some());
        // Non-retryable statuses.
        for s in [400, 401, 404, 409, 500] {
            assert!(p.delay(1, Attempt::Status(s, None), true).is_none(), "{s}");
        }
        // Budget of retries.
        assert!(p.delay(4, Attempt::NotConnected, true).is_none());
    }

    #[test]
    fn retry_after_sets_the_delay_within_the_cap() {
        let p = RetryPolicy::default();
        let ra = Some(Duration::from_secs(2));
        assert_eq!(
            p.delay(1, Attempt::Status(429, ra), true),
            Some(Duration::from_secs(2))
        );
        let long = Some(Duration::from_secs(3600));
        assert_eq!(p.delay(1, Attempt::Status(429, long), true), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        for retry in 1..=3 {
            let exp = p.base_delay * (1 << (retry - 1));
            for _ in 0..50 {
                let d = p.delay(retry, Attempt::NotConnected, true).unwrap();
                assert!(d >= exp / 2 && d <= exp, "{retry}: {d:?}");
            }
        }
        let p = RetryPolicy {
            max_retries: 30,
            ..RetryPolicy::default()
        };
        assert!(p.delay(30, Attempt::NotConnected, true).unwrap() <= p.max_delay);
    }
}
