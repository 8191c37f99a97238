//! The PROXY protocol on listeners: v1 from curl (`--haproxy-protocol`) and by hand, v2 by
//! hand, `optional` taking both and none, the named client driving `X-Forwarded-For`, and
//! missing or malformed headers closing the connection before anything reaches a backend.
//! The addresses inside headers are documentation ones (RFC 5737); all traffic is loopback.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn toml(origin: SocketAddr, mode: &str) -> String {
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = \"{mode}\"\ntimeouts = {{ head = \"500ms\" }}\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [\"{origin}\"]\n"
    )
}

/// Sends `bytes` and reads until the proxy closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &str = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

fn v2_header(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// v1 and v2 headers name the client: `X-Forwarded-For` carries it.
#[tokio::test]
async fn the_header_names_the_client() {
    let origin = spawn_origin("a").await;
    let v1 = spawn_steelyard(config(&toml(origin.addr, "v1"))).await;
    let raw = exchange(
        v1.addr,
        format!("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{GET}").as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(origin.last_headers()["x-forwarded-for"], "203.0.113.9");

    let v2 = spawn_steelyard(config(&toml(origin.addr, "v2"))).await;
    let mut bytes = v2_header([203, 0, 113, 10], 4444);
    bytes.extend_from_slice(GET.as_bytes());
    let raw = exchange(v2.addr, &bytes).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(origin.last_headers()["x-forwarded-for"], "203.0.113.10");

    let optional = spawn_steelyard(config(&toml(origin.addr, "optional"))).await;
    let raw = exchange(optional.addr, &bytes).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(origin.last_headers()["x-forwarded-for"], "203.0.113.10");
    let raw = exchange(optional.addr, GET.as_bytes()).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "no header: {raw}");
    assert_eq!(origin.last_headers()["x-forwarded-for"], "127.0.0.1");
    assert_eq!(origin.requests(), 4);
    for p in [v1, v2, optional] {
        p.shutdown().await;
    }
}

/// curl as a real v1 client: accepted with `--haproxy-protocol`, closed without.
#[tokio::test]
async fn curl_haproxy_protocol_is_accepted() {
    let origin = spawn_origin("a").await;
    let proxy = spawn_steelyard(config(&toml(origin.addr, "v1"))).await;
    let url = format!("http://{}/", proxy.addr);
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new("curl")
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("curl is needed (./test installs it: apt-get install curl): {e}"))
    };
    let with = run(vec!["--silent".into(), "--haproxy-protocol".into(), url.clone()]).await;
    assert_eq!(String::from_utf8_lossy(&with.stdout), "a");
    let without = run(vec!["--silent".into(), url]).await;
    assert!(!without.status.success(), "a plain request on a v1 listener is closed");
    assert_eq!(origin.requests(), 1);
    proxy.shutdown().await;
}

/// A malformed header, the wrong version, or none at all: closed, nothing forwarded.
#[tokio::test]
async fn bad_headers_close_the_connection() {
    let origin = spawn_origin("a").await;
    let v1 = spawn_steelyard(config(&toml(origin.addr, "v1"))).await;
    let v2 = spawn_steelyard(config(&toml(origin.addr, "v2"))).await;
    let mut truncated_v2 = v2_header([203, 0, 113, 10], 4444);
    truncated_v2[15] = 8; // claims 8 address bytes: too few for IPv4
    truncated_v2.truncate(16 + 8);
    for (addr, bytes) in [
        (
            v1.addr,
            format!("PROXY TCP4 203.0.113.9 127.0.0.1 05555 80\r\n{GET}").into_bytes(),
        ),
        (
            v1.addr,
            format!("PROXY TCP4 not-an-ip 127.0.0.1 5555 80\r\n{GET}").into_bytes(),
        ),
        (v1.addr, GET.as_bytes().to_vec()),
        (
            v2.addr,
            format!("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{GET}").into_bytes(),
        ),
        (v2.addr, [truncated_v2.clone(), GET.as_bytes().to_vec()].concat()),
    ] {
        let raw = exchange(addr, &bytes).await;
        assert_eq!(
            raw,
            "",
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    // Silent: closed after the head timeout.
    assert_eq!(exchange(v2.addr, b"").await, "");
    assert_eq!(origin.requests(), 0, "nothing was forwarded");
    v1.shutdown().await;
    v2.shutdown().await;
}
