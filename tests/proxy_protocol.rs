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

/// An origin that records the PROXY header each connection starts with (v1 line or v2
/// header), then answers every HTTP request on it with `ok` (or, with `echo`, echoes bytes).
async fn header_recording_origin(echo: bool) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut first = [0u8; 16];
                if s.read_exact(&mut first[..6]).await.is_err() {
                    return;
                }
                let mut header = first[..6].to_vec();
                if &first[..6] == b"PROXY " {
                    while !header.ends_with(b"\r\n") {
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.expect("v1 byte");
                        header.push(b[0]);
                    }
                } else {
                    s.read_exact(&mut first[6..]).await.expect("v2 fixed");
                    let len = u16::from_be_bytes([first[14], first[15]]) as usize;
                    let mut body = vec![0u8; len];
                    s.read_exact(&mut body).await.expect("v2 body");
                    header = [&first[..], &body[..]].concat();
                }
                record.lock().expect("lock").push(header);
                let mut buf = vec![0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if echo {
                        let _ = s.write_all(&buf[..n]).await;
                        continue;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A TCP pool sends v1 naming the client its listener's own PROXY header (v2) named.
#[tokio::test]
async fn a_tcp_pool_passes_the_client_on_in_v1() {
    let (origin, seen) = header_recording_origin(true).await;
    let toml = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"db\"\nproxy_protocol = \"v2\"\n\n[pools.db]\nbackends = [\"{origin}\"]\nsend_proxy_protocol = \"v1\"\n"
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut bytes = v2_header([203, 0, 113, 10], 4444);
    bytes.extend_from_slice(b"hello");
    s.write_all(&bytes).await.expect("write");
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"hello", "nothing but the header was added");
    let headers = seen.lock().expect("lock").clone();
    assert_eq!(
        headers,
        vec![format!("PROXY TCP4 203.0.113.10 127.0.0.1 4444 {}\r\n", proxy.addr.port()).into_bytes()]
    );
    drop(s);
    proxy.shutdown().await;
}

/// An HTTP pool sends v2 on each connection it opens, and keeps such connections to the
/// client they name: two requests of one client connection, two backend connections
/// each starting with the header.
#[tokio::test]
async fn an_http_pool_sends_v2_per_connection() {
    let (origin, seen) = header_recording_origin(false).await;
    let toml = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"web\" }}]\n\n[pools.web]\nbackends = [\"{origin}\"]\nsend_proxy_protocol = \"v2\"\n"
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    let client = client();
    for _ in 0..2 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    }
    let headers = seen.lock().expect("lock").clone();
    assert_eq!(
        headers.len(),
        2,
        "a connection per request: never shared between clients"
    );
    for h in &headers {
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!((h[12], h[13]), (0x21, 0x11), "v2, PROXY, TCP over IPv4");
        assert_eq!(&h[16..20], &[127, 0, 0, 1], "the client");
        assert_eq!(&h[20..24], &[127, 0, 0, 1], "the address it reached");
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), proxy.addr.port());
    }
    proxy.shutdown().await;
}

/// HTTP/2 pools cannot send it: one connection carries many clients.
#[test]
fn h2_pools_cannot_send_it() {
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ pool = \"g\" }]\n\n[pools.g]\nbackends = [\"127.0.0.1:1\"]\nprotocol = \"h2c\"\nsend_proxy_protocol = \"v2\"\n";
    let err = config_error(toml);
    assert!(
        err.contains("pools.g.send_proxy_protocol: an HTTP/2 connection carries many clients' requests"),
        "{err}"
    );
}

/// HAProxy from Debian in front, sending v2 (`send-proxy-v2`) in TCP mode: requests through it
/// are served by a listener that requires v2.
#[tokio::test]
async fn haproxy_in_front_sends_v2() {
    let origin = spawn_origin("a").await;
    let proxy = spawn_steelyard(config(&toml(origin.addr, "v2"))).await;
    let front = free_port();
    let dir = std::env::temp_dir().join(format!("steelyard-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\nfrontend fe\n  bind {front}\n  default_backend be\n\nbackend be\n  server s1 {} send-proxy-v2\n",
            proxy.addr
        ),
    )
    .expect("write");
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f", cfg.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy is needed (./test installs it: apt-get install haproxy): {e}"));
    eventually("HAProxy to listen", || async {
        TcpStream::connect(front).await.is_ok()
    })
    .await;
    let client = client();
    for _ in 0..3 {
        let (status, body) = get(&client, &format!("http://{front}/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    }
    assert_eq!(origin.last_headers()["x-forwarded-for"], "127.0.0.1");
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    proxy.shutdown().await;
}
