//! The fast local upstream of `scripts/bench-proxy.sh`: plain hyper, one
//! fixed JSON answer, so the benchmark measures the proxies, not this.
//!
//! `bench-upstream ADDR [THREADS]` answers `{"ok":true,"auth":<bool>}`
//! (`auth` says an `Authorization` header arrived, so a proxy that forgot
//! to attach the credential is noticed). `GET /bytes/N` answers N bytes.
#![forbid(unsafe_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let auth = req.headers().get("authorization").is_some();
    if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0).min(1 << 30);
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .expect("static response"));
    }
    let body = if auth {
        &b"{\"ok\":true,\"auth\":true}"[..]
    } else {
        &b"{\"ok\":true,\"auth\":false}"[..]
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .expect("static response"))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
        })
}
