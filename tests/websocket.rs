//! WebSocket through the proxy with a real client and server library: the upgrade, frames of
//! every kind both ways, a 1 MiB message, closes from either side, the idle timeout, and the
//! upgraded connections counted in metrics.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server. A text message `"close please"` makes it close the connection
/// itself. Counts connections that ended.
async fn spawn_ws_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ended = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&ended);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "close please" => {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "as asked".into(),
                                }))
                                .await;
                        }
                        Message::Text(_) | Message::Binary(_) if ws.send(msg.clone()).await.is_err() => break,
                        _ => {}
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, ended)
}

fn ws_toml(origin: SocketAddr, listener_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{listener_extra}\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [\"{origin}\"]\n"
    )
}

async fn metric(sy: &Steelyard, line_start: &str) -> String {
    let admin = sy.admin.expect("admin");
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in metrics"))
        .to_owned()
}

#[tokio::test]
async fn websocket_frames_pass_both_ways_and_either_side_can_close() {
    let (origin, ended) = spawn_ws_origin().await;
    let sy = spawn_steelyard(config(&ws_toml(origin, ""))).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", sy.addr))
        .await
        .expect("upgrade through the proxy");
    assert_eq!(response.status(), 101);
    // Counted by the worker as the tunnel starts, just after the 101 went out.
    eventually("the tunnel to be counted", || async {
        metric(&sy, "steelyard_upgraded_connections{").await == "steelyard_upgraded_connections{listener=\"web\"} 1"
    })
    .await;

    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(ws.next().await.expect("frame").expect("ok"), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send binary");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::Pong(b"are you there".to_vec().into())
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.expect("send 1 MiB");
    assert_eq!(ws.next().await.expect("frame").expect("ok"), Message::binary(big));

    // The client closes: the close handshake completes through the proxy.
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    eventually("the origin to see the close", || async {
        ended.load(Ordering::SeqCst) == 1
    })
    .await;

    // The server closes.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", sy.addr))
        .await
        .expect("second upgrade");
    ws.send(Message::text("close please")).await.expect("send");
    match ws.next().await.expect("frame").expect("ok") {
        Message::Close(Some(frame)) => assert_eq!(frame.reason.as_str(), "as asked"),
        other => panic!("expected the server's close, got {other:?}"),
    }
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    eventually("both tunnels to be gone", || async {
        metric(&sy, "steelyard_upgraded_connections{").await == "steelyard_upgraded_connections{listener=\"web\"} 0"
    })
    .await;
    assert_eq!(
        metric(&sy, "steelyard_upgraded_connections_total{").await,
        "steelyard_upgraded_connections_total{listener=\"web\"} 2"
    );
}

#[tokio::test]
async fn a_silent_tunnel_closes_after_its_idle_timeout() {
    let (origin, ended) = spawn_ws_origin().await;
    let sy = spawn_steelyard(config(&ws_toml(origin, "timeouts = { tunnel_idle = \"300ms\" }"))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", sy.addr))
        .await
        .expect("upgrade");
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(ws.next().await.expect("frame").expect("ok"), Message::text("hi"));
    let started = std::time::Instant::now();
    // Nothing moves: the proxy closes both sides.
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("closed by the proxy");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}");
    eventually("the origin to see the close", || async {
        ended.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// An upgrade the backend refuses is an ordinary response, and the connection carries on.
#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response() {
    let origin = spawn_origin("plain").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let response = raw_exchange(
        sy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert!(response.ends_with("plain"), "{response:?}");
    let seen = origin.last_headers();
    assert_eq!(seen["upgrade"], "websocket", "the Upgrade header reached the backend");
}

/// A reload (even one that changes the pool's backends) leaves an open tunnel working.
#[tokio::test]
async fn tunnels_survive_a_reload() {
    let (origin, _ended) = spawn_ws_origin().await;
    let sy = spawn_steelyard(config(&ws_toml(origin, ""))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", sy.addr))
        .await
        .expect("upgrade");
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(ws.next().await.expect("frame").expect("ok"), Message::text("before"));
    let other = spawn_origin("other").await;
    // Same listener (matched by its configured address), another backend.
    sy.reload.apply(config(&ws_toml(other.addr, ""))).await.expect("reload");
    ws.send(Message::text("after")).await.expect("send");
    assert_eq!(ws.next().await.expect("frame").expect("ok"), Message::text("after"));
    // New requests go to the new backend.
    assert_eq!(get(&client(), &sy.url("/")).await.1, "other");
}
