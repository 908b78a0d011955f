//! The delivery loop: claim due messages, sign and POST them with bounded
//! concurrency (overall and per endpoint), record every attempt, and
//! schedule retries or dead-letter.
//!
//! Delivery is at-least-once: a message is marked delivered after the
//! receiver's 2xx, in a later batch, so a crash in between sends it again
//! (same `webhook-id`). A claim is a lease: a dispatcher that dies leaves
//! its messages to be claimed again when the lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_connections::{now_ms, secrets};
use berth_store::{AttemptResult, ClaimedMessage, Event, NewEvent, WebhookEndpoint};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::{Webhooks, events, signing, ssrf};

/// Opened signing material of one endpoint.
pub struct Keys {
    /// The current key first; the previous one during a rotation overlap.
    pub signing: Vec<Zeroizing<Vec<u8>>>,
    pub vessel_key: Option<Zeroizing<String>>,
    pub previous_until: Option<i64>,
}

struct Target {
    updated_at: i64,
    keys: Keys,
    project_id: String,
}

/// Bytes of a receiver's answer kept with the attempt.
const EXCERPT_BYTES: usize = 1024;
/// Messages claimed per round trip to the store.
const CLAIM_BATCH: usize = 500;

pub struct Dispatcher {
    hooks: Webhooks,
    client: reqwest::Client,
    targets: Mutex<HashMap<String, Arc<Target>>>,
    projects: Mutex<HashMap<String, String>>,
    in_flight: Mutex<HashMap<String, usize>>,
    permits: Arc<Semaphore>,
    freed: Notify,
    results: mpsc::Sender<AttemptResult>,
}

impl Dispatcher {
    /// Starts the dispatcher and its result writer; both stop (after the
    /// deliveries in flight finish or time out) when `cancel` fires.
    pub fn spawn(hooks: Webhooks, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let cfg = hooks.config().clone();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("Berth-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !cfg.dangerous_allow_private_targets {
            builder = builder.dns_resolver(ssrf::resolver());
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are not delivered");
                return tokio::spawn(async {});
            }
        };
        let (tx, rx) = mpsc::channel(8192);
        let d = Arc::new(Dispatcher {
            hooks: hooks.clone(),
            client,
            targets: Default::default(),
            projects: Default::default(),
            in_flight: Default::default(),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            freed: Notify::new(),
            results: tx,
        });
        let writer = tokio::spawn(write_results(hooks.clone(), rx));
        tokio::spawn(async move {
            d.clone().run(cancel).await;
            // Wait for deliveries in flight, then let the writer drain.
            let all = cfg.max_in_flight as u32;
            let _ = tokio::time::timeout(
                cfg.timeout + Duration::from_secs(2),
                d.permits.acquire_many(all),
            )
            .await;
            drop(d);
            let _ = writer.await;
        })
    }

    fn lease_ms(&self) -> i64 {
        self.hooks.config().timeout.as_millis() as i64 * 2 + 5_000
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let cfg = self.hooks.config().clone();
        let signal = self.hooks.store().outbox_signal();
        let mut backoff = Duration::from_millis(100);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let free = self.permits.available_permits().min(CLAIM_BATCH);
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let busy: Vec<String> = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|(_, n)| **n >= cfg.max_in_flight_per_endpoint)
                    .map(|(k, _)| k.clone())
                    .collect();
                match self
                    .hooks
                    .store()
                    .claim_webhook_messages(now_ms(), self.lease_ms(), free as i64, &busy)
                    .await
                {
                    Ok(c) => {
                        backoff = Duration::from_millis(100);
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook dispatcher cannot claim messages; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = signal.notified() => {}
                    _ = self.freed.notified() => {}
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                }
                continue;
            }
            let full = claimed.len() == free;
            if let Err(e) = self.clone().start(claimed).await {
                tracing::warn!(error = %e, "webhook dispatcher could not start a batch; its messages are retried after the lease");
            }
            if !full {
                // Everything due was taken; wait for more (or for a slot).
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = signal.notified() => {}
                    _ = self.freed.notified() => {}
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                }
            }
        }
    }

    async fn start(
        self: Arc<Self>,
        claimed: Vec<ClaimedMessage>,
    ) -> Result<(), berth_store::StoreError> {
        let store = self.hooks.store();
        let mut event_ids: Vec<String> = claimed.iter().map(|m| m.event_id.clone()).collect();
        event_ids.sort();
        event_ids.dedup();
        let mut endpoint_ids: Vec<String> = claimed.iter().map(|m| m.endpoint_id.clone()).collect();
        endpoint_ids.sort();
        endpoint_ids.dedup();
        let events: HashMap<String, Arc<Event>> = store
            .events_by_ids(&event_ids)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), Arc::new(e)))
            .collect();
        let endpoints: HashMap<String, Arc<WebhookEndpoint>> = store
            .webhook_endpoints_by_ids(&endpoint_ids)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), Arc::new(e)))
            .collect();
        let now = now_ms();
        let mut release = Vec::new();
        for m in claimed {
            let (Some(event), Some(endpoint)) =
                (events.get(&m.event_id), endpoints.get(&m.endpoint_id))
            else {
                self.fail_without_attempt(&m, "the event or endpoint no longer exists")
                    .await;
                continue;
            };
            let target = match self.target(endpoint, now).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, endpoint = %endpoint.id, "cannot open a webhook endpoint's secrets");
                    self.fail_without_attempt(
                        &m,
                        "the endpoint's signing secret cannot be opened (see the server log)",
                    )
                    .await;
                    continue;
                }
            };
            {
                let mut inf = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let n = inf.entry(m.endpoint_id.clone()).or_default();
                if *n >= self.hooks.config().max_in_flight_per_endpoint {
                    release.push(m.seq);
                    continue;
                }
                *n += 1;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.done_with(&m.endpoint_id);
                release.push(m.seq);
                continue;
            };
            let d = self.clone();
            let event = event.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let r = d.deliver(&m, &event, &endpoint, &target).await;
                d.done_with(&m.endpoint_id);
                drop(permit);
                d.freed.notify_one();
                if d.results.send(r).await.is_err() {
                    tracing::warn!(
                        "webhook result writer is gone; the message is retried after its lease"
                    );
                }
            });
        }
        if !release.is_empty() {
            store.release_webhook_messages(&release, now).await?;
        }
        Ok(())
    }

    fn done_with(&self, endpoint_id: &str) {
        let mut inf = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = inf.get_mut(endpoint_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inf.remove(endpoint_id);
            }
        }
    }

    async fn fail_without_attempt(&self, m: &ClaimedMessage, why: &str) {
        let _ = self
            .results
            .send(AttemptResult {
                message_seq: m.seq,
                environment_id: m.environment_id.clone(),
                endpoint_id: m.endpoint_id.clone(),
                event_id: m.event_id.clone(),
                attempted_at: now_ms(),
                replay: m.replay != 0,
                success: false,
                status_code: None,
                latency_ms: 0,
                error: Some(why.into()),
                response_excerpt: None,
                attempts: m.attempts + 1,
                next_attempt_at: None,
            })
            .await;
    }

    async fn target(
        &self,
        e: &WebhookEndpoint,
        now: i64,
    ) -> Result<Arc<Target>, crate::PlatformError> {
        {
            let cache = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = cache.get(&e.id)
                && t.updated_at == e.updated_at
                // The previous secret stops signing when its overlap ends.
                && !(t.keys.signing.len() > 1 && t.keys.previous_until.is_some_and(|u| u <= now))
            {
                return Ok(t.clone());
            }
        }
        let keys = self.hooks.open_keys(e, now)?;
        let project_id = self.project_of(&e.environment_id).await;
        let t = Arc::new(Target {
            updated_at: e.updated_at,
            keys,
            project_id,
        });
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(e.id.clone(), t.clone());
        Ok(t)
    }

    async fn project_of(&self, environment_id: &str) -> String {
        if let Some(p) = self
            .projects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(environment_id)
        {
            return p.clone();
        }
        match self.hooks.store().environment(environment_id).await {
            Ok(Some(env)) => {
                self.projects
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(environment_id.to_string(), env.project_id.clone());
                env.project_id
            }
            _ => String::new(),
        }
    }

    async fn deliver(
        &self,
        m: &ClaimedMessage,
        event: &Event,
        endpoint: &WebhookEndpoint,
        target: &Target,
    ) -> AttemptResult {
        let cfg = self.hooks.config();
        let body = serde_json::to_vec(&events::render(&endpoint.flavor, event)).unwrap_or_default();
        let started = Instant::now();
        let attempted_at = now_ms();
        let outcome = self.post(endpoint, event, target, body, attempted_at).await;
        let latency = started.elapsed();
        let latency_ms = latency.as_millis() as i64;
        let attempts = m.attempts + 1;
        let gone = outcome.status == Some(410);
        let success = outcome.status.is_some_and(|s| (200..300).contains(&s));
        let next_attempt_at = if success || gone {
            None
        } else {
            cfg.retry_schedule
                .get(attempts as usize)
                .map(|d| now_ms() + jitter(*d).as_millis() as i64)
        };
        let m_ = self.hooks.metrics();
        m_.duration.observe(latency.as_secs_f64());
        let outcome_label = match (success, gone, next_attempt_at.is_some()) {
            (true, _, _) => "delivered",
            (_, true, _) => "gone",
            (_, _, true) => "retrying",
            _ => "dead",
        };
        m_.attempts
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome_label,
            })
            .inc();
        if gone {
            self.disable(endpoint, "the receiver answered 410 Gone")
                .await;
        } else if !success
            && let Some(since) = endpoint.failing_since
            && attempted_at - since >= cfg.disable_after.as_millis() as i64
        {
            self.disable(
                endpoint,
                &format!(
                    "every attempt failed for {} hours",
                    cfg.disable_after.as_secs() / 3600
                ),
            )
            .await;
        }
        AttemptResult {
            message_seq: m.seq,
            environment_id: m.environment_id.clone(),
            endpoint_id: m.endpoint_id.clone(),
            event_id: m.event_id.clone(),
            attempted_at,
            replay: m.replay != 0,
            success,
            status_code: outcome.status.map(i64::from),
            latency_ms,
            error: outcome.error,
            response_excerpt: outcome.excerpt,
            attempts,
            next_attempt_at,
        }
    }

    async fn disable(&self, e: &WebhookEndpoint, reason: &str) {
        let payload =
            serde_json::json!({"webhookId": e.id, "url": e.url, "reason": reason}).to_string();
        let now = now_ms();
        let r = self
            .hooks
            .store()
            .disable_webhook_endpoint(
                &e.id,
                reason,
                &NewEvent {
                    id: &secrets::new_id("evt"),
                    environment_id: &e.environment_id,
                    connection_id: None,
                    event_type: "webhook.disabled",
                    payload: &payload,
                    created_at: now,
                },
                now,
            )
            .await;
        match r {
            Ok(true) => {
                self.hooks.metrics().disabled.inc();
                tracing::warn!(endpoint = %e.id, reason, "webhook endpoint disabled")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, endpoint = %e.id, "cannot disable a webhook endpoint")
            }
        }
    }

    async fn post(
        &self,
        endpoint: &WebhookEndpoint,
        event: &Event,
        target: &Target,
        body: Vec<u8>,
        now: i64,
    ) -> Outcome {
        let cfg = self.hooks.config();
        if !cfg.dangerous_allow_private_targets
            && let Some(why) = literal_forbidden(&endpoint.url)
        {
            return Outcome::error(why);
        }
        let ts = now / 1000;
        let signatures: Vec<String> = target
            .keys
            .signing
            .iter()
            .map(|k| signing::standard_signature(k, &event.id, ts, &body))
            .collect();
        let mut req = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signatures.join(" "));
        let vessel_ts = now.to_string();
        match (endpoint.flavor.as_str(), &target.keys.vessel_key) {
            ("v1", Some(token)) => {
                req = req
                    .header("x-vessel-timestamp", &vessel_ts)
                    .header(
                        "x-vessel-signature",
                        signing::vessel_v1_signature(token, &body, &vessel_ts),
                    )
                    .header(
                        "x-vessel-connection-id",
                        event.connection_id.as_deref().unwrap_or_default(),
                    );
            }
            ("v2", Some(token)) => {
                req = req
                    .header("x-vessel-project-id", &target.project_id)
                    .header("x-vessel-timestamp", &vessel_ts)
                    .header("x-vessel-webhook-id", &endpoint.id)
                    .header(
                        "x-vessel-webhook-signature",
                        signing::vessel_v2_signature(token, &vessel_ts, &body),
                    );
            }
            _ => {}
        }
        let send = async {
            let mut resp = req.body(body).send().await?;
            let status = resp.status().as_u16();
            let mut excerpt = Vec::new();
            while excerpt.len() < EXCERPT_BYTES {
                match resp.chunk().await? {
                    Some(c) => {
                        excerpt.extend_from_slice(&c[..c.len().min(EXCERPT_BYTES - excerpt.len())])
                    }
                    None => break,
                }
            }
            Ok::<_, reqwest::Error>((status, excerpt))
        };
        match tokio::time::timeout(cfg.timeout, send).await {
            Err(_) => Outcome::error(format!("no answer within {} s", cfg.timeout.as_secs_f64())),
            Ok(Err(e)) if e.is_timeout() => {
                Outcome::error(format!("no answer within {} s", cfg.timeout.as_secs_f64()))
            }
            Ok(Err(e)) => Outcome::error(describe(e)),
            Ok(Ok((status, excerpt))) => {
                let success = (200..300).contains(&status);
                Outcome {
                    status: Some(status),
                    error: (!success).then(|| format!("the receiver answered {status}")),
                    excerpt: (!excerpt.is_empty())
                        .then(|| String::from_utf8_lossy(&excerpt).into_owned()),
                }
            }
        }
    }
}

struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
}

impl Outcome {
    fn error(e: String) -> Self {
        Outcome {
            status: None,
            error: Some(e),
            excerpt: None,
        }
    }
}

/// The error chain, without the URL (it may carry the customer's secrets).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirects are not followed"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let e = e.without_url();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn literal_forbidden(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let ip = match u.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    ssrf::forbidden_ip(ip).map(|w| format!("refused: {ip} is a {w} address"))
}

fn jitter(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Writes attempt results in batches, one transaction each; a failed write
/// is retried, so an attempt is never silently dropped while the process
/// lives.
async fn write_results(hooks: Webhooks, mut rx: mpsc::Receiver<AttemptResult>) {
    let mut batch = Vec::with_capacity(1024);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(100);
        loop {
            match hooks.store().record_webhook_attempts(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "cannot record webhook attempts; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}
