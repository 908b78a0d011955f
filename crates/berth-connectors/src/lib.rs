//! Connectors: the code for one provider each, behind one trait per
//! vertical.
//!
//! A connector knows a provider's paths, pagination, incremental filters,
//! tombstones and field mapping, and nothing else: it never touches the
//! store or the server, and it reaches the provider only through the
//! [`Provider`] it is handed, which the sync engine backs with the outbound
//! layer (credentials, refresh, budgets, retries, request log). Adding a
//! provider is a module here plus one line in [`crm`].
#![forbid(unsafe_code)]

use serde_json::{Map, Value};

pub mod hubspot;
pub mod salesforce;
pub mod sandbox;

/// A call to the provider, relative to the connection's base URL.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Extra headers (credentials and content type are added by the
    /// outbound layer).
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// A read sent as POST (a search): the outbound layer's retry policy
    /// may repeat it. Connectors never retry on their own.
    pub read_only: bool,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            read_only: false,
        }
    }

    pub fn with_body(method: &'static str, path: impl Into<String>, body: Value) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Some(body),
            read_only: false,
        }
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self {
            method: "DELETE",
            ..Self::get(path)
        }
    }

    /// Marks a POST that only reads (see [`Request::read_only`]).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn query(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<Value, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ConnectorError::Decode(format!(
                "the provider answered {} with invalid JSON: {e}",
                self.status
            ))
        })
    }
}

/// Why a call did not get a provider answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("rate limited; retry in {retry_after_secs}s: {message}")]
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    /// The connection's credentials were refused and cannot be refreshed.
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Unavailable(String),
    /// Berth refused to send the call because of what the caller asked
    /// for (an id that cannot be in a provider path): the caller's fault,
    /// a 4xx, never a provider outage.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The provider refused the request (4xx); `errors` are its field
    /// errors as `{message, errorCode, fields}`.
    #[error("the provider refused the request ({status}): {message}")]
    Provider {
        status: u16,
        message: String,
        errors: Vec<Value>,
    },
    #[error("not found at the provider")]
    NotFound,
    #[error("{0}")]
    Unsupported(String),
    /// The provider's answer could not be understood.
    #[error("{0}")]
    Decode(String),
}

/// What the connector is handed to reach its provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    async fn send(&self, req: Request) -> Result<Response, CallError>;
}

/// One provider record in canonical unified form.
#[derive(Debug, Clone)]
pub struct NativeRecord {
    pub native_id: String,
    pub created_time: Option<i64>,
    pub modified_time: Option<i64>,
    /// A tombstone: the provider says the record was deleted.
    pub deleted: bool,
    /// Canonical unified fields (see `berth_unified::crm`), with
    /// `associations` holding native ids.
    pub data: Map<String, Value>,
    /// The provider's record as it came.
    pub native: Value,
}

/// Which page of which records to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only records modified at or after this time (ms).
    pub since: Option<i64>,
    /// The provider cursor from the previous page.
    pub cursor: Option<String>,
    /// Also return tombstones of deleted records.
    pub include_deleted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<NativeRecord>,
    /// `None` when this was the last page.
    pub next_cursor: Option<String>,
    /// The number of records the listing has, when the provider says.
    pub total: Option<i64>,
}

/// One field a provider has on an object, for `/details`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMeta {
    /// The provider's field name (the key in `additional` / `$native`).
    pub key: String,
    /// Its display name.
    pub name: String,
    /// Vessel's `Field.type` (`string`, `number`, `singleselect`, ...).
    pub kind: &'static str,
    /// `(key, label)` of each allowed value, for select fields.
    pub options: Option<Vec<(String, String)>>,
    pub is_array: bool,
    pub custom: bool,
    pub required: bool,
    pub creatable: bool,
    pub updatable: bool,
}

/// Vessel's custom field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomKind {
    SingleSelect,
    Number,
    Text,
    Currency,
    Percentage,
}

impl CustomKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "singleselect" => Self::SingleSelect,
            "number" => Self::Number,
            "text" => Self::Text,
            "currency" => Self::Currency,
            "percentage" => Self::Percentage,
            _ => return None,
        })
    }
}

/// A custom field to create (v1 `customField`, v2 `custom-fields/create`).
#[derive(Debug, Clone)]
pub struct CustomFieldSpec {
    /// The caller's key (`customKey`); otherwise derived from `name`.
    pub key: Option<String>,
    pub name: String,
    pub kind: CustomKind,
    /// `(key, name)` of each option (required for single selects).
    pub options: Vec<(String, String)>,
    /// Provider fields merged into the provider's request (v2 `$native`).
    pub native: Map<String, Value>,
}

/// What `/unifications/crm/info` tells about the connected account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrgInfo {
    pub url: Option<String>,
    pub org_id: Option<String>,
    pub user_id: Option<String>,
    pub currency: Option<String>,
}

/// A CRM connector.
#[async_trait::async_trait]
pub trait CrmConnector: Send + Sync {
    fn integration_id(&self) -> &'static str;

    /// The unified objects (store names) this provider has, in sync order.
    fn objects(&self) -> &'static [&'static str];

    /// Whether listings of `object` can return tombstones (otherwise deletes
    /// are found by mark and sweep on full runs).
    fn tombstones(&self, object: &str) -> bool;

    /// Whether the provider fills association `key` of `object` on both
    /// sides itself (HubSpot reads contact↔company from either end). Other
    /// associations are shown on the other side too by deriving reverse
    /// links in the store (a Salesforce Note's ParentId becomes the
    /// contact's `noteIds`).
    fn two_way(&self, _object: &str, _key: &str) -> bool {
        false
    }

    async fn list(
        &self,
        p: &dyn Provider,
        object: &str,
        req: &ListRequest,
    ) -> Result<Page, ConnectorError>;

    async fn find(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<Option<NativeRecord>, ConnectorError>;

    /// Creates from canonical fields (scalar association ids such as
    /// `accountId` and `$native` raw fields allowed); returns the record as
    /// the provider stored it.
    async fn create(
        &self,
        p: &dyn Provider,
        object: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError>;

    async fn update(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError>;

    async fn delete(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<(), ConnectorError>;

    /// The provider's own fields of `object` (live, never cached), custom
    /// ones marked; empty when the provider has no metadata API.
    async fn fields(
        &self,
        _p: &dyn Provider,
        _object: &str,
    ) -> Result<Vec<FieldMeta>, ConnectorError> {
        Ok(Vec::new())
    }

    /// The deal stages `(key, label)` of `pipeline` (every pipeline's when
    /// `None`), for the `stage` options of the deal details; `None` when the
    /// provider has no such notion. An unknown pipeline is `NotFound`.
    async fn deal_stages(
        &self,
        _p: &dyn Provider,
        _pipeline: Option<&str>,
    ) -> Result<Option<Vec<(String, String)>>, ConnectorError> {
        Ok(None)
    }

    /// The pipeline a synced deal's raw record says it is in.
    fn deal_pipeline(&self, _native: &Value) -> Option<String> {
        None
    }

    /// Creates a custom field on `object`; returns its key.
    async fn create_custom_field(
        &self,
        _p: &dyn Provider,
        object: &str,
        _spec: &CustomFieldSpec,
    ) -> Result<String, ConnectorError> {
        Err(ConnectorError::Unsupported(format!(
            "{} does not support creating custom fields on {object}",
            self.integration_id()
        )))
    }

    /// Replaces the options of the custom field `key` on `object`; returns
    /// its key.
    async fn update_custom_field(
        &self,
        _p: &dyn Provider,
        object: &str,
        _key: &str,
        _options: &[(String, String)],
    ) -> Result<String, ConnectorError> {
        Err(ConnectorError::Unsupported(format!(
            "{} does not support updating custom fields on {object}",
            self.integration_id()
        )))
    }

    /// The connected account: its URL, org and user ids, default currency.
    /// `known` is what the connection learned when it was made; the
    /// connector completes it from the provider.
    async fn info(&self, _p: &dyn Provider, known: &OrgInfo) -> Result<OrgInfo, ConnectorError> {
        Ok(known.clone())
    }
}

/// The CRM connector of an integration, if Berth has one.
pub fn crm(integration_id: &str) -> Option<&'static dyn CrmConnector> {
    match integration_id {
        "sandbox" => Some(&sandbox::Sandbox),
        "hubspot" => Some(&hubspot::HubSpot),
        "salesforce" => Some(&salesforce::Salesforce),
        _ => None,
    }
}

/// A native id as one URL path segment (percent-encoded, so an id can
/// never add segments or a query).
pub(crate) fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Parses an RFC 3339 time into milliseconds.
pub fn ms(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}
