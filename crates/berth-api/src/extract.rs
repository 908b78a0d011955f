//! Extractors: request bodies parsed leniently, and tenancy/auth resolved
//! from headers, each rejecting in its API family's error shape.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use berth_connections::AuthSession;
use berth_store::Environment;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::{ApiError, Family};

/// A JSON body, parsed whatever the `content-type` says (Vessel's own
/// examples send `text/plain` or nothing), with an empty body read as `{}`.
pub struct Body<T, F>(pub T, pub PhantomData<F>);

impl<T, F> FromRequest<AppState> for Body<T, F>
where
    T: DeserializeOwned,
    F: Family,
{
    type Rejection = ApiError<F>;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let limited = http_body_util::Limited::new(&mut body, crate::MAX_BODY_BYTES);
        let bytes = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                drain(body).await;
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!(
                        "request body is larger than {} bytes",
                        crate::MAX_BODY_BYTES
                    ),
                ));
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "INVALID_BODY",
                    format!("could not read the request body: {e}"),
                ));
            }
        };
        parse_body(&bytes).map(|t| Body(t, PhantomData))
    }
}

/// Reads and discards what is left of a refused body (up to 16 MiB, for
/// up to 5 s), so the client, still sending, reads the refusal rather than
/// a connection reset: closing a socket with unread data resets it.
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut left: usize = 16 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => break,
            }
        }
    })
    .await;
}

pub fn parse_body<T: DeserializeOwned, F>(bytes: &[u8]) -> Result<T, ApiError<F>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("INVALID_BODY", "request body is not UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(
            "INVALID_BODY",
            format!("request body is not valid for this endpoint: {e}"),
        )
    })
}

fn header<'a>(parts: &'a Parts, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| parts.headers.get(*n))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The request's API token, or the family's error naming its header.
fn api_token_header<F: Family>(parts: &Parts) -> Result<&str, ApiError<F>> {
    header(parts, F::API_TOKEN_HEADERS).ok_or_else(|| {
        ApiError::unauthorized(
            "MISSING_API_TOKEN",
            format!(
                "missing API token: send it in the {} header",
                F::API_TOKEN_HEADERS[0]
            ),
        )
    })
}

/// The environment of the request's API token (required).
pub struct ApiEnv<F>(pub Environment, pub PhantomData<F>);

impl<F: Family> FromRequestParts<AppState> for ApiEnv<F> {
    type Rejection = ApiError<F>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = api_token_header::<F>(parts)?;
        let env = state.platform.authenticate_api_token(token).await?;
        Ok(ApiEnv(env, PhantomData))
    }
}

/// The API token's environment if a token was sent; a sent but invalid
/// token is still rejected.
pub struct MaybeApiEnv<F>(pub Option<Environment>, pub PhantomData<F>);

impl<F: Family> FromRequestParts<AppState> for MaybeApiEnv<F> {
    type Rejection = ApiError<F>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match header(parts, F::API_TOKEN_HEADERS) {
            None => Ok(MaybeApiEnv(None, PhantomData)),
            Some(token) => {
                let env = state.platform.authenticate_api_token(token).await?;
                Ok(MaybeApiEnv(Some(env), PhantomData))
            }
        }
    }
}

pub const SESSION_HEADER: &str = "x-vessel-session-token";
pub const ACCESS_HEADER: &str = "x-vessel-access-token";

/// The raw session-token header, if sent.
pub fn session_token_header(parts: &Parts) -> Option<&str> {
    header(parts, &[SESSION_HEADER])
}

/// A live connect session from `x-vessel-session-token` (required).
pub struct Session<F> {
    pub session: AuthSession,
    _f: PhantomData<F>,
}

impl<F: Family> FromRequestParts<AppState> for Session<F> {
    type Rejection = ApiError<F>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = session_token_header(parts).ok_or_else(|| {
            ApiError::unauthorized(
                "MISSING_SESSION_TOKEN",
                format!("missing session token: send it in the {SESSION_HEADER} header"),
            )
        })?;
        let session = state.platform.session(token).await?;
        check_origin(parts, state, &session)?;
        Ok(Session {
            session,
            _f: PhantomData,
        })
    }
}

/// A session token header that, when present, must be valid.
pub struct MaybeSession<F>(pub Option<AuthSession>, pub PhantomData<F>);

impl<F: Family> FromRequestParts<AppState> for MaybeSession<F> {
    type Rejection = ApiError<F>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match session_token_header(parts) {
            None => Ok(MaybeSession(None, PhantomData)),
            Some(t) => {
                let session = state.platform.session(t).await?;
                check_origin(parts, state, &session)?;
                Ok(MaybeSession(Some(session), PhantomData))
            }
        }
    }
}

/// The raw `x-vessel-access-token` header, if sent.
pub struct AccessTokenHeader(pub Option<String>);

impl FromRequestParts<AppState> for AccessTokenHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(AccessTokenHeader(
            header(parts, &[ACCESS_HEADER]).map(str::to_owned),
        ))
    }
}

/// The raw session token header, if sent (no validation).
pub struct SessionTokenHeader(pub Option<String>);

impl FromRequestParts<AppState> for SessionTokenHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(SessionTokenHeader(
            session_token_header(parts).map(str::to_owned),
        ))
    }
}

/// A session that names allowed origins may only be used from those pages
/// (and from Berth's own modal). Requests without an `Origin` header are
/// server-to-server and pass.
fn check_origin<F: Family>(
    parts: &Parts,
    state: &AppState,
    session: &AuthSession,
) -> Result<(), ApiError<F>> {
    let Some(origin) = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let allowed: Vec<String> = serde_json::from_str(&session.allowed_origins).unwrap_or_default();
    if allowed.is_empty() || allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    let own = url::Url::parse(&state.platform.config().public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    if origin == own {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "ORIGIN_NOT_ALLOWED",
        format!(
            "this session token may not be used from {origin}; it allows {}",
            allowed.join(", ")
        ),
    ))
}

/// The connection of the request's `x-vessel-access-token`, within the API
/// token's environment (both required).
pub struct AccessConnection<F> {
    pub env: Arc<Environment>,
    pub connection: Arc<berth_store::Connection>,
    _f: PhantomData<F>,
}

impl<F: Family> FromRequestParts<AppState> for AccessConnection<F> {
    type Rejection = ApiError<F>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Shared, not copied: this runs on every proxied call.
        let api_token = api_token_header::<F>(parts)?;
        let env = state
            .platform
            .authenticate_api_token_shared(api_token)
            .await?;
        let token = header(parts, &[ACCESS_HEADER]).ok_or_else(|| {
            ApiError::unauthorized(
                "MISSING_ACCESS_TOKEN",
                format!("missing access token: send it in the {ACCESS_HEADER} header"),
            )
        })?;
        let connection = state
            .platform
            .connection_for_access_token_shared(&env, token)
            .await?;
        Ok(AccessConnection {
            env,
            connection,
            _f: PhantomData,
        })
    }
}

/// Reads the body of a GET, HEAD, DELETE or OPTIONS request before its
/// handler runs. Those handlers do not read bodies, and a connection closed
/// with unread request bytes is reset, which cut the answer off for the
/// client (Vessel's v1 callers send GETs with JSON bodies). Up to the body
/// limit the body is buffered and handed on; past it the answer is 413,
/// after draining. Other methods pass through untouched, with no boxing, as
/// the proxy's hot path runs through here.
#[derive(Clone, Copy, Default)]
pub struct ReadBodylessBodies;

impl<S> tower::Layer<S> for ReadBodylessBodies {
    type Service = ReadBodyless<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadBodyless(inner)
    }
}

#[derive(Clone)]
pub struct ReadBodyless<S>(S);

type BoxedResponse = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
            + Send,
    >,
>;

impl<S> tower::Service<Request> for ReadBodyless<S>
where
    S: tower::Service<
            Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<S::Future, BoxedResponse>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use axum::http::{Method, header};
        let bodyless = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
        let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if !(bodyless && has_body) {
            return futures_util::future::Either::Left(self.0.call(req));
        }
        // The clone that was made ready is the one called.
        let clone = self.0.clone();
        let mut inner = std::mem::replace(&mut self.0, clone);
        futures_util::future::Either::Right(Box::pin(async move {
            use axum::response::IntoResponse;
            use http_body_util::BodyExt;
            let (parts, mut body) = req.into_parts();
            let limited = http_body_util::Limited::new(&mut body, crate::MAX_BODY_BYTES);
            let bytes = match limited.collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    drain(body).await;
                    return Ok(ApiError::<crate::error::V2>::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "PAYLOAD_TOO_LARGE",
                        format!(
                            "request body is larger than {} bytes",
                            crate::MAX_BODY_BYTES
                        ),
                    )
                    .into_response());
                }
                Err(e) => {
                    return Ok(ApiError::<crate::error::V2>::bad_request(
                        "INVALID_BODY",
                        format!("could not read the request body: {e}"),
                    )
                    .into_response());
                }
            };
            inner
                .call(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }))
    }
}
