//! Backs a connector's [`Provider`] with the platform's outbound path, so
//! sync and unified writes get the same credentials, refresh-on-401, rate
//! budgets, retries and request log as passthrough.

use berth_connections::{Platform, PlatformError, ProviderCall};
use berth_connectors::{CallError, Provider, Request, Response};
use berth_outbound::Method;
use berth_store::Connection;

pub struct ConnProvider<'a> {
    platform: &'a Platform,
    conn: &'a Connection,
}

impl<'a> ConnProvider<'a> {
    pub fn new(platform: &'a Platform, conn: &'a Connection) -> Self {
        Self { platform, conn }
    }
}

#[async_trait::async_trait]
impl Provider for ConnProvider<'_> {
    async fn send(&self, req: Request) -> Result<Response, CallError> {
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| CallError::Other(format!("bad method {}", req.method)))?;
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        headers.extend(req.headers);
        let body = req.body.map(|b| {
            headers.push(("content-type".into(), "application/json".into()));
            b.to_string().into_bytes()
        });
        let call = ProviderCall {
            method,
            path: req.path,
            query: req.query,
            headers,
            body,
            read_only: req.read_only,
        };
        match self.platform.call_provider(self.conn, &call).await {
            Ok(r) if r.status == 429 => {
                let wait = r
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    // Without Retry-After, assume the commonest rolling
                    // window (ten seconds: HubSpot's burst limit); a longer
                    // limit just answers 429 again and backs off further.
                    .unwrap_or(10);
                Err(CallError::RateLimited {
                    retry_after_secs: wait,
                    message: "the provider answered 429".into(),
                })
            }
            Ok(r) if r.status == 401 => Err(CallError::Auth(
                "the provider refused the connection's credentials (401)".into(),
            )),
            Ok(r) => Ok(Response {
                status: r.status,
                body: r.body,
            }),
            Err(PlatformError::RateLimited {
                retry_after_secs,
                message,
            }) => Err(CallError::RateLimited {
                retry_after_secs,
                message,
            }),
            Err(PlatformError::Conflict { message, .. })
            | Err(PlatformError::InvalidCredentials(message)) => Err(CallError::Auth(message)),
            Err(PlatformError::ProviderUnavailable(m)) | Err(PlatformError::ProviderTimeout(m)) => {
                Err(CallError::Unavailable(m))
            }
            Err(PlatformError::BadRequest { code, message }) => {
                Err(CallError::Refused { code, message })
            }
            Err(e) => Err(CallError::Other(e.to_string())),
        }
    }
}
