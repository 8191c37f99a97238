//! Pooled connections to one backend through hyper's client, for requests that arrived over
//! HTTP/2 and for pools that speak HTTP/2: HTTP/1.1 keep-alive connections, or one shared
//! HTTP/2 connection per worker, multiplexed (hyper queues streams past the backend's
//! `MAX_CONCURRENT_STREAMS`).
//!
//! Idle connections wait in a lock-free queue. A request takes one (or opens a new one), and
//! gives it back when the response body has been read to the end; a connection whose response
//! was abandoned half-way is closed instead, since it cannot carry another request. Idle
//! connections older than the idle timeout are closed by a periodic sweep and skipped at
//! checkout.

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body_util::channel::Channel;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::backend::clock_nanos;
use super::connect::{ConnectError, Connector};
use super::idle::UpstreamTimeouts;
use super::Backend;

/// A boxed error from a request body, whichever side it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as it arrives: from hyper's HTTP/2 server, or relayed by the
/// HTTP/1 engine for a pool that speaks HTTP/2.
#[derive(Debug)]
pub enum ClientBody {
    /// Read by hyper.
    Hyper(Incoming),
    /// Decoded by the HTTP/1 engine and sent through a small channel.
    Relayed(Channel<Bytes, RelayError>),
}

/// The HTTP/1 engine could not read the whole request body (the client went away, sent a
/// malformed chunk, or went silent): the backend must see a reset, not a shorter body.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct RelayError(pub &'static str);

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Relayed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Relayed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Relayed(b) => b.size_hint(),
        }
    }
}

/// A request body on its way to a backend: the client's, streamed, or a copy kept in memory
/// so that the request can be sent again on a retry.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Streamed from the client as it arrives, counted into the backend's bytes sent (by
    /// worker).
    Streaming(ClientBody, Arc<Backend>, usize),
    /// Held in memory (possibly empty).
    Buffered(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Streaming(body, backend, worker) => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame {
                    if let Some(data) = f.data_ref() {
                        backend.record_bytes_sent(*worker, data.len() as u64);
                    }
                }
                frame
            }
            UpstreamBody::Buffered(data) => {
                Poll::Ready(data.take().filter(|d| !d.is_empty()).map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming(body, ..) => body.is_end_stream(),
            UpstreamBody::Buffered(data) => data.as_ref().is_none_or(|d| d.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streaming(body, ..) => body.size_hint(),
            UpstreamBody::Buffered(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// Most idle connections kept per backend; beyond it, released connections are closed.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

/// Why no response came back from the backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened (refused, unreachable, timed out, TLS failed...).
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The HTTP exchange failed (reset, closed early, malformed response...).
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// An HTTP/2 backend refused the stream before processing it (`REFUSED_STREAM`, or a
    /// GOAWAY that left it out): sending it elsewhere is safe.
    #[error("refused before processing: {0}")]
    Refused(hyper::Error),
}

impl UpstreamError {
    /// True when nothing of the request was processed by the backend.
    pub fn before_processing(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Refused(_))
    }
}

/// The idle connections to one backend.
#[derive(Debug)]
pub struct ConnectionPool {
    connector: Arc<Connector>,
    /// Its timeouts (a reload may change them).
    pub timeouts: UpstreamTimeouts,
    /// Idle HTTP/1.1 connections per worker: a connection is driven by the worker that opened it.
    idle: Vec<ArrayQueue<Idle>>,
    /// HTTP/2: each worker's shared, multiplexed connection.
    h2: Vec<ArcSwapOption<http2::SendRequest<UpstreamBody>>>,
    /// HTTP/2: held while a worker opens its connection, so that requests arriving meanwhile
    /// wait for it instead of each opening one.
    h2_opening: Vec<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: u64,
}

#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// A connection checked out for one request (for HTTP/2, a handle on a shared one).
#[derive(Debug)]
pub struct PooledConnection {
    sender: Sender,
    home: Arc<ConnectionPool>,
    /// The worker whose idle queue it goes back to.
    worker: usize,
    reused: bool,
    /// Opened for one client (it began with that client's PROXY header): never shared.
    private: bool,
}

impl ConnectionPool {
    /// An empty pool for the backend `connector` reaches.
    pub fn new(
        connector: Arc<Connector>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        workers: usize,
    ) -> ConnectionPool {
        let workers = workers.max(1);
        ConnectionPool {
            connector,
            timeouts: UpstreamTimeouts::new(connect_timeout, idle_timeout),
            idle: (0..workers).map(|_| ArrayQueue::new(MAX_IDLE_PER_BACKEND)).collect(),
            h2: (0..workers).map(|_| ArcSwapOption::empty()).collect(),
            h2_opening: (0..workers).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// This worker's idle connections.
    fn local(&self, worker: usize) -> &ArrayQueue<Idle> {
        &self.idle[worker % self.idle.len()]
    }

    /// This worker's HTTP/2 connection slot.
    fn h2_slot(&self, worker: usize) -> &ArcSwapOption<http2::SendRequest<UpstreamBody>> {
        &self.h2[worker % self.h2.len()]
    }

    /// Connections waiting for a request (HTTP/2 connections count once each).
    pub fn idle_count(&self) -> usize {
        let h2 = self
            .h2
            .iter()
            .filter(|s| s.load().as_ref().is_some_and(|s| !s.is_closed()))
            .count();
        self.idle.iter().map(ArrayQueue::len).sum::<usize>() + h2
    }

    fn expired(&self, idle: &Idle, now: u64) -> bool {
        now.saturating_sub(idle.since) > self.timeouts.idle_nanos()
    }

    /// A ready connection: an idle one (HTTP/1.1) or the shared one (HTTP/2) if usable, else
    /// a new one.
    pub async fn checkout(self: &Arc<Self>, worker: usize) -> Result<PooledConnection, UpstreamError> {
        if self.connector.protocol().is_h2() {
            if let Some(shared) = self.shared_h2(worker) {
                return Ok(shared);
            }
            let _opening = self.h2_opening[worker % self.h2_opening.len()].lock().await;
            if let Some(shared) = self.shared_h2(worker) {
                return Ok(shared);
            }
            return self.connect(worker).await;
        }
        let now = clock_nanos();
        while let Some(idle) = self.local(worker).pop() {
            if idle.sender.is_closed() || self.expired(&idle, now) {
                continue;
            }
            let mut sender = idle.sender;
            // Ready almost always; a connection whose previous response just ended may need a
            // moment for its task to notice, and one the backend closed fails here.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            return Ok(PooledConnection {
                sender: Sender::H1(sender),
                home: Arc::clone(self),
                worker,
                reused: true,
                private: false,
            });
        }
        self.connect(worker).await
    }

    /// A handle on this worker's HTTP/2 connection, if it has a usable one.
    fn shared_h2(self: &Arc<Self>, worker: usize) -> Option<PooledConnection> {
        let shared = self.h2_slot(worker).load_full()?;
        (!shared.is_closed()).then(|| PooledConnection {
            sender: Sender::H2((*shared).clone()),
            home: Arc::clone(self),
            worker,
            reused: true,
            private: false,
        })
    }

    /// Opens a new connection and spawns the task that drives it; an HTTP/2 one becomes this
    /// worker's shared connection.
    pub async fn connect(self: &Arc<Self>, worker: usize) -> Result<PooledConnection, UpstreamError> {
        self.open(worker, None).await
    }

    /// Opens an HTTP/1.1 connection for one client, starting with its PROXY protocol header
    /// `preamble`: it is closed after the response instead of pooled.
    pub async fn connect_private(
        self: &Arc<Self>,
        worker: usize,
        preamble: &[u8],
    ) -> Result<PooledConnection, UpstreamError> {
        self.open(worker, Some(preamble)).await
    }

    async fn open(self: &Arc<Self>, worker: usize, preamble: Option<&[u8]>) -> Result<PooledConnection, UpstreamError> {
        let io = self.connector.connect_within(self.timeouts.connect(), preamble).await?;
        let address = self.connector.address();
        let sender = if self.connector.protocol().is_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                .handshake(TokioIo::new(io))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(backend = %address, error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            self.h2_slot(worker).store(Some(Arc::new(sender.clone())));
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(backend = %address, error = %e, "upstream connection ended with an error");
                }
            });
            Sender::H1(sender)
        };
        Ok(PooledConnection {
            sender,
            home: Arc::clone(self),
            worker,
            reused: false,
            private: preamble.is_some(),
        })
    }

    /// Closes every idle connection and forgets the shared HTTP/2 ones (their open streams
    /// finish).
    pub fn clear(&self) {
        for queue in &self.idle {
            while queue.pop().is_some() {}
        }
        for slot in &self.h2 {
            slot.store(None);
        }
    }

    /// Closes idle connections that have outlived the idle timeout.
    pub fn sweep(&self) {
        let now = clock_nanos();
        for queue in &self.idle {
            for _ in 0..queue.len() {
                let Some(idle) = queue.pop() else { break };
                if !idle.sender.is_closed() && !self.expired(&idle, now) {
                    let _ = queue.push(idle);
                }
            }
        }
        for slot in &self.h2 {
            if slot.load().as_ref().is_some_and(|s| s.is_closed()) {
                slot.store(None);
            }
        }
    }
}

/// How often an idle HTTP/2 backend connection is pinged, and how long a ping may take before
/// the connection is considered dead.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// True when `e` says an HTTP/2 backend refused the stream before processing it: a GOAWAY
/// whose last stream id left it out, or `REFUSED_STREAM` (RFC 9113 §8.7).
fn refused_by_h2(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2.is_go_away() && h2.is_remote());
        }
        source = err.source();
    }
    false
}

impl PooledConnection {
    /// Sends `req`. If a reused connection turns out closed before the request went out,
    /// the request is sent once more on a new connection: nothing reached the backend yet.
    pub async fn send(&mut self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        let result = match &mut self.sender {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        match result {
            Ok(res) => Ok(res),
            Err(mut e) => {
                if let Sender::H2(_) = self.sender {
                    // Whatever failed, the next request should not pick this connection.
                    self.home.h2_slot(self.worker).store(None);
                }
                match e.take_message() {
                    Some(req) if self.reused => {
                        *self = self.home.connect(self.worker).await?;
                        let result = match &mut self.sender {
                            Sender::H1(s) => s.send_request(req).await,
                            Sender::H2(s) => s.send_request(req).await,
                        };
                        Ok(result?)
                    }
                    _ => {
                        let e = e.into_error();
                        if matches!(self.sender, Sender::H2(_)) && refused_by_h2(&e) {
                            Err(UpstreamError::Refused(e))
                        } else {
                            Err(UpstreamError::Http(e))
                        }
                    }
                }
            }
        }
    }

    /// Returns the connection to its pool for the next request. Call only once the response
    /// body has been read to its end.
    pub fn release(self) {
        if self.private {
            return;
        }
        let Sender::H1(sender) = self.sender else {
            // HTTP/2: the shared connection stays in its slot; this handle just goes.
            return;
        };
        if sender.is_closed() {
            return;
        }
        let _ = self.home.local(self.worker).push(Idle {
            sender,
            since: clock_nanos(),
        });
    }
}
