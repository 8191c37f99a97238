//! Opening a connection to a backend: TCP, then TLS when its pool asks for it.
//!
//! One [`Connector`] per backend serves every way Steelyard reaches it (the HTTP/1 engine's
//! pooled connections, hyper's client for HTTP/2 and for requests that arrived over HTTP/2,
//! active health checks), so they all speak the same protocol over the same TLS settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::config::{UpstreamProtocol, UpstreamTlsConfig};
use crate::stream::UpstreamIo;

/// Why no connection to the backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, out of file descriptors...
    #[error("connect failed: {0}")]
    Failed(std::io::Error),
    /// No connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The TLS handshake failed: the certificate did not verify, no common protocol...
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The backend did not agree by ALPN to the protocol the pool speaks.
    #[error("the backend did not agree to {0} by ALPN")]
    Alpn(&'static str),
}

/// TLS to one backend: the pool's client config and the name to verify and send as SNI.
#[derive(Debug)]
pub struct TlsTarget {
    /// The pool's rustls client config.
    pub config: Arc<ClientConfig>,
    /// The backend's name for SNI and verification.
    pub name: ServerName<'static>,
    /// The settings `config` was built from, to tell whether a reload changed them.
    pub settings: UpstreamTlsConfig,
}

/// How to reach one backend.
#[derive(Debug)]
pub struct Connector {
    address: SocketAddr,
    protocol: UpstreamProtocol,
    /// Set when the pool is committed; a reload may change it (new CA, server name).
    tls: ArcSwapOption<TlsTarget>,
    /// Connections opened for traffic (not for health probes): with the requests sent, how
    /// well connections are reused.
    opened: std::sync::atomic::AtomicU64,
}

impl Connector {
    /// Plain TCP to `address` speaking `protocol`, until [`Connector::set_tls`].
    pub fn new(address: SocketAddr, protocol: UpstreamProtocol) -> Connector {
        Connector {
            address,
            protocol,
            tls: ArcSwapOption::empty(),
            opened: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Connections opened for traffic so far (health probes not counted).
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where it connects.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The protocol spoken over its connections.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Uses TLS with `target` for new connections (or plain TCP with `None`). True when that
    /// changes what connections are verified against: pooled ones should then be closed.
    pub fn set_tls(&self, target: Option<Arc<TlsTarget>>) -> bool {
        let same = |a: &TlsTarget, b: &TlsTarget| a.name == b.name && a.settings == b.settings;
        let old = self.tls.swap(target);
        match (old.as_deref(), self.tls.load().as_deref()) {
            (Some(a), Some(b)) => !same(a, b),
            (None, None) => false,
            _ => true,
        }
    }

    /// Opens a TCP connection and, for a TLS backend, completes the handshake, for a health
    /// probe (not counted in [`Connector::opened`]). The caller bounds the whole with the
    /// connect timeout.
    pub async fn connect(&self) -> Result<UpstreamIo, ConnectError> {
        self.open(None).await
    }

    /// Opens a connection for traffic, writing `preamble` (a PROXY protocol header) first,
    /// before any TLS.
    pub async fn connect_with(&self, preamble: Option<&[u8]>) -> Result<UpstreamIo, ConnectError> {
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open(preamble).await
    }

    async fn open(&self, preamble: Option<&[u8]>) -> Result<UpstreamIo, ConnectError> {
        let stream = self.connect_tcp(preamble).await?;
        let Some(tls) = self.tls.load_full() else {
            return Ok(UpstreamIo::Plain(stream));
        };
        let session = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
            .connect(tls.name.clone(), stream)
            .await
            .map_err(ConnectError::Tls)?;
        let wanted: &[u8] = if self.protocol.is_h2() { b"h2" } else { b"http/1.1" };
        // A backend may ignore ALPN altogether; then HTTP/1.1 is what it speaks.
        match session.get_ref().1.alpn_protocol() {
            Some(p) if p != wanted => return Err(ConnectError::Alpn(self.protocol.name())),
            None if self.protocol.is_h2() => return Err(ConnectError::Alpn(self.protocol.name())),
            _ => {}
        }
        Ok(UpstreamIo::tls(session))
    }

    /// [`Connector::connect_with`] within `timeout`.
    pub async fn connect_within(&self, timeout: Duration, preamble: Option<&[u8]>) -> Result<UpstreamIo, ConnectError> {
        within(timeout, self.connect_with(preamble)).await
    }

    /// Plain TCP within `timeout`, `preamble` written first, whatever the pool's TLS settings:
    /// for bytes that are already TLS (passed through) and must not be wrapped again.
    pub async fn connect_plain_within(
        &self,
        timeout: Duration,
        preamble: Option<&[u8]>,
    ) -> Result<UpstreamIo, ConnectError> {
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        within(timeout, async {
            self.connect_tcp(preamble).await.map(UpstreamIo::Plain)
        })
        .await
    }

    /// The TCP connection, `preamble` written first.
    async fn connect_tcp(&self, preamble: Option<&[u8]>) -> Result<TcpStream, ConnectError> {
        let mut stream = TcpStream::connect(self.address).await.map_err(ConnectError::Failed)?;
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = preamble {
            tokio::io::AsyncWriteExt::write_all(&mut stream, bytes)
                .await
                .map_err(ConnectError::Failed)?;
        }
        Ok(stream)
    }
}

/// `connect` bounded by `timeout`.
async fn within(
    timeout: Duration,
    connect: impl std::future::Future<Output = Result<UpstreamIo, ConnectError>>,
) -> Result<UpstreamIo, ConnectError> {
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::TimedOut(timeout)),
    }
}
