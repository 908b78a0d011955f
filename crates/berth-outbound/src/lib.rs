//! The one outbound HTTP layer: every call Berth makes to a provider goes
//! through [`Outbound`], so timeouts, TLS, retries ([`retry`]), rate-limit
//! budgets ([`budget`]), metrics ([`metrics`]) and the request log apply to
//! all of them, whoever makes the call (passthrough, proxy, sync, writes).
//!
//! Invariants:
//! - nothing here logs a header value or a query value; provider
//!   credentials travel in both. Request-log paths have query values
//!   redacted and error texts never include the URL;
//! - redirects are never followed (they could carry credentials to another
//!   host); they are answered to the caller;
//! - a request body that is a stream is sent at most once.
#![forbid(unsafe_code)]

pub mod budget;
mod client;
pub mod metrics;
pub mod retry;

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
pub use http::Method;
use http::header::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::sync::mpsc;

pub use client::{BodyStream, host_header, set_serving_lane};
use client::{BoxError, Pools, ReqBody, SendError, timed_out};

pub use budget::{BudgetKey, Budgets, HeaderRule, Limit};
pub use metrics::Metrics;
use metrics::StatusKey;
pub mod ssrf;
pub use retry::RetryPolicy;
use retry::{Attempt, is_idempotent, parse_retry_after};

/// Response bodies larger than this are refused for buffered calls (the
/// streaming proxy has no limit).
pub const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;

/// Request-log entries waiting for the writer; beyond this they are dropped
/// (and counted) rather than slowing provider calls down.
const LOG_QUEUE: usize = 65_536;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboundError {
    #[error("invalid provider URL: {0}")]
    InvalidUrl(String),
    #[error("the request header `{0}` is not a valid HTTP header name and value")]
    InvalidHeader(String),
    #[error("the provider did not answer within the {stage} timeout ({secs} s)")]
    Timeout { stage: &'static str, secs: u64 },
    #[error("could not connect to the provider: {0}")]
    Connect(String),
    #[error("the provider's response exceeded {MAX_BUFFERED_BODY} bytes; use the streaming proxy")]
    TooLarge,
    #[error("the provider sent an invalid or broken response: {0}")]
    Protocol(String),
    /// A guarded call's host is, or resolves to, an internal address
    /// (see [`ssrf`]): refused before anything was sent.
    #[error("{0}")]
    AddressRefused(String),
    #[error("{}", rate_limited_message(.scope, *.learned, *.retry_after))]
    RateLimited {
        retry_after: Duration,
        scope: &'static str,
        learned: bool,
    },
}

fn rate_limited_message(scope: &str, learned: bool, retry_after: Duration) -> String {
    let why = if learned {
        "the provider reported its rate limit used up"
    } else {
        "the provider's declared rate limit is used up"
    };
    format!(
        "Berth held this call back: {why} for this {scope}; retry after {} s",
        retry_after.as_secs_f64().ceil() as u64
    )
}

impl OutboundError {
    /// Which layer produced the outcome, for the request log.
    pub fn layer(&self) -> &'static str {
        match self {
            OutboundError::RateLimited { .. }
            | OutboundError::InvalidUrl(_)
            | OutboundError::AddressRefused(_)
            | OutboundError::InvalidHeader(_) => "berth",
            _ => "network",
        }
    }
}

#[derive(Clone, Debug)]
pub struct OutboundConfig {
    pub connect_timeout: Duration,
    /// From sending the request to the response headers.
    pub first_byte_timeout: Duration,
    /// The whole call, body included (buffered calls only; a stream is
    /// bounded by `idle_timeout` between chunks instead).
    pub total_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    /// How long a call may queue for a rate-limit budget before Berth
    /// answers 429 itself.
    pub max_budget_wait: Duration,
    pub user_agent: String,
    /// Internal networks that guarded calls may still reach (the
    /// operator's `--allow-private-provider-networks`).
    pub allow_private_networks: Vec<ssrf::IpNet>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            max_budget_wait: Duration::from_secs(5),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).into(),
            allow_private_networks: Vec::new(),
        }
    }
}

/// Who a call is made for: drives budgets, metrics labels and the request
/// log. Calls without one (connect-time checks) are only counted.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Integration id.
    pub provider: String,
    pub environment_id: String,
    pub connection_id: Option<String>,
    pub budgets: Vec<BudgetKey>,
    /// The budget that headers and 429s teach about.
    pub learn: Option<BudgetKey>,
    /// The connection's host was chosen by an end user: calls go through
    /// the address guard (`OutboundRequest::guarded`).
    pub guarded: bool,
}

pub enum OutBody {
    Empty,
    Bytes(Bytes),
    /// Sent once, never retried.
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for OutBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutBody::Empty => f.write_str("Empty"),
            OutBody::Bytes(b) => write!(f, "Bytes({})", b.len()),
            OutBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl OutBody {
    /// A body that streams from an HTTP body (a proxied request's).
    pub fn body<B>(b: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        OutBody::Stream(b.map_err(Into::into).boxed_unsync())
    }
}

impl From<Option<Vec<u8>>> for OutBody {
    fn from(b: Option<Vec<u8>>) -> Self {
        match b {
            Some(b) => OutBody::Bytes(b.into()),
            None => OutBody::Empty,
        }
    }
}

/// A request to a provider, fully resolved (URL, credentials attached).
#[derive(Debug)]
pub struct OutboundRequest {
    pub method: Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: OutBody,
    /// Shared: built once per connection and kept in the hot cache.
    pub context: Option<Arc<CallContext>>,
    /// The caller knows a repeat is harmless although the method does not
    /// say so: a read sent as POST (HubSpot's search). Such a call gets the
    /// retry policy of a GET.
    pub read_only: bool,
    /// The URL holds input of someone other than the operator (an end
    /// user's instance URL): its host must pass the address guard at every
    /// new connection, and its connections are pooled apart.
    pub guarded: bool,
}

#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Retries spent inside the layer.
    pub retries: u32,
}

impl OutboundResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A response whose body is still arriving.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

/// One row of the request log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Whose call it was: environment, connection and provider, shared
    /// with the caller rather than copied per call.
    pub context: Arc<CallContext>,
    pub at_ms: i64,
    /// Borrowed for the standard methods: no allocation per call.
    pub method: Cow<'static, str>,
    /// Query values are redacted.
    pub path: String,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub retries: u32,
    /// `provider` (it answered), `berth` (refused before sending) or
    /// `network` (no usable answer).
    pub layer: &'static str,
    pub error: Option<String>,
}

struct Inner {
    pools: Pools,
    config: OutboundConfig,
    budgets: Budgets,
    metrics: Metrics,
    log_tx: mpsc::Sender<LogEntry>,
    log_rx: Mutex<Option<mpsc::Receiver<LogEntry>>>,
    /// `config.user_agent` as a header value, parsed once.
    user_agent: Option<HeaderValue>,
}

/// The shared client. Cheap to clone (pool, budgets and metrics are shared).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbound")
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A method's name as the request log keeps it.
pub fn method_name(m: &Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.as_str().chars().take(16).collect()),
    }
}

/// `path?k=***&…`: what the request log keeps of a URL.
pub fn redacted_path(uri: &http::Uri) -> String {
    let mut out = uri.path().to_string();
    if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(pair.split_once('=').map_or(pair, |(k, _)| k));
            out.push_str("=***");
        }
    }
    out
}

/// A parsed URL as the client takes it.
pub fn uri_of(url: &url::Url) -> Result<http::Uri, OutboundError> {
    url.as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| OutboundError::InvalidUrl(e.to_string()))
}

/// Header pairs as the client takes them; names any pair that is not a
/// valid HTTP header.
pub fn header_map<K: AsRef<str>, V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Result<HeaderMap, OutboundError> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                map.append(k, v);
            }
            _ => {
                return Err(OutboundError::InvalidHeader(k.escape_debug().to_string()));
            }
        }
    }
    Ok(map)
}

enum Failure {
    Error(OutboundError, Attempt),
}

impl Outbound {
    pub fn new(config: &OutboundConfig) -> Result<Self, OutboundError> {
        let pools = Pools::new(config)?;
        let (log_tx, log_rx) = mpsc::channel(LOG_QUEUE);
        Ok(Self {
            inner: Arc::new(Inner {
                pools,
                config: config.clone(),
                budgets: Budgets::default(),
                metrics: Metrics::default(),
                log_tx,
                log_rx: Mutex::new(Some(log_rx)),
                user_agent: HeaderValue::from_str(&config.user_agent).ok(),
            }),
        })
    }

    /// The address guard of guarded calls (see [`ssrf`]), with the
    /// operator's allowed networks.
    pub fn address_policy(&self) -> ssrf::AddressPolicy {
        ssrf::AddressPolicy::allowing(self.inner.config.allow_private_networks.clone())
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn budgets(&self) -> &Budgets {
        &self.inner.budgets
    }

    /// The receiving end of the request log (once; the store writer owns it).
    pub fn take_log_receiver(&self) -> Option<mpsc::Receiver<LogEntry>> {
        self.inner
            .log_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// This client as a handle whose reference count only the calling
    /// thread touches: a streamed body keeps one until it ends, and a
    /// clone of the shared `Arc` per call was an atomic write to a line
    /// every serving thread uses.
    fn thread_handle(&self) -> Arc<Outbound> {
        thread_local! {
            static HANDLES: RefCell<Vec<Arc<Outbound>>> = const { RefCell::new(Vec::new()) };
        }
        HANDLES.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(o) = h.iter().find(|o| Arc::ptr_eq(&o.inner, &self.inner)) {
                return o.clone();
            }
            // Clients nobody else holds any more (tests make many).
            h.retain(|o| Arc::strong_count(&o.inner) > 1);
            let o = Arc::new(self.clone());
            h.push(o.clone());
            o
        })
    }

    /// Records an entry (also used for calls refused before reaching this
    /// layer, such as an unsafe path).
    pub fn record(&self, entry: LogEntry) {
        if self.inner.log_tx.try_send(entry).is_err() {
            self.inner.metrics.request_logs_dropped.inc();
        }
    }

    fn count(&self, provider: &str, status: StatusKey, latency: Duration) {
        self.inner
            .metrics
            .observe_call(provider, status, latency.as_secs_f64());
    }

    /// Budgets, then attempts with retries. Returns the last response (any
    /// status) with the retries spent.
    async fn execute(
        &self,
        req: OutboundRequest,
        buffered: bool,
    ) -> (Result<hyper::Response<Incoming>, OutboundError>, u32) {
        let OutboundRequest {
            method,
            uri,
            headers,
            body,
            context,
            read_only,
            guarded,
        } = req;
        let provider = context
            .as_ref()
            .map(|c| c.provider.as_str())
            .unwrap_or("unknown");
        let cfg = &self.inner.config;
        if let Some(ctx) = &context
            && !ctx.budgets.is_empty()
        {
            let label = |outcome: &str| metrics::WaitLabel {
                provider: provider.to_string(),
                outcome: outcome.into(),
            };
            match self
                .inner
                .budgets
                .acquire(&ctx.budgets, cfg.max_budget_wait)
                .await
            {
                Ok(waited) if !waited.is_zero() => {
                    self.inner
                        .metrics
                        .rate_limit_waits
                        .get_or_create(&label("waited"))
                        .inc();
                }
                Ok(_) => {}
                Err(e) => {
                    self.inner
                        .metrics
                        .rate_limit_waits
                        .get_or_create(&label("rejected"))
                        .inc();
                    return (
                        Err(OutboundError::RateLimited {
                            retry_after: e.retry_after,
                            scope: e.scope,
                            learned: e.learned,
                        }),
                        0,
                    );
                }
            }
        }
        let repeatable =
            read_only || is_idempotent(&method) || headers.contains_key("idempotency-key");
        let mut header_map = headers;
        if let Some(ua) = &self.inner.user_agent
            && !header_map.contains_key(http::header::USER_AGENT)
        {
            header_map.insert(http::header::USER_AGENT, ua.clone());
        }
        let first_byte = if buffered {
            cfg.first_byte_timeout.min(cfg.total_timeout)
        } else {
            cfg.first_byte_timeout
        };
        let mut body = Some(body);
        let mut retries = 0u32;
        loop {
            let this_body = match body.take() {
                Some(OutBody::Empty) => {
                    body = Some(OutBody::Empty);
                    ReqBody::Empty
                }
                None => ReqBody::Empty,
                Some(OutBody::Bytes(b)) => {
                    body = Some(OutBody::Bytes(b.clone()));
                    ReqBody::Full(Some(b))
                }
                // A stream goes once; `body` stays None so no retry can
                // happen.
                Some(OutBody::Stream(s)) => ReqBody::Stream(s),
            };
            let can_repeat = body.is_some();
            let mut request = hyper::Request::new(this_body);
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = if can_repeat {
                header_map.clone()
            } else {
                std::mem::take(&mut header_map)
            };
            let outcome =
                match tokio::time::timeout(first_byte, self.inner.pools.send(request, guarded))
                    .await
                {
                    Err(_) => Err(Failure::Error(
                        OutboundError::Timeout {
                            stage: if buffered && first_byte < cfg.first_byte_timeout {
                                "total"
                            } else {
                                "first byte"
                            },
                            secs: first_byte.as_secs(),
                        },
                        Attempt::Failed,
                    )),
                    Ok(Err(e)) => Err(classify(&e, cfg)),
                    Ok(Ok(resp)) => Ok(resp),
                };
            let attempt = match &outcome {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if let Some(ctx) = &context
                        && let Some(key) = &ctx.learn
                    {
                        self.inner.budgets.learn(key, status, resp.headers());
                    }
                    let ra = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    Attempt::Status(status, ra)
                }
                Err(Failure::Error(_, a)) => *a,
            };
            let delay = if can_repeat {
                cfg.retry.delay(retries + 1, attempt, repeatable)
            } else {
                None
            };
            match delay {
                Some(d) => {
                    retries += 1;
                    self.inner
                        .metrics
                        .retries
                        .get_or_create(&Metrics::provider(provider))
                        .inc();
                    tracing::debug!(target: "berth::outbound", provider, retry = retries, delay_ms = d.as_millis() as u64, "retrying provider call");
                    tokio::time::sleep(d).await;
                    // A retry spends the budget like a first attempt: a
                    // 429 without Retry-After has just blocked it (HubSpot's
                    // search limit answers so), and going again before the
                    // block ends only earns another 429.
                    if let Some(ctx) = &context
                        && !ctx.budgets.is_empty()
                        && self
                            .inner
                            .budgets
                            .acquire(&ctx.budgets, cfg.max_budget_wait)
                            .await
                            .is_err()
                    {
                        return (outcome.map_err(|Failure::Error(e, _)| e), retries);
                    }
                }
                None => {
                    return (outcome.map_err(|Failure::Error(e, _)| e), retries);
                }
            }
        }
    }

    fn entry_for(
        &self,
        ctx: &Arc<CallContext>,
        method: &Method,
        uri: &http::Uri,
        request_bytes: Option<u64>,
    ) -> LogEntry {
        LogEntry {
            context: ctx.clone(),
            at_ms: now_ms(),
            method: method_name(method),
            path: redacted_path(uri),
            status: None,
            latency_ms: 0,
            request_bytes,
            response_bytes: None,
            retries: 0,
            layer: "provider",
            error: None,
        }
    }

    /// [`Outbound::send`] for calls made outside any connection (connect-time
    /// checks, OAuth token endpoints), given a URL and header pairs.
    pub async fn send_to(
        &self,
        method: Method,
        url: &url::Url,
        headers: Vec<(String, String)>,
        body: OutBody,
        guarded: bool,
    ) -> Result<OutboundResponse, OutboundError> {
        let req = OutboundRequest {
            method,
            uri: uri_of(url)?,
            headers: header_map(headers)?,
            body,
            context: None,
            read_only: false,
            guarded,
        };
        self.send(req).await
    }

    /// Sends `req` and buffers the whole response body.
    pub async fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let started = Instant::now();
        let method = req.method.clone();
        let ctx = req.context.clone();
        let provider = ctx.as_deref().map_or("unknown", |c| c.provider.as_str());
        let request_bytes = match &req.body {
            OutBody::Bytes(b) => Some(b.len() as u64),
            OutBody::Empty => Some(0),
            OutBody::Stream(_) => None,
        };
        let mut entry = req
            .context
            .as_ref()
            .map(|c| self.entry_for(c, &req.method, &req.uri, request_bytes));
        let host = req.uri.host().unwrap_or("").to_string();
        let path = req.uri.path().to_string();
        let total = self.inner.config.total_timeout;
        let (result, retries) = self.execute(req, true).await;
        let result = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                    .collect();
                let declared = content_length(resp.headers());
                let read = client::read_body(resp.into_body(), declared, MAX_BUFFERED_BODY);
                match tokio::time::timeout(total, read).await {
                    Err(_) => Err(OutboundError::Timeout {
                        stage: "total",
                        secs: total.as_secs(),
                    }),
                    Ok(r) => r.map(|body| OutboundResponse {
                        status,
                        headers,
                        body,
                        retries,
                    }),
                }
            }
            Err(e) => Err(e),
        };
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as u64;
        match &result {
            Ok(r) => {
                self.count(provider, StatusKey::Code(r.status), latency);
                tracing::info!(target: "berth::outbound", %method, %host, %path, status = r.status, latency_ms, retries, "provider call");
            }
            Err(e) => {
                self.count(provider, status_label(e), latency);
                tracing::warn!(target: "berth::outbound", %method, %host, %path, latency_ms, retries, error = %e, "provider call failed");
            }
        }
        if let Some(mut entry) = entry.take() {
            entry.latency_ms = latency_ms;
            entry.retries = retries;
            match &result {
                Ok(r) => {
                    entry.status = Some(r.status);
                    entry.response_bytes = Some(r.body.len() as u64);
                }
                Err(e) => {
                    entry.layer = e.layer();
                    entry.status = Some(error_status(e));
                    entry.error = Some(e.to_string());
                }
            }
            self.record(entry);
        }
        result
    }

    /// Sends `req` and returns as soon as the response headers arrive; the
    /// body streams through, counted for the request log when it ends.
    pub async fn send_streaming(
        &self,
        req: OutboundRequest,
    ) -> Result<StreamingResponse, OutboundError> {
        let started = Instant::now();
        let request_bytes = match &req.body {
            OutBody::Bytes(b) => Some(b.len() as u64),
            OutBody::Empty => Some(0),
            OutBody::Stream(_) => None,
        };
        let entry = req
            .context
            .as_ref()
            .map(|c| self.entry_for(c, &req.method, &req.uri, request_bytes));
        let (result, retries) = self.execute(req, false).await;
        let latency = started.elapsed();
        let provider = entry
            .as_ref()
            .map_or("unknown", |e| e.context.provider.as_str());
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.count(provider, StatusKey::Code(status), latency);
                let (parts, body) = resp.into_parts();
                let headers = parts.headers;
                let entry = entry.map(|mut e| {
                    e.status = Some(status);
                    e.latency_ms = latency.as_millis() as u64;
                    e.retries = retries;
                    e
                });
                let expected = content_length(&headers);
                Ok(StreamingResponse {
                    status,
                    headers,
                    body: BodyStream {
                        inner: body,
                        bytes: 0,
                        expected,
                        entry,
                        outbound: self.thread_handle(),
                        idle_after: self.inner.config.idle_timeout,
                        idle: None,
                    },
                })
            }
            Err(e) => {
                self.count(provider, status_label(&e), latency);
                if let Some(mut entry) = entry {
                    entry.latency_ms = latency.as_millis() as u64;
                    entry.retries = retries;
                    entry.layer = e.layer();
                    entry.status = Some(error_status(&e));
                    entry.error = Some(e.to_string());
                    self.record(entry);
                }
                Err(e)
            }
        }
    }
}

/// The status Berth answers for an error (the request log records it).
pub fn error_status(e: &OutboundError) -> u16 {
    match e {
        OutboundError::Timeout { .. } => 504,
        OutboundError::RateLimited { .. } => 429,
        OutboundError::InvalidUrl(_) | OutboundError::InvalidHeader(_) => 400,
        _ => 502,
    }
}

fn status_label(e: &OutboundError) -> StatusKey {
    match e {
        OutboundError::RateLimited { .. } => StatusKey::RateLimited,
        _ => StatusKey::Error,
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn classify(e: &SendError, cfg: &OutboundConfig) -> Failure {
    match e {
        // DNS, refused, TLS handshake: nothing reached the provider.
        SendError::Refused(why) => Failure::Error(
            OutboundError::AddressRefused(why.clone()),
            // Not worth a retry: the address will not change its class.
            Attempt::Status(0, None),
        ),
        SendError::Connect(e) if client::refused_address(&**e).is_some() => Failure::Error(
            OutboundError::AddressRefused(client::refused_address(&**e).unwrap_or_default()),
            Attempt::Status(0, None),
        ),
        SendError::Connect(e) => {
            let cause = client::describe(&**e);
            let err = if timed_out(&**e) || cause.contains("timed out") {
                OutboundError::Timeout {
                    stage: "connect",
                    secs: cfg.connect_timeout.as_secs(),
                }
            } else {
                OutboundError::Connect(cause)
            };
            Failure::Error(err, Attempt::NotConnected)
        }
        SendError::Request(e) => Failure::Error(
            OutboundError::Protocol(client::describe(e)),
            Attempt::Failed,
        ),
        SendError::InvalidUrl(m) => Failure::Error(
            OutboundError::InvalidUrl((*m).into()),
            Attempt::NotConnected,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_hide_query_values() {
        let u: http::Uri = "https://x.test/v1/get?access_token=s3cret&limit=5&flag"
            .parse()
            .unwrap();
        assert_eq!(
            redacted_path(&u),
            "/v1/get?access_token=***&limit=***&flag=***"
        );
        let u: http::Uri = "https://x.test/a".parse().unwrap();
        assert_eq!(redacted_path(&u), "/a");
    }

    /// A raw HTTP/1.1 server on loopback: answers each request with
    /// `ok`, counts connections, and closes each connection after
    /// `per_conn` answers.
    async fn raw_server(
        per_conn: usize,
        closed: Option<(Arc<tokio::sync::Notify>, mpsc::UnboundedSender<()>)>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        // Read one request head (the tests send no bodies).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    // Closes without `Connection: close`, as servers whose
                    // keep-alive timeout ran out do.
                    if let Some((close, ack)) = closed {
                        close.notified().await;
                        drop(s);
                        let _ = ack.send(());
                    }
                });
            }
        });
        (format!("http://{addr}"), conns)
    }

    fn post(url: &str) -> OutboundRequest {
        OutboundRequest {
            method: Method::POST,
            uri: url.parse().unwrap(),
            headers: HeaderMap::new(),
            body: OutBody::Empty,
            context: None,
            read_only: false,
            guarded: false,
        }
    }

    #[tokio::test]
    async fn pooled_connections_are_reused() {
        let (base, conns) = raw_server(usize::MAX, None).await;
        let out = Outbound::new(&OutboundConfig::default()).unwrap();
        for _ in 0..20 {
            let r = out.send(post(&format!("{base}/a"))).await.unwrap();
            assert_eq!(r.body, b"ok");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_costs_no_call() {
        let (tx, mut closed) = mpsc::unbounded_channel();
        let close = Arc::new(tokio::sync::Notify::new());
        let (base, conns) = raw_server(1, Some((close.clone(), tx))).await;
        let mut cfg = OutboundConfig::default();
        cfg.retry.max_retries = 0;
        let out = Outbound::new(&cfg).unwrap();
        for i in 0..20 {
            let r = out.send(post(&format!("{base}/a"))).await;
            assert_eq!(r.map(|r| r.body).ok(), Some(b"ok".to_vec()), "call {i}");
            // The connection goes back to the pool once its answer is
            // read; then the server closes it. Whether its task has seen
            // that yet or not, the next POST (never retried here) must
            // not fail on it.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            close.notify_one();
            closed.recv().await.unwrap();
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 20);
    }
}
