//! The floor row of `scripts/bench-proxy.sh`: the least a reverse proxy on
//! Berth's stack (a multi-threaded tokio runtime, hyper's server, the
//! pooled hyper-util client under reqwest) can cost. It adds the auth
//! header and nothing else: no token lookup, no request log, no budget, no
//! path checks. Berth's proxy row compared with this one is what Berth's
//! own work costs; this row compared with nginx is what the stack costs.
//!
//! `bench-bareproxy LISTEN UPSTREAM`
#![forbid(unsafe_code)]

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18082".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", listener.local_addr()?);
            serve(listener, upstream).await
        })
}

async fn serve(listener: tokio::net::TcpListener, upstream: String) -> std::io::Result<()> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(http);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let upstream = upstream.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = format!("http://{upstream}{pq}")
                        .parse()
                        .map_err(std::io::Error::other)?;
                    parts.headers.insert(
                        "authorization",
                        HeaderValue::from_static("Bearer bench-key"),
                    );
                    parts.headers.remove("host");
                    client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(std::io::Error::other)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
