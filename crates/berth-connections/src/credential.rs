//! A connection's provider secrets, and how they are put on a request.
//!
//! [`CredentialData`] exists in plaintext only in memory: it is sealed by the
//! vault (bound to the environment and connection id) before it is stored,
//! its `Debug` output is redacted, and it is zeroed on drop.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use berth_catalog::{AuthType, Integration, TemplateError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialData {
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The OAuth app whose client credentials refresh this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_app_id: Option<String>,
    /// Other secret connect-form answers (e.g. a second key) and secondary
    /// tokens (Slack's user token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl fmt::Debug for CredentialData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialData({}, <redacted>)", self.auth_type)
    }
}

impl Drop for CredentialData {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for s in [
            &mut self.api_key,
            &mut self.username,
            &mut self.password,
            &mut self.client_id,
            &mut self.client_secret,
            &mut self.access_token,
            &mut self.refresh_token,
        ]
        .into_iter()
        .flatten()
        {
            s.zeroize();
        }
        for v in self.secrets.values_mut() {
            v.zeroize();
        }
    }
}

impl CredentialData {
    /// The `{{credential.x}}` template values.
    fn lookup(&self, key: &str) -> Option<String> {
        match key {
            "apiKey" => self.api_key.clone(),
            "username" => self.username.clone(),
            "password" => self.password.clone(),
            "accessToken" => self.access_token.clone(),
            "clientId" => self.client_id.clone(),
            "basic" => {
                // Basic auth with an API key alone (Mailchimp: any user, key as password).
                let user = self.username.clone().unwrap_or_else(|| "berth".into());
                let pass = self.password.clone().or_else(|| self.api_key.clone())?;
                Some(STANDARD.encode(format!("{user}:{pass}")))
            }
            other => self.secrets.get(other).cloned(),
        }
    }
}

/// Where and how to call a connection's provider.
#[derive(Clone)]
pub struct ProviderTarget {
    /// Without a trailing slash.
    pub base_url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

impl fmt::Debug for ProviderTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTarget")
            .field("base_url", &self.base_url)
            .field("headers", &"<redacted>")
            .finish()
    }
}

/// The non-secret context a connection's templates may name.
pub struct TemplateContext<'a> {
    pub answers: &'a serde_json::Map<String, serde_json::Value>,
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
    pub public_url: &'a str,
}

impl TemplateContext<'_> {
    pub(crate) fn lookup(&self, name: &str, cred: &CredentialData) -> Option<String> {
        let as_string = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
        if name == "public_url" {
            // Empty on a `berth worker` started without `--public-url`: a
            // template naming it is then an error that says so, rather
            // than a call to a guessed address.
            return (!self.public_url.is_empty())
                .then(|| self.public_url.trim_end_matches('/').to_string());
        }
        let (scope, key) = name.split_once('.')?;
        match scope {
            "answers" => self.answers.get(key).and_then(as_string),
            // `metadata.team.id` walks into objects (Slack's `team`).
            "metadata" => self.metadata.get(key).and_then(as_string).or_else(|| {
                let mut parts = key.split('.');
                let mut v = self.metadata.get(parts.next()?)?;
                for p in parts {
                    v = v.get(p)?;
                }
                as_string(v)
            }),
            "credential" => cred.lookup(key),
            _ => None,
        }
    }
}

/// Resolves base URL and credential placement for `kind` of `integration`.
pub fn provider_target(
    integration: &Integration,
    kind: AuthType,
    cred: &CredentialData,
    ctx: &TemplateContext<'_>,
) -> Result<ProviderTarget, TemplateError> {
    let method = integration
        .auth_method(kind)
        .ok_or_else(|| TemplateError::Missing(format!("auth method {kind}")))?;
    let look = |name: &str| ctx.lookup(name, cred);
    let base_url = berth_catalog::render(integration.base_url_for(kind), look)?
        .trim_end_matches('/')
        .to_string();
    let value = berth_catalog::render(&method.attach.value, look)?;
    let mut target = ProviderTarget {
        base_url,
        headers: Vec::new(),
        query: Vec::new(),
    };
    if let Some(h) = &method.attach.header {
        target.headers.push((h.clone(), value));
    } else if let Some(q) = &method.attach.query {
        target.query.push((q.clone(), value));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provider_quirks_resolve_from_metadata() {
        let catalog = berth_catalog::Catalog::builtin();
        let mut cred = CredentialData::default();
        cred.access_token = Some("tok".into());
        let empty = serde_json::Map::new();
        // Zoho: the data center's api_domain from the token response
        let meta = json!({"api_domain": "https://www.zohoapis.eu", "accounts-server": "https://accounts.zoho.eu"});
        let ctx = TemplateContext {
            answers: &empty,
            metadata: meta.as_object().unwrap(),
            public_url: "http://b",
        };
        let zoho = catalog.get("zoho").unwrap();
        let t = provider_target(zoho, AuthType::OAuth2, &cred, &ctx).unwrap();
        assert_eq!(t.base_url, "https://www.zohoapis.eu/crm/v8");
        assert_eq!(t.headers[0].1, "Zoho-oauthtoken tok");
        let token_url = zoho
            .auth_method(AuthType::OAuth2)
            .unwrap()
            .token_url
            .clone()
            .unwrap();
        assert_eq!(
            berth_catalog::render(&token_url, |k| ctx.lookup(k, &cred)).unwrap(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
        // Slack: nested team id for nativeOrgId
        let meta = json!({"team": {"id": "T1", "name": "Acme"}});
        let ctx = TemplateContext {
            answers: &empty,
            metadata: meta.as_object().unwrap(),
            public_url: "http://b",
        };
        assert_eq!(ctx.lookup("metadata.team.id", &cred).as_deref(), Some("T1"));
        // Salesforce: the per-org instance URL
        let meta = json!({"instance_url": "https://acme.my.salesforce.com"});
        let ctx = TemplateContext {
            answers: &empty,
            metadata: meta.as_object().unwrap(),
            public_url: "http://b",
        };
        let sf = catalog.get("salesforce").unwrap();
        let t = provider_target(sf, AuthType::OAuth2, &cred, &ctx).unwrap();
        assert_eq!(
            t.base_url,
            "https://acme.my.salesforce.com/services/data/v66.0"
        );
    }
}
