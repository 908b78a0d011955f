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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::{LogEntry, Outbound, OutboundConfig, OutboundError};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

pub(crate) fn build(config: &OutboundConfig) -> Result<HttpClient, OutboundError> {
    let mut http = HttpConnector::new();
    // The TLS connector above it takes `https`.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
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
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
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
    pub(crate) outbound: Outbound,
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
