//! The HTTP/1.1 front: thread-per-core serving threads, each running
//! hyper's connection driver around its own copy of the axum router, with
//! graceful shutdown.
//!
//! Decision: N serving threads, each with a single-threaded tokio runtime
//! that keeps every connection handed to it (the nginx model), instead of
//! one work-stealing runtime. One acceptor on the main runtime hands each
//! new connection to the thread serving the fewest: threads accepting for
//! themselves took whole bursts of connections on whichever woke first. A proxied call then parses, checks, forwards and answers on one
//! core, with the provider connection's task on that core too (the
//! outbound pools are per serving thread): no wake-ups across cores, no
//! cache lines bouncing between them. On the proxy benchmark this halved
//! the cycles per call of the same instructions. Background work (sync
//! workers, webhook delivery, the request-log writer, housekeeping) stays
//! on the main multi-threaded runtime.
//!
//! The serving runtimes live until the process has finished its shutdown:
//! connections and tasks created on them (a PostgreSQL connection a
//! handler opened for the pool, a webhook client's connection) are driven
//! by them, and are still used by background work after the HTTP side has
//! drained.
//!
//! Decision: hyper's driver instead of `axum::serve`, for what that does
//! not set: accepted sockets get `TCP_NODELAY` (a proxied answer must not
//! wait for Nagle's algorithm), and a client must send its request head
//! within 30 s (a slow client cannot hold connections open for free).
//! Berth serves HTTP/1.1 only, so the HTTP/2 sniffing of `axum::serve` is
//! not needed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running HTTP front.
pub struct Server {
    drained: Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
    release: CancellationToken,
}

/// Starts `threads` serving threads on `listener`, each with the router
/// `make_router` builds for it. Stops accepting when `shutdown` resolves
/// (see [`Server::drained`]).
pub fn start(
    listener: TcpListener,
    threads: usize,
    make_router: impl Fn() -> axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Server> {
    let stop = CancellationToken::new();
    let release = CancellationToken::new();
    let mut server = Server {
        drained: Vec::new(),
        threads: Vec::new(),
        stop: stop.clone(),
        release: release.clone(),
    };
    let mut lanes = Vec::new();
    for n in 0..threads.max(1) {
        let router = make_router();
        let (stop, release) = (stop.clone(), release.clone());
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
        let (conn_tx, conn_rx) = tokio::sync::mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_open = open.clone();
        let thread = std::thread::Builder::new()
            .name(format!("berth-http-{n}"))
            .spawn(move || {
                berth_outbound::set_serving_lane(n);
                runtime.block_on(async move {
                    let result = serve(conn_rx, thread_open, router, stop.cancelled_owned()).await;
                    let _ = drained_tx.send(result);
                    // Keep driving what was created here until the whole
                    // process has shut down.
                    release.cancelled().await;
                });
            })?;
        lanes.push(Lane { conn_tx, open });
        server.drained.push(drained_rx);
        server.threads.push(thread);
    }
    tokio::spawn(accept(listener, lanes, stop.clone()));
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    Ok(server)
}

/// A serving thread as the acceptor sees it.
struct Lane {
    conn_tx: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
}

async fn accept(listener: TcpListener, lanes: Vec<Lane>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let lane = lanes
            .iter()
            .min_by_key(|l| l.open.load(Ordering::Relaxed))
            .expect("at least one serving thread");
        lane.open.fetch_add(1, Ordering::Relaxed);
        if lane.conn_tx.send(stream).is_err() {
            // That thread is gone (shutting down): the connection closes.
            lane.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Server {
    /// Resolves once every serving thread has stopped accepting and its
    /// in-flight requests have finished.
    pub async fn drained(&mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        for rx in self.drained.drain(..) {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("an HTTP serving thread panicked")),
            }
        }
        result
    }

    /// Stops the serving runtimes; call last, after background work that
    /// may use what they drive has finished.
    pub async fn release(self) {
        self.stop.cancel();
        self.release.cancel();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// One serving thread: serves `router` on the connections handed to it
/// until `shutdown` resolves, then waits for in-flight requests (idle
/// keep-alive connections are closed at once).
async fn serve(
    mut conns: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // A slow or stalled client may not hold a connection open forever
        // before sending its request head.
        .header_read_timeout(Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            got = conns.recv() => match got {
                Some(stream) => stream,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot serve an accepted connection");
                continue;
            }
        };
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        let open = open.clone();
        tokio::spawn(async move {
            // A client going away mid-request is not Berth's error.
            let _ = conn.await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(conns);
    graceful.shutdown().await;
    Ok(())
}

async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    // Out of file descriptors, most likely: wait for some to be closed
    // rather than spin.
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
