//! The one outbound HTTP layer: every call Berth makes to a provider goes
//! through [`Outbound`], so timeouts, TLS, logging rules (and, as they land,
//! retries, rate-limit budgets and request logs) apply to all of them.
//!
//! Invariant: nothing here logs a header value or a query string; provider
//! credentials travel in both.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

pub use reqwest::Method;

/// Response bodies larger than this are cut off for buffered calls.
pub const MAX_BUFFERED_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("invalid provider URL: {0}")]
    InvalidUrl(String),
    #[error("provider did not answer in time")]
    Timeout,
    #[error("could not connect to the provider")]
    Connect,
    #[error("provider response exceeded {MAX_BUFFERED_BODY} bytes")]
    TooLarge,
    #[error("provider call failed: {0}")]
    Other(String),
}

#[derive(Clone, Debug)]
pub struct OutboundConfig {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub user_agent: String,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(60),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// A request to a provider, fully resolved (URL, credentials attached).
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl OutboundResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The shared client. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Outbound {
    client: reqwest::Client,
}

impl Outbound {
    pub fn new(config: &OutboundConfig) -> Result<Self, OutboundError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .user_agent(config.user_agent.clone())
            // Provider redirects are answered to the caller, never followed:
            // following one could carry credentials to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OutboundError::Other(e.to_string()))?;
        Ok(Self { client })
    }

    /// Sends `req` and buffers the whole response body.
    pub async fn send(&self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let started = Instant::now();
        let host = req.url.host_str().unwrap_or("").to_string();
        let path = req.url.path().to_string();
        let method = req.method.clone();
        let mut builder = self.client.request(req.method, req.url);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let result = async {
            let resp = builder.send().await.map_err(classify)?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                .collect();
            if resp.content_length().unwrap_or(0) as usize > MAX_BUFFERED_BODY {
                return Err(OutboundError::TooLarge);
            }
            let mut body = Vec::new();
            let mut resp = resp;
            while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > MAX_BUFFERED_BODY {
                    return Err(OutboundError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(OutboundResponse {
                status,
                headers,
                body,
            })
        }
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => {
                tracing::info!(target: "berth::outbound", %method, %host, %path, status = r.status, latency_ms, "provider call")
            }
            Err(e) => {
                tracing::warn!(target: "berth::outbound", %method, %host, %path, latency_ms, error = %e, "provider call failed")
            }
        }
        result
    }
}

fn classify(e: reqwest::Error) -> OutboundError {
    if e.is_timeout() {
        OutboundError::Timeout
    } else if e.is_connect() {
        OutboundError::Connect
    } else if e.is_builder() {
        OutboundError::InvalidUrl(e.without_url().to_string())
    } else {
        // without_url: the URL may carry a credential in its query.
        OutboundError::Other(e.without_url().to_string())
    }
}
