//! The pooled HTTP/1.1 client under [`crate::Outbound`]: hyper's pooled
//! client over rustls (ring, webpki roots), with the request and response
//! bodies Berth sends and streams.
//!
//! Decision: hyper-util's client directly rather than reqwest. The layer
//! already owns what reqwest adds (timeouts, retries, redirects refused,
//! the user agent), and on the proxy's hot path reqwest's per-request
//! work (re-parsing the URL, its redirect and timeout layers, cloning its
//! connector) cost more than Berth's own checks. Outbound calls do not go
//! through an HTTP(S)_PROXY from the environment.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{LogEntry, Outbound, OutboundConfig, OutboundError};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection pools: one per serving thread ("lane"), so a proxied
/// call and the connection task that carries it run on the same thread. A
/// pool shared by thread-per-core runtimes would hand a connection driven
/// by one thread to a request on another, and every call would cross
/// cores twice. Lane 0 is every thread that is not an HTTP serving thread.
///
/// Decision: a small HTTP/1.1 pool over hyper's connection API rather than
/// hyper-util's pooled client. That client's per-call work (its pool's
/// locks and SipHash keys, URI rewriting, a spawned task per answer to
/// return the connection) was the largest cost of a proxied call left in
/// Berth. Connections are reused newest first, dropped when closed or idle
/// for [`IDLE`], and a request that a pooled connection turns out to be
/// unable to take (closed meanwhile, nothing sent) goes on a new one.
pub(crate) struct Pools {
    https: HttpsConnector<HttpConnector>,
    /// For guarded calls: resolves through the address guard.
    guarded: HttpsConnector<HttpConnector<crate::ssrf::GuardedResolver>>,
    policy: crate::ssrf::AddressPolicy,
    lanes: Box<[Arc<Lane>]>,
}

/// Lanes beyond this share pools (modulo); more serving threads than this
/// gain nothing from their own pool on any machine Berth targets.
const LANES: usize = 64;
/// Idle connections kept per host and lane.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is not reused (servers close idle
/// keep-alive connections after a while; this is below most of them).
const IDLE: Duration = Duration::from_secs(60);

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as HTTP serving thread `n` (from 0): its
/// provider calls use their own connection pool.
pub fn set_serving_lane(n: usize) {
    LANE.with(|l| l.set(1 + n % (LANES - 1)));
}

/// Where a connection goes: TLS or not, and the authority as the URL
/// spells it (looked up as `&str`, so a pooled call allocates no key).
#[derive(Clone)]
struct Key {
    tls: bool,
    /// Guarded connections (see `OutboundRequest::guarded`) are never
    /// shared with unguarded ones to the same host.
    guarded: bool,
    authority: http::uri::Authority,
}
type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Idle connections by authority, each with when it went idle; newest
/// last.
type Idle = HashMap<String, Vec<(Sender, Instant)>, foldhash::fast::RandomState>;

#[derive(Default)]
struct Lane {
    idle: Mutex<LaneIdle>,
}

#[derive(Default)]
struct LaneIdle {
    /// Plain and TLS connections, unguarded then guarded (`Key::slot`).
    maps: [Idle; 4],
    /// When the next `put` sweeps every host's list (hosts no longer
    /// called would otherwise keep their idle connections).
    next_sweep: Option<Instant>,
}

impl Key {
    fn slot(&self) -> usize {
        usize::from(self.tls) + 2 * usize::from(self.guarded)
    }
}

impl Lane {
    fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.maps[key.slot()].get_mut(key.authority.as_str())?;
        while let Some((tx, since)) = list.pop() {
            if tx.is_ready() && since.elapsed() < IDLE {
                return Some(tx);
            }
        }
        None
    }

    fn put(&self, key: Key, tx: Sender) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.next_sweep.is_none_or(|at| now >= at) {
            for map in &mut idle.maps {
                map.retain(|_, list| {
                    list.retain(|(tx, since)| now - *since < IDLE && !tx.is_closed());
                    !list.is_empty()
                });
            }
            idle.next_sweep = Some(now + IDLE);
        }
        let map = &mut idle.maps[key.slot()];
        let list = match map.get_mut(key.authority.as_str()) {
            Some(list) => list,
            None => map.entry(key.authority.as_str().to_string()).or_default(),
        };
        if list.first().is_some_and(|(_, since)| now - *since >= IDLE) {
            list.retain(|(tx, since)| now - *since < IDLE && !tx.is_closed());
        }
        if list.len() < MAX_IDLE {
            list.push((tx, now));
        }
    }
}

/// The `Host` header of a request to `uri` (its authority, without the
/// scheme's default port). Callers that send many requests to one host can
/// make it once and set it themselves.
pub fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let host = match (uri.scheme_str(), authority.port_u16()) {
        (Some("https"), Some(443)) | (Some("http"), Some(80)) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(host).ok()
}

/// Why a request got no response.
pub(crate) enum SendError {
    /// No connection could be made (nothing was sent).
    Connect(BoxError),
    /// The request failed on an established connection.
    Request(hyper::Error),
    InvalidUrl(&'static str),
    /// A guarded call's IP literal host is an internal address.
    Refused(String),
}

/// The address guard's refusal inside a connect error, if that is what
/// it is (the guarded resolver reports through `io::Error`).
pub(crate) fn refused_address(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<crate::ssrf::AddressRefused>() {
            return Some(r.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(r) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<crate::ssrf::AddressRefused>())
        {
            return Some(r.to_string());
        }
        cur = err.source();
    }
    None
}

impl Pools {
    pub(crate) fn new(config: &OutboundConfig) -> Result<Self, OutboundError> {
        let policy = crate::ssrf::AddressPolicy::allowing(config.allow_private_networks.clone());
        let mut http = HttpConnector::new();
        let mut guarded_http = HttpConnector::new_with_resolver(crate::ssrf::GuardedResolver {
            policy: policy.clone(),
        });
        // The TLS connector above it takes `https`.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        guarded_http.enforce_http(false);
        guarded_http.set_nodelay(true);
        guarded_http.set_connect_timeout(Some(config.connect_timeout));
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::InvalidUrl(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let guarded = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(guarded_http);
        Ok(Self {
            https,
            guarded,
            policy,
            lanes: (0..LANES).map(|_| Arc::default()).collect(),
        })
    }

    /// Sends `req` (an absolute URI) on a pooled or new connection of the
    /// calling thread's lane. The connection goes back to the pool once
    /// the response has been read to its end.
    pub(crate) async fn send(
        &self,
        mut req: hyper::Request<ReqBody>,
        guarded: bool,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let uri = req.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::InvalidUrl("the URL has no scheme or host"));
        };
        if guarded {
            // The connector resolves names through the guard, but takes an
            // IP literal as it is.
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            if let Ok(ip) = host.parse::<std::net::IpAddr>()
                && let Err(why) = self.policy.check(ip)
            {
                return Err(SendError::Refused(
                    crate::ssrf::AddressRefused::Internal {
                        host: host.to_string(),
                        ip,
                        why,
                    }
                    .to_string(),
                ));
            }
        }
        let key = Key {
            tls: *scheme == http::uri::Scheme::HTTPS,
            guarded,
            authority: authority.clone(),
        };
        if !req.headers().contains_key(http::header::HOST) {
            let host = host_header(&uri).ok_or(SendError::InvalidUrl(
                "the URL's host is not a valid Host header",
            ))?;
            req.headers_mut().insert(http::header::HOST, host);
        }
        // HTTP/1.1 requests name the path only.
        *req.uri_mut() = match uri.path_and_query() {
            Some(pq) => http::Uri::from(pq.clone()),
            None => http::Uri::from_static("/"),
        };
        let lane = &self.lanes[LANE.with(Cell::get)];
        while let Some(mut tx) = lane.take(&key) {
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    give_back(lane, key, tx, &resp);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Closed while idle; nothing was sent: try another.
                    Some(back) => req = back,
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is a future several
        // times the size of the rest, and every call, most of which reuse
        // a connection, would otherwise carry it and copy it around.
        let mut tx = Box::pin(self.connect(uri, guarded)).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => {
                give_back(lane, key, tx, &resp);
                Ok(resp)
            }
            Err(e) => Err(SendError::Request(e.into_error())),
        }
    }
}

impl Pools {
    /// A new connection to `uri`'s host, its driver running on this thread.
    async fn connect(&self, uri: http::Uri, guarded: bool) -> Result<Sender, SendError> {
        let io = if guarded {
            tower_service::Service::call(&mut self.guarded.clone(), uri).await
        } else {
            tower_service::Service::call(&mut self.https.clone(), uri).await
        }
        .map_err(SendError::Connect)?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target: "berth::outbound", error = %e, "provider connection ended");
            }
        });
        Ok(tx)
    }
}

/// Returns `tx` to the pool when its exchange is over: at once when the
/// answer is already read, else when the connection says it is ready
/// (the body was read to its end). A body dropped half-read closes the
/// connection, and it is not returned.
fn give_back(lane: &Arc<Lane>, key: Key, mut tx: Sender, resp: &hyper::Response<Incoming>) {
    if tx.is_ready() {
        lane.put(key, tx);
    } else if !tx.is_closed() && !resp.headers().contains_key(http::header::UPGRADE) {
        let lane = lane.clone();
        tokio::spawn(async move {
            if tx.ready().await.is_ok() {
                lane.put(key, tx);
            }
        });
    }
}

/// A request body as the client sends it.
pub enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty | ReqBody::Full(None) => SizeHint::with_exact(0),
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Stream(s) => s.size_hint(),
        }
    }
}

/// The innermost causes of an error, without URLs (the client's errors
/// carry none; a URL may hold a credential in its query).
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// An error and its causes, without repeating itself.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    match e.source() {
        Some(_) => format!("{e}: {}", causes(e)),
        None => e.to_string(),
    }
}

/// Whether an I/O timeout is somewhere in the chain.
pub(crate) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = s.source();
    }
    false
}

/// Reads a whole response body, up to `limit` bytes.
pub(crate) async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Vec<u8>, OutboundError> {
    if declared.unwrap_or(0) as usize > limit {
        return Err(OutboundError::TooLarge);
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OutboundError::Protocol(describe(&e)))?;
        if let Ok(chunk) = frame.into_data() {
            if out.len() + chunk.len() > limit {
                return Err(OutboundError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
    }
    Ok(out)
}

/// A provider response body in flight. When it ends, fails or is dropped
/// (the caller went away), the request-log entry is written with the bytes
/// that passed. A provider that sends nothing for the idle timeout ends it
/// with an error.
pub struct BodyStream {
    pub(crate) inner: Incoming,
    pub(crate) bytes: u64,
    /// The declared length: a server stops polling once it has sent that
    /// much, so reaching it is a complete body even without an end.
    pub(crate) expected: Option<u64>,
    pub(crate) entry: Option<LogEntry>,
    pub(crate) outbound: Arc<Outbound>,
    pub(crate) idle_after: Duration,
    /// Armed only while the provider keeps the body waiting: most bodies
    /// are complete when first polled and never need a timer.
    pub(crate) idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BodyStream {
    fn finish(&mut self, error: Option<String>) {
        if let Some(mut e) = self.entry.take() {
            e.response_bytes = Some(self.bytes);
            if let Some(err) = error {
                e.layer = "network";
                e.error = Some(err);
            }
            self.outbound.record(e);
        }
    }

    /// Bytes that passed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Body for BodyStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if let Some(t) = this.idle.as_mut() {
                    t.as_mut()
                        .reset(tokio::time::Instant::now() + this.idle_after);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("the provider's body broke off: {}", describe(&e));
                this.finish(Some(msg.clone()));
                Poll::Ready(Some(Err(std::io::Error::other(msg))))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let after = this.idle_after;
                let timer = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                if timer.as_mut().poll(cx).is_ready() {
                    let msg = format!(
                        "the provider sent nothing for the idle timeout ({} s)",
                        after.as_secs()
                    );
                    this.finish(Some(msg.clone()));
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        msg,
                    ))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        if self.entry.is_some() {
            if self.expected.is_some_and(|n| n == self.bytes) {
                self.finish(None);
            } else {
                self.finish(Some("the caller stopped reading the body".into()));
            }
        }
    }
}
