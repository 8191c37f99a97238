//! gRPC through Steelyard: tonic clients in front, tonic-coded origins behind an `h2c` pool.
//! All four call kinds stream through, statuses and their metadata (trailers-only and real
//! trailers) arrive intact, each call of one client connection is balanced on its own, a call's
//! `grpc-timeout` is enforced by the proxy, and failures Steelyard answers itself are gRPC
//! statuses. The service `test.Echo` is written by hand the way tonic-build writes it (no
//! protoc); real origins, the real server, real clients.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::client::Grpc;
use tonic::codegen::{Body as HttpBody, BoxFuture, BoxStream, Context, Poll, Service, StdError};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

const UNARY: &str = "/test.Echo/Unary";
const SERVER_STREAMING: &str = "/test.Echo/ServerStreaming";
const CLIENT_STREAMING: &str = "/test.Echo/ClientStreaming";
const BIDI: &str = "/test.Echo/Bidi";

/// `message Msg { string text = 1; uint32 n = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_owned(),
        n,
    }
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

/// `INVALID_ARGUMENT "bad"` with the custom metadata `x-detail: why`.
fn bad() -> Status {
    let mut status = Status::invalid_argument("bad");
    status
        .metadata_mut()
        .insert("x-detail", MetadataValue::from_static("why"));
    status
}

/// Asserts that `status` is the origin's [`bad`] with its code, message and metadata intact.
fn assert_bad(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "bad");
    let detail = status.metadata().get("x-detail").and_then(|v| v.to_str().ok());
    assert_eq!(detail, Some("why"), "{status:?}");
}

/// Lets a test keep a call in flight: a unary call with text `hold` reports its origin's name
/// on `arrived`, then waits for a permit on `release`.
struct Hold {
    arrived: mpsc::UnboundedSender<&'static str>,
    release: Semaphore,
}

impl Hold {
    fn new() -> (Arc<Hold>, mpsc::UnboundedReceiver<&'static str>) {
        let (arrived, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Hold {
                arrived,
                release: Semaphore::new(0),
            }),
            rx,
        )
    }
}

/// The `test.Echo` server: dispatches on the path like tonic-build's generated servers.
#[derive(Clone)]
struct Echo {
    name: &'static str,
    hold: Arc<Hold>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl<B> Service<http::Request<B>> for Echo
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let echo = self.clone();
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec());
            Ok(match path.as_str() {
                UNARY => grpc.unary(Unary(echo), req).await,
                SERVER_STREAMING => grpc.server_streaming(ServerStreaming, req).await,
                CLIENT_STREAMING => grpc.client_streaming(ClientStreaming, req).await,
                BIDI => grpc.streaming(Bidi, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Answers `<origin>:<text>`; `fail` is [`bad`], `sleep:<ms>` answers after that long, `hold`
/// waits for the test (see [`Hold`]).
struct Unary(Echo);

impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let Echo { name, hold } = self.0.clone();
        Box::pin(async move {
            let Msg { text, n } = request.into_inner();
            if text == "fail" {
                return Err(bad());
            }
            if let Some(ms) = text.strip_prefix("sleep:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().expect("ms"))).await;
            }
            if text == "hold" {
                let _ = hold.arrived.send(name);
                hold.release.acquire().await.expect("semaphore open").forget();
            }
            Ok(Response::new(Msg {
                text: format!("{name}:{text}"),
                n,
            }))
        })
    }
}

/// Answers `n` messages `<text>-<i>`; after them, `fail` ends with [`bad`] in the trailers.
struct ServerStreaming;

impl tonic::server::ServerStreamingService<Msg> for ServerStreaming {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        let Msg { text, n } = request.into_inner();
        let mut items: Vec<Result<Msg, Status>> = (0..n)
            .map(|i| {
                Ok(Msg {
                    text: format!("{text}-{i}"),
                    n: i,
                })
            })
            .collect();
        if text == "fail" {
            items.push(Err(bad()));
        }
        let stream: BoxStream<Msg> = Box::pin(tokio_stream::iter(items));
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

/// Answers the texts received, concatenated, and their count in `n`.
struct ClientStreaming;

impl tonic::server::ClientStreamingService<Msg> for ClientStreaming {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let (mut text, mut n) = (String::new(), 0);
            while let Some(m) = inbound.message().await? {
                text.push_str(&m.text);
                n += 1;
            }
            Ok(Response::new(Msg { text, n }))
        })
    }
}

/// Echoes each message, uppercased, as soon as it arrives.
struct Bidi;

impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        let echoes: BoxStream<Msg> = Box::pin(request.into_inner().map(|m| {
            m.map(|m| Msg {
                text: m.text.to_uppercase(),
                n: m.n,
            })
        }));
        Box::pin(async move { Ok(Response::new(echoes)) })
    }
}

/// Starts a `test.Echo` origin named `name` on 127.0.0.1:0 (cleartext HTTP/2).
async fn spawn_echo(name: &'static str) -> SocketAddr {
    spawn_held_echo(name, Hold::new().0).await
}

/// [`spawn_echo`] whose `hold` calls use `hold`.
///
/// Served by hyper directly rather than `tonic::transport::Server`: that server times a call
/// out itself when its `grpc-timeout` passes, and the deadline test must see only the proxy's.
async fn spawn_held_echo(name: &'static str, hold: Arc<Hold>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    let echo = Echo { name, hold };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let echo = echo.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    Service::call(&mut echo.clone(), req)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One listener on port 0 in front of an `h2c` pool `grpc` over `backends`, with `pool_extra`
/// lines.
fn grpc_toml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"grpc\" }}]\n\n[pools.grpc]\nprotocol = \"h2c\"\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// A tonic client of `proxy`: one HTTP/2 connection, shared by its clones.
async fn grpc_client(proxy: &Steelyard) -> Grpc<Channel> {
    let channel = Endpoint::from_shared(proxy.url(""))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to steelyard");
    Grpc::new(channel)
}

async fn unary(grpc: &mut Grpc<Channel>, request: Msg) -> Result<Msg, Status> {
    grpc.ready().await.expect("channel ready");
    grpc.unary(Request::new(request), PathAndQuery::from_static(UNARY), codec())
        .await
        .map(Response::into_inner)
}

/// The texts of a response stream up to its end, and how it ended.
async fn drain(stream: &mut Streaming<Msg>) -> (Vec<String>, Result<(), Status>) {
    let mut texts = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => texts.push(m.text),
            Ok(None) => return (texts, Ok(())),
            Err(status) => return (texts, Err(status)),
        }
    }
}

/// One bare HTTP/2 connection as a gRPC transport. Unlike tonic's `Channel`, which times a
/// call out itself when its `grpc-timeout` passes (as `Status::cancelled`), it enforces no
/// deadline: a DEADLINE_EXCEEDED that comes through it was sent by the proxy.
struct BareH2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for BareH2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

async fn bare_h2_client(addr: SocketAddr) -> Grpc<BareH2> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    Grpc::with_origin(BareH2(send), format!("http://{addr}").parse().expect("origin"))
}

/// A gRPC request frame: uncompressed flag, big-endian length, the encoded message.
fn grpc_frame(m: &Msg) -> Vec<u8> {
    let payload = prost::Message::encode_to_vec(m);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Unary, server-streaming, client-streaming and bidirectional calls all work through the
/// proxy; a bidirectional call is answered message by message, before the client's stream
/// ends. Statuses arrive with their code, message and custom metadata, both trailers-only (a
/// failed unary call) and in real trailers after messages (a failed server stream).
#[tokio::test]
async fn unary_and_all_streaming_kinds_pass_through() {
    let origin = spawn_echo("a").await;
    let proxy = spawn_steelyard(config(&grpc_toml(&[origin], ""))).await;
    let mut grpc = grpc_client(&proxy).await;

    assert_eq!(unary(&mut grpc, msg("hi", 7)).await.expect("unary"), msg("a:hi", 7));
    assert_bad(&unary(&mut grpc, msg("fail", 0)).await.expect_err("a failed call"));

    for (text, end_in_error) in [("s", false), ("fail", true)] {
        grpc.ready().await.expect("channel ready");
        let mut stream = grpc
            .server_streaming(
                Request::new(msg(text, 3)),
                PathAndQuery::from_static(SERVER_STREAMING),
                codec(),
            )
            .await
            .expect("server streaming")
            .into_inner();
        let (texts, end) = drain(&mut stream).await;
        let expected: Vec<String> = (0..3).map(|i| format!("{text}-{i}")).collect();
        assert_eq!(texts, expected);
        if end_in_error {
            assert_bad(&end.expect_err("the stream ends in the status"));
        } else {
            end.expect("the stream ends with grpc-status 0");
        }
    }

    grpc.ready().await.expect("channel ready");
    let parts = tokio_stream::iter([msg("x", 0), msg("y", 0), msg("z", 0)]);
    let reply = grpc
        .client_streaming(
            Request::new(parts),
            PathAndQuery::from_static(CLIENT_STREAMING),
            codec(),
        )
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!(reply, msg("xyz", 3));

    grpc.ready().await.expect("channel ready");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut echoes = grpc
        .streaming(
            Request::new(UnboundedReceiverStream::new(rx)),
            PathAndQuery::from_static(BIDI),
            codec(),
        )
        .await
        .expect("bidi call")
        .into_inner();
    for word in ["ping", "pong", "done"] {
        tx.send(msg(word, 0)).expect("request stream open");
        let echo = timeout(DEADLINE, echoes.message())
            .await
            .expect("echoed before the request stream ends")
            .expect("echo")
            .expect("a message");
        assert_eq!(echo.text, word.to_uppercase());
    }
    drop(tx);
    assert!(echoes.message().await.expect("a clean end").is_none());
    proxy.shutdown().await;
}

/// Every call picks a backend, not every connection: with `round_robin`, ten unary calls over
/// one client connection (one tonic `Channel`) alternate between the two backends exactly.
#[tokio::test]
async fn calls_are_balanced_per_stream_not_per_connection() {
    let backends = [spawn_echo("a").await, spawn_echo("b").await];
    let proxy = spawn_steelyard(config(&grpc_toml(&backends, "algorithm = \"round_robin\""))).await;
    let mut grpc = grpc_client(&proxy).await;
    let mut answered = Vec::new();
    for _ in 0..10 {
        let reply = unary(&mut grpc, msg("x", 0)).await.expect("unary");
        answered.push(reply.text.split_once(':').expect("origin:text").0.to_owned());
    }
    assert_eq!(answered, ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b"]);
    proxy.shutdown().await;
}

/// `least_request` also weighs each call: while one call of a connection is held in flight on
/// one backend, the next calls of the same connection all go to the other.
#[tokio::test]
async fn least_request_balances_each_call_of_one_connection() {
    let (hold, mut arrived) = Hold::new();
    let backends = [
        spawn_held_echo("a", Arc::clone(&hold)).await,
        spawn_held_echo("b", Arc::clone(&hold)).await,
    ];
    let proxy = spawn_steelyard(config(&grpc_toml(&backends, "algorithm = \"least_request\""))).await;
    let mut grpc = grpc_client(&proxy).await;
    let mut held_grpc = grpc.clone();
    let held = tokio::spawn(async move { unary(&mut held_grpc, msg("hold", 0)).await });
    let busy = timeout(DEADLINE, arrived.recv())
        .await
        .expect("the held call reaches a backend")
        .expect("hold open");
    let idle = if busy == "a" { "b" } else { "a" };
    for _ in 0..10 {
        let reply = unary(&mut grpc, msg("x", 0)).await.expect("unary");
        assert_eq!(reply.text, format!("{idle}:x"), "{busy} is busy with the held call");
    }
    hold.release.add_permits(1);
    let reply = held.await.expect("task").expect("the held call completes");
    assert_eq!(reply.text, format!("{busy}:hold"));
    proxy.shutdown().await;
}

/// A call's `grpc-timeout` is its deadline at the proxy, however long `response_header`
/// allows: a call of 200 ms to a backend that answers after 2 s ends at about 200 ms with
/// DEADLINE_EXCEEDED written by Steelyard. Neither the client transport nor the origin server
/// enforces the timeout here, so only the proxy can have.
#[tokio::test]
async fn a_deadline_is_enforced_by_the_proxy() {
    let origin = spawn_echo("a").await;
    let proxy = spawn_steelyard(config(&grpc_toml(
        &[origin],
        "timeouts = { response_header = \"30s\" }",
    )))
    .await;
    let mut grpc = bare_h2_client(proxy.addr).await;
    let mut request = Request::new(msg("sleep:2000", 0));
    request.set_timeout(Duration::from_millis(200));
    grpc.ready().await.expect("connection ready");
    let started = Instant::now();
    let status = grpc
        .unary(request, PathAndQuery::from_static(UNARY), codec())
        .await
        .expect_err("the deadline passes first");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "steelyard: deadline exceeded");
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    proxy.shutdown().await;
}

/// A backend that refuses connections is UNAVAILABLE to a gRPC client, not a protocol error
/// from a plain-text 502: on the wire, a trailers-only HTTP 200 with `grpc-status: 14`.
#[tokio::test]
async fn an_unavailable_backend_is_a_grpc_error() {
    let closed = closed_port();
    let proxy = spawn_steelyard(config(&grpc_toml(&[closed.addr], ""))).await;
    let mut grpc = grpc_client(&proxy).await;
    let status = unary(&mut grpc, msg("hi", 0)).await.expect_err("no backend listens");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("steelyard: "), "{status:?}");

    let res = h2_client()
        .post(proxy.url(UNARY))
        .header("content-type", "application/grpc")
        .body(grpc_frame(&msg("hi", 0)))
        .send()
        .await
        .expect("raw call");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "14");
    assert!(res.bytes().await.expect("body").is_empty(), "trailers-only: no body");
    proxy.shutdown().await;
}
