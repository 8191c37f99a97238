//! The response body type: a streamed upstream body or a short local one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::access_log::PendingLog;
use crate::upstream::connection::PooledConnection;
use crate::upstream::{Backend, InFlight};

/// A response body, streamed frame by frame; never buffered whole.
#[derive(Debug)]
pub enum ProxyBody {
    /// A backend's body; the request counts as in flight on that backend until it ends.
    Upstream {
        /// The body as hyper receives it.
        body: Incoming,
        /// Dropped with the body.
        in_flight: InFlight<Arc<Backend>>,
        /// The connection it arrives on, given back to its pool once the body has ended.
        connection: Option<PooledConnection>,
        /// The backend slot it holds under `max_connections`, freed with the body.
        slot: Option<OwnedSemaphorePermit>,
        /// Its access log record, written when the body is done with.
        pending_log: Option<Box<PendingLog>>,
    },
    /// A body Steelyard wrote itself (errors).
    Local(Option<Bytes>),
}

impl ProxyBody {
    /// A backend's body arriving on `connection`; an empty body frees the connection at once.
    pub fn upstream(
        body: Incoming,
        in_flight: InFlight<Arc<Backend>>,
        connection: PooledConnection,
        slot: Option<OwnedSemaphorePermit>,
    ) -> ProxyBody {
        let connection = if body.is_end_stream() {
            connection.release();
            None
        } else {
            Some(connection)
        };
        ProxyBody::Upstream {
            body,
            in_flight,
            connection,
            slot,
            pending_log: None,
        }
    }

    /// A small local body.
    pub fn local(text: &'static str) -> ProxyBody {
        ProxyBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                connection,
                in_flight,
                pending_log,
                ..
            } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame {
                    if let Some(data) = f.data_ref() {
                        in_flight.backend().record_bytes(in_flight.worker(), data.len() as u64);
                        if let Some(record) = pending_log.as_mut().and_then(|p| p.record.as_mut()) {
                            record.bytes += data.len() as u64;
                        }
                    }
                }
                match &frame {
                    Poll::Ready(None) => release(connection),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => release(connection),
                    // An error leaves the connection unusable: drop (close) it.
                    Poll::Ready(Some(Err(_))) => *connection = None,
                    _ => {}
                }
                frame
            }
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

fn release(connection: &mut Option<PooledConnection>) {
    if let Some(c) = connection.take() {
        c.release();
    }
}
