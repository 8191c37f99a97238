//! Accepting client connections, counting them against the listener's limit, and handing
//! each to the HTTP/1 engine (which passes HTTP/2 prior-knowledge connections to hyper).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::StartError;
use crate::config::{ListenerMode, ProxyProtocol};
use crate::http1::connection::Shared;
use crate::stats::StatusCounts;

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

/// Upper bounds (seconds) of the tunnel duration histogram: TCP connections and WebSockets
/// live from moments to hours.
pub const TUNNEL_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0];

/// Counts a listener's open client connections against its limit.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Requests received on this listener (kept across reloads).
    requests: AtomicU64,
    /// Upgraded (WebSocket) connections open now.
    tunnels: AtomicUsize,
    /// Upgraded connections so far.
    tunnels_total: AtomicU64,
    /// How long tunnels lasted: counts per [`TUNNEL_BUCKETS`] bound, then +Inf.
    tunnel_durations: [AtomicU64; TUNNEL_BUCKETS.len() + 1],
    /// Their summed duration, in milliseconds.
    tunnel_millis: AtomicU64,
    /// Responses Steelyard wrote itself before any pool was chosen (400, 404, 408, 413, 414,
    /// 431, 503 over the connection limit...).
    local_responses: StatusCounts,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (`usize::MAX`: unlimited).
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            requests: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            tunnels_total: AtomicU64::new(0),
            tunnel_durations: Default::default(),
            tunnel_millis: AtomicU64::new(0),
            local_responses: StatusCounts::default(),
        })
    }

    /// Responses written by Steelyard itself for requests no pool took.
    pub fn local_responses(&self) -> &StatusCounts {
        &self.local_responses
    }

    /// Counts a request received.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that became a tunnel after a 101.
    pub fn tunnel_opened(&self) {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnels_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tunnel that closed after `lasted`.
    pub fn tunnel_closed(&self, lasted: Duration) {
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
        let secs = lasted.as_secs_f64();
        let bucket = TUNNEL_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(TUNNEL_BUCKETS.len());
        self.tunnel_durations[bucket].fetch_add(1, Ordering::Relaxed);
        self.tunnel_millis
            .fetch_add(u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long tunnels lasted: counts per [`TUNNEL_BUCKETS`] bound (not cumulative; the last
    /// is +Inf) and the sum in seconds.
    pub fn tunnel_durations(&self) -> (Vec<u64>, f64) {
        let counts = self
            .tunnel_durations
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (counts, self.tunnel_millis.load(Ordering::Relaxed) as f64 / 1e3)
    }

    /// Upgraded connections open now.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Upgraded connections so far.
    pub fn tunnels_total(&self) -> u64 {
        self.tunnels_total.load(Ordering::Relaxed)
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

    /// Counts a new connection; false (and uncounted again) when over the limit.
    pub fn admit(&self) -> bool {
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        if previous < self.max.load(Ordering::Relaxed) {
            return true;
        }
        self.release();
        false
    }

    /// Uncounts a connection that closed.
    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
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

/// Accepts connections until `stop` turns true; each connection is served on its own task of
/// this worker (`worker`: its index).
pub async fn accept_loop(listener: TcpListener, worker: usize, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let limit = &shared.limit;
                    if !limit.admit() {
                        tracing::warn!(client = %peer, max = limit.max.load(Ordering::Relaxed), "too many client connections; refusing one");
                        limit.local_responses.record(503);
                        tokio::spawn(refuse(stream));
                        continue;
                    }
                    if shared.router.load().proxy_protocol() == ProxyProtocol::Off {
                        dispatch(stream, peer, worker, &shared);
                    } else {
                        tokio::spawn(after_proxy_header(stream, peer, worker, Arc::clone(&shared)));
                    }
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

/// Starts serving a connection on a task of its own, as its listener's mode says. The
/// connection is uncounted from the listener's limit by its registry entry when it closes.
fn dispatch(stream: TcpStream, peer: SocketAddr, worker: usize, shared: &Arc<Shared>) {
    let router = shared.router.load();
    match (router.mode(), router.tcp_pool()) {
        (ListenerMode::Tcp, Some(pool)) => {
            tokio::spawn(crate::proxy::tcp::serve(
                stream,
                peer,
                worker,
                Arc::clone(pool),
                Arc::clone(shared),
            ));
        }
        (ListenerMode::TlsPassthrough, _) => {
            tokio::spawn(crate::proxy::tcp::serve_passthrough(
                stream,
                peer,
                worker,
                Arc::clone(shared),
            ));
        }
        _ => {
            tokio::spawn(crate::http1::connection::serve(
                stream,
                peer,
                worker,
                Arc::clone(shared),
            ));
        }
    }
}

/// Reads a connection's PROXY protocol header (within the listener's head timeout), then
/// serves it as coming from the client the header names. A missing or malformed header
/// closes the connection.
async fn after_proxy_header(mut stream: TcpStream, peer: SocketAddr, worker: usize, shared: Arc<Shared>) {
    let (expected, limit) = {
        let router = shared.router.load();
        (router.proxy_protocol(), router.client_settings().head_timeout)
    };
    match tokio::time::timeout(limit, crate::proxy::proxy_protocol::read(&mut stream, expected)).await {
        Ok(Ok(source)) => dispatch(stream, source.unwrap_or(peer), worker, &shared),
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "closing a connection");
            shared.limit.release();
        }
        Err(_) => {
            tracing::debug!(client = %peer, "no PROXY protocol header within the head timeout; closing");
            shared.limit.release();
        }
    }
}

/// Completes when shutdown starts (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The default cap on a listener's client connections: half the process's file descriptors
/// (each proxied request may need a backend connection too) less a reserve of 128 for
/// listeners, logs and health checks; a quarter of them under 512. Raises the soft descriptor limit to the hard one first, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do.
pub fn default_max_client_connections() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 1024;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        };
        let soft = usize::try_from(soft).unwrap_or(usize::MAX / 4).min(1 << 22);
        if soft >= 512 {
            soft / 2 - 128
        } else {
            (soft / 4).max(1)
        }
    })
}
