//! Accepting client connections and serving HTTP/1.1 and HTTP/2 (prior knowledge) on them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::StartError;
use crate::proxy::forward::{forward, ConnInfo};
use crate::proxy::Router;

/// The HTTP server settings shared by every connection.
pub type HttpBuilder = auto::Builder<TokioExecutor>;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds a listening socket with `SO_REUSEADDR` (fast restarts) and a deep accept backlog.
/// With `shared`, `SO_REUSEPORT` lets every worker bind its own socket to the address.
pub fn bind(addr: SocketAddr, shared: bool) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    #[cfg(unix)]
    if shared {
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// The HTTP/1.1 + HTTP/2 server configuration.
pub fn http_builder() -> HttpBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Counts a listener's open client connections against its limit.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Requests received on this listener (kept across reloads).
    requests: AtomicU64,
}

/// One counted client connection; uncounted on drop.
struct Counted(Arc<ConnectionLimit>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionLimit {
    /// A limit of `max` open connections (`usize::MAX`: unlimited).
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests received on this listener so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Changes the limit (on reload); connections already open stay open.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    fn admit(self: &Arc<Self>) -> Option<Counted> {
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(Arc::clone(self));
        (previous < self.max.load(Ordering::Relaxed)).then_some(counted)
    }
}

/// Answers a connection over the limit with a 503 and closes it, without reading its request.
async fn refuse(mut stream: TcpStream) {
    const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nretry-after: 1\r\nconnection: close\r\n\r\n503 Service Unavailable\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(REFUSAL).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Accepts connections until `stop` turns true; each connection is served on its own task.
pub async fn accept_loop(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    http: Arc<HttpBuilder>,
    limit: Arc<ConnectionLimit>,
    mut stop: watch::Receiver<bool>,
    active: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(counted) = limit.admit() else {
                        tracing::warn!(client = %peer, max = limit.max.load(Ordering::Relaxed), "too many client connections; refusing one");
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let (router, http, stop, active) = (Arc::clone(&router), Arc::clone(&http), stop.clone(), active.clone());
                    tokio::spawn(async move {
                        let limit = Arc::clone(&counted.0);
                        serve(stream, peer, router, http, limit, stop, active).await;
                        drop(counted);
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
}

/// Serves one client connection; on shutdown, finishes the in-flight request and closes.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<ArcSwap<Router>>,
    http: Arc<HttpBuilder>,
    listener: Arc<ConnectionLimit>,
    mut stop: watch::Receiver<bool>,
    _active: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let info = Arc::new(ConnInfo::new(peer));
    let service = service_fn(move |req| {
        listener.requests.fetch_add(1, Ordering::Relaxed);
        let router = Arc::clone(&router);
        let info = Arc::clone(&info);
        async move { Ok::<_, Infallible>(forward(req, &router, &info).await) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Completes when shutdown starts (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
