//! The integration catalog: declarative data about every provider Berth can
//! connect to (display, category, auth methods and their connect-form
//! questions, base URLs, OAuth endpoints, scopes, rate limits).
//!
//! The built-in catalog (`data/catalog.toml`) is embedded in the binary. An
//! operator's providers file in the same format is deep-merged over it by id,
//! which is how self-hosted Chatwoot instances and test doubles point Berth at
//! other hosts without a rebuild.
#![forbid(unsafe_code)]

mod icon;
mod template;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use icon::icon_svg;
pub use template::{TemplateError, render};

const BUILTIN: &str = include_str!("../data/catalog.toml");

/// The categories the Vessel contract knows, plus the email/calendar module's.
pub const CATEGORIES: &[&str] = &[
    "crm",
    "engagement",
    "chat",
    "marketing-automation",
    "dialer",
    "email",
    "calendar",
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read providers file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("providers file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("integration `{id}`: {message}")]
    Invalid { id: String, message: String },
}

/// How a connection authenticates with a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum AuthType {
    #[serde(rename = "oauth2")]
    OAuth2,
    #[serde(rename = "apiKey")]
    ApiKey,
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "oauth2-client-credentials")]
    OAuth2ClientCredentials,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::OAuth2 => "oauth2",
            AuthType::ApiKey => "apiKey",
            AuthType::Basic => "basic",
            AuthType::OAuth2ClientCredentials => "oauth2-client-credentials",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AuthType::OAuth2,
            AuthType::ApiKey,
            AuthType::Basic,
            AuthType::OAuth2ClientCredentials,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenAuth {
    /// `client_secret_post`
    #[default]
    Body,
    /// `client_secret_basic`
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    #[default]
    Form,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionType {
    Text,
    Password,
    Select,
    Url,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuestionOption {
    pub value: String,
    pub label: String,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub id: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: QuestionType,
    #[serde(default)]
    pub options: Vec<QuestionOption>,
    pub default: Option<String>,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

impl Question {
    /// Whether the answer is a secret that must go to the vault, never to
    /// connection metadata.
    pub fn is_secret(&self) -> bool {
        self.kind == QuestionType::Password
    }

    /// The value used when the user gave none.
    pub fn default_value(&self) -> Option<&str> {
        self.default.as_deref().or_else(|| {
            self.options
                .iter()
                .find(|o| o.default)
                .map(|o| o.value.as_str())
        })
    }
}

/// Where a credential goes on an outbound request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    pub header: Option<String>,
    pub query: Option<String>,
    pub value: String,
}

/// A cheap call that proves a credential works.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub method: String,
    pub path: String,
}

/// A call made right after an OAuth2 token exchange to learn who connected
/// (HubSpot's portal id comes from its token-info endpoint).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub method: String,
    /// Absolute URL template; may name `{{credential.accessToken}}`.
    pub url: String,
    /// Keys copied from the JSON response into the connection's metadata.
    pub metadata: Vec<String>,
}

/// Templates for the connection's `nativeOrgId`, `nativeOrgURL` and
/// `nativeUserId`, rendered from answers and metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeIds {
    pub org_id: Option<String>,
    pub org_url: Option<String>,
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// Per connection.
    Connection,
    /// Shared by every connection to the same provider account.
    Account,
}

/// A provider's own rate-limit header (`rate_limit_headers`): either a
/// `remaining` count (with the header naming the window in milliseconds,
/// or the one naming the reset time) or a `usage` header of `key=used/max`
/// pairs; `wait_secs` is how long the quota is taken to be gone when the
/// answer does not say.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeader {
    pub remaining: Option<String>,
    pub window_ms: Option<String>,
    pub reset: Option<String>,
    pub usage: Option<String>,
    pub key: Option<String>,
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: u32,
    pub scope: LimitScope,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthDef {
    base_url: Option<String>,
    authorize_url: Option<String>,
    token_url: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    user_scopes: Vec<String>,
    scope_separator: Option<String>,
    #[serde(default)]
    authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pkce: bool,
    #[serde(default)]
    token_auth: TokenAuth,
    #[serde(default)]
    body_format: BodyFormat,
    #[serde(default)]
    token_metadata: Vec<String>,
    #[serde(default)]
    callback_metadata: Vec<String>,
    identity: Option<Identity>,
    #[serde(default)]
    native: NativeIds,
    attach: Attach,
    markdown: Option<String>,
    #[serde(default)]
    questions: Vec<Question>,
    check: Option<Check>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationDef {
    name: String,
    category: String,
    #[serde(default)]
    categories: Vec<String>,
    color: Option<String>,
    base_url: String,
    default_auth: Option<String>,
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    rate_limit_headers: Vec<RateLimitHeader>,
    sync_interval_secs: Option<u64>,
    auth: BTreeMap<String, AuthDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    integrations: BTreeMap<String, IntegrationDef>,
}

/// One way to authenticate with an integration.
#[derive(Debug, Clone)]
pub struct AuthMethod {
    pub kind: AuthType,
    pub default: bool,
    /// Overrides the integration's base URL for this auth method.
    pub base_url: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub scopes: Vec<String>,
    pub user_scopes: Vec<String>,
    pub scope_separator: String,
    pub authorize_params: BTreeMap<String, String>,
    pub pkce: bool,
    pub token_auth: TokenAuth,
    pub body_format: BodyFormat,
    /// Token-response keys kept as connection metadata.
    pub token_metadata: Vec<String>,
    /// Callback query parameters kept as connection metadata (Zoho's
    /// `accounts-server`).
    pub callback_metadata: Vec<String>,
    pub identity: Option<Identity>,
    pub native: NativeIds,
    pub attach: Attach,
    pub markdown: Option<String>,
    pub questions: Vec<Question>,
    pub check: Option<Check>,
}

/// A catalog entry.
#[derive(Debug, Clone)]
pub struct Integration {
    pub id: String,
    pub name: String,
    pub category: String,
    pub categories: Vec<String>,
    pub color: String,
    pub base_url: String,
    pub rate_limit: Option<RateLimit>,
    /// The provider's own rate-limit headers, which the outbound layer
    /// learns blocks from (generic `X-RateLimit-*` need no entry).
    pub rate_limit_headers: Vec<RateLimitHeader>,
    /// The time between syncs of this integration's connections, when not
    /// the server's default (a connection may still set its own).
    pub sync_interval_secs: Option<u64>,
    /// The default method first.
    pub auth: Vec<AuthMethod>,
}

impl Integration {
    /// Whether an end user's answers choose the host Berth calls (a
    /// self-hosted Chatwoot's instance URL, Mailchimp's data center): such
    /// calls go through the outbound layer's address guard, and the
    /// operator's catalog hosts do not.
    pub fn end_user_host(&self) -> bool {
        let from_answers = |t: &str| t.contains("answers.");
        from_answers(&self.base_url)
            || self.auth.iter().any(|m| {
                m.base_url.as_deref().is_some_and(from_answers)
                    || m.token_url.as_deref().is_some_and(from_answers)
            })
    }

    pub fn default_auth(&self) -> &AuthMethod {
        &self.auth[0]
    }

    pub fn auth_method(&self, kind: AuthType) -> Option<&AuthMethod> {
        self.auth.iter().find(|a| a.kind == kind)
    }

    pub fn has_category(&self, category: &str) -> bool {
        self.categories.iter().any(|c| c == category)
    }

    /// The base URL template that applies to calls made with `kind`.
    pub fn base_url_for(&self, kind: AuthType) -> &str {
        self.auth_method(kind)
            .and_then(|a| a.base_url.as_deref())
            .unwrap_or(&self.base_url)
    }
}

/// The loaded, validated catalog. Immutable once built.
#[derive(Debug, Clone)]
pub struct Catalog {
    list: Vec<Integration>,
    by_id: HashMap<String, usize>,
}

impl Catalog {
    /// The built-in catalog alone.
    pub fn builtin() -> Self {
        Self::from_tables(parse_table(BUILTIN, "<built-in catalog>").expect("built-in parses"))
            .expect("built-in catalog is valid")
    }

    /// The built-in catalog with an operator's providers file merged over it.
    pub fn load(providers_file: Option<&Path>) -> Result<Self, CatalogError> {
        let mut base = parse_table(BUILTIN, "<built-in catalog>")?;
        if let Some(path) = providers_file {
            let display = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
                path: display.clone(),
                source,
            })?;
            let overlay = parse_table(&text, &display)?;
            deep_merge(&mut base, overlay);
        }
        Self::from_tables(base)
    }

    /// Parses a providers-file text merged over the built-in catalog.
    pub fn with_overrides(text: &str) -> Result<Self, CatalogError> {
        let mut base = parse_table(BUILTIN, "<built-in catalog>")?;
        deep_merge(&mut base, parse_table(text, "<overrides>")?);
        Self::from_tables(base)
    }

    fn from_tables(table: toml::Table) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| CatalogError::Parse {
                    path: "<merged catalog>".into(),
                    message: e.to_string(),
                })?;
        let mut list = Vec::new();
        for (id, def) in file.integrations {
            list.push(build(id, def)?);
        }
        list.sort_by_key(|a| a.name.to_lowercase());
        let by_id = list
            .iter()
            .enumerate()
            .map(|(i, x)| (x.id.clone(), i))
            .collect();
        Ok(Self { list, by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Integration> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// Every integration, sorted by display name.
    pub fn all(&self) -> &[Integration] {
        &self.list
    }
}

fn parse_table(text: &str, path: &str) -> Result<toml::Table, CatalogError> {
    text.parse::<toml::Table>()
        .map_err(|e| CatalogError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
}

/// Tables merge key by key; every other value replaces the base value.
fn deep_merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn build(id: String, def: IntegrationDef) -> Result<Integration, CatalogError> {
    let invalid = |message: String| CatalogError::Invalid {
        id: id.clone(),
        message,
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "ids are 1-64 characters of a-z, 0-9, '-' and '_'".into(),
        ));
    }
    if !CATEGORIES.contains(&def.category.as_str()) {
        return Err(invalid(format!(
            "unknown category `{}` (one of {})",
            def.category,
            CATEGORIES.join(", ")
        )));
    }
    let mut categories = def.categories.clone();
    if !categories.contains(&def.category) {
        categories.insert(0, def.category.clone());
    }
    if let Some(c) = categories
        .iter()
        .find(|c| !CATEGORIES.contains(&c.as_str()))
    {
        return Err(invalid(format!("unknown category `{c}`")));
    }
    if def.auth.is_empty() {
        return Err(invalid("needs at least one auth method".into()));
    }
    let default_kind = match &def.default_auth {
        Some(s) => {
            AuthType::parse(s).ok_or_else(|| invalid(format!("unknown default_auth `{s}`")))?
        }
        None if def.auth.len() == 1 => {
            let only = def.auth.keys().next().expect("one auth method");
            AuthType::parse(only).ok_or_else(|| invalid(format!("unknown auth type `{only}`")))?
        }
        None => return Err(invalid("several auth methods: set default_auth".into())),
    };
    let mut auth = Vec::new();
    for (kind_name, a) in def.auth {
        let kind = AuthType::parse(&kind_name).ok_or_else(|| {
            invalid(format!(
                "unknown auth type `{kind_name}` (oauth2, apiKey, basic, oauth2-client-credentials)"
            ))
        })?;
        if matches!(kind, AuthType::OAuth2) && (a.authorize_url.is_none() || a.token_url.is_none())
        {
            return Err(invalid("oauth2 needs authorize_url and token_url".into()));
        }
        if matches!(kind, AuthType::OAuth2ClientCredentials) && a.token_url.is_none() {
            return Err(invalid("oauth2-client-credentials needs token_url".into()));
        }
        if a.attach.header.is_some() == a.attach.query.is_some() {
            return Err(invalid(format!(
                "auth `{kind_name}`: attach needs exactly one of header or query"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for q in &a.questions {
            if !seen.insert(q.id.as_str()) {
                return Err(invalid(format!("duplicate question id `{}`", q.id)));
            }
            if q.kind == QuestionType::Select && q.options.is_empty() {
                return Err(invalid(format!(
                    "select question `{}` has no options",
                    q.id
                )));
            }
        }
        auth.push(AuthMethod {
            kind,
            default: kind == default_kind,
            base_url: a.base_url,
            authorize_url: a.authorize_url,
            token_url: a.token_url,
            scopes: a.scopes,
            user_scopes: a.user_scopes,
            scope_separator: a.scope_separator.unwrap_or_else(|| " ".into()),
            authorize_params: a.authorize_params,
            pkce: a.pkce,
            token_auth: a.token_auth,
            body_format: a.body_format,
            token_metadata: a.token_metadata,
            callback_metadata: a.callback_metadata,
            identity: a.identity,
            native: a.native,
            attach: a.attach,
            markdown: a.markdown,
            questions: a.questions,
            check: a.check,
        });
    }
    if !auth.iter().any(|a| a.default) {
        return Err(invalid(format!(
            "default_auth `{default_kind}` has no auth table"
        )));
    }
    auth.sort_by_key(|a| (!a.default, a.kind));
    let color = def.color.unwrap_or_else(|| "#334155".into());
    if !(color.len() == 7
        && color.starts_with('#')
        && color[1..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid(format!("color `{color}` is not #RRGGBB")));
    }
    for h in &def.rate_limit_headers {
        let ok = match (&h.remaining, &h.usage) {
            (Some(_), None) => h.key.is_none(),
            (None, Some(_)) => h.key.is_some() && h.window_ms.is_none() && h.reset.is_none(),
            _ => false,
        };
        if !ok || h.wait_secs == 0 || h.wait_secs > 86_400 {
            return Err(invalid(
                "rate_limit_headers: each entry is either `remaining` (with `window_ms` or `reset`) or `usage` with `key`, and `wait_secs` from 1 to 86400".into(),
            ));
        }
    }
    if let Some(i) = def.sync_interval_secs
        && !(60..=30 * 86_400).contains(&i)
    {
        return Err(invalid(format!(
            "sync_interval_secs {i} is outside 60..=2592000"
        )));
    }
    Ok(Integration {
        id,
        name: def.name,
        category: def.category,
        categories,
        color,
        base_url: def.base_url,
        rate_limit: def.rate_limit,
        rate_limit_headers: def.rate_limit_headers,
        sync_interval_secs: def.sync_interval_secs,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_every_seed_integration() {
        let c = Catalog::builtin();
        for id in [
            "salesforce",
            "hubspot",
            "zoho",
            "pipedrive",
            "outreach",
            "apollo",
            "salesloft",
            "snovio",
            "slack",
            "teams",
            "chatwoot",
            "mailchimp",
            "customerio",
            "aircall",
            "dialpad",
            "ringcentral",
            "google",
            "microsoft365",
            "sandbox",
        ] {
            let i = c.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(i.auth.iter().filter(|a| a.default).count(), 1, "{id}");
            assert!(i.auth[0].default);
        }
        assert_eq!(
            c.get("snovio").unwrap().default_auth().kind,
            AuthType::OAuth2ClientCredentials
        );
        let chatwoot = c.get("chatwoot").unwrap().default_auth();
        assert!(chatwoot.questions.iter().any(|q| q.id == "instanceUrl"));
        assert!(chatwoot.questions.iter().any(|q| q.id == "accountId"));
    }

    #[test]
    fn overrides_merge_by_id_and_add_new_entries() {
        let c = Catalog::with_overrides(
            r#"
            [integrations.chatwoot]
            base_url = "http://127.0.0.1:3000/api/v1/accounts/{{answers.accountId}}"
            [integrations.hubspot.auth.oauth2]
            token_url = "http://127.0.0.1:9/token"
            [integrations.acme]
            name = "Acme CRM"
            category = "crm"
            base_url = "http://127.0.0.1:9"
            [integrations.acme.auth.apiKey]
            attach = { header = "X-Key", value = "{{credential.apiKey}}" }
            "#,
        )
        .unwrap();
        assert!(
            c.get("chatwoot")
                .unwrap()
                .base_url
                .starts_with("http://127.0.0.1:3000")
        );
        let hs = c.get("hubspot").unwrap();
        let oauth = hs.auth_method(AuthType::OAuth2).unwrap();
        assert_eq!(oauth.token_url.as_deref(), Some("http://127.0.0.1:9/token"));
        // untouched fields survive the merge
        assert_eq!(
            oauth.authorize_url.as_deref(),
            Some("https://app.hubspot.com/oauth/authorize")
        );
        assert_eq!(c.get("acme").unwrap().default_auth().kind, AuthType::ApiKey);
    }

    #[test]
    fn invalid_overrides_say_what_is_wrong() {
        let err = Catalog::with_overrides("[integrations.x]\nname='X'\ncategory='nope'\nbase_url='u'\n[integrations.x.auth.apiKey]\nattach={header='a', value='b'}").unwrap_err();
        assert!(err.to_string().contains("unknown category"), "{err}");
        let err = Catalog::with_overrides("[integrations.hubspot]\nbogus = 1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Catalog::with_overrides("not toml [").unwrap_err();
        assert!(matches!(err, CatalogError::Parse { .. }));
    }
}
