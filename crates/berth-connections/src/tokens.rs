//! The token lifecycle: every provider call gets a credential that is fresh
//! (refreshed ahead of expiry, or once after a provider 401), and a refresh
//! is single-flight across tasks and across Berth processes sharing a store.
//!
//! How the single flight works:
//! 1. In one process, callers of one connection queue on a local mutex, so
//!    only one task at a time goes on to step 2.
//! 2. Across processes, that task takes the credential's refresh lease (a
//!    conditional UPDATE). The loser waits for the credential version to
//!    move, then uses the new token.
//! 3. The winner re-reads the credential after taking the lease (someone may
//!    have finished just before), calls the token endpoint once, and stores
//!    the new access token together with any rotated refresh token with a
//!    version compare-and-swap that also releases the lease.
//!
//! So concurrent callers never send two refresh requests for one
//! connection, and never send a refresh token that was already rotated away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_catalog::{AuthType, Integration, LimitScope};
use berth_outbound::{
    BudgetKey, CallContext, Limit, LogEntry, Method, OutBody, OutboundError, OutboundRequest,
    OutboundResponse, StreamingResponse,
};
use berth_store::{Connection, NewEvent};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::credential::{CredentialData, ProviderTarget, TemplateContext, provider_target};
use crate::oauth::{ResolvedApp, TokenError, apply_token_response, render_url};
use crate::{Platform, PlatformError, Result, credential_aad, hot, now_ms, secrets};

/// How long a refresh lease is held at most: a process that dies holding it
/// delays other processes' refresh by this much, never more.
const LEASE_MS: i64 = 60_000;
/// How long a caller waits for another process's refresh before giving up.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(75);

/// A call to a connection's provider, relative to its base URL.
#[derive(Debug, Clone)]
pub struct ProviderCall {
    pub method: Method,
    /// Starts with `/`; relative to the integration's base URL.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// A read sent with a method that does not say so (a search POST):
    /// the outbound layer may repeat it like a GET.
    pub read_only: bool,
}

/// A raw call whose body may be a stream (the `/proxy` mode). `path` may
/// carry the caller's query string.
#[derive(Debug)]
pub struct StreamCall {
    pub method: Method,
    pub path: String,
    /// The caller's headers as received; what must not reach the provider
    /// is dropped here.
    pub headers: HeaderMap,
    pub body: OutBody,
    /// The length of a streamed body, sent as is (not re-chunked).
    pub content_length: Option<String>,
}

/// A call about to be resolved against the connection.
struct Prepared {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: OutBody,
    content_length: Option<String>,
    read_only: bool,
}

impl Prepared {
    fn of(c: ProviderCall) -> Result<Self> {
        let headers = berth_outbound::header_map(c.headers)
            .map_err(|e| PlatformError::bad_request("INVALID_HEADER", e.to_string()))?;
        Ok(Prepared {
            method: c.method,
            path: c.path,
            query: c.query,
            headers,
            body: c.body.into(),
            content_length: None,
            read_only: c.read_only,
        })
    }
}

/// Request headers never forwarded to a provider: hop-by-hop headers,
/// Berth's own tokens, anything that would override the credential or the
/// target host, and the caller's network identity. `name` is lower case.
fn dropped_request_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "expect"
            | "authorization"
            | "proxy-authorization"
            | "cookie"
            | "forwarded"
            | "x-real-ip"
            | "origin"
            | "referer"
    ) || ["x-vessel-", "vessel-", "x-berth-", "x-forwarded-"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Response headers never passed back: hop-by-hop ones, and cookies set
/// for the provider's domain.
pub fn forwardable_response_header(name: &str) -> bool {
    ![
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "set-cookie2",
        "proxy-authenticate",
    ]
    .iter()
    .any(|d| d.eq_ignore_ascii_case(name))
}

/// Removes the headers `drop` picks. One pass over the map: most calls
/// have a handful of headers and drop two or three of them.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&drop) {
        return;
    }
    // Rebuilt with what stays rather than removed from: a removal hashes
    // and probes again per name, and proxied calls drop most of theirs
    // (the caller's tokens, `Host`).
    let old = std::mem::take(headers);
    let mut name: Option<HeaderName> = None;
    for (k, v) in old {
        if k.is_some() {
            name = k;
        }
        if let Some(n) = &name
            && !drop(n)
        {
            headers.append(n.clone(), v);
        }
    }
}

/// Drops what must not reach the provider, including any header the
/// caller's own `Connection` header names.
pub fn sanitize_request_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    remove_where(headers, |k| {
        dropped_request_header(k.as_str()) || listed.contains(k)
    });
}

/// Drops the response headers never passed back.
pub fn strip_response_headers(headers: &mut HeaderMap) {
    remove_where(headers, |k| !forwardable_response_header(k.as_str()));
}

/// Per-connection mutexes of this process.
#[derive(Default, Debug)]
pub(crate) struct LocalLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LocalLocks {
    fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds so the map does not grow with every
        // connection ever refreshed.
        if m.len() > 1024 {
            m.retain(|_, l| Arc::strong_count(l) > 1);
        }
        m.entry(id.to_string()).or_default().clone()
    }
}

fn refreshable(cred: &CredentialData) -> bool {
    match cred.auth_type.as_str() {
        "oauth2" => true,
        "oauth2-client-credentials" => cred.client_id.is_some(),
        _ => false,
    }
}

impl Platform {
    /// The connection's credential, refreshed first if it expires within
    /// the configured margin. Returns it with its version.
    pub async fn usable_credential(&self, conn: &Connection) -> Result<(CredentialData, i64)> {
        self.ensure_fresh(conn, None).await
    }

    /// Calls the connection's provider with its credential attached. A 401
    /// from an OAuth provider triggers one refresh and one retry.
    pub async fn call_provider(
        &self,
        conn: &Connection,
        call: &ProviderCall,
    ) -> Result<OutboundResponse> {
        let integration = self.integration_of(conn)?;
        let c = self.hot_credential(integration, conn, None).await?;
        let resp = self
            .send_once(integration, conn, &c, Prepared::of(call.clone())?)
            .await?;
        if resp.status == 401 && refreshable(&c.cred) {
            let c = self
                .hot_credential(integration, conn, Some(c.version))
                .await?;
            return self
                .send_once(integration, conn, &c, Prepared::of(call.clone())?)
                .await;
        }
        Ok(resp)
    }

    /// The streaming twin of [`Platform::call_provider`]: the request body
    /// (if a stream) and the response body pass through without being
    /// held whole. A 401 is retried after a refresh only when the request
    /// body can be sent again (empty or buffered); otherwise the token is
    /// still refreshed, so the caller's own retry succeeds.
    pub async fn stream_provider(
        &self,
        conn: &Connection,
        call: StreamCall,
    ) -> Result<StreamingResponse> {
        let integration = self.integration_of(conn)?;
        let c = self.hot_credential(integration, conn, None).await?;
        let refreshable = refreshable(&c.cred);
        // What a retry after a refresh sends; kept only when one can
        // happen (a replayable body, a refreshable credential).
        let replay = match &call.body {
            _ if !refreshable => None,
            OutBody::Empty => Some(OutBody::Empty),
            OutBody::Bytes(b) => Some(OutBody::Bytes(b.clone())),
            OutBody::Stream(_) => None,
        }
        .map(|body| Prepared {
            method: call.method.clone(),
            path: call.path.clone(),
            query: Vec::new(),
            headers: call.headers.clone(),
            body,
            content_length: None,
            read_only: false,
        });
        let StreamCall {
            method,
            path,
            headers,
            body,
            content_length,
        } = call;
        let first = Prepared {
            method,
            path,
            query: Vec::new(),
            headers,
            body,
            content_length,
            read_only: false,
        };
        let resp = self.stream_once(integration, conn, &c, first).await?;
        if resp.status == 401 && refreshable {
            let c = self
                .hot_credential(integration, conn, Some(c.version))
                .await?;
            if let Some(again) = replay {
                drop(resp);
                return self.stream_once(integration, conn, &c, again).await;
            }
        }
        Ok(resp)
    }

    async fn send_once(
        &self,
        integration: &Integration,
        conn: &Connection,
        c: &hot::Credential,
        call: Prepared,
    ) -> Result<OutboundResponse> {
        let req = self.provider_request(conn, c, call)?;
        self.inner
            .outbound
            .send(req)
            .await
            .map_err(|e| outbound_error(integration, e))
    }

    async fn stream_once(
        &self,
        integration: &Integration,
        conn: &Connection,
        c: &hot::Credential,
        call: Prepared,
    ) -> Result<StreamingResponse> {
        let req = self.provider_request(conn, c, call)?;
        self.inner
            .outbound
            .send_streaming(req)
            .await
            .map_err(|e| outbound_error(integration, e))
    }

    /// The credential and provider target for a call, from the hot cache
    /// when it is there and not due for refresh. `stale`: the version a
    /// provider just refused.
    async fn hot_credential(
        &self,
        integration: &Integration,
        conn: &Connection,
        stale: Option<i64>,
    ) -> Result<Arc<hot::Credential>> {
        if conn.auth_state == "needs_reauth" {
            return Err(needs_reauth(conn.auth_error.as_deref().unwrap_or("")));
        }
        if stale.is_none()
            && let Some(c) = self.inner.hot.credential(&conn.id)
            && !self.due(&c.cred, c.version, None)
        {
            return Ok(c);
        }
        let ticket = self.inner.hot.ticket();
        // Boxed: the refresh path's future is ten times the size of the
        // rest of a proxied call's, and every call would carry (and copy)
        // it inline.
        let (cred, version) = Box::pin(self.ensure_fresh(conn, stale)).await?;
        let target = self.target_for(integration, conn, &cred)?;
        let base = hot::Base::parse(&target.base_url);
        let headers = berth_outbound::header_map(target.headers.iter().map(|(k, v)| (k, v))).ok();
        let context = Arc::new(self.call_context(integration, conn));
        Ok(self.inner.hot.put_credential(
            ticket,
            &conn.id,
            hot::Credential {
                cred,
                version,
                target,
                base,
                headers,
                context,
            },
        ))
    }

    fn target_for(
        &self,
        integration: &Integration,
        conn: &Connection,
        cred: &CredentialData,
    ) -> Result<ProviderTarget> {
        let kind = AuthType::parse(&conn.auth_type).unwrap_or(AuthType::ApiKey);
        let answers = json_map(&conn.answers);
        let metadata = json_map(&conn.provider_metadata);
        let ctx = TemplateContext {
            answers: &answers,
            metadata: &metadata,
            public_url: &self.config().public_url,
        };
        provider_target(integration, kind, cred, &ctx).map_err(|e| {
            PlatformError::bad_request(
                "CONNECTION_MISCONFIGURED",
                format!("cannot build the provider URL for this connection: {e}"),
            )
        })
    }

    /// Records a call Berth refused before it reached the outbound layer
    /// (unknown method, oversize body), so the request log shows it.
    pub fn log_refused(&self, conn: &Connection, method: &str, path: &str, status: u16, why: &str) {
        // Refused paths may hold control characters: log them escaped,
        // with any query values hidden.
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let mut path: String = p.escape_debug().take(200).collect();
        if !q.is_empty() {
            path.push_str("?***");
        }
        self.inner.outbound.record(LogEntry {
            context: Arc::new(berth_outbound::CallContext {
                provider: conn.integration_id.clone(),
                environment_id: conn.environment_id.clone(),
                connection_id: Some(conn.id.clone()),
                ..Default::default()
            }),
            at_ms: now_ms(),
            method: method.chars().take(16).collect::<String>().into(),
            path,
            status: Some(status),
            latency_ms: 0,
            request_bytes: None,
            response_bytes: None,
            retries: 0,
            layer: "berth",
            error: Some(why.chars().take(500).collect()),
        });
    }

    pub fn outbound(&self) -> &berth_outbound::Outbound {
        &self.inner.outbound
    }

    fn integration_of(&self, conn: &Connection) -> Result<&Integration> {
        self.catalog()
            .get(&conn.integration_id)
            .ok_or_else(|| crate::unknown_integration(&conn.integration_id))
    }

    /// Which budgets a call of `conn` draws from.
    fn call_context(&self, integration: &Integration, conn: &Connection) -> CallContext {
        let own = BudgetKey::new(
            format!("{}:{}:c:{}", integration.id, conn.environment_id, conn.id),
            "connection",
            None,
        );
        let key = match &integration.rate_limit {
            None => own,
            Some(rl) => {
                let limit = Some(Limit {
                    requests: rl.requests,
                    per_seconds: rl.per_seconds,
                });
                let account = conn.native_org_id.as_deref().filter(|a| !a.is_empty());
                match (rl.scope, account) {
                    // Shared by every connection of the tenant to this
                    // provider account; never across tenants.
                    (LimitScope::Account, Some(a)) => BudgetKey::new(
                        format!("{}:{}:a:{a}", integration.id, conn.environment_id),
                        "account",
                        limit,
                    ),
                    _ => BudgetKey { limit, ..own },
                }
            }
        };
        let key = key.with_headers(rate_limit_rules(integration));
        CallContext {
            provider: integration.id.clone(),
            environment_id: conn.environment_id.clone(),
            connection_id: Some(conn.id.clone()),
            budgets: vec![key.clone()],
            learn: Some(key),
            guarded: integration.end_user_host(),
        }
    }

    /// Resolves URL and credentials for one attempt. A path that would
    /// leave the provider is refused here, and the refusal logged.
    fn provider_request(
        &self,
        conn: &Connection,
        c: &hot::Credential,
        call: Prepared,
    ) -> Result<OutboundRequest> {
        if let Err(e) = validate_path(&call.path) {
            self.log_refused(conn, call.method.as_str(), &call.path, 400, &e.to_string());
            return Err(e);
        }
        let target = &c.target;
        let base = c.base()?;
        let uri = if target.query.is_empty() && call.query.is_empty() {
            append_path(base, &call.path)?
        } else {
            let mut url = join_path(&base.url, &call.path)?;
            // The credential's query parameters win over a caller's of the
            // same name (Snov.io's `access_token`).
            let reserved = |k: &str| target.query.iter().any(|(t, _)| t == k);
            if !target.query.is_empty() && url.query_pairs().any(|(k, _)| reserved(&k)) {
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| !reserved(k))
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.set_query(None);
                if !kept.is_empty() {
                    url.query_pairs_mut().extend_pairs(kept);
                }
            }
            let extra: Vec<&(String, String)> = call
                .query
                .iter()
                .filter(|(k, _)| !reserved(k))
                .chain(target.query.iter())
                .collect();
            if !extra.is_empty() {
                url.query_pairs_mut().extend_pairs(extra);
            }
            berth_outbound::uri_of(&url).map_err(|_| path_leaves_api())?
        };
        let mut headers = call.headers;
        sanitize_request_headers(&mut headers);
        if let Some(host) = &base.host {
            headers.insert(http::header::HOST, host.clone());
        }
        // The credential header wins over a caller's header of the same name.
        let mut last: Option<&HeaderName> = None;
        for (k, v) in c.headers()? {
            if last == Some(k) {
                headers.append(k, v.clone());
            } else {
                headers.insert(k, v.clone());
            }
            last = Some(k);
        }
        if let (Some(n), OutBody::Stream(_)) = (&call.content_length, &call.body)
            && let Ok(v) = HeaderValue::from_str(n)
        {
            headers.insert(http::header::CONTENT_LENGTH, v);
        }
        Ok(OutboundRequest {
            method: call.method,
            uri,
            headers,
            body: call.body,
            guarded: c.context.guarded,
            context: Some(c.context.clone()),
            read_only: call.read_only,
        })
    }

    async fn load_versioned(&self, conn: &Connection) -> Result<(CredentialData, i64)> {
        let row = self
            .store()
            .get_credential(&conn.environment_id, &conn.id)
            .await?
            .ok_or_else(|| {
                PlatformError::NotFound(format!("no connection with id `{}`", conn.id))
            })?;
        let plain = self
            .inner
            .vault
            .open(
                &row.sealed,
                credential_aad(&conn.environment_id, &conn.id).as_bytes(),
            )
            .map_err(|e| PlatformError::Internal(Box::new(e)))?;
        let cred =
            serde_json::from_slice(&plain).map_err(|e| PlatformError::Internal(Box::new(e)))?;
        Ok((cred, row.version))
    }

    fn due(&self, cred: &CredentialData, version: i64, stale: Option<i64>) -> bool {
        if stale == Some(version) {
            return true;
        }
        let margin = self.config().refresh_margin.as_millis() as i64;
        cred.expires_at.is_some_and(|t| t - margin <= now_ms())
            || (cred.access_token.is_none() && refreshable(cred))
    }

    /// `stale`: the version a provider just refused with 401.
    async fn ensure_fresh(
        &self,
        conn: &Connection,
        stale: Option<i64>,
    ) -> Result<(CredentialData, i64)> {
        if conn.auth_state == "needs_reauth" {
            return Err(needs_reauth(conn.auth_error.as_deref().unwrap_or("")));
        }
        let give_up = tokio::time::Instant::now() + WAIT_FOR_OTHERS;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (cred, version) = self.load_versioned(conn).await?;
            if !self.due(&cred, version, stale) || !refreshable(&cred) {
                return Ok((cred, version));
            }
            drop(cred);
            let lock = self.inner.refresh_locks.get(&conn.id);
            let guard = lock.lock().await;
            // The task ahead may have failed for good: then the provider
            // refused the refresh token, and sending it again only makes
            // it refuse again.
            self.refuse_if_needs_reauth(conn).await?;
            let (cred, current) = self.load_versioned(conn).await?;
            if current != version {
                // Another task refreshed while this one queued.
                return Ok((cred, current));
            }
            let now = now_ms();
            // A lease owner per attempt: not even another task of this
            // process can take over a lease it did not acquire.
            let owner = format!("{}:{}", self.inner.node_id, secrets::new_id("rf"));
            if self
                .store()
                .try_acquire_refresh_lease(&conn.id, &owner, now + LEASE_MS, now)
                .await?
            {
                if let Err(e) = self.refuse_if_needs_reauth(conn).await {
                    self.store().release_refresh_lease(&conn.id, &owner).await?;
                    return Err(e);
                }
                let (cred, current) = self.load_versioned(conn).await?;
                if current != version {
                    self.store().release_refresh_lease(&conn.id, &owner).await?;
                    return Ok((cred, current));
                }
                let outcome = self.renew(conn, &cred).await;
                // The local guard is held until the new credential is
                // stored (end of this block): a queued task must not re-read
                // the old version and send the rotated-away refresh token.
                let result = match outcome {
                    Ok(fresh) => {
                        let sealed = self.inner.vault.seal(
                            &serde_json::to_vec(&fresh).expect("credentials serialize"),
                            credential_aad(&conn.environment_id, &conn.id).as_bytes(),
                        );
                        if self
                            .store()
                            .store_refreshed_credential(&conn.id, version, &sealed, now_ms())
                            .await?
                        {
                            self.inner.hot.forget_credential(&conn.id);
                            tracing::info!(connection = %conn.id, "token refreshed");
                            Ok((fresh, version + 1))
                        } else {
                            // Only a re-authentication can move the version
                            // under a held lease (key rotation waits for
                            // leases); its credential wins.
                            self.load_versioned(conn).await
                        }
                    }
                    Err(TokenError::InvalidGrant(reason)) => {
                        let message = format!(
                            "the provider refused the refresh token ({reason}); the end user must reconnect"
                        );
                        self.mark_needs_reauth(conn, &message).await?;
                        Err(needs_reauth(&message))
                    }
                    Err(e) => {
                        self.store().release_refresh_lease(&conn.id, &owner).await?;
                        Err(PlatformError::ProviderUnavailable(format!(
                            "could not refresh the access token: {}",
                            e.message()
                        )))
                    }
                };
                drop(guard);
                return result;
            }
            drop(guard);
            // Another process holds the lease: wait for its new version.
            if tokio::time::Instant::now() >= give_up {
                return Err(PlatformError::ProviderUnavailable(
                    "timed out waiting for another Berth process to refresh the access token"
                        .into(),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
            let (_, now_version) = self.load_versioned(conn).await?;
            if now_version != version {
                self.refuse_if_needs_reauth(conn).await?;
                return self.load_versioned(conn).await;
            }
        }
    }

    /// 409 `CONNECTION_NEEDS_REAUTH` when the store says so (another task
    /// or process had the refresh token refused while this one waited).
    async fn refuse_if_needs_reauth(&self, conn: &Connection) -> Result<()> {
        match self
            .store()
            .needs_reauth_reason(&conn.environment_id, &conn.id)
            .await?
        {
            Some(reason) => Err(needs_reauth(&reason)),
            None => Ok(()),
        }
    }

    /// One token-endpoint call that renews `cred`.
    async fn renew(
        &self,
        conn: &Connection,
        cred: &CredentialData,
    ) -> std::result::Result<CredentialData, TokenError> {
        let integration = self
            .catalog()
            .get(&conn.integration_id)
            .cloned()
            .ok_or_else(|| TokenError::Rejected("the integration is no longer available".into()))?;
        let kind = AuthType::parse(&cred.auth_type)
            .ok_or_else(|| TokenError::Rejected("unknown auth type".into()))?;
        let method = integration
            .auth_method(kind)
            .cloned()
            .ok_or_else(|| TokenError::Rejected("the auth method is no longer available".into()))?;
        let answers = json_map(&conn.answers);
        let metadata = json_map(&conn.provider_metadata);
        let ctx = TemplateContext {
            answers: &answers,
            metadata: &metadata,
            public_url: &self.config().public_url,
        };
        let token_url = render_url(
            method.token_url.as_deref().unwrap_or_default(),
            &ctx,
            "token URL",
        )
        .map_err(TokenError::Rejected)?;
        let (app, params) = match kind {
            AuthType::OAuth2 => {
                let Some(rt) = cred.refresh_token.clone() else {
                    return Err(TokenError::InvalidGrant(
                        "the provider never issued a refresh token".into(),
                    ));
                };
                let app = self
                    .resolve_app(
                        &conn.environment_id,
                        &integration,
                        cred.oauth_app_id.as_deref(),
                    )
                    .await
                    .map_err(|e| TokenError::Rejected(e.to_string()))?;
                (
                    app,
                    vec![
                        ("grant_type", "refresh_token".to_string()),
                        ("refresh_token", rt),
                    ],
                )
            }
            _ => (
                client_credentials_app(cred),
                vec![("grant_type", "client_credentials".to_string())],
            ),
        };
        let resp = self
            .token_request(&integration, &method, token_url, &app, params)
            .await?;
        let mut fresh = cred.clone();
        apply_token_response(&mut fresh, &resp, &integration.name).map_err(TokenError::Rejected)?;
        Ok(fresh)
    }

    async fn mark_needs_reauth(&self, conn: &Connection, message: &str) -> Result<()> {
        let payload = serde_json::json!({
            "connectionId": conn.id,
            "integrationId": conn.integration_id,
            "externalUserId": conn.external_user_id,
            "reason": message,
        })
        .to_string();
        let now = now_ms();
        self.store()
            .mark_needs_reauth(
                &conn.environment_id,
                &conn.id,
                message,
                &NewEvent {
                    id: &secrets::new_id("evt"),
                    environment_id: &conn.environment_id,
                    connection_id: Some(&conn.id),
                    event_type: "connection.auth_failed",
                    payload: &payload,
                    created_at: now,
                },
                now,
            )
            .await?;
        self.inner.hot.forget_connection(&conn.id);
        tracing::warn!(connection = %conn.id, "connection needs re-authentication");
        Ok(())
    }

    /// The OAuth2 client-credentials grant (Snov.io): used at connect time
    /// and whenever the cached token expires.
    pub(crate) async fn client_credentials_token(
        &self,
        integration: &Integration,
        method: &berth_catalog::AuthMethod,
        token_url: url::Url,
        cred: &mut CredentialData,
    ) -> std::result::Result<(), TokenError> {
        let app = client_credentials_app(cred);
        let resp = self
            .token_request(
                integration,
                method,
                token_url,
                &app,
                vec![("grant_type", "client_credentials".to_string())],
            )
            .await?;
        apply_token_response(cred, &resp, &integration.name).map_err(TokenError::Rejected)
    }
}

fn client_credentials_app(cred: &CredentialData) -> ResolvedApp {
    ResolvedApp {
        id: String::new(),
        client_id: cred.client_id.clone().unwrap_or_default(),
        client_secret: Zeroizing::new(cred.client_secret.clone().unwrap_or_default()),
        scopes: Vec::new(),
    }
}

pub(crate) fn needs_reauth(reason: &str) -> PlatformError {
    PlatformError::Conflict {
        code: "CONNECTION_NEEDS_REAUTH",
        message: if reason.is_empty() {
            "this connection needs to be re-authenticated: open the connect modal with a session token naming its connectionId".into()
        } else {
            format!(
                "this connection needs to be re-authenticated ({reason}): open the connect modal with a session token naming its connectionId"
            )
        },
    }
}

/// The catalog's rate-limit headers of an integration as the outbound
/// layer's rules.
fn rate_limit_rules(integration: &Integration) -> Arc<[berth_outbound::HeaderRule]> {
    integration
        .rate_limit_headers
        .iter()
        .filter_map(|h| {
            let wait = Duration::from_secs(h.wait_secs);
            match (&h.remaining, &h.usage) {
                (Some(header), _) => Some(berth_outbound::HeaderRule::Remaining {
                    header: header.to_ascii_lowercase(),
                    window_ms: h.window_ms.as_ref().map(|w| w.to_ascii_lowercase()),
                    reset: h.reset.as_ref().map(|r| r.to_ascii_lowercase()),
                    wait,
                }),
                (None, Some(header)) => Some(berth_outbound::HeaderRule::Usage {
                    header: header.to_ascii_lowercase(),
                    key: h.key.clone().unwrap_or_default(),
                    wait,
                }),
                (None, None) => None,
            }
        })
        .collect()
}

/// An end user's host that is an internal address: their input, a 400.
pub(crate) fn address_refused(why: &str) -> PlatformError {
    PlatformError::bad_request(
        "PRIVATE_ADDRESS_REFUSED",
        format!(
            "{why}. An operator can allow internal networks with --allow-private-provider-networks (BERTH_ALLOW_PRIVATE_PROVIDER_NETWORKS)"
        ),
    )
}

/// Maps an outbound failure to the platform error the caller sees.
fn outbound_error(integration: &Integration, e: OutboundError) -> PlatformError {
    match e {
        OutboundError::RateLimited { retry_after, .. } => PlatformError::RateLimited {
            retry_after_secs: retry_after.as_secs_f64().ceil() as u64,
            message: format!("{}: {e}", integration.name),
        },
        OutboundError::Timeout { .. } => {
            PlatformError::ProviderTimeout(format!("{}: {e}", integration.name))
        }
        OutboundError::AddressRefused(why) => address_refused(&why),
        e => PlatformError::ProviderUnavailable(format!("{}: {e}", integration.name)),
    }
}

fn json_map(s: &str) -> Map<String, Value> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Percent-decodes `s` (one round); `None` if nothing changed.
fn decode_once(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (
                (bytes[i + 1] as char).to_digit(16),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let d = String::from_utf8_lossy(&out).into_owned();
    (d != s).then_some(d)
}

/// Joins a caller's path to the provider base URL, refusing anything that
/// could leave the base or smuggle a second request: absolute and
/// scheme-relative URLs, userinfo, backslashes, dot segments (also when
/// percent-encoded, up to three times, and Tomcat's `..;`), fragments, and
/// CR, LF, NUL or other control characters, raw or encoded, anywhere.
pub fn provider_url(base: &str, path: &str) -> Result<url::Url> {
    validate_path(path)?;
    let base_url = parse_base(base)?;
    join_path(&base_url, path)
}

/// The checks of [`provider_url`], without a base.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        PlatformError::bad_request("INVALID_PATH", format!("invalid provider path: {why}"))
    };
    if !path.starts_with('/') {
        return Err(bad(
            "it must start with `/` and be relative to the provider's API",
        ));
    }
    if path.starts_with("//") || path.contains('\\') {
        return Err(bad("it must be a path on the provider's API, not a URL"));
    }
    if path.contains('#') {
        return Err(bad("fragments are not allowed"));
    }
    let (p, _) = path.split_once('?').unwrap_or((path, ""));
    // Every decoding a provider or proxy might apply, raw included.
    if any_form(path, |f| f.chars().any(char::is_control)) {
        return Err(bad("control characters (CR, LF, NUL...) are not allowed"));
    }
    let mut why = "";
    if any_form(p, |f| {
        if f.contains('\\') || f.starts_with("//") {
            why = "encoded backslashes or authorities are not allowed";
            return true;
        }
        if f.split('/').any(|seg| {
            let seg = seg.split(';').next().unwrap_or(seg);
            seg == ".." || seg == "."
        }) {
            why = "`.` and `..` segments are not allowed";
            return true;
        }
        false
    }) {
        return Err(bad(why));
    }
    Ok(())
}

/// Whether `bad` holds for `s` or for any of its first three
/// percent-decodings. Allocates only when `s` holds a `%`.
fn any_form(s: &str, mut bad: impl FnMut(&str) -> bool) -> bool {
    if bad(s) {
        return true;
    }
    let mut cur: Option<String> = None;
    for _ in 0..3 {
        match decode_once(cur.as_deref().unwrap_or(s)) {
            Some(d) if bad(&d) => return true,
            Some(d) => cur = Some(d),
            None => break,
        }
    }
    false
}

pub(crate) fn parse_base(base: &str) -> Result<url::Url> {
    url::Url::parse(base).map_err(|_| {
        PlatformError::bad_request(
            "CONNECTION_MISCONFIGURED",
            "the connection's provider base URL is invalid",
        )
    })
}

/// Appends an already validated `path` (with its query) to the base. The
/// host is the base's own: only path and query are set.
pub(crate) fn join_path(base: &url::Url, path: &str) -> Result<url::Url> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let prefix = base.path().trim_end_matches('/');
    let mut u = base.clone();
    u.set_path(&format!("{prefix}{p}"));
    u.set_query(q);
    if !u.path().starts_with(prefix) || u.origin() != base.origin() {
        return Err(PlatformError::bad_request(
            "INVALID_PATH",
            "invalid provider path: it leaves the provider's API",
        ));
    }
    Ok(u)
}

fn path_leaves_api() -> PlatformError {
    PlatformError::bad_request(
        "INVALID_PATH",
        "invalid provider path: it leaves the provider's API",
    )
}

/// The characters `url` percent-encodes in a path and in a query of an
/// `http(s)` URL, so both ways of joining produce the same request.
const PATH_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'#')
    .add(b'?')
    .add(b'{')
    .add(b'}');
const QUERY_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');

/// [`join_path`] for the common call that adds no query parameters: the
/// validated path is appended to the base's text, and the result is checked
/// to have the base's authority and path prefix, so the host cannot change.
pub(crate) fn append_path(base: &hot::Base, path: &str) -> Result<http::Uri> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut s = String::with_capacity(base.prefix.len() + path.len() + 16);
    s.push_str(&base.prefix);
    s.extend(utf8_percent_encode(p, PATH_SET));
    if let Some(q) = q {
        s.push('?');
        s.extend(utf8_percent_encode(q, QUERY_SET));
    }
    let uri: http::Uri = s.parse().map_err(|_| path_leaves_api())?;
    if uri.authority().map(|a| a.as_str()) != Some(base.authority.as_str())
        || !uri.path().starts_with(&base.path)
    {
        return Err(path_leaves_api());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizing_keeps_every_value_of_what_stays_in_order() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("accept", "a/1"),
            ("x-vessel-access-token", "secret"),
            ("connection", "x-drop-me, keep-alive"),
            ("accept", "a/2"),
            ("x-drop-me", "1"),
            ("x-keep", "k"),
            ("authorization", "Bearer caller"),
            ("accept", "a/3"),
            ("host", "evil.test"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        sanitize_request_headers(&mut h);
        let left: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            left,
            [
                ("accept", "a/1"),
                ("accept", "a/2"),
                ("accept", "a/3"),
                ("x-keep", "k")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let mut clean = HeaderMap::new();
        clean.insert("accept", HeaderValue::from_static("x"));
        sanitize_request_headers(&mut clean);
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn paths_stay_under_the_base() {
        let base = "https://api.example.com/v2";
        assert_eq!(
            provider_url(base, "/contacts?limit=1").unwrap().as_str(),
            "https://api.example.com/v2/contacts?limit=1"
        );
        for bad in [
            "contacts",
            "//evil.com/x",
            "/../admin",
            "/a/%2e%2e/b",
            "/a/%2E%2E/b",
            "/a\\b",
            "/a/./b",
            "/x#frag",
            "/a\nb",
            "@evil.com",
        ] {
            assert!(provider_url(base, bad).is_err(), "{bad} accepted");
        }
    }

    /// The proxy's fast join and the `url` crate's join send the same
    /// request for every path that passes validation.
    #[test]
    fn both_joins_agree() {
        for base in [
            "https://api.example.com/v2",
            "https://api.example.com/v2/",
            "http://127.0.0.1:8080",
            "https://x.test/a/b?dropped=1",
        ] {
            let parsed = hot::Base::parse(base).unwrap();
            for path in [
                "/contacts",
                "/contacts?limit=1&after=abc",
                "/with space/and\"quote\"",
                "/q?name=a b&x=<y>&z='1'",
                "/caf\u{e9}/\u{65e5}?q=\u{e9}",
                "/a%20b/%2F?x=%26",
                "/{braces}/`tick`/^caret|pipe",
                "/a@b/c:d;e=f",
                "/",
                "/x?",
            ] {
                if validate_path(path).is_err() {
                    continue;
                }
                let slow = join_path(&parsed.url, path).unwrap();
                let fast = append_path(&parsed, path).unwrap();
                assert_eq!(fast.to_string(), slow.as_str(), "{base} + {path}");
            }
        }
    }
}
