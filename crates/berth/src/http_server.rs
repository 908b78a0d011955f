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
//! Decision: when the serving threads are as many as the CPUs the process
//! may run on, each is pinned to its own CPU (`http_pin = auto`). Left to
//! the kernel, two busy serving threads sometimes shared one core for a
//! few scheduler ticks while the other core ran the load's own threads,
//! and every request on them waited: on the proxy benchmark at 8
//! connections the 99th percentile went from 1-3 ms to 0.3 ms, nginx's
//! level. With fewer threads than CPUs (a container with a CPU quota on a
//! big host, several Berths on one machine) `auto` does not pin: pinning
//! everyone to the first CPUs would stack them there.
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

/// Whether serving threads are pinned to CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// Pinned when there are as many serving threads as CPUs the process
    /// may run on.
    #[default]
    Auto,
    /// Thread *i* on the *i*-th CPU the process may run on (wrapping).
    On,
    Off,
}

impl std::str::FromStr for Pinning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "1" => Ok(Self::On),
            "off" | "false" | "0" => Ok(Self::Off),
            _ => Err(format!("`{s}` is not one of auto, on, off")),
        }
    }
}

/// The CPU each serving thread is pinned to, if any.
fn cpu_plan(threads: usize, pin: Pinning, allowed: &[usize]) -> Vec<Option<usize>> {
    let pin = match pin {
        Pinning::Off => false,
        Pinning::On => !allowed.is_empty(),
        Pinning::Auto => threads > 1 && allowed.len() == threads,
    };
    (0..threads)
        .map(|n| pin.then(|| allowed[n % allowed.len()]))
        .collect()
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn pin_current_thread(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(cpu, error = %e, "cannot pin an HTTP serving thread; it runs unpinned");
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_cpu: usize) {}

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
    pin: Pinning,
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
    let threads = threads.max(1);
    let cpus = cpu_plan(threads, pin, &allowed_cpus());
    for (n, cpu) in cpus.into_iter().enumerate() {
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
                if let Some(cpu) = cpu {
                    pin_current_thread(cpu);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pins_only_when_threads_cover_every_allowed_cpu() {
        let two = [0, 1];
        assert_eq!(cpu_plan(2, Pinning::Auto, &two), [Some(0), Some(1)]);
        assert_eq!(cpu_plan(2, Pinning::Auto, &[0, 1, 2, 3]), [None, None]);
        assert_eq!(cpu_plan(3, Pinning::Auto, &two), [None, None, None]);
        assert_eq!(cpu_plan(1, Pinning::Auto, &[5]), [None]);
        assert_eq!(cpu_plan(2, Pinning::Auto, &[4, 7]), [Some(4), Some(7)]);
        assert_eq!(
            cpu_plan(3, Pinning::On, &[4, 7]),
            [Some(4), Some(7), Some(4)]
        );
        assert_eq!(cpu_plan(2, Pinning::On, &[]), [None, None]);
        assert_eq!(cpu_plan(2, Pinning::Off, &two), [None, None]);
        assert_eq!("AUTO".parse(), Ok(Pinning::Auto));
        assert!("sometimes".parse::<Pinning>().is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_may_run_on_its_cpu_only() {
        let allowed = allowed_cpus();
        let cpu = *allowed.last().expect("the test runs on some CPU");
        let now = std::thread::spawn(move || {
            pin_current_thread(cpu);
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(now, [cpu]);
        // Only that thread: this one may still run anywhere it could.
        assert_eq!(allowed_cpus(), allowed);
    }
}
