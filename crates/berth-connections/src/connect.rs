//! The connect step (`/auth/start`): validate the connect-form answers,
//! prove the credentials with the provider where it offers a cheap check,
//! vault them, and create the connection.

use std::collections::BTreeMap;

use berth_catalog::{AuthMethod, AuthType, Integration, QuestionType};
use berth_outbound::Method;
use berth_store::AuthSession;
use serde_json::{Map, Value};

use crate::credential::{CredentialData, TemplateContext, provider_target};
use crate::{Platform, PlatformError, Result};

/// The body of `/auth/start`.
#[derive(Debug, Default)]
pub struct StartAuth {
    pub integration_id: Option<String>,
    pub auth_type: Option<String>,
    pub oauth_app_id: Option<String>,
    pub answers: Map<String, Value>,
}

#[derive(Debug)]
pub struct StartOutcome {
    /// Where to send the user for OAuth; `None` when the connection is done.
    pub oauth_url: Option<String>,
    /// Set once the connection exists (or is being re-authenticated).
    pub connection_id: Option<String>,
    pub integration_id: String,
    /// For v1 link sessions: what the modal hands to `onSuccess`.
    pub public_token: Option<String>,
}

/// Answer keys also accepted for the `api-key` question.
const API_KEY_ALIASES: &[&str] = &["api-key", "apiKey", "api_key", "token"];

impl Platform {
    pub async fn start_auth(&self, session: &AuthSession, req: StartAuth) -> Result<StartOutcome> {
        match session.state.as_str() {
            "created" => {}
            _ => {
                return Err(PlatformError::bad_request(
                    "SESSION_ALREADY_USED",
                    "this session already completed a connection; create a new session token",
                ));
            }
        }
        let integration_id = match (&session.integration_id, &req.integration_id) {
            (Some(bound), Some(asked)) if bound != asked => {
                return Err(PlatformError::bad_request(
                    "INTEGRATION_MISMATCH",
                    format!("this session token is bound to integration `{bound}`, not `{asked}`"),
                ));
            }
            (_, Some(id)) | (Some(id), None) => id.clone(),
            (None, None) => {
                return Err(PlatformError::bad_request(
                    "INVALID_BODY",
                    "integrationId is required",
                ));
            }
        };
        let integration = self
            .catalog()
            .get(&integration_id)
            .ok_or_else(|| super::unknown_integration(&integration_id))?
            .clone();
        let method = match req.auth_type.as_deref().filter(|s| !s.is_empty()) {
            None => integration.default_auth(),
            Some(name) => {
                let kind = AuthType::parse(name).ok_or_else(|| {
                    PlatformError::bad_request(
                        "INVALID_AUTH_TYPE",
                        format!("unknown authType `{name}` (oauth2, apiKey, basic, oauth2-client-credentials)"),
                    )
                })?;
                integration.auth_method(kind).ok_or_else(|| {
                    let offered: Vec<_> =
                        integration.auth.iter().map(|a| a.kind.as_str()).collect();
                    PlatformError::bad_request(
                        "INVALID_AUTH_TYPE",
                        format!(
                            "{} does not support authType `{name}`; it offers {}",
                            integration.name,
                            offered.join(", ")
                        ),
                    )
                })?
            }
        };
        if req.oauth_app_id.as_deref().is_some_and(|s| !s.is_empty())
            && method.kind != AuthType::OAuth2
        {
            return Err(PlatformError::bad_request(
                "INVALID_AUTH_TYPE",
                "oauthAppId is only allowed with authType oauth2",
            ));
        }
        let (public_answers, mut cred) = collect_answers(method, &req.answers)?;
        if method.kind == AuthType::OAuth2 {
            let url = self
                .start_oauth(
                    session,
                    &integration,
                    method,
                    public_answers,
                    req.oauth_app_id.as_deref(),
                )
                .await?;
            return Ok(StartOutcome {
                oauth_url: Some(url),
                connection_id: session.reauth_connection_id.clone(),
                integration_id: integration.id.clone(),
                public_token: None,
            });
        }
        let empty = Map::new();
        let ctx = TemplateContext {
            answers: &public_answers,
            metadata: &empty,
            public_url: &self.config().public_url,
        };
        if method.kind == AuthType::OAuth2ClientCredentials {
            let token_url = crate::oauth::render_url(
                method.token_url.as_deref().unwrap_or_default(),
                &ctx,
                "token URL",
            )
            .map_err(|m| PlatformError::bad_request("INVALID_ANSWERS", m))?;
            self.client_credentials_token(&integration, method, token_url, &mut cred)
                .await
                .map_err(|e| match e {
                    crate::oauth::TokenError::Unavailable(m) => PlatformError::ProviderUnavailable(
                        format!("could not obtain a token from {}: {m}", integration.name),
                    ),
                    other => PlatformError::InvalidCredentials(format!(
                        "{} rejected the client credentials: {}",
                        integration.name,
                        other.message()
                    )),
                })?;
        }
        if integration.end_user_host() {
            self.guard_end_user_host(&integration, method, &cred, &ctx)
                .await?;
        }
        self.check_credentials(&integration, method, &cred, &ctx)
            .await?;
        let answers_json = Value::Object(public_answers.clone()).to_string();
        // The provider account (e.g. a Chatwoot account id from the
        // answers) identifies shared rate-limit budgets and nativeOrgId.
        let native = |t: &Option<String>| -> Option<String> {
            t.as_deref()
                .and_then(|t| berth_catalog::render(t, |k| ctx.lookup(k, &cred)).ok())
                .filter(|s| !s.is_empty())
        };
        let natives = [
            native(&method.native.org_id),
            native(&method.native.user_id),
            native(&method.native.org_url),
        ];
        let connection_id = match session.reauth_connection_id.as_deref() {
            Some(existing) => {
                self.reauthorize(session, existing, &cred, &answers_json, "{}")
                    .await?;
                existing.to_string()
            }
            None => {
                self.persist_new_connection(
                    session,
                    &integration,
                    method.kind,
                    &cred,
                    &answers_json,
                    "{}",
                    [
                        natives[0].as_deref(),
                        natives[1].as_deref(),
                        natives[2].as_deref(),
                    ],
                )
                .await?
            }
        };
        Ok(StartOutcome {
            oauth_url: None,
            connection_id: Some(connection_id),
            integration_id: integration.id.clone(),
            public_token: self.public_token_for(session),
        })
    }

    /// Refuses, before anything is stored or called, a base URL whose host
    /// an end user chose and that is (or resolves to) an internal address.
    /// Every later call is guarded again at each new connection.
    async fn guard_end_user_host(
        &self,
        integration: &Integration,
        method: &AuthMethod,
        cred: &CredentialData,
        ctx: &TemplateContext<'_>,
    ) -> Result<()> {
        let (url, _) = answered_url(integration, method, cred, ctx, "")?;
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        match self
            .inner
            .outbound
            .address_policy()
            .resolve(host, port)
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ berth_outbound::ssrf::AddressRefused::Internal { .. }) => Err(
                crate::tokens::address_refused(&format!("{}: {e}", integration.name)),
            ),
            Err(e) => Err(PlatformError::ProviderUnavailable(format!(
                "could not reach {}: {e}",
                integration.name
            ))),
        }
    }

    /// Proves the credentials with the provider's cheap check call, if any.
    async fn check_credentials(
        &self,
        integration: &Integration,
        method: &AuthMethod,
        cred: &CredentialData,
        ctx: &TemplateContext<'_>,
    ) -> Result<()> {
        let Some(check) = &method.check else {
            return Ok(());
        };
        let (mut url, target) = answered_url(integration, method, cred, ctx, &check.path)?;
        if !target.query.is_empty() {
            url.query_pairs_mut().extend_pairs(target.query.iter());
        }
        let mut headers = target.headers.clone();
        headers.push(("accept".into(), "application/json".into()));
        let resp = self
            .inner
            .outbound
            .send_to(
                Method::from_bytes(check.method.as_bytes()).unwrap_or(Method::GET),
                &url,
                headers,
                berth_outbound::OutBody::Empty,
                integration.end_user_host(),
            )
            .await
            .map_err(|e| match e {
                berth_outbound::OutboundError::AddressRefused(why) => {
                    crate::tokens::address_refused(&format!("{}: {why}", integration.name))
                }
                e => PlatformError::ProviderUnavailable(format!(
                    "could not verify the credentials with {}: {e}",
                    integration.name
                )),
            })?;
        match resp.status {
            200..=299 => Ok(()),
            401 | 403 => Err(PlatformError::InvalidCredentials(format!(
                "{} rejected the credentials: {}",
                integration.name,
                provider_reason(&resp.body, resp.status)
            ))),
            s => Err(PlatformError::ProviderUnavailable(format!(
                "could not verify the credentials with {}: it answered HTTP {s}",
                integration.name
            ))),
        }
    }
}

/// The provider URL `path` under the base URL the answers build, with the
/// rendered target; a 400 naming the answers when they do not make one.
fn answered_url(
    integration: &Integration,
    method: &AuthMethod,
    cred: &CredentialData,
    ctx: &TemplateContext<'_>,
    path: &str,
) -> Result<(url::Url, crate::credential::ProviderTarget)> {
    let target = provider_target(integration, method.kind, cred, ctx).map_err(|e| {
        PlatformError::bad_request(
            "INVALID_ANSWERS",
            format!("cannot build the provider URL: {e}"),
        )
    })?;
    let url = url::Url::parse(&format!("{}{path}", target.base_url)).map_err(|_| {
        PlatformError::bad_request(
            "INVALID_ANSWERS",
            "the answers do not form a valid provider URL (check the instance URL)",
        )
    })?;
    Ok((url, target))
}

/// Splits answers into non-secret ones (kept on the connection, usable in
/// URL templates) and the credential (vaulted), enforcing required questions,
/// select options and URL syntax.
fn collect_answers(
    method: &AuthMethod,
    given: &Map<String, Value>,
) -> Result<(Map<String, Value>, CredentialData)> {
    let mut public = Map::new();
    let mut secret: BTreeMap<String, String> = BTreeMap::new();
    let mut missing = Vec::new();
    for q in &method.questions {
        let raw = given.get(&q.id).or_else(|| {
            if q.id == "api-key" {
                API_KEY_ALIASES.iter().find_map(|k| given.get(*k))
            } else {
                None
            }
        });
        let value = match raw {
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(Value::Null) | None => None,
            Some(_) => {
                return Err(PlatformError::bad_request(
                    "INVALID_ANSWERS",
                    format!("answers.{} must be a string", q.id),
                ));
            }
        }
        .filter(|s| !s.is_empty())
        .or_else(|| q.default_value().map(str::to_owned));
        let Some(value) = value else {
            if q.required {
                missing.push(q.id.clone());
            }
            continue;
        };
        if value.len() > 4096 {
            return Err(PlatformError::bad_request(
                "INVALID_ANSWERS",
                format!("answers.{} is longer than 4096 characters", q.id),
            ));
        }
        let value = match q.kind {
            QuestionType::Select => {
                if !q.options.iter().any(|o| o.value == value) {
                    let valid: Vec<_> = q.options.iter().map(|o| o.value.as_str()).collect();
                    return Err(PlatformError::bad_request(
                        "INVALID_ANSWERS",
                        format!("answers.{} must be one of: {}", q.id, valid.join(", ")),
                    ));
                }
                value
            }
            QuestionType::Url => {
                let ok = url::Url::parse(&value)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
                if ok.is_none() {
                    return Err(PlatformError::bad_request(
                        "INVALID_ANSWERS",
                        format!(
                            "answers.{} must be an http(s) URL like https://app.chatwoot.com",
                            q.id
                        ),
                    ));
                }
                value.trim_end_matches('/').to_string()
            }
            _ => value,
        };
        if q.is_secret() {
            secret.insert(q.id.clone(), value);
        } else {
            public.insert(q.id.clone(), Value::String(value));
        }
    }
    if !missing.is_empty() {
        return Err(PlatformError::bad_request(
            "MISSING_ANSWERS",
            format!("missing answers: {}", missing.join(", ")),
        ));
    }
    let mut cred = CredentialData::default();
    cred.auth_type = method.kind.as_str().to_string();
    match method.kind {
        AuthType::ApiKey => {
            cred.api_key = secret.remove("api-key");
        }
        AuthType::Basic => {
            cred.username = secret.remove("username").or_else(|| {
                public
                    .remove("username")
                    .and_then(|v| v.as_str().map(str::to_owned))
            });
            cred.password = secret.remove("password");
        }
        AuthType::OAuth2ClientCredentials => {
            cred.client_id = secret.remove("clientId").or_else(|| {
                public
                    .remove("clientId")
                    .and_then(|v| v.as_str().map(str::to_owned))
            });
            cred.client_secret = secret.remove("clientSecret");
        }
        AuthType::OAuth2 => {}
    }
    cred.secrets = secret;
    Ok((public, cred))
}

/// A short, printable reason from a provider's error body.
fn provider_reason(body: &[u8], status: u16) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let pick = |v: &Value| -> Option<String> {
        for k in ["message", "error_description", "detail", "error"] {
            match v.get(k) {
                Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
                Some(o @ Value::Object(_)) => {
                    if let Some(Value::String(s)) = o.get("message") {
                        return Some(s.clone());
                    }
                }
                _ => {}
            }
        }
        None
    };
    let reason = pick(&v).unwrap_or_else(|| format!("HTTP {status}"));
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_catalog::Catalog;

    fn answers(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn answers_split_into_public_and_secret() {
        let c = Catalog::builtin();
        let m = c.get("chatwoot").unwrap().default_auth();
        let (public, cred) = collect_answers(
            m,
            &answers(serde_json::json!({"instanceUrl": "https://chat.example.com/", "accountId": 7, "api-key": "tok"})),
        )
        .unwrap();
        assert_eq!(public["instanceUrl"], "https://chat.example.com");
        assert_eq!(public["accountId"], "7");
        assert!(!public.contains_key("api-key"));
        assert_eq!(cred.api_key.as_deref(), Some("tok"));
    }

    #[test]
    fn missing_and_invalid_answers_are_named() {
        let c = Catalog::builtin();
        let m = c.get("chatwoot").unwrap().default_auth();
        let e = collect_answers(m, &answers(serde_json::json!({"instanceUrl": "x"}))).unwrap_err();
        assert!(e.to_string().contains("instanceUrl"), "{e}");
        let e = collect_answers(m, &answers(serde_json::json!({}))).unwrap_err();
        assert!(
            e.to_string().contains("accountId") && e.to_string().contains("api-key"),
            "{e}"
        );
        let sf = c.get("customerio").unwrap().default_auth();
        let e = collect_answers(
            sf,
            &answers(serde_json::json!({"api-key": "k", "apiHost": "evil.com"})),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one of"), "{e}");
    }

    #[test]
    fn provider_reason_is_short_and_clean() {
        assert_eq!(provider_reason(br#"{"message":"bad key"}"#, 401), "bad key");
        assert_eq!(
            provider_reason(br#"{"error":{"message":"nope"}}"#, 401),
            "nope"
        );
        assert_eq!(provider_reason(b"<html>", 403), "HTTP 403");
        assert_eq!(provider_reason(br#"{"error":"a\nb"}"#, 401), "ab");
    }
}
