//! The client connection: one task that waits for bytes holding no buffer, serves each
//! request in turn (pipelined ones in order), hands HTTP/2 prior-knowledge connections to
//! hyper, and closes on timeouts, errors or shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;

use atomic_waker::AtomicWaker;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::buffer::{self, Buffer, BUF_SIZE};
use super::io::Timer;
use super::recycle::Recycled;
use crate::proxy::h1::{self, Next};
use crate::proxy::Router;
use crate::server::listener::ConnectionLimit;
use crate::stream::ClientIo;
use crate::upstream::backend::clock_nanos;
use tokio::time::Instant;

/// How often each listener's registry fires the timers of its connections: the precision of
/// every client-side timeout.
pub const SWEEP: std::time::Duration = std::time::Duration::from_millis(25);

/// Most concurrent streams an HTTP/2 client may open on one connection.
const H2_MAX_STREAMS: u32 = 256;
/// How often an HTTP/2 connection is pinged, and how long an answer may take.
const H2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const H2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection of one listener shares.
#[derive(Debug)]
pub struct Shared {
    /// The listener's routes (swapped on reload).
    pub router: Arc<ArcSwap<Router>>,
    /// Its connection counts and limit.
    pub limit: Arc<ConnectionLimit>,
    /// Its open connections, to close idle ones at shutdown.
    pub registry: Arc<Registry>,
    /// Turns true at shutdown (HTTP/2 connections wait on it; HTTP/1 ones use the registry).
    pub stop: watch::Receiver<bool>,
    /// Held by every connection through its `Arc<Shared>`: shutdown's drain is over when the
    /// last one is gone.
    pub active: tokio::sync::mpsc::Sender<()>,
}

impl Shared {
    /// True once shutdown started: finish the request in hand and close.
    pub fn stopping(&self) -> bool {
        self.registry.stopping.load(Ordering::SeqCst)
    }

    /// The flag behind [`Shared::stopping`], for code that checks it later.
    pub fn stopping_flag(&self) -> &AtomicBool {
        &self.registry.stopping
    }

    /// True once a shutdown that closes idle connections started (not a hand-over to a
    /// successor, which lets each connection carry one more request).
    fn closing_idle(&self) -> bool {
        self.registry.closing_idle.load(Ordering::SeqCst)
    }
}

/// What the request path knows about the client connection; shared with the shutdown
/// registry, and kept out of the connection's task so that idle tasks stay small.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// True while the connection waits for a request (shutdown and the sweep close it then).
    idle: AtomicBool,
    /// The connection's timer deadline, in [`clock_nanos`] time (`u64::MAX`: none).
    pub(super) deadline: AtomicU64,
    /// Set by the sweep when a busy connection's deadline passed.
    pub(super) alarm: AtomicBool,
    /// Woken with the alarm.
    pub(super) waker: AtomicWaker,
    /// Its entry in the registry.
    slot: u32,
    /// The worker thread serving it: the index of its per-worker idle upstream connections.
    pub worker: u32,
    registry: Arc<Registry>,
}

/// How long a connection may stay idle once its process handed its listeners to a successor:
/// clients that keep sending get one more answer (with `Connection: close`); one idle this
/// long is closed, as at its keep-alive timeout. Closing idle connections at once would fail
/// the requests clients are sending on them at that moment.
pub const HANDOVER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Removes the connection from its registry when dropped: before the socket closes, since
/// [`Client`] declares it first.
#[derive(Debug)]
pub struct Registered(Arc<ConnInfo>);

impl std::ops::Deref for Registered {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.0
    }
}

impl Registered {
    /// A handle on the connection's timer (the deadline lives in the shared record, so the
    /// connection's task holds no timer state of its own).
    pub fn timer(&self) -> Timer {
        Timer::new(Arc::clone(&self.0))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let registry = &self.0.registry;
        let mut open = registry.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = open.get_mut(self.0.slot as usize) {
            *entry = None;
        }
        registry.limit.release();
    }
}

/// A client connection: who it is, its socket, its (pooled, usually absent) buffer.
#[derive(Debug)]
pub struct Client {
    /// Who it is. Declared first: dropped (unregistered) before the socket closes.
    pub info: Registered,
    /// The socket, or the TLS session over it.
    pub stream: ClientIo,
    /// Bytes read and not yet consumed; holds no memory while empty.
    pub buf: Buffer,
}

/// The open connections of a listener, so that shutdown can close the idle ones at once
/// (locked per connection, never per request); a connection leaving it is uncounted from the
/// listener's limit.
#[derive(Debug)]
pub struct Registry {
    stopping: AtomicBool,
    closing_idle: AtomicBool,
    open: Mutex<Vec<Option<Entry>>>,
    limit: Arc<ConnectionLimit>,
}

/// A registered connection: its descriptor and whether it waits idle.
type Entry = (i32, Arc<ConnInfo>);

impl Registry {
    /// No connections yet, counted against `limit`.
    pub fn new(limit: Arc<ConnectionLimit>) -> Registry {
        Registry {
            stopping: AtomicBool::new(false),
            closing_idle: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// Registers an admitted connection (see [`ConnectionLimit::admit`]).
    pub(crate) fn register(self: &Arc<Self>, stream: &TcpStream, peer: SocketAddr, worker: usize) -> Registered {
        use std::os::fd::AsRawFd;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let slot = open.iter().position(Option::is_none).unwrap_or(open.len());
        let info = Arc::new(ConnInfo {
            peer,
            idle: AtomicBool::new(false),
            deadline: AtomicU64::new(u64::MAX),
            alarm: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            worker: u32::try_from(worker).unwrap_or(0),
            registry: Arc::clone(self),
        });
        let entry = Some((stream.as_raw_fd(), Arc::clone(&info)));
        match open.get_mut(slot) {
            Some(e) => *e = entry,
            None => open.push(entry),
        }
        Registered(info)
    }

    /// Runs [`Registry::sweep`] every [`SWEEP`] until the registry is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else { return };
                registry.sweep(clock_nanos());
            }
        });
    }

    /// Fires every connection's timer whose deadline passed by `now` ([`clock_nanos`]): an
    /// idle connection is closed (its read sees the end of the stream), a busy one is woken.
    pub fn sweep(&self, now: u64) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (fd, info) in open.iter().flatten() {
            if info.deadline.load(Ordering::SeqCst) > now {
                continue;
            }
            info.deadline.store(u64::MAX, Ordering::SeqCst);
            if info.idle.load(Ordering::SeqCst) {
                shutdown_read(*fd);
            } else {
                info.alarm.store(true, Ordering::SeqCst);
                info.waker.wake();
            }
        }
    }

    /// Starts a gentle shutdown: every connection closes after its next response (answered
    /// with `Connection: close`), or once it has been idle for [`HANDOVER_IDLE`].
    pub fn stop_after_next_request(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = clock_nanos().saturating_add(HANDOVER_IDLE.as_nanos() as u64);
        self.each_idle(|_, info| {
            info.deadline.fetch_min(deadline, Ordering::SeqCst);
        });
    }

    /// Starts shutdown: connections finish the request in hand; idle ones are closed now.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.closing_idle.store(true, Ordering::SeqCst);
        // Entries are removed under the registry's lock before their socket closes, so `fd`
        // is still this connection's. Its read wakes with EOF and it closes.
        self.each_idle(|fd, _| shutdown_read(fd));
    }

    /// Calls `f` with the descriptor and record of each connection idle now, under the lock.
    fn each_idle(&self, mut f: impl FnMut(i32, &ConnInfo)) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (fd, info) in open.iter().flatten() {
            if info.idle.load(Ordering::SeqCst) {
                f(*fd, info);
            }
        }
    }
}

fn shutdown_read(fd: i32) {
    // SAFETY: `shutdown(2)` takes a descriptor number and touches no memory of ours.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// Serves one client connection until it closes.
///
/// The returned future is the connection's task, paid for by every idle connection: it holds
/// only the connection, the listener's shared state and one timer. Everything a request needs
/// lives in a recycled block while the request runs. (An `async move` block rather than an
/// `async fn`, whose arguments would be stored twice.)
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let mut conn = Client {
        info: shared.registry.register(&stream, peer, worker),
        stream: ClientIo::Plain(stream),
        buf: Buffer::default(),
    };
    async move {
        if let Some(config) = shared.router.load().tls().cloned() {
            // Boxed: the handshake's state is large and only TLS connections need it.
            conn = match Box::pin(handshake(conn, config, &shared)).await {
                Some(conn) => conn,
                None => return,
            };
        }
        // The idle deadline: the first request's head timeout from now, then the keep-alive
        // timeout from the end of each response. The registry's sweep closes the connection
        // when it passes while idle.
        conn.info
            .timer()
            .set(Instant::now() + shared.router.load().client_settings().head_timeout);
        let mut first = true;
        loop {
            if conn.buf.is_empty() {
                // Idle: no buffer held, no timer state in this task.
                conn.buf.release_if_empty();
                conn.info.idle.store(true, Ordering::SeqCst);
                if shared.closing_idle() {
                    break;
                }
                if shared.stopping() {
                    conn.info.timer().require(Instant::now() + HANDOVER_IDLE);
                }
                // Polled by hand: a `readable()` future or `select!` would add their state to
                // every idle connection's task. The buffer is taken only once the socket is
                // readable, and read with `poll_read`, which clears a stale readiness on a
                // short read (so the next wait costs no extra EAGAIN).
                let read = std::future::poll_fn(|cx| {
                    match conn.stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let Some(room) = conn.buf.room(BUF_SIZE) else {
                                return Poll::Ready(Err(buffer::full()));
                            };
                            let read = std::pin::pin!(conn.stream.read_buf(room));
                            match read.poll(cx) {
                                Poll::Ready(r) => return Poll::Ready(r),
                                Poll::Pending => conn.buf.release_if_empty(),
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                    Poll::Pending
                })
                .await;
                conn.info.idle.store(false, Ordering::SeqCst);
                match read {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            if first {
                first = false;
                // HTTP/2 by ALPN over TLS, by its preface (prior knowledge) in the clear.
                // Boxed: only a connection's first bytes need it, so no idle connection pays.
                let h2 = if conn.stream.is_tls() {
                    conn.stream.alpn_is_h2()
                } else {
                    Box::pin(is_h2_preface(&mut conn)).await
                };
                if h2 {
                    // Boxed: hyper's connection state would otherwise size every task.
                    Box::pin(serve_h2(conn, shared)).await;
                    return;
                }
            }
            // A head must be complete within the head timeout of its first byte.
            // A pipelined request already buffered re-arms the timer for its own head.
            match Recycled::new(h1::serve(&mut conn, &shared)).await {
                Next::KeepAlive(idle_deadline) => conn.info.timer().set(idle_deadline),
                Next::Close => break,
            }
        }
        if conn.stream.is_tls() {
            // Boxed, TLS only: tell the client the session ends (close_notify), briefly.
            Box::pin(close_tls(&mut conn)).await;
        }
    }
}

/// Sends a TLS session's close_notify and flushes it, within a second.
async fn close_tls(conn: &mut Client) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.stream.shutdown()).await;
}

/// Runs the TLS handshake within the listener's head timeout; `None` when it fails (logged at
/// debug level: scanners and health probes fail handshakes all day).
async fn handshake(conn: Client, config: Arc<rustls::ServerConfig>, shared: &Shared) -> Option<Client> {
    let limit = shared.router.load().client_settings().head_timeout;
    let Client { info, stream, buf } = conn;
    let ClientIo::Plain(stream) = stream else {
        return None;
    };
    let peer = info.peer;
    match tokio::time::timeout(limit, tokio_rustls::TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => Some(Client {
            info,
            stream: ClientIo::tls(tls),
            buf,
        }),
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, "no TLS handshake within the head timeout");
            None
        }
    }
}

/// True when the connection starts with the HTTP/2 preface (reads more while what arrived is
/// a prefix of it).
async fn is_h2_preface(conn: &mut Client) -> bool {
    loop {
        let unread = conn.buf.unread();
        let n = unread.len().min(H2_PREFACE.len());
        if unread[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.buf.read_from(&mut conn.stream, BUF_SIZE),
        )
        .await;
        match read {
            Ok(Ok(k)) if k > 0 => {}
            _ => return false,
        }
    }
}

/// Serves an HTTP/2 (prior knowledge) connection with hyper, on the hyper-based request path.
async fn serve_h2(conn: Client, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let Client { info, stream, buf } = conn;
    let (peer, worker) = (info.peer, info.worker as usize);
    // Unregistered now: shutdown reaches HTTP/2 connections through `stop`.
    drop(info);
    let mut info = crate::proxy::forward::ConnInfo::new(peer, worker, stream.is_tls());
    info.tls_client = stream.client_subject();
    info.tls_sni = stream
        .session()
        .and_then(|s| s.get_ref().1.server_name().map(str::to_owned));
    info.local = stream.local_addr().unwrap_or(peer);
    let info = Arc::new(info);
    let router = Arc::clone(&shared.router);
    let limit = Arc::clone(&shared.limit);
    let service = hyper::service::service_fn(move |req| {
        limit.count_request();
        let router = Arc::clone(&router);
        let info = Arc::clone(&info);
        let limit = Arc::clone(&limit);
        async move {
            // RFC 9113 §8.3.1: a request without `:path` (CONNECT aside) is malformed; the h2
            // crate lets it through, so reset the stream here.
            if req.method() != http::Method::CONNECT && req.uri().path().is_empty() {
                return Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
            }
            Ok(crate::proxy::forward::forward(req, &router, &info, limit.local_responses()).await)
        }
    });
    let io = super::h2_guard::H2Guard::new(Rewind {
        prefix: buf.unread().to_vec(),
        pos: 0,
        inner: stream,
    });
    let max_header_bytes = shared.router.load().client_settings().max_header_bytes;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // HTTP/2's own limits: streams per connection, the listener's head limit for a header
    // list, and a keep-alive ping that closes connections whose peer stopped answering.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Rewind {
    prefix: Vec<u8>,
    pos: usize,
    inner: ClientIo,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// What an idle keep-alive connection costs is its task: keep the connection future small
    /// (a request's state lives in a recycled block, HTTP/2 in a box of its own, the timer in
    /// the shared identity): 128 bytes make tokio's task cell 256.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let config = Config::original_demo();
        let router = Router::new(&config.listeners[0], &[]);
        let (_tx, stop) = watch::channel(false);
        let limit = ConnectionLimit::new(10);
        let shared = Arc::new(Shared {
            router: Arc::new(ArcSwap::from_pointee(router)),
            registry: Arc::new(Registry::new(Arc::clone(&limit))),
            limit,
            stop,
            active: tokio::sync::mpsc::channel(1).0,
        });
        assert!(shared.limit.admit() && shared.limit.admit());
        let future = serve(stream, addr, 0, Arc::clone(&shared));
        let size = std::mem::size_of_val(&future);
        drop(future);
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Client {
            info: shared.registry.register(&stream, addr, 0),
            stream: ClientIo::Plain(stream),
            buf: Buffer::default(),
        };
        let request = h1::serve(&mut conn, &shared);
        let request_size = std::mem::size_of_val(&request);
        // A request's state is moved into its recycled block once per request.
        assert!(request_size <= 3168, "request future is {request_size} bytes");
        assert!(size <= 128, "connection future is {size} bytes");
    }
}
