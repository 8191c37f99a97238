//! Test harness: real origins and a real Steelyard on 127.0.0.1:0, real HTTP clients.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use steelyard::{Config, Server};

mod dnsmasq;
mod etcd;
mod pki;
mod process;
mod raw_origin;
mod redis;
#[allow(unused_imports)] // only the discovery tests run a DNS server
pub use dnsmasq::Dnsmasq;
#[allow(unused_imports)] // only the etcd tests run etcd
pub use etcd::EtcdServer;
#[allow(unused_imports)] // only the TLS tests make certificates
pub use pki::Pki;
#[allow(unused_imports)] // not every test binary runs the compiled binary
pub use process::{run_check, upgrade_pids, Process, Successor, BIN};
#[allow(unused_imports)] // only the HTTP/1 edge tests record raw bytes
pub use raw_origin::{spawn_recording_origin, Recording};
#[allow(unused_imports)] // only the fleet tests run Redis
pub use redis::RedisServer;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// What an origin has seen.
#[derive(Debug, Default)]
pub struct OriginStats {
    /// Requests received, health probes (`/healthz`) not counted.
    pub requests: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// TCP connections open now.
    pub open_connections: AtomicUsize,
    /// Headers of the last request received.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Status `/healthz` answers with (0 means 200).
    pub health_status: AtomicU16,
    /// Status every other plain request answers with (0 means 200).
    pub status: AtomicU16,
    /// The SNI of the last TLS connection (empty when it sent none).
    pub last_sni: Mutex<Option<String>>,
    /// The client certificate (DER) of the last TLS connection, `None` when it sent none.
    pub last_client_certificate: Mutex<Option<Vec<u8>>>,
    /// TLS handshakes that failed (a client certificate refused, for one).
    pub failed_handshakes: AtomicUsize,
    /// The HTTP version of the last request.
    pub last_version: Mutex<Option<http::Version>>,
}

/// How an origin serves: plain HTTP/1.1 by default.
#[derive(Clone, Default)]
pub struct OriginOptions {
    /// TLS with this config; ALPN `h2` gets HTTP/2, anything else HTTP/1.1.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Cleartext HTTP/2 by prior knowledge instead of HTTP/1.1.
    pub h2c: bool,
    /// HTTP/2: each connection sends GOAWAY (graceful) after this many requests.
    pub goaway_after: Option<usize>,
}

/// A small HTTP origin that says who it is.
///
/// Paths: `/echo` streams the request body back; `/upload` reads the body and answers
/// `"<bytes> <checksum>"`; `/download?bytes=N` streams N bytes (chunked); `/slow?ms=N` answers
/// after N ms; `/hop` answers with hop-by-hop headers; `/close` answers and closes the
/// connection; `/empty` answers 204; anything else answers with the name.
#[derive(Debug, Clone)]
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<OriginStats>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Origin {
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }
    pub fn open_connections(&self) -> usize {
        self.stats.open_connections.load(Ordering::SeqCst)
    }
    /// Makes `/healthz` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.stats.health_status.store(status, Ordering::SeqCst);
    }
    /// Makes every plain request answer `status`.
    pub fn set_status(&self, status: u16) {
        self.stats.status.store(status, Ordering::SeqCst);
    }
    /// Stops listening and closes every connection at once, like a crashed process.
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }
    /// The SNI of the last TLS connection ("" without SNI).
    pub fn last_sni(&self) -> String {
        self.stats
            .last_sni
            .lock()
            .expect("lock")
            .clone()
            .expect("a TLS connection")
    }
    /// The client certificate (DER) the last TLS connection presented, if any.
    pub fn last_client_certificate(&self) -> Option<Vec<u8>> {
        self.stats.last_client_certificate.lock().expect("lock").clone()
    }
    /// TLS handshakes the origin refused or that broke off.
    pub fn failed_handshakes(&self) -> usize {
        self.stats.failed_handshakes.load(Ordering::SeqCst)
    }
    pub fn last_version(&self) -> http::Version {
        self.stats.last_version.lock().expect("lock").expect("a request")
    }
    pub fn last_headers(&self) -> HeaderMap {
        self.stats
            .last_headers
            .lock()
            .expect("lock")
            .clone()
            .expect("origin saw a request")
    }
}

type OriginBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).boxed()
}

/// A checksum cheap enough for gigabytes: FNV-1a over the bytes.
pub fn checksum(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
pub const CHECKSUM_SEED: u64 = 0xcbf29ce484222325;

/// The byte at offset `i` of every generated download or upload.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A chunk of the test pattern starting at `offset`.
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| pattern_byte(offset + i))
        .collect::<Vec<u8>>()
        .into()
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

async fn origin_handler(
    name: String,
    stats: Arc<OriginStats>,
    delay: Duration,
    req: Request<Incoming>,
) -> Response<OriginBody> {
    if req.uri().path() != "/healthz" {
        stats.requests.fetch_add(1, Ordering::SeqCst);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    *stats.last_headers.lock().expect("lock") = Some(req.headers().clone());
    *stats.last_version.lock().expect("lock") = Some(req.version());
    let path = req.uri().path().to_owned();
    let mut res = match path.as_str() {
        "/echo" => {
            let body = req.into_body().map_err(|_| unreachable_infallible()).boxed();
            Response::new(body)
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut n, mut sum) = (0u64, CHECKSUM_SEED);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    sum = checksum(sum, &data);
                    n += data.len() as u64;
                }
            }
            Response::new(full(format!("{n} {sum}")))
        }
        "/download" => {
            let total = query_u64(&req, "bytes").unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let chunks = stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
                let start = i * CHUNK;
                let len = CHUNK.min(total - start) as usize;
                Ok::<_, Infallible>(Frame::data(pattern_chunk(start, len)))
            }));
            Response::new(StreamBody::new(chunks).boxed())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms").unwrap_or(100))).await;
            Response::new(full(name.clone()))
        }
        "/close" => {
            let mut res = Response::new(full(name.clone()));
            res.headers_mut().insert("connection", "close".parse().expect("value"));
            res
        }
        "/empty" => {
            let mut res = Response::new(full(Bytes::new()));
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        }
        "/healthz" => {
            let mut res = Response::new(full("ok"));
            let code = stats.health_status.load(Ordering::SeqCst);
            *res.status_mut() = StatusCode::from_u16(if code == 0 { 200 } else { code }).expect("status");
            res
        }
        "/hop" => {
            let mut res = Response::new(full(name.clone()));
            let h = res.headers_mut();
            h.insert("connection", "x-hop-named".parse().expect("value"));
            h.insert("x-hop-named", "1".parse().expect("value"));
            h.insert("keep-alive", "timeout=5".parse().expect("value"));
            h.insert("proxy-connection", "keep-alive".parse().expect("value"));
            h.insert("trailer", "x-checksum".parse().expect("value"));
            h.insert("x-end-to-end", "kept".parse().expect("value"));
            res
        }
        _ => {
            let mut res = Response::new(full(name.clone()));
            let code = stats.status.load(Ordering::SeqCst);
            *res.status_mut() = StatusCode::from_u16(if code == 0 { 200 } else { code }).expect("status");
            res
        }
    };
    res.headers_mut().insert("x-origin", name.parse().expect("value"));
    res
}

fn unreachable_infallible() -> Infallible {
    panic!("request body failed while echoing")
}

/// Starts an origin named `name` on 127.0.0.1:0, serving HTTP/1.1 with keep-alive.
pub async fn spawn_origin(name: &str) -> Origin {
    spawn_origin_delayed(name, Duration::ZERO).await
}

/// Like [`spawn_origin`], but every response waits `delay` first: a slow backend.
pub async fn spawn_origin_delayed(name: &str, delay: Duration) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    serve_origin(name, listener, delay, OriginOptions::default())
}

/// Like [`spawn_origin`], serving as `options` say (TLS, HTTP/2).
pub async fn spawn_origin_with(name: &str, options: OriginOptions) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    serve_origin(name, listener, Duration::ZERO, options)
}

/// Starts an origin on a given address again (after [`Origin::kill`]), with fresh stats.
pub async fn respawn_origin(name: &str, addr: SocketAddr) -> Origin {
    let listener = TcpListener::bind(addr).await.expect("rebind origin");
    serve_origin(name, listener, Duration::ZERO, OriginOptions::default())
}

fn serve_origin(name: &str, listener: TcpListener, delay: Duration, options: OriginOptions) -> Origin {
    let addr = listener.local_addr().expect("origin addr");
    let stats = Arc::new(OriginStats::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let origin = Origin {
        name: name.to_owned(),
        addr,
        stats: Arc::clone(&stats),
        stop: Arc::new(stop),
    };
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut accept_stop = stopped.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = killed(&mut accept_stop) => return,
            };
            let Ok((stream, _)) = accepted else { return };
            stats.connections.fetch_add(1, Ordering::SeqCst);
            stats.open_connections.fetch_add(1, Ordering::SeqCst);
            let (name, stats) = (name.clone(), Arc::clone(&stats));
            let mut conn_stop = stopped.clone();
            let options = options.clone();
            tokio::spawn(async move {
                let conn_stats = Arc::clone(&stats);
                let served = Arc::new(AtomicUsize::new(0));
                let goaway = Arc::new(tokio::sync::Notify::new());
                let (counted, notify) = (Arc::clone(&served), Arc::clone(&goaway));
                let goaway_after = options.goaway_after;
                let service = service_fn(move |req| {
                    let (name, stats) = (name.clone(), Arc::clone(&stats));
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    if goaway_after == Some(n) {
                        notify.notify_one();
                    }
                    async move { Ok::<_, Infallible>(origin_handler(name, stats, delay, req).await) }
                });
                let serve = async {
                    match &options.tls {
                        Some(config) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(Arc::clone(config)).accept(stream).await
                            else {
                                conn_stats.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                                return;
                            };
                            let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                            *conn_stats.last_sni.lock().expect("lock") = Some(sni);
                            *conn_stats.last_client_certificate.lock().expect("lock") =
                                tls.get_ref().1.peer_certificates().map(|chain| chain[0].to_vec());
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_io(TokioIo::new(tls), h2, service, &goaway).await;
                        }
                        None => serve_io(TokioIo::new(stream), options.h2c, service, &goaway).await,
                    }
                };
                tokio::select! {
                    () = serve => {}
                    () = killed(&mut conn_stop) => {}
                }
                conn_stats.open_connections.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    origin
}

/// Serves one origin connection over HTTP/1.1, or HTTP/2 with `h2` (sending GOAWAY when
/// `goaway` is notified).
async fn serve_io<I, S>(io: TokioIo<I>, h2: bool, service: S, goaway: &tokio::sync::Notify)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<OriginBody>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    if !h2 {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
        return;
    }
    let conn =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = goaway.notified(), if !shutting => {
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes when the origin is killed; never when its handle is merely dropped.
async fn killed(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An origin that accepts connections and reads requests but never answers.
pub async fn spawn_hanging_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            held.push(stream);
        }
    });
    addr
}

/// An origin that reads a request and then resets the connection without answering.
pub async fn spawn_resetting_origin() -> SocketAddr {
    spawn_counting_resetting_origin().await.0
}

/// [`spawn_resetting_origin`], also counting the requests that reached it.
pub async fn spawn_counting_resetting_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
    });
    (addr, seen)
}

/// A loopback port that stays closed while the guard lives: a socket is bound to it but never
/// listens, so connections are refused and no other test can take the port meanwhile.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _bound: socket2::Socket,
}

/// A loopback address where nothing listens (connections are refused) for as long as the
/// returned guard lives.
pub fn closed_port() -> ClosedPort {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
    ClosedPort { addr, _bound: socket }
}

/// A loopback port free right now, for a test that binds it itself later (another process may
/// take it in between; prefer port 0 wherever the code under test can report its address).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A loopback address whose accept queue is full, so new connections hang in SYN_SENT:
/// the way to make a connect time out without leaving loopback. Keep the returned guard alive.
pub fn blackhole_port() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
    // Fill the (tiny) accept queue; later connection attempts get no SYN-ACK.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (addr, fillers, socket)
}

/// A Steelyard server running in this process.
pub struct Steelyard {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub reload: steelyard::ReloadHandle,
    /// The admin listener, when the config set `[admin] listen` explicitly.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Steelyard {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the graceful shutdown; returns the task that finishes when draining is done.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }

    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("drains in time")
            .expect("task");
    }
}

impl Drop for Steelyard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts Steelyard in-process with `config` (listeners should use port 0). The admin
/// listener runs only when the config asks for one at an explicit address.
pub async fn spawn_steelyard(mut config: Config) -> Steelyard {
    if config.admin.as_ref().is_some_and(|a| !a.explicit) {
        config.admin = None;
    }
    let server = Server::bind(config).expect("bind steelyard");
    let admin = server.admin_addr();
    let addrs = server.local_addrs();
    let reload = server.reload_handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .expect("steelyard runs");
    });
    Steelyard {
        addr: addrs[0],
        addrs,
        reload,
        admin,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A validated config from TOML text; panics with the errors when invalid.
pub fn config(toml: &str) -> Config {
    Config::from_toml(toml, "test.toml", &steelyard::server::dns::System)
        .unwrap_or_else(|e| panic!("invalid test config:\n{e}"))
}

/// TOML for one listener on port 0 and one pool over `backends` with `pool_extra` lines.
pub fn one_pool_toml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// A reqwest client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

/// GETs `url` and returns status and body text.
pub async fn get(client: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let res = client.get(url).send().await.expect("request");
    let status = res.status();
    (status, res.text().await.expect("body"))
}

/// Sends raw bytes on a new connection and reads until the server closes it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Header names of a raw HTTP response, lowercased.
pub fn raw_header_map(response: &str) -> HashMap<String, String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What config validation says of `text` (as `t.toml`, addresses as IP literals), which
/// must be invalid.
pub fn config_error(text: &str) -> String {
    steelyard::Config::from_toml(text, "t.toml", &steelyard::config::LiteralsOnly)
        .expect_err("an invalid config")
        .to_string()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// Waits until the file at `path` has at least `n` lines (an access log being written by
/// another thread), then returns all of them.
#[allow(dead_code)] // only the access-log tests read logs
pub async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    eventually("the access log lines to be written", || async {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count() >= n)
            .unwrap_or(false)
    })
    .await;
    let text = std::fs::read_to_string(path).expect("log");
    text.lines().map(str::to_owned).collect()
}

/// The next datagram on a `$NOTIFY_SOCKET` socket (systemd's notify protocol), as text.
pub async fn notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
