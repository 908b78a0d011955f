//! Outbound webhooks: endpoints (subscriptions) in three flavors, the
//! signed, at-least-once delivery of the events the rest of Berth writes
//! to the outbox, and the record of every message and attempt.
//!
//! - `events`: the catalogue, filters and per-flavor payloads;
//! - `signing`: Standard Webhooks and Vessel's v1/v2 signatures;
//! - `ssrf`: which targets are allowed;
//! - `dispatcher`: claims due messages, delivers, records, retries.
//!
//! The store's `events_fan_out` trigger turns each event into messages in
//! the transaction that writes the event, so no change can commit without
//! the messages it owes.
#![forbid(unsafe_code)]

pub mod dispatcher;
pub mod events;
pub mod metrics;
pub mod signing;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use berth_connections::{PlatformError, now_ms, secrets};
use berth_store::{
    AttemptFilter, Environment, MessageFilter, NewWebhookEndpoint, Store, WebhookAttempt,
    WebhookEndpoint, WebhookEndpointUpdate, WebhookMessage,
};
use berth_vault::Vault;
use zeroize::Zeroizing;

pub use dispatcher::Dispatcher;

type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// Endpoint flavors: which payload and which extra headers they get.
pub mod flavor {
    /// Seed 000 `POST /webhooks`: Standard Webhooks only.
    pub const BERTH: &str = "berth";
    /// Vessel v2 `/webhooks/create`: v2 payloads and `x-vessel-*` headers.
    pub const V2: &str = "v2";
    /// Vessel v1 `/connection/webhook`: v1 payloads and headers, one connection.
    pub const V1: &str = "v1";
}

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Allow http and internal addresses (development and tests only).
    pub dangerous_allow_private_targets: bool,
    /// A 2xx within this time is a success.
    pub timeout: Duration,
    /// Delay before each attempt; the first is normally zero. Its length
    /// is the number of attempts before a message is dead-lettered.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
    /// Deliveries in flight in this process, overall and per endpoint.
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
    /// How often a dispatcher looks for due messages when nothing woke it.
    pub poll_interval: Duration,
    /// Delivery attempts, finished messages and their events older than
    /// this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let m = 60;
        let h = 3600;
        Self {
            dangerous_allow_private_targets: false,
            timeout: Duration::from_secs(15),
            retry_schedule: [0, 5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            disable_after: Duration::from_secs(5 * 24 * h),
            max_in_flight: 512,
            max_in_flight_per_endpoint: 64,
            poll_interval: Duration::from_millis(500),
            retention: Some(Duration::from_secs(30 * 24 * h)),
        }
    }
}

/// A new subscription as the API layer hands it over.
#[derive(Debug, Default)]
pub struct NewEndpoint {
    pub flavor: &'static str,
    pub url: String,
    pub filters: Vec<String>,
    pub description: Option<String>,
    pub connection_ids: Option<Vec<String>>,
    pub disabled: bool,
    /// v1: the connection's access token; v2: the API token.
    pub vessel_key: Option<Zeroizing<String>>,
}

#[derive(Debug, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub filters: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub connection_ids: Option<Option<Vec<String>>>,
    pub disabled: Option<bool>,
}

/// The webhook services. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    vault: Vault,
    config: WebhookConfig,
    metrics: metrics::WebhookMetrics,
}

fn secret_aad(endpoint_id: &str) -> Vec<u8> {
    format!("webhook-secret:{endpoint_id}").into_bytes()
}

fn vessel_key_aad(endpoint_id: &str) -> Vec<u8> {
    format!("webhook-vessel-key:{endpoint_id}").into_bytes()
}

fn not_found(id: &str) -> PlatformError {
    PlatformError::NotFound(format!("no webhook `{id}` in this environment"))
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> PlatformError {
    PlatformError::Internal(Box::new(e))
}

impl Webhooks {
    pub fn new(store: Store, vault: Vault, config: WebhookConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                vault,
                config,
                metrics: Default::default(),
            }),
        }
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn metrics(&self) -> &metrics::WebhookMetrics {
        &self.inner.metrics
    }

    /// Appends the delivery metrics to `out` (OpenMetrics text, no `# EOF`),
    /// with the backlog read from the store now. If the store cannot be
    /// read, the backlog gauges keep their last values and the failure is
    /// logged: a scrape still gets the counters.
    pub async fn encode_metrics(&self, out: &mut String) {
        let now = now_ms();
        match self.store().webhook_backlog(now).await {
            Ok(b) => self.inner.metrics.set_backlog(&b, now),
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook backlog for /metrics"),
        }
        self.inner.metrics.encode_into(out);
    }

    /// Checks a target URL: https (unless the dangerous switch is on), no
    /// credentials in it, and no internal address now.
    pub async fn check_url(&self, raw: &str) -> Result<url::Url> {
        let bad = |m: String| PlatformError::bad_request("INVALID_WEBHOOK_URL", m);
        let u = url::Url::parse(raw.trim())
            .map_err(|e| bad(format!("`{raw}` is not an absolute URL: {e}")))?;
        let dangerous = self.inner.config.dangerous_allow_private_targets;
        match u.scheme() {
            "https" => {}
            "http" if dangerous => {}
            s => {
                return Err(bad(format!(
                    "webhook URLs must use https (got `{s}`); plain http is allowed only with dangerous_allow_private_webhook_targets"
                )));
            }
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "webhook URLs may not carry credentials; verify the signature instead".into(),
            ));
        }
        if u.fragment().is_some() {
            return Err(bad("webhook URLs may not have a #fragment".into()));
        }
        let host = match u.host() {
            Some(h) => h,
            None => return Err(bad(format!("`{raw}` has no host"))),
        };
        if raw.len() > 2048 {
            return Err(bad("webhook URLs may be at most 2048 characters".into()));
        }
        if dangerous {
            return Ok(u);
        }
        let ip = match host {
            url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip {
            if let Some(why) = ssrf::forbidden_ip(ip) {
                return Err(bad(format!(
                    "{ip} is a {why} address; webhooks may not target it"
                )));
            }
        } else if let Some(name) = u.host_str() {
            let port = u.port_or_known_default().unwrap_or(443);
            ssrf::resolve_allowed(name, port)
                .await
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(u)
    }

    /// A filter's connections must be this environment's: an id of
    /// another environment (or none at all) would filter on nothing, and
    /// storing it would tell the caller it exists.
    async fn check_connections(&self, env: &Environment, ids: &Option<Vec<String>>) -> Result<()> {
        Self::check_connection_count(ids)?;
        for id in ids.iter().flatten() {
            if self
                .inner
                .store
                .get_connection(&env.id, id)
                .await?
                .is_none()
            {
                return Err(PlatformError::bad_request(
                    "INVALID_CONNECTION_ID",
                    format!(
                        "connectionIds: no connection `{}` in this environment",
                        id.escape_debug()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_connection_count(ids: &Option<Vec<String>>) -> Result<()> {
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Err(PlatformError::bad_request(
                    "INVALID_BODY",
                    "connectionIds may not be empty; omit it for all connections",
                ));
            }
            if ids.len() > 1000 {
                return Err(PlatformError::bad_request(
                    "INVALID_BODY",
                    "at most 1000 connectionIds",
                ));
            }
        }
        Ok(())
    }

    /// Creates an endpoint; the secret is returned here only.
    pub async fn create(
        &self,
        env: &Environment,
        n: NewEndpoint,
    ) -> Result<(WebhookEndpoint, Zeroizing<String>)> {
        let url = self.check_url(&n.url).await?;
        let filters = events::parse_filters(&n.filters)
            .map_err(|m| PlatformError::bad_request("INVALID_EVENT_TYPE", m))?;
        self.check_connections(env, &n.connection_ids).await?;
        if let Some(d) = &n.description
            && d.len() > 1000
        {
            return Err(PlatformError::bad_request(
                "INVALID_BODY",
                "description may be at most 1000 characters",
            ));
        }
        let id = secrets::new_id("v_webhook");
        let secret = signing::new_secret();
        let vault = &self.inner.vault;
        let secret_sealed = vault.seal(secret.as_bytes(), &secret_aad(&id));
        let vessel_key_sealed = n
            .vessel_key
            .as_ref()
            .map(|k| vault.seal(k.as_bytes(), &vessel_key_aad(&id)));
        self.inner
            .store
            .create_webhook_endpoint(&NewWebhookEndpoint {
                id: &id,
                environment_id: &env.id,
                flavor: n.flavor,
                url: url.as_str(),
                description: n.description.as_deref(),
                filters: &filters,
                connection_ids: n.connection_ids.as_deref(),
                secret_sealed: &secret_sealed,
                vessel_key_sealed: vessel_key_sealed.as_deref(),
                disabled: n.disabled,
                now: now_ms(),
            })
            .await?;
        let e = self.get(env, &id).await?;
        Ok((e, secret))
    }

    pub async fn list(
        &self,
        env: &Environment,
        flavor: Option<&str>,
    ) -> Result<Vec<WebhookEndpoint>> {
        Ok(self
            .inner
            .store
            .list_webhook_endpoints(&env.id, flavor)
            .await?)
    }

    pub async fn get(&self, env: &Environment, id: &str) -> Result<WebhookEndpoint> {
        self.inner
            .store
            .get_webhook_endpoint(&env.id, id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    pub async fn update(
        &self,
        env: &Environment,
        id: &str,
        c: EndpointChange,
    ) -> Result<WebhookEndpoint> {
        let url = match &c.url {
            Some(u) => Some(self.check_url(u).await?.to_string()),
            None => None,
        };
        let filters = match &c.filters {
            Some(f) => Some(
                events::parse_filters(f)
                    .map_err(|m| PlatformError::bad_request("INVALID_EVENT_TYPE", m))?,
            ),
            None => None,
        };
        if let Some(ids) = &c.connection_ids {
            self.check_connections(env, ids).await?;
        }
        let conn_ids = c.connection_ids.as_ref().map(|o| o.as_deref());
        let ok = self
            .inner
            .store
            .update_webhook_endpoint(
                &env.id,
                id,
                &WebhookEndpointUpdate {
                    url: url.as_deref(),
                    description: c.description.as_ref().map(|d| d.as_deref()),
                    filters: filters.as_deref(),
                    connection_ids: conn_ids,
                    disabled: c.disabled,
                    vessel_key_sealed: None,
                },
                now_ms(),
            )
            .await?;
        if !ok {
            return Err(not_found(id));
        }
        self.get(env, id).await
    }

    pub async fn delete(&self, env: &Environment, id: &str) -> Result<()> {
        if self
            .inner
            .store
            .delete_webhook_endpoint(&env.id, id, now_ms())
            .await?
        {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// A new secret; the old one keeps signing (both signatures are sent)
    /// for `overlap`, so receivers can switch without failing any message.
    pub async fn rotate_secret(
        &self,
        env: &Environment,
        id: &str,
        overlap: Duration,
    ) -> Result<(WebhookEndpoint, Zeroizing<String>)> {
        let secret = signing::new_secret();
        let sealed = self.inner.vault.seal(secret.as_bytes(), &secret_aad(id));
        let now = now_ms();
        let ok = self
            .inner
            .store
            .rotate_webhook_secret(&env.id, id, &sealed, now + overlap.as_millis() as i64, now)
            .await?;
        if !ok {
            return Err(not_found(id));
        }
        Ok((self.get(env, id).await?, secret))
    }

    // ---- v1: one endpoint per connection ------------------------------------

    pub async fn v1_for_connection(
        &self,
        env: &Environment,
        connection_id: &str,
    ) -> Result<Option<WebhookEndpoint>> {
        Ok(self
            .inner
            .store
            .v1_webhook_for_connection(&env.id, connection_id)
            .await?)
    }

    /// Sets the connection's v1 webhook URL: creates the endpoint, or
    /// points the existing one (same id, same secret) at the new URL.
    pub async fn v1_upsert(
        &self,
        env: &Environment,
        connection_id: &str,
        access_token: Zeroizing<String>,
        url: &str,
    ) -> Result<(WebhookEndpoint, Option<Zeroizing<String>>)> {
        if let Some(existing) = self.v1_for_connection(env, connection_id).await? {
            let checked = self.check_url(url).await?;
            let sealed = self
                .inner
                .vault
                .seal(access_token.as_bytes(), &vessel_key_aad(&existing.id));
            self.inner
                .store
                .update_webhook_endpoint(
                    &env.id,
                    &existing.id,
                    &WebhookEndpointUpdate {
                        url: Some(checked.as_str()),
                        vessel_key_sealed: Some(&sealed),
                        ..Default::default()
                    },
                    now_ms(),
                )
                .await?;
            return Ok((self.get(env, &existing.id).await?, None));
        }
        let (e, secret) = self
            .create(
                env,
                NewEndpoint {
                    flavor: flavor::V1,
                    url: url.to_string(),
                    filters: vec!["connection.status_changed".into(), "object.*".into()],
                    connection_ids: Some(vec![connection_id.to_string()]),
                    vessel_key: Some(access_token),
                    ..Default::default()
                },
            )
            .await?;
        Ok((e, Some(secret)))
    }

    // ---- messages and attempts ------------------------------------------------

    pub async fn list_messages(
        &self,
        env: &Environment,
        f: &MessageFilter<'_>,
    ) -> Result<Vec<WebhookMessage>> {
        Ok(self.inner.store.list_webhook_messages(&env.id, f).await?)
    }

    pub async fn list_attempts(
        &self,
        env: &Environment,
        f: &AttemptFilter<'_>,
    ) -> Result<Vec<WebhookAttempt>> {
        Ok(self.inner.store.list_webhook_attempts(&env.id, f).await?)
    }

    /// Re-sends one message to one endpoint (same message id).
    pub async fn replay(
        &self,
        env: &Environment,
        endpoint_id: &str,
        message_id: &str,
    ) -> Result<()> {
        self.get(env, endpoint_id).await?;
        if self
            .inner
            .store
            .replay_webhook_message(&env.id, endpoint_id, message_id, now_ms())
            .await?
        {
            Ok(())
        } else {
            Err(PlatformError::NotFound(format!(
                "no message `{message_id}` for webhook `{endpoint_id}` (or it is being delivered right now)"
            )))
        }
    }

    /// Re-sends every failed message of an endpoint created since `since`.
    pub async fn replay_failed(
        &self,
        env: &Environment,
        endpoint_id: &str,
        since: i64,
    ) -> Result<u64> {
        let e = self.get(env, endpoint_id).await?;
        if e.disabled_at.is_some() {
            return Err(PlatformError::Conflict {
                code: "WEBHOOK_DISABLED",
                message: format!("webhook `{endpoint_id}` is disabled; enable it before replaying"),
            });
        }
        Ok(self
            .inner
            .store
            .replay_failed_webhook_messages(&env.id, endpoint_id, since, now_ms())
            .await?)
    }

    /// Deletes the history past the retention period (see
    /// [`WebhookConfig::retention`]); returns the rows deleted.
    pub async fn purge_history(&self, now: i64) -> Result<u64> {
        let Some(keep) = self.inner.config.retention else {
            return Ok(0);
        };
        let cutoff = now - keep.as_millis() as i64;
        Ok(self.inner.store.purge_webhook_history(cutoff, 5000).await?)
    }

    /// Re-seals every endpoint's secrets under the vault's active key (part
    /// of `berth vault rotate-key`, so `--prune` never strands a secret).
    pub async fn reseal_secrets(&self) -> Result<u64> {
        let vault = &self.inner.vault;
        let mut after = String::new();
        let mut count = 0;
        loop {
            let page = self.inner.store.webhook_endpoints_page(&after, 200).await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for mut e in page {
                for _ in 0..100 {
                    let stale = vault.needs_reseal(&e.secret_sealed)
                        || e.previous_secret_sealed
                            .as_deref()
                            .is_some_and(|s| vault.needs_reseal(s))
                        || e.vessel_key_sealed
                            .as_deref()
                            .is_some_and(|s| vault.needs_reseal(s));
                    if !stale {
                        break;
                    }
                    let re = |sealed: &str, aad: &[u8]| -> Result<String> {
                        let plain = vault.open(sealed, aad).map_err(internal)?;
                        Ok(vault.seal(&plain, aad))
                    };
                    let secret = re(&e.secret_sealed, &secret_aad(&e.id))?;
                    let prev = match &e.previous_secret_sealed {
                        Some(s) => Some(re(s, &secret_aad(&e.id))?),
                        None => None,
                    };
                    let vk = match &e.vessel_key_sealed {
                        Some(s) => Some(re(s, &vessel_key_aad(&e.id))?),
                        None => None,
                    };
                    if self
                        .inner
                        .store
                        .reseal_webhook_endpoint(&e, &secret, prev.as_deref(), vk.as_deref())
                        .await?
                    {
                        count += 1;
                        break;
                    }
                    match self
                        .inner
                        .store
                        .get_webhook_endpoint(&e.environment_id, &e.id)
                        .await?
                    {
                        Some(fresh) => e = fresh,
                        None => break,
                    }
                }
            }
        }
        Ok(count)
    }

    /// Opens an endpoint's secrets for signing.
    pub(crate) fn open_keys(&self, e: &WebhookEndpoint, now: i64) -> Result<dispatcher::Keys> {
        let vault = &self.inner.vault;
        let open_secret = |sealed: &str| -> Result<Zeroizing<Vec<u8>>> {
            let s = vault.open(sealed, &secret_aad(&e.id)).map_err(internal)?;
            let text = std::str::from_utf8(&s).map_err(internal)?;
            signing::secret_key(text).ok_or_else(|| {
                PlatformError::Internal("a stored webhook secret is not base64".into())
            })
        };
        let mut keys = vec![open_secret(&e.secret_sealed)?];
        if let (Some(prev), Some(until)) = (&e.previous_secret_sealed, e.previous_secret_until)
            && until > now
        {
            keys.push(open_secret(prev)?);
        }
        let vessel_key = match &e.vessel_key_sealed {
            Some(s) => {
                let k = vault.open(s, &vessel_key_aad(&e.id)).map_err(internal)?;
                Some(Zeroizing::new(
                    String::from_utf8(k.to_vec()).map_err(internal)?,
                ))
            }
            None => None,
        };
        Ok(dispatcher::Keys {
            signing: keys,
            vessel_key,
            previous_until: e.previous_secret_until,
        })
    }
}
