//! A client connection's byte stream: plain TCP, or TLS over it (rustls).
//!
//! The engine reads and writes a client connection from one task, sometimes both ways at once
//! (a request body going up while the response comes down). A plain socket splits into
//! borrowed halves for free. A TLS session cannot be split without a lock, since reading and
//! writing share rustls's state: it sits in a `Mutex` that each half takes for the length of
//! one poll, never across an await, so on one task it is never contended. Writes to a TLS
//! session may stay buffered inside rustls until flushed: the engine flushes before it waits
//! for anything else (a no-op on plain TCP).

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection's stream.
#[derive(Debug)]
pub enum ClientIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated here.
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
}

fn lock(m: &Mutex<TlsStream<TcpStream>>) -> MutexGuard<'_, TlsStream<TcpStream>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientIo {
    /// A TLS stream after its handshake.
    pub fn tls(stream: TlsStream<TcpStream>) -> ClientIo {
        ClientIo::Tls(Box::new(Mutex::new(stream)))
    }

    /// True when TLS was terminated on it.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }

    /// True when the client chose HTTP/2 by ALPN.
    pub fn alpn_is_h2(&mut self) -> bool {
        match self {
            ClientIo::Plain(_) => false,
            ClientIo::Tls(m) => lock_mut(m).get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// The subject of the client's verified certificate, when it sent one over TLS.
    pub fn client_subject(&self) -> Option<String> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(m) => crate::tls::client_subject(lock(m).get_ref().1.peer_certificates()),
        }
    }

    /// Ready when a read will not wait: the socket is readable, or (TLS) rustls already holds
    /// decrypted bytes or a close. Holds no buffer meanwhile.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientIo::Plain(s) => s.poll_read_ready(cx),
            ClientIo::Tls(m) => {
                let tls = lock_mut(m);
                if !tls.get_ref().1.wants_read() {
                    return Poll::Ready(Ok(()));
                }
                tls.get_ref().0.poll_read_ready(cx)
            }
        }
    }

    /// Read and write halves usable at the same time on one task.
    pub fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientIo::Plain(s) => {
                let (r, w) = s.split();
                (ClientRead::Plain(r), ClientWrite::Plain(w))
            }
            ClientIo::Tls(m) => (ClientRead::Tls(m), ClientWrite::Tls(m)),
        }
    }
}

fn lock_mut(m: &mut Mutex<TlsStream<TcpStream>>) -> &mut TlsStream<TcpStream> {
    m.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// The whole stream reads and writes through its halves, so one place dispatches on the
// variant (splitting only borrows; a TLS half locks the uncontended mutex for one poll).
impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().split().1).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().split().1).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().1).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().1).poll_shutdown(cx)
    }
}

/// The reading half of a [`ClientIo`].
#[derive(Debug)]
pub enum ClientRead<'a> {
    /// Plain TCP.
    Plain(ReadHalf<'a>),
    /// TLS: the session, locked for each poll.
    Tls(&'a Mutex<TlsStream<TcpStream>>),
}

/// The writing half of a [`ClientIo`].
#[derive(Debug)]
pub enum ClientWrite<'a> {
    /// Plain TCP.
    Plain(WriteHalf<'a>),
    /// TLS: the session, locked for each poll.
    Tls(&'a Mutex<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientRead<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ClientRead::Tls(m) => Pin::new(&mut *lock(m)).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_write(cx, data),
            ClientWrite::Tls(m) => Pin::new(&mut *lock(m)).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            ClientWrite::Tls(m) => Pin::new(&mut *lock(m)).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_flush(cx),
            ClientWrite::Tls(m) => Pin::new(&mut *lock(m)).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(w) => Pin::new(w).poll_shutdown(cx),
            ClientWrite::Tls(m) => Pin::new(&mut *lock(m)).poll_shutdown(cx),
        }
    }
}
