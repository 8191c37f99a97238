//! A connection's byte stream, either side of the proxy: plain TCP, or TLS over it (rustls).
//!
//! The engine reads and writes a connection from one task, sometimes both ways at once (a
//! request body going up while the response comes down). A plain socket splits into borrowed
//! halves for free. A TLS session cannot be split without a lock, since reading and writing
//! share rustls's state: it sits in a `Mutex` that each half takes for the length of one poll,
//! never across an await, so on one task it is never contended. Writes to a TLS session may
//! stay buffered inside rustls until flushed: the engine flushes before it waits for anything
//! else (a no-op on plain TCP).

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// A TLS session over TCP, as tokio-rustls gives it for either side.
pub trait TlsSession: AsyncRead + AsyncWrite + Unpin {
    /// The socket under it.
    fn tcp(&self) -> &TcpStream;
    /// True when rustls needs more bytes from the socket before it can yield anything.
    fn wants_read(&self) -> bool;
    /// The protocol chosen by ALPN.
    fn alpn(&self) -> Option<&[u8]>;
}

impl TlsSession for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn wants_read(&self) -> bool {
        self.get_ref().1.wants_read()
    }
    fn alpn(&self) -> Option<&[u8]> {
        self.get_ref().1.alpn_protocol()
    }
}

impl TlsSession for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn wants_read(&self) -> bool {
        self.get_ref().1.wants_read()
    }
    fn alpn(&self) -> Option<&[u8]> {
        self.get_ref().1.alpn_protocol()
    }
}

/// A connection's stream: plain, or TLS of session type `T`.
#[derive(Debug)]
pub enum Stream<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<Mutex<T>>),
}

/// A client connection: TLS, when there is any, is terminated here.
pub type ClientIo = Stream<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection to a backend: TLS, when there is any, is originated here.
pub type UpstreamIo = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_mut<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: TlsSession> Stream<T> {
    /// A TLS stream after its handshake.
    pub fn tls(session: T) -> Stream<T> {
        Stream::Tls(Box::new(Mutex::new(session)))
    }

    /// True when the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// True when the peers chose HTTP/2 by ALPN.
    pub fn alpn_is_h2(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(m) => lock_mut(m).alpn() == Some(b"h2"),
        }
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Stream::Plain(s) => s.local_addr(),
            Stream::Tls(m) => lock(m).tcp().local_addr(),
        }
    }

    /// The TLS session, if any.
    pub fn session(&self) -> Option<MutexGuard<'_, T>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(m) => Some(lock(m)),
        }
    }

    /// Ready when a read will not wait: the socket is readable, or (TLS) rustls already holds
    /// decrypted bytes or a close. Holds no buffer meanwhile.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(m) => {
                let tls = lock_mut(m);
                if !tls.wants_read() {
                    return Poll::Ready(Ok(()));
                }
                tls.tcp().poll_read_ready(cx)
            }
        }
    }

    /// True when the peer has neither closed the idle stream nor sent anything unasked:
    /// what a pooled connection must be before it is reused. Never waits; a TLS session
    /// consumes what arrived meanwhile (TLS 1.3 session tickets) on the way.
    pub fn is_quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(s) => matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Stream::Tls(m) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                matches!(Pin::new(lock_mut(m)).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }

    /// Read and write halves usable at the same time on one task.
    pub fn split(&mut self) -> (ReadHalfOf<'_, T>, WriteHalfOf<'_, T>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalfOf::Plain(r), WriteHalfOf::Plain(w))
            }
            Stream::Tls(m) => (ReadHalfOf::Tls(m), WriteHalfOf::Tls(m)),
        }
    }
}

impl ClientIo {
    /// The subject of the client's verified certificate, when it sent one over TLS.
    pub fn client_subject(&self) -> Option<String> {
        crate::tls::client_subject(self.session()?.get_ref().1.peer_certificates())
    }
}

// The whole stream reads and writes through its halves, so one place dispatches on the
// variant (splitting only borrows; a TLS half locks the uncontended mutex for one poll).
impl<T: TlsSession> AsyncRead for Stream<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().split().0).poll_read(cx, buf)
    }
}

impl<T: TlsSession> AsyncWrite for Stream<T> {
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

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalfOf<'a, T> {
    /// Plain TCP.
    Plain(ReadHalf<'a>),
    /// TLS: the session, locked for each poll.
    Tls(&'a Mutex<T>),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalfOf<'a, T> {
    /// Plain TCP.
    Plain(WriteHalf<'a>),
    /// TLS: the session, locked for each poll.
    Tls(&'a Mutex<T>),
}

impl<T: TlsSession> AsyncRead for ReadHalfOf<'_, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalfOf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalfOf::Tls(m) => Pin::new(&mut *lock(m)).poll_read(cx, buf),
        }
    }
}

impl<T: TlsSession> AsyncWrite for WriteHalfOf<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalfOf::Plain(w) => Pin::new(w).poll_write(cx, data),
            WriteHalfOf::Tls(m) => Pin::new(&mut *lock(m)).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalfOf::Plain(w) => poll_send_vectored(w.as_ref(), cx, bufs),
            WriteHalfOf::Tls(m) => Pin::new(&mut *lock(m)).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalfOf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalfOf::Tls(m) => Pin::new(&mut *lock(m)).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalfOf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalfOf::Tls(m) => Pin::new(&mut *lock(m)).poll_shutdown(cx),
        }
    }
}

/// Writes `bufs` with `sendmsg` rather than the `writev` tokio would use: the same bytes in
/// one call, without the file layer's checks that a socket does not need (`vfs_writev`,
/// `rw_verify_area`, the position lock). In `perf`, `writev`'s own kernel functions were
/// 4.4% of a proxied request's CPU and `sendmsg`'s are 2.7%.
fn poll_send_vectored(tcp: &TcpStream, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_io(Interest::WRITABLE, || socket2::SockRef::from(tcp).send_vectored(bufs)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}
