//! Webhook subscriptions in the three spellings (seed `POST /webhooks`,
//! Vessel v2 `/webhooks/{create,find,list,delete}`, Vessel v1
//! `/connection/webhook`), plus rotation, messages, attempts and replay.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_store::{AttemptFilter, MessageFilter, WebhookAttempt, WebhookEndpoint, WebhookMessage};
use berth_webhooks::{EndpointChange, NewEndpoint, events, flavor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::AppState;
use crate::error::{ApiError, V1, V2};
use crate::extract::{ApiEnv, Body};
use crate::models::{Envelope, ErrorBody, TimeBound, V1ErrorBody, v2};

type Res<T> = Result<Json<Envelope<T>>, ApiError<V2>>;

/// Platform routes, without prefix; the caller mounts them bare and at `/api`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create_seed))
        .route("/webhooks/create", post(create_v2))
        .route("/webhooks/list", post(list))
        .route("/webhooks/find", post(find))
        .route("/webhooks/update", post(update))
        .route("/webhooks/delete", post(delete))
        .route("/webhooks/rotate-secret", post(rotate_secret))
        .route("/webhooks/event-types/list", post(event_types))
        .route("/webhooks/messages/list", post(list_messages))
        .route("/webhooks/messages/replay", post(replay))
        .route("/webhooks/attempts/list", post(list_attempts))
}

/// The v1 per-connection webhook.
pub fn v1_routes() -> Router<AppState> {
    Router::new().route(
        "/connection/webhook",
        get(v1_get).post(v1_set).delete(v1_delete),
    )
}

fn iso(ms: i64) -> String {
    events::iso(ms)
}

/// A webhook endpoint: the seed's `{id, url, event, createdAt}`, Vessel
/// v2's `{id, projectId, url, type, createdTime}`, and Berth's additions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookOut {
    pub id: String,
    pub url: String,
    /// The event filter (several are joined with commas); see `events`.
    pub event: String,
    /// Every event filter: an event type, a prefix wildcard (`object.crm.*`) or `*`.
    pub events: Vec<String>,
    pub created_at: String,
    pub created_time: String,
    pub project_id: String,
    /// Always `unified` (Vessel v2).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `berth` (seed `/webhooks`), `v2` (`/webhooks/create`) or `v1` (`/connection/webhook`):
    /// the payload shape and the `x-vessel-*` headers it gets.
    pub flavor: String,
    pub description: Option<String>,
    /// When set, only events of these connections are sent.
    pub connection_ids: Option<Vec<String>>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// While a rotated-out secret still signs (both signatures are sent).
    pub previous_secret_expires_at: Option<String>,
    /// The signing secret (`whsec_...`): returned only when created or rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookOut {
    fn new(e: &WebhookEndpoint, project_id: &str, secret: Option<&Zeroizing<String>>) -> Self {
        let events: Vec<String> = serde_json::from_str(&e.filters).unwrap_or_default();
        let now = berth_connections::now_ms();
        Self {
            id: e.id.clone(),
            url: e.url.clone(),
            event: events.join(","),
            events,
            created_at: iso(e.created_at),
            created_time: iso(e.created_at),
            project_id: project_id.to_string(),
            kind: "unified",
            flavor: e.flavor.clone(),
            description: e.description.clone(),
            connection_ids: e
                .connection_ids
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok()),
            disabled: e.disabled_at.is_some(),
            disabled_reason: e.disabled_reason.clone(),
            previous_secret_expires_at: e.previous_secret_until.filter(|u| *u > now).map(iso),
            secret: secret.map(|s| s.to_string()),
        }
    }
}

/// `POST /webhooks` and `/webhooks/create` bodies.
#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct CreateWebhookIn {
    /// https URL (http and internal addresses only with
    /// `dangerous_allow_private_webhook_targets`).
    pub url: Option<String>,
    /// One event filter (seed spelling).
    pub event: Option<String>,
    /// Several event filters.
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// Only these connections' events.
    pub connection_ids: Option<Vec<String>>,
    /// Create disabled.
    pub disabled: Option<bool>,
}

impl CreateWebhookIn {
    fn filters(&self) -> Option<Vec<String>> {
        match (&self.event, &self.events) {
            (None, None) => None,
            (e, es) => Some(
                e.iter()
                    .cloned()
                    .chain(es.iter().flatten().cloned())
                    .collect(),
            ),
        }
    }

    fn url(&self) -> Result<String, ApiError<V2>> {
        self.url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request("INVALID_BODY", "url is required"))
    }
}

fn api_token(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get("x-vessel-api-token")
        .and_then(|v| v.to_str().ok())
        .map(|v| Zeroizing::new(v.trim().to_string()))
}

/// Create a webhook (seed 000): `{url, event}` → the webhook with its
/// signing secret, shown only here.
///
/// Payload: `{id, type, timestamp, connectionId, data}`, signed per
/// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[utoipa::path(post, path = "/webhooks", tag = "webhooks",
    request_body = CreateWebhookIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhookOut>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_seed(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<CreateWebhookIn, V2>,
) -> Res<WebhookOut> {
    let url = input.url()?;
    let filters = input.filters().ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_BODY",
            "event is required (an event type, `object.crm.*` or `*`)",
        )
    })?;
    let (e, secret) = state
        .webhooks
        .create(
            &env,
            NewEndpoint {
                flavor: flavor::BERTH,
                url,
                filters,
                description: input.description,
                connection_ids: input.connection_ids,
                disabled: input.disabled.unwrap_or(false),
                vessel_key: None,
            },
        )
        .await?;
    Ok(v2(WebhookOut::new(&e, &env.project_id, Some(&secret))))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFound {
    pub webhook: WebhookOut,
    /// The signing secret, when just created or rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Create a webhook (Vessel v2): `{url}` → `{webhook}`; events default to
/// Vessel's (`system.sync.initial.complete`, `object.*`).
///
/// Besides the Standard Webhooks headers, deliveries carry Vessel's
/// `x-vessel-project-id`, `x-vessel-timestamp`, `x-vessel-webhook-id` and
/// `x-vessel-webhook-signature` = sha256hex(`{apiToken}:{timestamp}:{body}`).
#[utoipa::path(post, path = "/webhooks/create", tag = "webhooks",
    request_body = CreateWebhookIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhookFound>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<CreateWebhookIn, V2>,
) -> Res<WebhookFound> {
    let url = input.url()?;
    let filters = input
        .filters()
        .unwrap_or_else(|| vec!["system.sync.initial.complete".into(), "object.*".into()]);
    let (e, secret) = state
        .webhooks
        .create(
            &env,
            NewEndpoint {
                flavor: flavor::V2,
                url,
                filters,
                description: input.description,
                connection_ids: input.connection_ids,
                disabled: input.disabled.unwrap_or(false),
                vessel_key: api_token(&headers),
            },
        )
        .await?;
    Ok(v2(WebhookFound {
        webhook: WebhookOut::new(&e, &env.project_id, Some(&secret)),
        secret: Some(secret.to_string()),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WebhooksOut {
    pub webhooks: Vec<WebhookOut>,
}

/// List the environment's webhooks (all flavors).
#[utoipa::path(post, path = "/webhooks/list", tag = "webhooks",
    request_body(content = Option<Object>, content_type = "application/json"),
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhooksOut>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(_input, ..): Body<Value, V2>,
) -> Res<WebhooksOut> {
    let all = state.webhooks.list(&env, None).await?;
    Ok(v2(WebhooksOut {
        webhooks: all
            .iter()
            .map(|e| WebhookOut::new(e, &env.project_id, None))
            .collect(),
    }))
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct WebhookIdIn {
    pub id: Option<String>,
}

fn require(id: Option<String>, name: &str) -> Result<String, ApiError<V2>> {
    id.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("INVALID_BODY", format!("{name} is required")))
}

/// Find one webhook.
#[utoipa::path(post, path = "/webhooks/find", tag = "webhooks",
    request_body = WebhookIdIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhookFound>), (status = 404, body = ErrorBody)))]
pub async fn find(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<WebhookIdIn, V2>,
) -> Res<WebhookFound> {
    let e = state.webhooks.get(&env, &require(input.id, "id")?).await?;
    Ok(v2(WebhookFound {
        webhook: WebhookOut::new(&e, &env.project_id, None),
        secret: None,
    }))
}

/// `POST /webhooks/update`: every field but `id` is optional.
#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct UpdateWebhookIn {
    pub id: Option<String>,
    pub url: Option<String>,
    pub event: Option<String>,
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null`: all connections again.
    #[serde(deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub connection_ids: Option<Option<Vec<String>>>,
    /// `true` disables (undelivered messages are dead-lettered), `false` enables.
    pub disabled: Option<bool>,
}

/// Tells an explicit `null` (clear) from an absent field (keep).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Change a webhook's URL, events, description, connections, or enable/disable it.
#[utoipa::path(post, path = "/webhooks/update", tag = "webhooks",
    request_body = UpdateWebhookIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhookFound>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<UpdateWebhookIn, V2>,
) -> Res<WebhookFound> {
    let id = require(input.id, "id")?;
    let filters = match (input.event, input.events) {
        (None, None) => None,
        (e, es) => Some(e.into_iter().chain(es.into_iter().flatten()).collect()),
    };
    let e = state
        .webhooks
        .update(
            &env,
            &id,
            EndpointChange {
                url: input.url,
                filters,
                description: input.description,
                connection_ids: input.connection_ids,
                disabled: input.disabled,
            },
        )
        .await?;
    Ok(v2(WebhookFound {
        webhook: WebhookOut::new(&e, &env.project_id, None),
        secret: None,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct IdOut {
    pub id: String,
}

/// Delete a webhook; its undelivered messages are dead-lettered.
#[utoipa::path(post, path = "/webhooks/delete", tag = "webhooks",
    request_body = WebhookIdIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<IdOut>), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<WebhookIdIn, V2>,
) -> Res<IdOut> {
    let id = require(input.id, "id")?;
    state.webhooks.delete(&env, &id).await?;
    Ok(v2(IdOut { id }))
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct RotateIn {
    pub id: Option<String>,
    /// How long the old secret keeps signing (both signatures are sent):
    /// 0-604800 seconds, default 86400.
    pub overlap_seconds: Option<u64>,
}

/// Rotate a webhook's signing secret. During the overlap every delivery
/// carries a signature by each secret, so receivers can switch at any time.
#[utoipa::path(post, path = "/webhooks/rotate-secret", tag = "webhooks",
    request_body = RotateIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<WebhookFound>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<RotateIn, V2>,
) -> Res<WebhookFound> {
    let id = require(input.id, "id")?;
    let overlap = input.overlap_seconds.unwrap_or(86_400);
    if overlap > 7 * 86_400 {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            "overlapSeconds may be at most 604800 (7 days)",
        ));
    }
    let (e, secret) = state
        .webhooks
        .rotate_secret(&env, &id, Duration::from_secs(overlap))
        .await?;
    Ok(v2(WebhookFound {
        webhook: WebhookOut::new(&e, &env.project_id, Some(&secret)),
        secret: Some(secret.to_string()),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeOut {
    /// An event type or a pattern (`object.<vertical>.<plural>.<action>`, `provider.<integrationId>.<event>`).
    pub name: String,
    pub description: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypesOut {
    pub event_types: Vec<EventTypeOut>,
}

/// The event catalogue.
#[utoipa::path(post, path = "/webhooks/event-types/list", tag = "webhooks",
    request_body(content = Option<Object>, content_type = "application/json"),
    security(("apiToken" = [])),
    responses((status = 200, body = Envelope<EventTypesOut>)))]
pub async fn event_types(
    ApiEnv(..): ApiEnv<V2>,
    Body(_input, ..): Body<Value, V2>,
) -> Res<EventTypesOut> {
    let mut out: Vec<EventTypeOut> = events::EVENT_TYPES
        .iter()
        .map(|(n, d)| EventTypeOut {
            name: n.to_string(),
            description: d.to_string(),
        })
        .collect();
    for (v, plurals) in events::OBJECTS {
        out.push(EventTypeOut {
            name: format!("object.{v}.<{}>.<created|updated|deleted>", plurals.join("|")),
            description: format!("A {v} record changed in the synced cache; v2 endpoints get `data: {{id}}`, v1 endpoints an OBJECT_CHANGE with the full record."),
        });
    }
    out.push(EventTypeOut {
        name: "provider.<integrationId>.<event>".into(),
        description: "A provider's own webhook, forwarded.".into(),
    });
    Ok(v2(EventTypesOut { event_types: out }))
}

// ---- messages and attempts ----------------------------------------------------

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ListMessagesIn {
    pub webhook_id: Option<String>,
    /// pending, delivering, retry, delivered or dead.
    pub status: Option<String>,
    pub message_id: Option<String>,
    pub cursor: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOut {
    /// The message id: the event id, also sent as `webhook-id`.
    pub id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub connection_id: Option<String>,
    /// pending, delivering, retry, delivered or dead (dead-lettered).
    pub status: String,
    /// Attempts in the current schedule (a replay starts a new one).
    pub attempts: i64,
    pub next_attempt_time: Option<String>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_time: String,
    pub delivered_time: Option<String>,
    /// The event's data.
    pub payload: Value,
}

impl From<WebhookMessage> for MessageOut {
    fn from(m: WebhookMessage) -> Self {
        let waiting = matches!(m.state.as_str(), "pending" | "retry");
        Self {
            id: m.event_id,
            webhook_id: m.endpoint_id,
            event_type: m.event_type,
            connection_id: m.connection_id,
            status: m.state,
            attempts: m.attempts,
            next_attempt_time: m.next_attempt_at.filter(|_| waiting).map(iso),
            last_status_code: m.last_status,
            last_error: m.last_error,
            created_time: iso(m.created_at),
            delivered_time: m.delivered_at.map(iso),
            payload: serde_json::from_str(&m.payload).unwrap_or(Value::Null),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagesOut {
    pub messages: Vec<MessageOut>,
    pub next_page_cursor: Option<String>,
}

/// The keyset position a signed cursor names, if one was given.
fn decode_cursor(
    state: &AppState,
    scope: &str,
    cursor: Option<&str>,
) -> Result<Option<i64>, ApiError<V2>> {
    match cursor.filter(|c| !c.is_empty()) {
        Some(c) => Ok(Some(
            state
                .platform
                .cursors()
                .decode(scope, c)
                .map_err(berth_connections::PlatformError::from)?,
        )),
        None => Ok(None),
    }
}

/// Trims a page fetched with one extra row and signs the next position.
fn next_cursor<T>(
    state: &AppState,
    scope: &str,
    rows: &mut Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> i64,
) -> Option<String> {
    if rows.len() as i64 <= limit {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last()
        .map(|r| state.platform.cursors().encode(scope, &key(r)))
}

const STATES: &[&str] = &["pending", "delivering", "retry", "delivered", "dead"];

fn page_limit(l: Option<i64>) -> i64 {
    l.unwrap_or(100).clamp(1, 500)
}

/// Every message (one event for one endpoint), newest first.
#[utoipa::path(post, path = "/webhooks/messages/list", tag = "webhooks",
    request_body = ListMessagesIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<MessagesOut>), (status = 400, body = ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<ListMessagesIn, V2>,
) -> Res<MessagesOut> {
    if let Some(s) = input.status.as_deref()
        && !STATES.contains(&s)
    {
        return Err(ApiError::bad_request(
            "INVALID_FILTER",
            format!("status `{s}` is not one of {}", STATES.join(", ")),
        ));
    }
    let scope = format!("{}/webhook-messages", env.id);
    let before = decode_cursor(&state, &scope, input.cursor.as_deref())?;
    let limit = page_limit(input.limit);
    let mut rows = state
        .webhooks
        .list_messages(
            &env,
            &MessageFilter {
                endpoint_id: input.webhook_id.as_deref().filter(|s| !s.is_empty()),
                state: input.status.as_deref(),
                event_id: input.message_id.as_deref().filter(|s| !s.is_empty()),
                before_seq: before,
                limit: limit + 1,
            },
        )
        .await?;
    let next = next_cursor(&state, &scope, &mut rows, limit, |r| r.seq);
    Ok(v2(MessagesOut {
        messages: rows.into_iter().map(MessageOut::from).collect(),
        next_page_cursor: next,
    }))
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ListAttemptsIn {
    pub webhook_id: Option<String>,
    pub message_id: Option<String>,
    pub cursor: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptOut {
    pub id: String,
    pub webhook_id: String,
    pub message_id: String,
    pub time: String,
    /// `scheduled` or `replay`.
    pub trigger: String,
    /// `success` or `failed`.
    pub outcome: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
    /// The first KiB of the receiver's answer.
    pub response_excerpt: Option<String>,
}

impl From<WebhookAttempt> for AttemptOut {
    fn from(a: WebhookAttempt) -> Self {
        Self {
            id: format!("atmpt_{}", a.id),
            webhook_id: a.endpoint_id,
            message_id: a.event_id,
            time: iso(a.attempted_at),
            trigger: a.trigger,
            outcome: a.outcome,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            response_excerpt: a.response_excerpt,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptsOut {
    pub attempts: Vec<AttemptOut>,
    pub next_page_cursor: Option<String>,
}

/// Every delivery attempt, newest first.
#[utoipa::path(post, path = "/webhooks/attempts/list", tag = "webhooks",
    request_body = ListAttemptsIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<AttemptsOut>), (status = 400, body = ErrorBody)))]
pub async fn list_attempts(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<ListAttemptsIn, V2>,
) -> Res<AttemptsOut> {
    let scope = format!("{}/webhook-attempts", env.id);
    let before = decode_cursor(&state, &scope, input.cursor.as_deref())?;
    let limit = page_limit(input.limit);
    let mut rows = state
        .webhooks
        .list_attempts(
            &env,
            &AttemptFilter {
                endpoint_id: input.webhook_id.as_deref().filter(|s| !s.is_empty()),
                event_id: input.message_id.as_deref().filter(|s| !s.is_empty()),
                before_id: before,
                limit: limit + 1,
            },
        )
        .await?;
    let next = next_cursor(&state, &scope, &mut rows, limit, |r| r.id);
    Ok(v2(AttemptsOut {
        attempts: rows.into_iter().map(AttemptOut::from).collect(),
        next_page_cursor: next,
    }))
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ReplayIn {
    pub webhook_id: Option<String>,
    /// One message to re-send; or omit it and give `since`.
    pub message_id: Option<String>,
    /// Re-send every failed (dead or waiting to retry) message created since
    /// then: Unix milliseconds or RFC 3339.
    pub since: Option<TimeBound>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayOut {
    /// How many messages were scheduled.
    pub replayed: u64,
}

/// Re-send one message, or all failed messages of an endpoint since a
/// time. Same message id (`webhook-id`); new attempts are recorded with
/// trigger `replay`.
#[utoipa::path(post, path = "/webhooks/messages/replay", tag = "webhooks",
    request_body = ReplayIn, security(("apiToken" = [])),
    responses((status = 200, body = Envelope<ReplayOut>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V2>,
    Body(input, ..): Body<ReplayIn, V2>,
) -> Res<ReplayOut> {
    let webhook_id = require(input.webhook_id, "webhookId")?;
    match (input.message_id.filter(|m| !m.is_empty()), input.since) {
        (Some(m), None) => {
            state.webhooks.replay(&env, &webhook_id, &m).await?;
            Ok(v2(ReplayOut { replayed: 1 }))
        }
        (None, Some(since)) => {
            let since = match since {
                TimeBound::Millis(ms) => ms,
                TimeBound::Text(s) => chrono::DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.timestamp_millis())
                    .map_err(|_| {
                        ApiError::bad_request(
                            "INVALID_BODY",
                            "since must be Unix milliseconds or an RFC 3339 time",
                        )
                    })?,
            };
            let n = state
                .webhooks
                .replay_failed(&env, &webhook_id, since)
                .await?;
            Ok(v2(ReplayOut { replayed: n }))
        }
        _ => Err(ApiError::bad_request(
            "INVALID_BODY",
            "give exactly one of messageId or since",
        )),
    }
}

// ---- v1 -----------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Webhook {
    pub webhook_id: String,
    pub connection_id: String,
    pub webhook_url: String,
    pub created_time: String,
    /// The Standard Webhooks signing secret, returned only when created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct V1WebhookOut {
    pub webhook: V1Webhook,
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct V1WebhookQuery {
    pub access_token: Option<String>,
    pub webhook_id: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct V1WebhookUrl {
    pub webhook_url: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct V1WebhookIn {
    pub access_token: Option<String>,
    pub webhook: Option<V1WebhookUrl>,
    pub webhook_id: Option<String>,
}

fn v1_out(
    e: &WebhookEndpoint,
    connection_id: &str,
    secret: Option<&Zeroizing<String>>,
) -> V1WebhookOut {
    V1WebhookOut {
        webhook: V1Webhook {
            webhook_id: e.id.clone(),
            connection_id: connection_id.to_string(),
            webhook_url: e.url.clone(),
            created_time: iso(e.created_at),
            secret: secret.map(|s| s.to_string()),
        },
    }
}

fn v1_require(v: Option<String>, name: &str) -> Result<String, ApiError<V1>> {
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("INVALID_BODY", format!("{name} is required")))
}

/// Get a connection's webhook (v1).
#[utoipa::path(get, path = "/connection/webhook", tag = "v1",
    params(("accessToken" = String, Query), ("webhookId" = Option<String>, Query)),
    security(("v1ApiToken" = [])),
    responses((status = 200, body = V1WebhookOut), (status = 404, body = V1ErrorBody)))]
pub async fn v1_get(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    q: Result<Query<V1WebhookQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<V1WebhookOut>, ApiError<V1>> {
    let q = q.map(|q| q.0).unwrap_or_default();
    let token = v1_require(q.access_token, "accessToken")?;
    let conn = state
        .platform
        .connection_for_access_token(&env, &token)
        .await?;
    let e = state
        .webhooks
        .v1_for_connection(&env, &conn.id)
        .await?
        .filter(|e| {
            q.webhook_id
                .as_deref()
                .is_none_or(|w| w.is_empty() || w == e.id)
        })
        .ok_or_else(|| ApiError::not_found("this connection has no such webhook"))?;
    Ok(Json(v1_out(&e, &conn.id, None)))
}

/// Set a connection's webhook (v1; one per connection: a second call
/// points the same webhook at the new URL).
///
/// Deliveries: `{eventId, type: OBJECT_CHANGE|STATUS_CHANGE, data}` with
/// `x-vessel-timestamp`, `x-vessel-connection-id` and `x-vessel-signature`
/// = sha256hex(accessToken + body + timestamp), plus Standard Webhooks headers.
#[utoipa::path(post, path = "/connection/webhook", tag = "v1",
    request_body = V1WebhookIn, security(("v1ApiToken" = [])),
    responses((status = 200, body = V1WebhookOut), (status = 400, body = V1ErrorBody), (status = 401, body = V1ErrorBody)))]
pub async fn v1_set(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    Body(input, ..): Body<V1WebhookIn, V1>,
) -> Result<Json<V1WebhookOut>, ApiError<V1>> {
    let token = Zeroizing::new(v1_require(input.access_token, "accessToken")?);
    let url = v1_require(
        input.webhook.and_then(|w| w.webhook_url),
        "webhook.webhookUrl",
    )?;
    let conn = state
        .platform
        .connection_for_access_token(&env, &token)
        .await?;
    let (e, secret) = state
        .webhooks
        .v1_upsert(&env, &conn.id, token, &url)
        .await?;
    Ok(Json(v1_out(&e, &conn.id, secret.as_ref())))
}

/// Delete a connection's webhook (v1).
#[utoipa::path(delete, path = "/connection/webhook", tag = "v1",
    request_body = V1WebhookIn, security(("v1ApiToken" = [])),
    responses((status = 200, body = Object), (status = 404, body = V1ErrorBody)))]
pub async fn v1_delete(
    State(state): State<AppState>,
    ApiEnv(env, ..): ApiEnv<V1>,
    q: Result<Query<V1WebhookQuery>, axum::extract::rejection::QueryRejection>,
    Body(input, ..): Body<V1WebhookIn, V1>,
) -> Result<Json<Value>, ApiError<V1>> {
    let q = q.map(|q| q.0).unwrap_or_default();
    let token = v1_require(input.access_token.or(q.access_token), "accessToken")?;
    let webhook_id = v1_require(input.webhook_id.or(q.webhook_id), "webhookId")?;
    let conn = state
        .platform
        .connection_for_access_token(&env, &token)
        .await?;
    let e = state
        .webhooks
        .v1_for_connection(&env, &conn.id)
        .await?
        .filter(|e| e.id == webhook_id)
        .ok_or_else(|| ApiError::not_found("this connection has no such webhook"))?;
    state.webhooks.delete(&env, &e.id).await?;
    Ok(Json(serde_json::json!({})))
}
