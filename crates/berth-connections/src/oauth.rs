//! The OAuth2 engine: OAuth apps per environment, the authorization-code
//! flow with PKCE and a signed single-use `state`, the token endpoint calls
//! shared by code exchange, refresh and the client-credentials grant, and
//! the provider quirks that live in token responses (instance URLs, api
//! domains, Slack's user tokens).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_catalog::{AuthMethod, AuthType, BodyFormat, Integration, TokenAuth};
use berth_outbound::Method;
use berth_store::{
    AuthSession, CreateConnectionError, NewConnection, NewEvent, OAuthApp, OAuthFlow, Reauthorize,
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::credential::{CredentialData, TemplateContext};
use crate::{
    Platform, PlatformError, Result, credential_aad, now_ms, secrets, session_kind, status,
};

/// How long a user has to finish the provider's consent screen.
const FLOW_TTL_MS: i64 = 15 * 60 * 1000;

/// The callback path registered with providers.
pub const CALLBACK_PATH: &str = "/auth/oauth-callback";

/// An OAuth app as shown to API callers: never the secret.
#[derive(Debug, Clone)]
pub struct OAuthAppView {
    pub id: String,
    pub integration_id: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    /// From the server config rather than the API.
    pub configured: bool,
}

#[derive(Debug, Default)]
pub struct NewOAuthApp {
    pub integration_id: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub scopes: Vec<String>,
}

/// A default OAuth app from the server config (`v_oauthapp_<id>_default`).
#[derive(Clone, Default)]
pub struct ConfiguredApp {
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for ConfiguredApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfiguredApp({}, <redacted>)", self.client_id)
    }
}

/// The app a flow or refresh uses, secret opened.
pub(crate) struct ResolvedApp {
    pub id: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub scopes: Vec<String>,
}

pub fn default_app_id(integration_id: &str) -> String {
    format!("v_oauthapp_{integration_id}_default")
}

/// What the flow remembers between `/auth/start` and the callback. Sealed.
#[derive(Serialize, Deserialize)]
struct FlowData {
    integration_id: String,
    app_id: String,
    verifier: Option<String>,
    answers: Map<String, Value>,
    redirect_uri: String,
}

impl Drop for FlowData {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(v) = &mut self.verifier {
            v.zeroize();
        }
    }
}

/// The result of the provider redirecting back to Berth.
#[derive(Debug)]
pub enum CallbackOutcome {
    Connected {
        integration_name: String,
        connection_id: String,
        session_kind: String,
    },
    Failed(CallbackFailure),
}

#[derive(Debug)]
pub struct CallbackFailure {
    /// Stable code for the error screen and tests.
    pub code: &'static str,
    pub message: String,
}

impl CallbackFailure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The query of `/auth/oauth-callback`.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// Every other parameter (Zoho's `accounts-server`, `location`...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

/// Why a token endpoint call failed.
#[derive(Debug)]
pub(crate) enum TokenError {
    /// The grant (code or refresh token) is dead: re-authentication needed.
    InvalidGrant(String),
    /// Any other refusal (bad client, bad request).
    Rejected(String),
    /// The provider did not answer usefully (5xx, HTML, network).
    Unavailable(String),
}

impl TokenError {
    pub(crate) fn message(&self) -> &str {
        match self {
            TokenError::InvalidGrant(m) | TokenError::Rejected(m) | TokenError::Unavailable(m) => m,
        }
    }
}

impl Platform {
    // ---- OAuth apps ----------------------------------------------------------

    pub async fn create_oauth_app(
        &self,
        env: &berth_store::Environment,
        req: NewOAuthApp,
    ) -> Result<OAuthAppView> {
        let integration = self
            .catalog()
            .get(&req.integration_id)
            .ok_or_else(|| crate::unknown_integration(&req.integration_id))?;
        if integration.auth_method(AuthType::OAuth2).is_none() {
            return Err(PlatformError::bad_request(
                "OAUTH_NOT_SUPPORTED",
                format!("{} does not use OAuth2 authorization", integration.name),
            ));
        }
        let client_id = req.client_id.trim();
        if client_id.is_empty() || client_id.len() > 512 {
            return Err(PlatformError::bad_request(
                "INVALID_BODY",
                "clientId must be 1 to 512 characters",
            ));
        }
        if req.client_secret.trim().is_empty() || req.client_secret.len() > 4096 {
            return Err(PlatformError::bad_request(
                "INVALID_BODY",
                "clientSecret must be 1 to 4096 characters",
            ));
        }
        if req.scopes.len() > 200
            || req
                .scopes
                .iter()
                .any(|s| s.is_empty() || s.len() > 512 || s.chars().any(char::is_whitespace))
        {
            return Err(PlatformError::bad_request(
                "INVALID_BODY",
                "scopes must be at most 200 non-empty strings without spaces",
            ));
        }
        let id = format!(
            "v_oauthapp_{}_{}",
            integration.id,
            &secrets::new_id("x")[2..18]
        );
        let sealed = self.inner.vault.seal(
            req.client_secret.trim().as_bytes(),
            app_aad(&env.id, &id).as_bytes(),
        );
        let app = OAuthApp {
            id,
            environment_id: env.id.clone(),
            integration_id: integration.id.clone(),
            client_id: client_id.to_string(),
            sealed_secret: sealed,
            scopes: serde_json::to_string(&req.scopes).expect("strings serialize"),
            created_at: now_ms(),
        };
        self.store().insert_oauth_app(&app).await?;
        Ok(view(&app))
    }

    /// The environment's apps, then the server's configured defaults.
    pub async fn list_oauth_apps(
        &self,
        env: &berth_store::Environment,
    ) -> Result<Vec<OAuthAppView>> {
        let mut out: Vec<_> = self
            .store()
            .list_oauth_apps(&env.id)
            .await?
            .iter()
            .map(view)
            .collect();
        for (integration, app) in &self.config().oauth_apps {
            out.push(configured_view(integration, app));
        }
        Ok(out)
    }

    pub async fn find_oauth_app(
        &self,
        env: &berth_store::Environment,
        id: &str,
    ) -> Result<OAuthAppView> {
        if let Some(app) = self.store().get_oauth_app(&env.id, id).await? {
            return Ok(view(&app));
        }
        self.config()
            .oauth_apps
            .iter()
            .find(|(i, _)| default_app_id(i) == id)
            .map(|(i, a)| configured_view(i, a))
            .ok_or_else(|| app_not_found(id))
    }

    pub async fn delete_oauth_app(&self, env: &berth_store::Environment, id: &str) -> Result<()> {
        if self.store().delete_oauth_app(&env.id, id, now_ms()).await? {
            return Ok(());
        }
        if self
            .config()
            .oauth_apps
            .keys()
            .any(|i| default_app_id(i) == id)
        {
            return Err(PlatformError::bad_request(
                "CONFIGURED_APP",
                "this default app comes from the server configuration; remove it there",
            ));
        }
        Err(app_not_found(id))
    }

    /// The app to use: the named one, or for `None` / the `_default` id the
    /// environment's newest app for the integration, else the configured one.
    pub(crate) async fn resolve_app(
        &self,
        environment_id: &str,
        integration: &Integration,
        requested: Option<&str>,
    ) -> Result<ResolvedApp> {
        let default_id = default_app_id(&integration.id);
        let requested = requested.filter(|s| !s.is_empty() && *s != default_id);
        let stored = match requested {
            Some(id) => {
                let app = self
                    .store()
                    .get_oauth_app(environment_id, id)
                    .await?
                    .ok_or_else(|| app_not_found(id))?;
                if app.integration_id != integration.id {
                    return Err(PlatformError::bad_request(
                        "OAUTH_APP_MISMATCH",
                        format!(
                            "OAuth app `{id}` is for `{}`, not `{}`",
                            app.integration_id, integration.id
                        ),
                    ));
                }
                Some(app)
            }
            None => {
                self.store()
                    .latest_oauth_app(environment_id, &integration.id)
                    .await?
            }
        };
        if let Some(app) = stored {
            let secret = self
                .inner
                .vault
                .open(
                    &app.sealed_secret,
                    app_aad(environment_id, &app.id).as_bytes(),
                )
                .map_err(|e| PlatformError::Internal(Box::new(e)))?;
            return Ok(ResolvedApp {
                scopes: serde_json::from_str(&app.scopes).unwrap_or_default(),
                id: app.id,
                client_id: app.client_id,
                client_secret: Zeroizing::new(String::from_utf8_lossy(&secret).into_owned()),
            });
        }
        match self.config().oauth_apps.get(&integration.id) {
            Some(c) => Ok(ResolvedApp {
                id: default_id,
                client_id: c.client_id.clone(),
                client_secret: c.client_secret.clone(),
                scopes: c.scopes.clone(),
            }),
            None => Err(PlatformError::bad_request(
                "NO_OAUTH_APP",
                format!(
                    "no OAuth app is set up for {}: create one with POST /auth/oauth-apps/create, or configure a default app on the server",
                    integration.name
                ),
            )),
        }
    }

    // ---- authorization-code flow ---------------------------------------------

    /// Starts the consent hand-off: remembers the flow and returns the
    /// provider's authorization URL.
    pub(crate) async fn start_oauth(
        &self,
        session: &AuthSession,
        integration: &Integration,
        method: &AuthMethod,
        answers: Map<String, Value>,
        oauth_app_id: Option<&str>,
    ) -> Result<String> {
        let app = self
            .resolve_app(&session.environment_id, integration, oauth_app_id)
            .await?;
        let empty = Map::new();
        let ctx = TemplateContext {
            answers: &answers,
            metadata: &empty,
            public_url: &self.config().public_url,
        };
        let authorize = render_url(
            method.authorize_url.as_deref().unwrap_or_default(),
            &ctx,
            "authorization URL",
        )
        .map_err(|m| PlatformError::bad_request("INVALID_ANSWERS", m))?;
        let redirect_uri = format!(
            "{}{}",
            self.config().public_url.trim_end_matches('/'),
            CALLBACK_PATH
        );
        let flow_id = secrets::new_id("oaf");
        let verifier = method.pkce.then(|| {
            let mut b = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut b);
            URL_SAFE_NO_PAD.encode(b)
        });
        let scopes = if app.scopes.is_empty() {
            method.scopes.clone()
        } else {
            app.scopes.clone()
        };
        let mut url = authorize;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code");
            q.append_pair("client_id", &app.client_id);
            q.append_pair("redirect_uri", &redirect_uri);
            if !scopes.is_empty() {
                q.append_pair("scope", &scopes.join(&method.scope_separator));
            }
            if !method.user_scopes.is_empty() {
                q.append_pair(
                    "user_scope",
                    &method.user_scopes.join(&method.scope_separator),
                );
            }
            q.append_pair("state", &self.sign_state(&flow_id));
            if let Some(v) = &verifier {
                let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()));
                q.append_pair("code_challenge", &challenge);
                q.append_pair("code_challenge_method", "S256");
            }
            for (k, v) in &method.authorize_params {
                q.append_pair(k, v);
            }
        }
        let data = FlowData {
            integration_id: integration.id.clone(),
            app_id: app.id.clone(),
            verifier,
            answers,
            redirect_uri,
        };
        let now = now_ms();
        let sealed = self.inner.vault.seal(
            &serde_json::to_vec(&data).expect("flow serializes"),
            flow_aad(&session.environment_id, &flow_id).as_bytes(),
        );
        self.store()
            .insert_oauth_flow(&OAuthFlow {
                id: flow_id,
                session_id: session.id.clone(),
                environment_id: session.environment_id.clone(),
                sealed,
                created_at: now,
                expires_at: (now + FLOW_TTL_MS).min(session.expires_at),
            })
            .await?;
        Ok(url.to_string())
    }

    fn state_mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&*self.inner.vault.derive_subkey("oauth-state"))
            .expect("hmac accepts any key length")
    }

    fn sign_state(&self, flow_id: &str) -> String {
        let mut mac = self.state_mac();
        mac.update(flow_id.as_bytes());
        format!(
            "{flow_id}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The flow id of a genuine `state`, or `None` if it was forged or edited.
    fn verify_state(&self, state: &str) -> Option<String> {
        let (flow_id, sig) = state.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.state_mac();
        mac.update(flow_id.as_bytes());
        mac.verify_slice(&sig).ok()?;
        Some(flow_id.to_string())
    }

    /// Handles the provider's redirect back to Berth. Never fails with an
    /// error: every outcome is something to show the user.
    pub async fn oauth_callback(&self, params: CallbackParams) -> CallbackOutcome {
        match self.oauth_callback_inner(params).await {
            Ok(o) => o,
            Err(PlatformError::Internal(e)) => {
                tracing::error!(error = %e, "oauth callback failed");
                CallbackOutcome::Failed(CallbackFailure::new(
                    "INTERNAL",
                    "Berth could not finish the connection because of an internal error. Please try again.",
                ))
            }
            Err(e) => CallbackOutcome::Failed(CallbackFailure::new("FAILED", e.to_string())),
        }
    }

    async fn oauth_callback_inner(&self, params: CallbackParams) -> Result<CallbackOutcome> {
        let fail = |code, msg: String| Ok(CallbackOutcome::Failed(CallbackFailure::new(code, msg)));
        let Some(state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
            return fail(
                "STATE_MISSING",
                "The provider sent no state parameter, so this sign-in cannot be matched to a connect session. Start again from the connect window.".into(),
            );
        };
        let Some(flow_id) = self.verify_state(state) else {
            return fail(
                "STATE_MISMATCH",
                "The sign-in response does not match any connect session (its state was changed or forged). Start again from the connect window.".into(),
            );
        };
        let now = now_ms();
        let Some(flow) = self.store().consume_oauth_flow(&flow_id, now).await? else {
            return fail(
                "STATE_USED",
                "This sign-in response was already used or has expired. Start again from the connect window.".into(),
            );
        };
        let Some(session) = self.store().session_by_id(&flow.session_id).await? else {
            return fail(
                "SESSION_EXPIRED",
                "The connect session expired. Ask the app for a new connect link.".into(),
            );
        };
        if session.expires_at <= now {
            return fail(
                "SESSION_EXPIRED",
                "The connect session expired. Ask the app for a new connect link.".into(),
            );
        }
        if session.state != "created" {
            return fail(
                "SESSION_ALREADY_USED",
                "This connect session already finished. Start a new one to connect again.".into(),
            );
        }
        let plain = self
            .inner
            .vault
            .open(
                &flow.sealed,
                flow_aad(&flow.environment_id, &flow.id).as_bytes(),
            )
            .map_err(|e| PlatformError::Internal(Box::new(e)))?;
        let data: FlowData =
            serde_json::from_slice(&plain).map_err(|e| PlatformError::Internal(Box::new(e)))?;
        let Some(integration) = self.catalog().get(&data.integration_id).cloned() else {
            return self
                .record_failure(
                    &session.id,
                    "UNKNOWN_INTEGRATION",
                    format!(
                        "The integration `{}` is no longer available.",
                        data.integration_id
                    ),
                )
                .await;
        };
        if let Some(err) = params.error.as_deref().filter(|s| !s.is_empty()) {
            let detail = params
                .error_description
                .as_deref()
                .map(clean)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| clean(err));
            let msg = if err == "access_denied" {
                format!("Access was denied at {}: {detail}", integration.name)
            } else {
                format!("{} returned an error: {detail}", integration.name)
            };
            return self
                .record_failure(&session.id, "PROVIDER_DENIED", msg)
                .await;
        }
        let Some(code) = params.code.as_deref().filter(|s| !s.is_empty()) else {
            return self
                .record_failure(
                    &session.id,
                    "CODE_MISSING",
                    format!(
                        "{} redirected back without an authorization code.",
                        integration.name
                    ),
                )
                .await;
        };
        let method = integration
            .auth_method(AuthType::OAuth2)
            .expect("flows are only created for oauth2")
            .clone();
        let app = match self
            .resolve_app(&flow.environment_id, &integration, Some(&data.app_id))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return self
                    .record_failure(&session.id, "NO_OAUTH_APP", e.to_string())
                    .await;
            }
        };
        // Callback parameters the provider documents as metadata (Zoho's
        // data-center accounts server) are validated before they are used
        // to build the token URL.
        let mut metadata = Map::new();
        for key in &method.callback_metadata {
            if let Some(v) = params.extra.get(key) {
                if looks_like_url_key(key) && !is_http_url(v) {
                    return self
                        .record_failure(
                            &session.id,
                            "MALFORMED_METADATA",
                            format!("{} returned a malformed `{key}`.", integration.name),
                        )
                        .await;
                }
                metadata.insert(key.clone(), Value::String(v.clone()));
            }
        }
        let ctx = TemplateContext {
            answers: &data.answers,
            metadata: &metadata,
            public_url: &self.config().public_url,
        };
        let token_url = match render_url(
            method.token_url.as_deref().unwrap_or_default(),
            &ctx,
            "token URL",
        ) {
            Ok(u) => u,
            Err(m) => {
                return self
                    .record_failure(&session.id, "MALFORMED_METADATA", m)
                    .await;
            }
        };
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", data.redirect_uri.clone()),
        ];
        if let Some(v) = &data.verifier {
            form.push(("code_verifier", v.clone()));
        }
        let resp = match self
            .token_request(&integration, &method, token_url, &app, form)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return self
                    .record_failure(
                        &session.id,
                        "TOKEN_EXCHANGE_FAILED",
                        format!(
                            "{} did not issue a token: {}",
                            integration.name,
                            e.message()
                        ),
                    )
                    .await;
            }
        };
        let mut cred = CredentialData::default();
        cred.auth_type = AuthType::OAuth2.as_str().to_string();
        cred.oauth_app_id = Some(app.id.clone());
        if let Err(m) = apply_token_response(&mut cred, &resp, &integration.name) {
            return self
                .record_failure(&session.id, "TOKEN_EXCHANGE_FAILED", m)
                .await;
        }
        if let Err(m) = collect_metadata(&method, &resp, &mut metadata, &integration.name) {
            return self
                .record_failure(&session.id, "MALFORMED_METADATA", m)
                .await;
        }
        if let Some(identity) = &method.identity
            && let Err(m) = self
                .identity_call(&integration, identity, &cred, &data.answers, &mut metadata)
                .await
        {
            return self.record_failure(&session.id, "IDENTITY_FAILED", m).await;
        }
        let native = |t: &Option<String>| -> Option<String> {
            let ctx = TemplateContext {
                answers: &data.answers,
                metadata: &metadata,
                public_url: &self.config().public_url,
            };
            t.as_deref()
                .and_then(|t| berth_catalog::render(t, |k| ctx.lookup(k, &cred)).ok())
                .filter(|s| !s.is_empty())
        };
        let native_org_id = native(&method.native.org_id);
        let native_org_url = native(&method.native.org_url);
        let native_user_id = native(&method.native.user_id);
        let answers_json = Value::Object(data.answers.clone()).to_string();
        let metadata_json = Value::Object(metadata.clone()).to_string();

        let result = match session.reauth_connection_id.as_deref() {
            Some(existing) => self
                .reauthorize(&session, existing, &cred, &answers_json, &metadata_json)
                .await
                .map(|()| existing.to_string()),
            None => {
                self.persist_new_connection(
                    &session,
                    &integration,
                    AuthType::OAuth2,
                    &cred,
                    &answers_json,
                    &metadata_json,
                    [
                        native_org_id.as_deref(),
                        native_user_id.as_deref(),
                        native_org_url.as_deref(),
                    ],
                )
                .await
            }
        };
        match result {
            Ok(connection_id) => Ok(CallbackOutcome::Connected {
                integration_name: integration.name.clone(),
                connection_id,
                session_kind: session.kind.clone(),
            }),
            Err(e @ (PlatformError::BadRequest { .. } | PlatformError::NotFound(_))) => {
                self.record_failure(&session.id, "CONNECTION_NOT_CREATED", e.to_string())
                    .await
            }
            Err(e) => Err(e),
        }
    }

    async fn record_failure(
        &self,
        session_id: &str,
        code: &'static str,
        message: String,
    ) -> Result<CallbackOutcome> {
        // Best effort: the modal shows it; the callback page shows it anyway.
        if let Err(e) = self.store().set_session_error(session_id, &message).await {
            tracing::warn!(error = %e, "could not record the session error");
        }
        Ok(CallbackOutcome::Failed(CallbackFailure::new(code, message)))
    }

    /// Creates the connection of a completed flow (any auth type).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn persist_new_connection(
        &self,
        session: &AuthSession,
        integration: &Integration,
        kind: AuthType,
        cred: &CredentialData,
        answers_json: &str,
        metadata_json: &str,
        [native_org_id, native_user_id, native_org_url]: [Option<&str>; 3],
    ) -> Result<String> {
        let env = self
            .store()
            .environment(&session.environment_id)
            .await?
            .ok_or_else(|| {
                PlatformError::unauthorized("INVALID_SESSION_TOKEN", "invalid session token")
            })?;
        let connection_id = secrets::new_connection_id(&env.name, &integration.id);
        let aad = credential_aad(&env.id, &connection_id);
        let sealed = self.inner.vault.seal(
            &serde_json::to_vec(cred).expect("credentials serialize"),
            aad.as_bytes(),
        );
        let public_token = self.public_token_for(session);
        let now = now_ms();
        let payload = serde_json::json!({
            "connectionId": connection_id,
            "integrationId": integration.id,
            "externalUserId": session.external_user_id,
            "status": status::NEW_CONNECTION,
        })
        .to_string();
        let result = self
            .store()
            .create_connection_for_session(&berth_store::CreateConnection {
                session_id: &session.id,
                connection: &NewConnection {
                    id: &connection_id,
                    environment_id: &env.id,
                    integration_id: &integration.id,
                    auth_type: kind.as_str(),
                    status: status::NEW_CONNECTION,
                    external_user_id: session.external_user_id.as_deref(),
                    metadata: session.metadata.as_deref(),
                    answers: answers_json,
                    native_org_id,
                    native_user_id,
                    native_org_url,
                    provider_metadata: metadata_json,
                },
                sealed_credential: &sealed,
                public_token_hash: public_token.as_deref().map(secrets::hash_token).as_deref(),
                live_connection_limit: (env.name == "development")
                    .then_some(self.config().dev_connection_limit),
                event: NewEvent {
                    id: &secrets::new_id("evt"),
                    environment_id: &env.id,
                    connection_id: Some(&connection_id),
                    event_type: "connection.created",
                    payload: &payload,
                    created_at: now,
                },
                now,
            })
            .await;
        match result {
            Ok(()) => Ok(connection_id),
            Err(CreateConnectionError::LimitReached(n)) => Err(PlatformError::bad_request(
                "CONNECTION_LIMIT_REACHED",
                format!(
                    "Maximum number of connections reached for development account: the development connection limit is {n}. Delete a connection (DELETE /connection/connection or POST /connections/delete) or use a production API token."
                ),
            )),
            Err(CreateConnectionError::SessionNotPending) => Err(session_not_pending()),
            Err(CreateConnectionError::Store(e)) => Err(e.into()),
        }
    }

    /// Replaces an existing connection's credential from a re-authentication
    /// session.
    pub(crate) async fn reauthorize(
        &self,
        session: &AuthSession,
        connection_id: &str,
        cred: &CredentialData,
        answers_json: &str,
        metadata_json: &str,
    ) -> Result<()> {
        self.inner.hot.forget_connection(connection_id);
        let aad = credential_aad(&session.environment_id, connection_id);
        let sealed = self.inner.vault.seal(
            &serde_json::to_vec(cred).expect("credentials serialize"),
            aad.as_bytes(),
        );
        let public_token = self.public_token_for(session);
        let payload = serde_json::json!({
            "connectionId": connection_id,
            "externalUserId": session.external_user_id,
        })
        .to_string();
        let now = now_ms();
        self.store()
            .reauthorize_connection(&Reauthorize {
                session_id: &session.id,
                environment_id: &session.environment_id,
                connection_id,
                sealed_credential: &sealed,
                answers: answers_json,
                provider_metadata: metadata_json,
                public_token_hash: public_token.as_deref().map(secrets::hash_token).as_deref(),
                event: NewEvent {
                    id: &secrets::new_id("evt"),
                    environment_id: &session.environment_id,
                    connection_id: Some(connection_id),
                    event_type: "connection.reauthorized",
                    payload: &payload,
                    created_at: now,
                },
                now,
            })
            .await
            .map_err(|e| match e {
                CreateConnectionError::Store(e) => e.into(),
                _ => session_not_pending(),
            })
    }

    /// A v1 link session's public token. Derived from the session id with a
    /// server key, so whoever holds the link token can fetch it again (the
    /// modal and the OAuth popup are different windows) while only its hash
    /// is stored.
    pub fn public_token_for(&self, session: &AuthSession) -> Option<String> {
        (session.kind == session_kind::LINK).then(|| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&*self.inner.vault.derive_subkey("public-token"))
                    .expect("hmac accepts any key length");
            mac.update(session.id.as_bytes());
            format!(
                "{}{}",
                secrets::PUBLIC_TOKEN_PREFIX,
                hex::encode(mac.finalize().into_bytes())
            )
        })
    }

    async fn identity_call(
        &self,
        integration: &Integration,
        identity: &berth_catalog::Identity,
        cred: &CredentialData,
        answers: &Map<String, Value>,
        metadata: &mut Map<String, Value>,
    ) -> std::result::Result<(), String> {
        let meta = metadata.clone();
        let ctx = TemplateContext {
            answers,
            metadata: &meta,
            public_url: &self.config().public_url,
        };
        let url = berth_catalog::render(&identity.url, |k| ctx.lookup(k, cred))
            .ok()
            .and_then(|u| url::Url::parse(&u).ok())
            .ok_or_else(|| format!("cannot build {}'s account lookup URL", integration.name))?;
        let resp = self
            .inner
            .outbound
            .send_to(
                Method::from_bytes(identity.method.as_bytes()).unwrap_or(Method::GET),
                &url,
                vec![("accept".into(), "application/json".into())],
                berth_outbound::OutBody::Empty,
                integration.end_user_host(),
            )
            .await
            .map_err(|e| format!("could not look up the {} account: {e}", integration.name))?;
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if !resp.is_success() || !body.is_object() {
            return Err(format!(
                "{} did not describe the connected account (HTTP {})",
                integration.name, resp.status
            ));
        }
        for key in &identity.metadata {
            if let Some(v) = body.get(key) {
                metadata.insert(key.clone(), strip_secrets(v.clone()));
            }
        }
        Ok(())
    }

    /// One call to a token endpoint (code exchange, refresh, client
    /// credentials), with client authentication and body format as the
    /// catalog says.
    pub(crate) async fn token_request(
        &self,
        integration: &Integration,
        method: &AuthMethod,
        token_url: url::Url,
        app: &ResolvedApp,
        mut params: Vec<(&str, String)>,
    ) -> std::result::Result<Map<String, Value>, TokenError> {
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        match method.token_auth {
            TokenAuth::Body => {
                params.push(("client_id", app.client_id.clone()));
                params.push(("client_secret", app.client_secret.to_string()));
            }
            TokenAuth::Basic => {
                // RFC 6749 2.3.1: form-encode the id and secret before joining.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let b = STANDARD.encode(format!(
                    "{}:{}",
                    enc(&app.client_id),
                    enc(&app.client_secret)
                ));
                headers.push(("authorization".into(), format!("Basic {b}")));
            }
        }
        let body = match method.body_format {
            BodyFormat::Form => {
                headers.push((
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &params {
                    form.append_pair(k, v);
                }
                form.finish().into_bytes()
            }
            BodyFormat::Json => {
                headers.push(("content-type".into(), "application/json".into()));
                let m: Map<String, Value> = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                    .collect();
                serde_json::to_vec(&m).expect("json serializes")
            }
        };
        drop(params);
        let resp = self
            .inner
            .outbound
            .send_to(
                Method::POST,
                &token_url,
                headers,
                berth_outbound::OutBody::Bytes(body.into()),
                integration.end_user_host(),
            )
            .await
            .map_err(|e| {
                TokenError::Unavailable(format!("could not reach {}: {e}", integration.name))
            })?;
        let parsed: Option<Map<String, Value>> = serde_json::from_slice(&resp.body).ok();
        let Some(json) = parsed else {
            let ct = resp
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.as_str())
                .unwrap_or("no content type");
            return Err(TokenError::Unavailable(format!(
                "the token endpoint answered HTTP {} with {ct} instead of JSON",
                resp.status
            )));
        };
        let error_code = json
            .get("error")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                // Slack answers HTTP 200 with `ok: false`.
                (json.get("ok") == Some(&Value::Bool(false))).then_some("unknown_error")
            });
        if resp.is_success() && error_code.is_none() {
            return Ok(json);
        }
        let code = error_code.unwrap_or("").to_string();
        let reason = json
            .get("error_description")
            .and_then(Value::as_str)
            .map(clean)
            .filter(|s| !s.is_empty())
            .map(|d| {
                if code.is_empty() {
                    d
                } else {
                    format!("{code}: {d}")
                }
            })
            .unwrap_or_else(|| {
                if code.is_empty() {
                    format!("HTTP {}", resp.status)
                } else {
                    clean(&code)
                }
            });
        if matches!(
            code.as_str(),
            "invalid_grant" | "invalid_refresh_token" | "token_revoked" | "invalid_code"
        ) {
            Err(TokenError::InvalidGrant(reason))
        } else if resp.status >= 500 {
            Err(TokenError::Unavailable(reason))
        } else {
            Err(TokenError::Rejected(reason))
        }
    }
}

/// Puts a token response into a credential: the access token, a rotated
/// refresh token (the old one is kept when none is returned), the expiry,
/// and Slack's user token.
pub(crate) fn apply_token_response(
    cred: &mut CredentialData,
    resp: &Map<String, Value>,
    provider: &str,
) -> std::result::Result<(), String> {
    let token = resp
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{provider} answered without an access_token"))?;
    cred.access_token = Some(token.to_string());
    if let Some(rt) = resp
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        cred.refresh_token = Some(rt.to_string());
    }
    let expires_in = match resp.get("expires_in") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    cred.expires_at = expires_in
        .filter(|s| *s > 0)
        .map(|s| now_ms() + s.min(10 * 365 * 86_400) * 1000);
    if let Some(user) = resp.get("authed_user") {
        if let Some(t) = user.get("access_token").and_then(Value::as_str) {
            cred.secrets.insert("userAccessToken".into(), t.to_string());
        }
        if let Some(t) = user.get("refresh_token").and_then(Value::as_str) {
            cred.secrets
                .insert("userRefreshToken".into(), t.to_string());
        }
    }
    Ok(())
}

/// Copies the catalog's `token_metadata` keys into the connection's
/// metadata, with secrets removed and URL-valued keys validated.
pub(crate) fn collect_metadata(
    method: &AuthMethod,
    resp: &Map<String, Value>,
    metadata: &mut Map<String, Value>,
    provider: &str,
) -> std::result::Result<(), String> {
    for key in &method.token_metadata {
        let Some(v) = resp.get(key) else { continue };
        if looks_like_url_key(key) {
            match v.as_str() {
                Some(s) if is_http_url(s) => {}
                _ => {
                    return Err(format!(
                        "{provider} returned a malformed `{key}`; cannot know where to send API calls"
                    ));
                }
            }
        }
        metadata.insert(key.clone(), strip_secrets(v.clone()));
    }
    Ok(())
}

fn looks_like_url_key(key: &str) -> bool {
    key.ends_with("_url")
        || key.ends_with("_domain")
        || key.ends_with("-server")
        || key == "api_endpoint"
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).ok().is_some_and(|u| {
        matches!(u.scheme(), "https" | "http")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    })
}

/// Removes token-looking fields from metadata taken from provider responses.
fn strip_secrets(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "access_token" | "refresh_token" | "id_token" | "token" | "client_secret"
                    )
                })
                .map(|(k, v)| (k, strip_secrets(v)))
                .collect(),
        ),
        other => other,
    }
}

pub(crate) fn render_url(
    template: &str,
    ctx: &TemplateContext<'_>,
    what: &str,
) -> std::result::Result<url::Url, String> {
    let empty = CredentialData::default();
    let s = berth_catalog::render(template, |k| ctx.lookup(k, &empty))
        .map_err(|e| format!("cannot build the {what}: {e}"))?;
    url::Url::parse(&s)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
        .ok_or_else(|| format!("the {what} `{s}` is not a valid URL"))
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

impl Platform {
    /// Re-seals under the active key every stored OAuth app secret and the
    /// data of every connect flow still waiting for its redirect, so that
    /// `berth vault rotate-key --prune` leaves nothing only an old key
    /// opens. Returns how many were re-sealed.
    pub async fn reseal_oauth_secrets(&self) -> Result<u64> {
        let mut count = 0;
        let mut after = String::new();
        loop {
            let page = self.store().oauth_apps_page(&after, 200).await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for app in page {
                // Only a delete can change a stored secret, and then
                // nothing is left to re-seal.
                let aad = app_aad(&app.environment_id, &app.id);
                if let Some(sealed) = self.resealed(&app.sealed_secret, &aad)?
                    && self
                        .store()
                        .reseal_oauth_app(&app.id, &app.sealed_secret, &sealed)
                        .await?
                {
                    count += 1;
                }
            }
        }
        let mut after = String::new();
        loop {
            let page = self
                .store()
                .open_oauth_flows_page(&after, now_ms(), 200)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for flow in page {
                // A flow used meanwhile needs its data no more.
                let aad = flow_aad(&flow.environment_id, &flow.id);
                if let Some(sealed) = self.resealed(&flow.sealed, &aad)?
                    && self
                        .store()
                        .reseal_oauth_flow(&flow.id, &flow.sealed, &sealed)
                        .await?
                {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// `sealed` under the active key, if another key sealed it.
    fn resealed(&self, sealed: &str, aad: &str) -> Result<Option<String>> {
        let vault = &self.inner.vault;
        if !vault.needs_reseal(sealed) {
            return Ok(None);
        }
        let plain = vault
            .open(sealed, aad.as_bytes())
            .map_err(|e| PlatformError::Internal(Box::new(e)))?;
        Ok(Some(vault.seal(&plain, aad.as_bytes())))
    }
}

fn app_aad(environment_id: &str, app_id: &str) -> String {
    format!("oauth-app/{environment_id}/{app_id}")
}

fn flow_aad(environment_id: &str, flow_id: &str) -> String {
    format!("oauth-flow/{environment_id}/{flow_id}")
}

fn view(a: &OAuthApp) -> OAuthAppView {
    OAuthAppView {
        id: a.id.clone(),
        integration_id: a.integration_id.clone(),
        client_id: a.client_id.clone(),
        scopes: serde_json::from_str(&a.scopes).unwrap_or_default(),
        created_at: a.created_at,
        configured: false,
    }
}

fn configured_view(integration: &str, a: &ConfiguredApp) -> OAuthAppView {
    OAuthAppView {
        id: default_app_id(integration),
        integration_id: integration.to_string(),
        client_id: a.client_id.clone(),
        scopes: a.scopes.clone(),
        created_at: 0,
        configured: true,
    }
}

fn app_not_found(id: &str) -> PlatformError {
    PlatformError::NotFound(format!("no OAuth app with id `{id}` in this environment"))
}

pub(crate) fn session_not_pending() -> PlatformError {
    PlatformError::bad_request(
        "SESSION_ALREADY_USED",
        "this session expired or already completed a connection; create a new session token",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_metadata() {
        let v = serde_json::json!({"id": "U1", "access_token": "xoxp", "scope": "a", "nested": {"refresh_token": "r"}});
        let s = strip_secrets(v);
        assert_eq!(
            s,
            serde_json::json!({"id": "U1", "scope": "a", "nested": {}})
        );
    }

    #[test]
    fn url_metadata_is_validated() {
        assert!(is_http_url("https://eu1.salesforce.com"));
        assert!(!is_http_url("javascript:alert(1)"));
        assert!(!is_http_url("https://user:pw@evil.example"));
        assert!(!is_http_url("not a url"));
        assert!(looks_like_url_key("instance_url"));
        assert!(looks_like_url_key("api_domain"));
        assert!(looks_like_url_key("accounts-server"));
    }

    #[test]
    fn token_response_keeps_old_refresh_token_when_not_rotated() {
        let mut c = CredentialData::default();
        c.refresh_token = Some("old".into());
        let r = serde_json::json!({"access_token": "a", "expires_in": "3600"});
        apply_token_response(&mut c, r.as_object().unwrap(), "X").unwrap();
        assert_eq!(c.refresh_token.as_deref(), Some("old"));
        assert!(c.expires_at.unwrap() > now_ms());
        let r = serde_json::json!({"access_token": "b", "refresh_token": "new", "authed_user": {"id": "U", "access_token": "xoxp-1"}});
        apply_token_response(&mut c, r.as_object().unwrap(), "X").unwrap();
        assert_eq!(c.refresh_token.as_deref(), Some("new"));
        assert_eq!(c.expires_at, None);
        assert_eq!(c.secrets["userAccessToken"], "xoxp-1");
        let r = serde_json::json!({"token_type": "bearer"});
        assert!(apply_token_response(&mut c, r.as_object().unwrap(), "X").is_err());
    }
}
