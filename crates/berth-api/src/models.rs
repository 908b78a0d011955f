//! Wire shapes (DTOs). Only these types derive serde for the HTTP API; the
//! domain and store types stay free of wire concerns.

use berth_catalog::{Integration, QuestionType};
use berth_store::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The platform envelope: `{"result": ...}`.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T> {
    pub result: T,
}

pub fn v2<T>(result: T) -> axum::Json<Envelope<T>> {
    axum::Json(Envelope { result })
}

/// Platform error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always null on errors.
    pub result: Option<Value>,
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    pub code: String,
}

/// v1 error body.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1ErrorBody {
    pub message: String,
    pub error_code: String,
}

pub(crate) fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json_object(s: Option<&str>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(s).ok())
}

// ---- integrations ----------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct QuestionOptionOut {
    pub value: String,
    pub label: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

#[derive(Serialize, ToSchema)]
pub struct QuestionOut {
    pub id: String,
    pub label: String,
    /// `text` or `select` (the two types Vessel's modal knows).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `password` or `url` refine a `text` question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<QuestionOptionOut>,
}

#[derive(Serialize, ToSchema)]
pub struct AuthDisplay {
    pub markdown: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuthMethodOut {
    /// `oauth2`, `apiKey`, `basic` or `oauth2-client-credentials`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub default: bool,
    pub questions: Vec<QuestionOut>,
    pub display: AuthDisplay,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationDisplay {
    pub name: String,
    #[serde(rename = "iconURI")]
    pub icon_uri: String,
    pub color: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationOut {
    pub integration_id: String,
    pub id: String,
    pub display: IntegrationDisplay,
    /// `crm`, `engagement`, `chat`, `marketing-automation`, `dialer`, `email`, `calendar`.
    pub category: String,
    pub categories: Vec<String>,
    pub auth: Vec<AuthMethodOut>,
}

pub fn icon_url(public_url: &str, id: &str) -> String {
    format!("{}/icons/{id}.svg", public_url.trim_end_matches('/'))
}

impl IntegrationOut {
    pub fn new(i: &Integration, public_url: &str) -> Self {
        Self {
            integration_id: i.id.clone(),
            id: i.id.clone(),
            display: IntegrationDisplay {
                name: i.name.clone(),
                icon_uri: icon_url(public_url, &i.id),
                color: i.color.clone(),
            },
            category: i.category.clone(),
            categories: i.categories.clone(),
            auth: i
                .auth
                .iter()
                .map(|a| AuthMethodOut {
                    kind: a.kind.as_str(),
                    default: a.default,
                    scopes: a.scopes.clone(),
                    display: AuthDisplay {
                        markdown: a.markdown.clone().unwrap_or_default(),
                    },
                    questions: a
                        .questions
                        .iter()
                        .map(|q| QuestionOut {
                            id: q.id.clone(),
                            label: q.label.clone(),
                            kind: if q.kind == QuestionType::Select {
                                "select"
                            } else {
                                "text"
                            },
                            format: match q.kind {
                                QuestionType::Password => Some("password"),
                                QuestionType::Url => Some("url"),
                                _ => None,
                            },
                            required: q.required,
                            default: q.default.clone(),
                            options: q
                                .options
                                .iter()
                                .map(|o| QuestionOptionOut {
                                    value: o.value.clone(),
                                    label: o.label.clone(),
                                    default: o.default,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationsOut {
    pub integrations: Vec<IntegrationOut>,
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationFound {
    pub integration: IntegrationOut,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct IntegrationFilters {
    pub ids: Option<Vec<String>>,
    pub category: Option<String>,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ListIntegrationsIn {
    pub filters: Option<IntegrationFilters>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FindIn {
    /// The id to find (`integrationId` / `connectionId` are accepted too).
    #[serde(alias = "integrationId", alias = "connectionId")]
    pub id: String,
}

// ---- sessions and auth -----------------------------------------------------------

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionTokenIn {
    /// Bind the session to one integration (the modal skips the picker).
    pub integration_id: Option<String>,
    /// Your own identifier of the end user or organisation; stored on the connection.
    pub external_user_id: Option<String>,
    /// Free-form JSON object stored on the connection.
    pub metadata: Option<Value>,
    /// Browser origins the connect modal may post results to.
    pub allowed_origins: Option<Vec<String>>,
    /// Vessel's synced-cache options; accepted for compatibility.
    pub connection: Option<Value>,
    /// Re-authenticate this existing connection in place (same id) instead
    /// of creating a new one.
    pub connection_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionTokenOut {
    pub session_token: String,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct StartAuthIn {
    pub integration_id: Option<String>,
    pub auth_type: Option<String>,
    pub oauth_app_id: Option<String>,
    /// Connect-form answers, keyed by question id.
    pub answers: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartAuthOut {
    /// Where to send the user for OAuth; null when the connection is complete.
    #[serde(rename = "oauthURL")]
    pub oauth_url: Option<String>,
    /// Null until the connection exists (OAuth: after the callback).
    pub connection_id: Option<String>,
    pub integration_id: String,
    /// v1 link sessions only: the token `onSuccess` receives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_token: Option<String>,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct AccessTokenIn {
    /// The session token, if not sent in `x-vessel-session-token`.
    pub session_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenOut {
    pub access_token: String,
    pub connection_id: String,
    pub integration_id: String,
}

// ---- connections ---------------------------------------------------------------

/// A connection in the platform (v2) shape, with Vessel's real v2 spellings too.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionOut {
    pub connection_id: String,
    pub id: String,
    pub project_id: String,
    pub integration_id: String,
    /// `NEW_CONNECTION`, `INITIAL_SYNCED` or `READY`.
    pub status: String,
    /// `initial-sync-in-progress` or `initial-sync-complete`.
    pub sync_state: &'static str,
    pub auth_type: String,
    /// `ok`, or `needs_reauth` with `authError`.
    pub auth_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_error: Option<String>,
    pub external_user_id: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: String,
    pub created_time: String,
    /// Sync progress per object, and the schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub sync: Option<Value>,
}

impl ConnectionOut {
    pub fn with_sync(mut self, sync: Value) -> Self {
        self.sync = Some(sync);
        self
    }

    pub fn new(c: &Connection, project_id: &str) -> Self {
        Self {
            connection_id: c.id.clone(),
            id: c.id.clone(),
            project_id: project_id.to_string(),
            integration_id: c.integration_id.clone(),
            status: c.status.clone(),
            sync_state: if c.status == berth_connections::status::NEW_CONNECTION {
                "initial-sync-in-progress"
            } else {
                "initial-sync-complete"
            },
            auth_type: c.auth_type.clone(),
            auth_state: c.auth_state.clone(),
            auth_error: c.auth_error.clone(),
            external_user_id: c.external_user_id.clone(),
            metadata: json_object(c.metadata.as_deref()),
            created_at: iso(c.created_at),
            created_time: iso(c.created_at),
            sync: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsOut {
    pub connections: Vec<ConnectionOut>,
    pub next_page_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionFound {
    pub connection: ConnectionOut,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct ListConnectionsIn {
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 100).
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct SuccessOut {
    pub success: bool,
}

// ---- v1 ------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct LinkTokenIn {
    pub integration_id: Option<String>,
    pub external_user_id: Option<String>,
    pub metadata: Option<Value>,
    pub allowed_origins: Option<Vec<String>>,
    /// Re-authenticate this existing connection in place.
    pub connection_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkTokenOut {
    pub link_token: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkExchangeIn {
    pub public_token: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkExchangeOut {
    pub connection_id: String,
    pub access_token: String,
    pub integration_id: String,
    pub native_org_id: Option<String>,
    pub native_user_id: Option<String>,
    #[serde(rename = "nativeOrgURL")]
    pub native_org_url: Option<String>,
}

/// A connection in the v1 shape.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionV1 {
    pub integration_id: String,
    pub connection_id: String,
    pub created_time: String,
    pub status: String,
    #[serde(rename = "nativeOrgURL")]
    pub native_org_url: Option<String>,
    pub last_activity_date: Option<String>,
    pub external_user_id: Option<String>,
    pub metadata: Option<Value>,
}

impl From<&Connection> for ConnectionV1 {
    fn from(c: &Connection) -> Self {
        Self {
            integration_id: c.integration_id.clone(),
            connection_id: c.id.clone(),
            created_time: iso(c.created_at),
            status: c.status.clone(),
            native_org_url: c.native_org_url.clone(),
            last_activity_date: c.last_activity_at.map(iso),
            external_user_id: c.external_user_id.clone(),
            metadata: json_object(c.metadata.as_deref()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionV1Out {
    pub connection: ConnectionV1,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionsV1Out {
    pub connections: Vec<ConnectionV1>,
}

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionIdIn {
    pub connection_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationV1 {
    pub integration_id: String,
    pub name: String,
    #[serde(rename = "iconURL")]
    pub icon_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationsV1Out {
    pub integrations: Vec<IntegrationV1>,
}

// ---- OAuth apps --------------------------------------------------------------------

#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct CreateOAuthAppIn {
    pub integration_id: String,
    pub client_id: String,
    /// Stored in the vault; never returned.
    pub client_secret: String,
    /// Overrides the catalog's default scopes when not empty.
    pub scopes: Option<Vec<String>>,
}

/// An OAuth app; the client secret is never returned.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthAppOut {
    pub id: String,
    pub integration_id: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub created_time: Option<String>,
    /// True for a default app from the server configuration.
    pub configured: bool,
}

impl OAuthAppOut {
    pub fn new(a: &berth_connections::OAuthAppView) -> Self {
        Self {
            id: a.id.clone(),
            integration_id: a.integration_id.clone(),
            client_id: a.client_id.clone(),
            scopes: a.scopes.clone(),
            created_time: (a.created_at > 0).then(|| iso(a.created_at)),
            configured: a.configured,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthAppFound {
    pub oauth_app: OAuthAppOut,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthAppsOut {
    pub oauth_apps: Vec<OAuthAppOut>,
}

#[derive(Serialize, ToSchema)]
pub struct IdOut {
    pub id: String,
}

// ---- connect modal -------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckPermissionsOut {
    pub valid: bool,
    pub error_message: Option<String>,
}

/// The state of a connect session, as the modal sees it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatusOut {
    /// `created` (waiting for the user), `completed` or `exchanged`.
    pub state: String,
    /// `session` (v2) or `link` (v1).
    pub kind: String,
    pub integration_id: Option<String>,
    pub connection_id: Option<String>,
    /// Set when this session re-authenticates an existing connection.
    pub reauth_connection_id: Option<String>,
    pub allowed_origins: Vec<String>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// v1 link sessions, once completed: what `onSuccess` receives.
    pub public_token: Option<String>,
    pub expires_at: String,
}

// ---- passthrough ------------------------------------------------------------------------

/// Seed 000 passthrough request.
#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct PassthroughIn {
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// Path on the provider's API, relative to its base URL.
    pub path: String,
    /// JSON body (seed spelling).
    pub body: Option<Value>,
    /// JSON body (Vessel v2 spelling).
    pub json: Option<Value>,
    pub query: Option<Map<String, Value>>,
    pub headers: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct NativeResponse {
    pub headers: Map<String, Value>,
    pub body: Value,
    pub url: String,
    #[serde(rename = "statusCode")]
    pub status_code: u16,
}

#[derive(Serialize, ToSchema)]
pub struct PassthroughV2Out {
    #[serde(rename = "$native")]
    pub native: NativeResponse,
}

/// Vessel v1 passthrough request (`POST /crm/passthrough`).
#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default)]
pub struct V1PassthroughIn {
    #[serde(rename = "accessToken")]
    pub access_token: String,
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
    pub query: Option<Map<String, Value>>,
    pub headers: Option<Map<String, Value>>,
}

/// Vessel v1 passthrough response.
#[derive(Serialize, ToSchema)]
pub struct V1PassthroughOut {
    pub headers: Map<String, Value>,
    /// The provider path called (credentials never appear here).
    pub url: String,
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    pub body: Value,
}

/// A time bound: Unix milliseconds or an RFC 3339 string.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
#[serde(untagged)]
pub enum TimeBound {
    Millis(i64),
    Text(String),
}

/// `POST /logs/list` filters.
#[derive(Serialize, Deserialize, Default, ToSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct ListLogsIn {
    pub connection_id: Option<String>,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status_class: Option<String>,
    /// `provider` (the provider answered), `berth` (Berth refused before
    /// sending), or `network` (no usable answer).
    pub layer: Option<String>,
    /// Inclusive lower time bound.
    pub since: Option<TimeBound>,
    /// Exclusive upper time bound.
    pub until: Option<TimeBound>,
    pub cursor: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<i64>,
}

/// One request-log entry.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogOut {
    /// Grows with time.
    pub id: String,
    pub connection_id: Option<String>,
    pub integration_id: String,
    /// ISO 8601.
    pub time: String,
    pub method: String,
    /// Query values are redacted.
    pub path: String,
    /// The status the caller got.
    pub status: i32,
    pub latency_ms: i64,
    pub request_bytes: Option<i64>,
    pub response_bytes: Option<i64>,
    pub retries: i32,
    pub layer: String,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsOut {
    pub logs: Vec<LogOut>,
    pub next_page_cursor: Option<String>,
}

impl From<berth_store::RequestLog> for LogOut {
    fn from(r: berth_store::RequestLog) -> Self {
        LogOut {
            id: r.id.to_string(),
            connection_id: r.connection_id,
            integration_id: r.integration_id,
            time: iso(r.created_at),
            method: r.method,
            path: r.path,
            status: r.status,
            latency_ms: r.latency_ms,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            retries: r.retries,
            layer: r.layer,
            error: r.error,
        }
    }
}
