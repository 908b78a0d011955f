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

use berth_catalog::{AuthType, Integration};
use berth_outbound::{Method, OutboundRequest, OutboundResponse};
use berth_store::{Connection, NewEvent};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::credential::{CredentialData, TemplateContext, provider_target};
use crate::oauth::{ResolvedApp, TokenError, apply_token_response, render_url};
use crate::{Platform, PlatformError, Result, credential_aad, now_ms, secrets};

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
        let integration = self
            .catalog()
            .get(&conn.integration_id)
            .ok_or_else(|| crate::unknown_integration(&conn.integration_id))?
            .clone();
        let (cred, version) = self.ensure_fresh(conn, None).await?;
        let resp = self
            .send_to_provider(&integration, conn, &cred, call)
            .await?;
        if resp.status == 401 && refreshable(&cred) {
            drop(cred);
            let (cred, _) = self.ensure_fresh(conn, Some(version)).await?;
            return self.send_to_provider(&integration, conn, &cred, call).await;
        }
        Ok(resp)
    }

    async fn send_to_provider(
        &self,
        integration: &Integration,
        conn: &Connection,
        cred: &CredentialData,
        call: &ProviderCall,
    ) -> Result<OutboundResponse> {
        let kind = AuthType::parse(&conn.auth_type).unwrap_or(AuthType::ApiKey);
        let answers = json_map(&conn.answers);
        let metadata = json_map(&conn.provider_metadata);
        let ctx = TemplateContext {
            answers: &answers,
            metadata: &metadata,
            public_url: &self.config().public_url,
        };
        let target = provider_target(integration, kind, cred, &ctx).map_err(|e| {
            PlatformError::bad_request(
                "CONNECTION_MISCONFIGURED",
                format!("cannot build the provider URL for this connection: {e}"),
            )
        })?;
        let url = provider_url(&target.base_url, &call.path)?;
        let mut url = url;
        if !call.query.is_empty() || !target.query.is_empty() {
            let mut q = url.query_pairs_mut();
            q.extend_pairs(call.query.iter());
            q.extend_pairs(target.query.iter());
        }
        // The credential header wins over a caller's header of the same name.
        let mut headers: Vec<(String, String)> = call
            .headers
            .iter()
            .filter(|(k, _)| {
                !target
                    .headers
                    .iter()
                    .any(|(t, _)| t.eq_ignore_ascii_case(k))
            })
            .cloned()
            .collect();
        headers.extend(target.headers.iter().cloned());
        self.inner
            .outbound
            .send(OutboundRequest {
                method: call.method.clone(),
                url,
                headers,
                body: call.body.clone(),
            })
            .await
            .map_err(|e| {
                PlatformError::ProviderUnavailable(format!(
                    "could not reach {}: {e}",
                    integration.name
                ))
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
                return self.load_versioned(conn).await;
            }
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
                    event_type: "connection.needs_reauth",
                    payload: &payload,
                    created_at: now,
                },
                now,
            )
            .await?;
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

fn json_map(s: &str) -> Map<String, Value> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Joins a caller's path to the provider base URL, refusing anything that
/// would leave the base (absolute URLs, `..`, authority changes).
pub fn provider_url(base: &str, path: &str) -> Result<url::Url> {
    let bad = |why: &str| {
        PlatformError::bad_request("INVALID_PATH", format!("invalid provider path: {why}"))
    };
    if !path.starts_with('/') {
        return Err(bad("it must start with `/`"));
    }
    if path.starts_with("//") || path.contains('\\') || path.chars().any(|c| c.is_control()) {
        return Err(bad("it must be a path on the provider's API, not a URL"));
    }
    let (p, _) = path.split_once(['?', '#']).unwrap_or((path, ""));
    let decoded = url::form_urlencoded::parse(format!("x={p}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if p.split('/')
        .chain(decoded.split('/'))
        .any(|seg| seg == ".." || seg == ".")
        || decoded.contains('\\')
    {
        return Err(bad("`.` and `..` segments are not allowed"));
    }
    if path.contains('#') {
        return Err(bad("fragments are not allowed"));
    }
    let base_url = url::Url::parse(base).map_err(|_| {
        PlatformError::bad_request(
            "CONNECTION_MISCONFIGURED",
            "the connection's provider base URL is invalid",
        )
    })?;
    let joined = url::Url::parse(&format!("{}{}", base.trim_end_matches('/'), path))
        .map_err(|_| bad("not a valid URL path"))?;
    if joined.origin() != base_url.origin()
        || !joined
            .path()
            .starts_with(base_url.path().trim_end_matches('/'))
    {
        return Err(bad("it leaves the provider's API"));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
