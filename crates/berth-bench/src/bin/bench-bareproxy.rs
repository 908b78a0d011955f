//! The floor row of `scripts/bench-proxy.sh`: the least a reverse proxy on
//! Berth's stack can cost. It is Berth's HTTP front (`berth::http_server`:
//! thread-per-core serving threads, hyper's server, an axum router) and
//! Berth's outbound layer (`berth_outbound::Outbound`: the per-thread
//! connection pools, timeouts, metrics), and nothing of Berth's own work
//! per call: no token lookup, no request log, no budget, no path checks.
//! It adds the auth header. Berth's proxy row compared with this one is
//! what Berth's own work costs; this row compared with nginx is what the
//! stack costs.
//!
//! `bench-bareproxy LISTEN UPSTREAM`
#![forbid(unsafe_code)]

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_outbound::{OutBody, Outbound, OutboundConfig, OutboundRequest};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18082".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", listener.local_addr()?);
            let outbound = Outbound::new(&OutboundConfig::default())?;
            let threads = std::thread::available_parallelism().map_or(2, usize::from);
            let make_router = || {
                let outbound = outbound.clone();
                let upstream = upstream.clone();
                axum::Router::new().fallback(move |req: Request| {
                    let outbound = outbound.clone();
                    let upstream = upstream.clone();
                    async move { forward(&outbound, &upstream, req).await }
                })
            };
            let mut server = berth::http_server::start(
                listener,
                threads,
                berth::http_server::Pinning::Auto,
                make_router,
                std::future::pending::<()>(),
            )?;
            server.drained().await?;
            Ok(())
        })
}

async fn forward(outbound: &Outbound, upstream: &str, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{upstream}{pq}").parse() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.headers.remove("host");
    parts.headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer bench-key"),
    );
    let has_body = parts.headers.contains_key("content-length")
        || parts.headers.contains_key("transfer-encoding");
    let body = if has_body {
        OutBody::body(body)
    } else {
        OutBody::Empty
    };
    let sent = outbound
        .send_streaming(OutboundRequest {
            method: parts.method,
            uri,
            headers: parts.headers,
            body,
            context: None,
            read_only: false,
            guarded: false,
        })
        .await;
    match sent {
        Ok(r) => {
            let mut resp = Response::new(Body::new(r.body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            *resp.headers_mut() = r.headers;
            resp
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
