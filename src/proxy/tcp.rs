//! TCP listeners (`mode = "tcp"`): each client connection goes to one backend of the
//! listener's pool and bytes are copied both ways.
//!
//! The pool's algorithm picks per connection (round robin by connection; least connections
//! counts open connections, since a connection is in flight for its whole life; hashing
//! algorithms hash the client's IP). A backend that cannot be connected to (refused, timed
//! out, TLS failed) is counted by passive health and, nothing having been sent, the
//! connection is retried on another backend within the pool's retry policy and budget. Once
//! connected, each direction is copied until its EOF, which is passed on as a half-close, so
//! protocols that shut down one side first keep working; the connection closes when both
//! directions ended, or when no byte moved either way for the listener's `tunnel_idle`.
//! Buffers come from the worker's pool and go back whenever a direction has nothing unread.
//!
//! `tls-passthrough` listeners work the same way after reading the client's ClientHello
//! ([`client_hello`]) to choose the pool by its server name; the backend gets the client's
//! bytes untouched, ClientHello first, over plain TCP: it terminates the TLS itself.
//!
//! With an `access_log`, each connection is one line when it closes ([`TunnelRecord`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::buffer::Buffer;
use crate::http1::connection::Shared;
use crate::http1::exchange::{self, Progress};
use crate::proxy::access_log::{AccessLog, TunnelRecord};
use crate::proxy::client_hello::{self, Hello};
use crate::proxy::proxy_protocol;
use crate::proxy::retry;
use crate::upstream::{Pool, RequestView};

/// Most connect attempts for one client connection (the config allows up to 10 retries).
const MAX_ATTEMPTS: usize = 11;

/// Proxies one client connection of a TCP listener to a backend of `pool`.
pub async fn serve(client: TcpStream, peer: SocketAddr, worker: usize, pool: Arc<Pool>, shared: Arc<Shared>) {
    // Counted against the listener's limit until it closes; drained at shutdown.
    let _registered = shared.registry.register(&client, peer, worker);
    let _ = client.set_nodelay(true);
    let mut log = PendingTunnel::new(&shared, peer, "tcp");
    relay(
        client,
        Buffer::default(),
        peer,
        worker,
        &pool,
        &shared,
        None,
        &mut log.record,
    )
    .await;
}

/// A connection's record, written to the listener's access log (if it has one) when the
/// connection's task ends, however it ends.
struct PendingTunnel {
    log: Option<AccessLog>,
    record: TunnelRecord,
    started: Instant,
}

impl PendingTunnel {
    fn new(shared: &Shared, peer: SocketAddr, mode: &'static str) -> PendingTunnel {
        PendingTunnel {
            log: shared.router.load().access_log().cloned(),
            record: TunnelRecord::start(peer, mode),
            started: Instant::now(),
        }
    }
}

impl Drop for PendingTunnel {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            let client = self.record.client;
            let mut record = std::mem::replace(&mut self.record, TunnelRecord::start(client, ""));
            record.duration = self.started.elapsed();
            log.log_tunnel(record);
        }
    }
}

/// Serves one connection of a `tls-passthrough` listener: reads the ClientHello (within the
/// listener's head timeout and [`MAX_CLIENT_HELLO`] bytes), routes by its server name, and
/// relays the untouched bytes, ClientHello first, to a backend of the chosen pool.
pub async fn serve_passthrough(mut client: TcpStream, peer: SocketAddr, worker: usize, shared: Arc<Shared>) {
    let _registered = shared.registry.register(&client, peer, worker);
    let _ = client.set_nodelay(true);
    let mut log = PendingTunnel::new(&shared, peer, "tls-passthrough");
    let head_timeout = shared.router.load().client_settings().head_timeout;
    let mut hello = Buffer::default();
    let read = tokio::time::timeout(head_timeout, async {
        loop {
            match client_hello::parse(hello.unread()) {
                Hello::Complete(name) => return Ok(name),
                Hello::Invalid(why) => return Err(why),
                Hello::Incomplete => {}
            }
            match hello.read_from(&mut client, client_hello::MAX_CLIENT_HELLO + 5).await {
                Ok(0) => return Err("the client closed before a whole ClientHello"),
                Ok(_) => {}
                Err(_) => return Err("ClientHello too large or unreadable"),
            }
        }
    })
    .await;
    let name = match read {
        Ok(Ok(name)) => name,
        Ok(Err(why)) => {
            tracing::debug!(client = %peer, why, "closing a tls-passthrough connection");
            (log.record.status, log.record.end) = (400, "bad-client-hello");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "no ClientHello within the head timeout; closing");
            (log.record.status, log.record.end) = (400, "bad-client-hello");
            return;
        }
    };
    log.record.server_name.clone_from(&name);
    let Some(pool) = shared.router.load().route(name.as_deref(), "/").cloned() else {
        tracing::warn!(client = %peer, server_name = name.as_deref().unwrap_or(""), "no route for this server name; closing");
        (log.record.status, log.record.end) = (503, "no-route");
        return;
    };
    relay(
        client,
        hello,
        peer,
        worker,
        &pool,
        &shared,
        Some(name.as_deref()),
        &mut log.record,
    )
    .await;
}

/// Connects to a backend of `pool` (retrying a failed connect on another) and copies bytes
/// both ways, `first` (bytes already read from the client) before anything else.
/// `passthrough` (with the client's server name, if it sent one) forces plain TCP to the
/// backend: passed-through TLS must not be wrapped again. What happened goes into `record`.
#[allow(clippy::too_many_arguments)] // one call site each for TCP and passthrough
async fn relay(
    mut client: TcpStream,
    first: Buffer,
    peer: SocketAddr,
    worker: usize,
    pool: &Arc<Pool>,
    shared: &Shared,
    passthrough: Option<Option<&str>>,
    record: &mut TunnelRecord,
) {
    record.pool = Some(Arc::from(pool.name()));
    let idle = shared.router.load().client_settings().tunnel_idle_timeout;
    let config = pool.config();
    let plain = passthrough.is_some();
    // The PROXY header names the client (as the listener saw it, or as its own PROXY
    // header said) and the address it reached.
    let preamble = config.send_proxy_protocol.map(|version| {
        let local = client.local_addr().unwrap_or(peer);
        let extras = proxy_protocol::Extras {
            authority: passthrough.flatten(),
            alpn: None,
        };
        proxy_protocol::encode(version, peer, local, extras)
    });
    pool.retry_budget().deposit();
    let view = RequestView::of_raw(peer.ip(), b"", &[], "/");
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0usize;
    let (index, mut upstream) = loop {
        let Some(picked) = pool.pick(&view, &tried[..attempts]) else {
            if attempts > 0 {
                // Every backend the policy allowed was tried.
                (record.status, record.end) = (502, "connect-failed");
                return;
            }
            tracing::warn!(pool = pool.name(), client = %peer, "no backend available for a TCP connection; closing it");
            (record.status, record.end) = (503, "no-backend");
            return;
        };
        let index = picked.index;
        record.retries = attempts as u32;
        tried[attempts] = index;
        attempts += 1;
        let member = &pool.members()[index];
        record.upstream = Some(member.backend.address());
        let (limit, preamble) = (config.timeouts.connect, preamble.as_deref());
        let connected = if plain {
            member.connector.connect_plain_within(limit, preamble).await
        } else {
            member.connector.connect_within(limit, preamble).await
        };
        match connected {
            Ok(upstream) => break (index, upstream),
            Err(e) => {
                crate::health::passive::record_failure(pool, index);
                tracing::warn!(pool = pool.name(), backend = %member.backend.address(), client = %peer, error = %e, "cannot connect a TCP connection to the backend");
                let so_far = retry::Attempts {
                    made: attempts,
                    replayable: true,
                    body_consumed: false,
                };
                if attempts < MAX_ATTEMPTS
                    && retry::allows(&config.retries, retry::Failure::Connect, so_far)
                    && pool.retry_budget().try_withdraw()
                {
                    continue;
                }
                (record.status, record.end) = (502, "connect-failed");
                return;
            }
        }
    };
    let backend = &pool.members()[index].backend;
    (record.status, record.upstream) = (200, Some(backend.address()));
    backend.record_success();
    let in_flight = backend.start_request(worker);
    shared.limit.tunnel_opened();
    let started = Instant::now();
    let progress = Progress::default();
    let (sent, received) = {
        let (mut crd, mut cwr) = client.split();
        let (mut urd, mut uwr) = upstream.split();
        let (mut cbuf, mut ubuf) = (first, Buffer::default());
        let up = exchange::pipe(&mut crd, &mut uwr, &mut cbuf, &progress);
        let down = exchange::pipe(&mut urd, &mut cwr, &mut ubuf, &progress);
        tokio::pin!(up);
        tokio::pin!(down);
        let (mut sent, mut received) = (None, None);
        let mut seen = 0u64;
        let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now() + idle));
        while sent.is_none() || received.is_none() {
            tokio::select! {
                r = &mut up, if sent.is_none() => {
                    let failed = r.is_err();
                    sent = Some(r.unwrap_or(0));
                    if failed { record.end = "error"; break; }
                }
                r = &mut down, if received.is_none() => {
                    let failed = r.is_err();
                    received = Some(r.unwrap_or(0));
                    if failed { record.end = "error"; break; }
                }
                () = &mut timer => {
                    let any = progress.any.load(Ordering::Relaxed);
                    if any == seen {
                        tracing::debug!(pool = pool.name(), client = %peer, "TCP connection idle for {idle:?}; closing it");
                        record.end = "idle";
                        break;
                    }
                    seen = any;
                    timer.as_mut().reset(Instant::now() + idle);
                }
            }
        }
        (sent.unwrap_or(0), received.unwrap_or(0))
    };
    (record.from_client, record.to_client) = (sent, received);
    backend.record_bytes_sent(worker, sent);
    backend.record_bytes(worker, received);
    tracing::debug!(pool = pool.name(), backend = %backend.address(), client = %peer, sent, received, duration = ?started.elapsed(), "TCP connection closed");
    shared.limit.tunnel_closed(started.elapsed());
    drop(in_flight);
}
