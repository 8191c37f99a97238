//! Pooled HTTP/1.1 keep-alive connections to one backend.
//!
//! Idle connections wait in a lock-free queue. A request takes one (or opens a new one), and
//! gives it back when the response body has been read to the end; a connection whose response
//! was abandoned half-way is closed instead, since it cannot carry another request. Idle
//! connections older than the idle timeout are closed by a periodic sweep and skipped at
//! checkout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::backend::clock_nanos;
use super::idle::UpstreamTimeouts;
use super::Backend;

/// A request body on its way to a backend: the client's, streamed, or a copy kept in memory
/// so that the request can be sent again on a retry.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Streamed from the client as it arrives, counted into the backend's bytes sent.
    Streaming(Incoming, Arc<Backend>, usize),
    /// Held in memory (possibly empty).
    Buffered(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
    /// The TCP connection could not be opened (refused, unreachable...).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The TCP connection did not open within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP exchange failed (reset, closed early, malformed response...).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// The idle connections to one backend.
#[derive(Debug)]
pub struct ConnectionPool {
    address: SocketAddr,
    /// Its timeouts (a reload may change them).
    pub timeouts: UpstreamTimeouts,
    /// Idle connections per worker: a connection is driven by the worker that opened it.
    idle: Vec<ArrayQueue<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: u64,
}

/// A connection checked out for one request.
#[derive(Debug)]
pub struct PooledConnection {
    sender: SendRequest<UpstreamBody>,
    home: Arc<ConnectionPool>,
    /// The worker whose idle queue it goes back to.
    worker: usize,
    reused: bool,
}

impl ConnectionPool {
    /// An empty pool for the backend at `address`.
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        workers: usize,
    ) -> ConnectionPool {
        ConnectionPool {
            address,
            timeouts: UpstreamTimeouts::new(connect_timeout, idle_timeout),
            idle: (0..workers.max(1))
                .map(|_| ArrayQueue::new(MAX_IDLE_PER_BACKEND))
                .collect(),
        }
    }

    /// This worker's idle connections.
    fn local(&self, worker: usize) -> &ArrayQueue<Idle> {
        &self.idle[worker % self.idle.len()]
    }

    /// Connections waiting for a request.
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(ArrayQueue::len).sum()
    }

    fn expired(&self, idle: &Idle, now: u64) -> bool {
        now.saturating_sub(idle.since) > self.timeouts.idle_nanos()
    }

    /// A ready connection: an idle one if any is usable, else a new one.
    pub async fn checkout(self: &Arc<Self>, worker: usize) -> Result<PooledConnection, UpstreamError> {
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
                sender,
                home: Arc::clone(self),
                worker,
                reused: true,
            });
        }
        self.connect(worker).await
    }

    /// Opens a new connection and spawns the task that drives it.
    pub async fn connect(self: &Arc<Self>, worker: usize) -> Result<PooledConnection, UpstreamError> {
        let connect_timeout = self.timeouts.connect();
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(self.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(connect_timeout)),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        let address = self.address;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %address, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(PooledConnection {
            sender,
            home: Arc::clone(self),
            worker,
            reused: false,
        })
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
    }
}

impl PooledConnection {
    /// Sends `req`. If a reused connection turns out closed before the request went out,
    /// the request is sent once more on a new connection: nothing reached the backend yet.
    pub async fn send(&mut self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        match self.sender.try_send_request(req).await {
            Ok(res) => Ok(res),
            Err(mut e) => match e.take_message() {
                Some(req) if self.reused => {
                    *self = self.home.connect(self.worker).await?;
                    Ok(self.sender.send_request(req).await?)
                }
                _ => Err(UpstreamError::Http(e.into_error())),
            },
        }
    }

    /// Returns the connection to its pool for the next request. Call only once the response
    /// body has been read to its end.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let _ = self.home.local(self.worker).push(Idle {
            sender: self.sender,
            since: clock_nanos(),
        });
    }
}
