//! TCP listeners (`mode = "tcp"`): connections balanced over a pool by its algorithm, a dead
//! backend skipped, half-closes passed on both ways, the idle timeout, 100 MiB each way with
//! flat memory through the real binary, and the config errors. Real TCP echo origins on
//! loopback, real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A TCP origin: greets each connection with `NAME\n`, then echoes everything until the
/// client's EOF, then closes. Counts connections and the bytes it received.
struct EchoOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<AtomicU64>,
}

async fn spawn_echo(name: &str) -> EchoOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&received));
    let greeting = format!("{name}\n");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (greeting, r) = (greeting.clone(), Arc::clone(&r));
            tokio::spawn(async move {
                let _ = stream.write_all(greeting.as_bytes()).await;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed: everything was echoed; now close our side.
                let _ = stream.shutdown().await;
            });
        }
    });
    EchoOrigin {
        addr,
        connections,
        received,
    }
}

/// A TCP listener in front of `backends`, with `extra` lines in the pool.
fn tcp_toml(backends: &[SocketAddr], listener_extra: &str, pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"db\"\n{listener_extra}\n\n[pools.db]\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// Connects through the proxy and returns the stream with the greeting's name.
async fn open(addr: SocketAddr) -> (BufReader<TcpStream>, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    (reader, line.trim_end().to_owned())
}

/// Round robin takes turns by connection, exactly; bytes echo both ways.
#[tokio::test]
async fn connections_take_turns_and_bytes_flow_both_ways() {
    let origins = [spawn_echo("a").await, spawn_echo("b").await, spawn_echo("c").await];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let proxy = spawn_steelyard(config(&tcp_toml(&addrs, "", ""))).await;
    let mut names = Vec::new();
    for _ in 0..6 {
        let (mut conn, name) = open(proxy.addr).await;
        conn.get_mut().write_all(b"ping").await.expect("write");
        let mut echo = [0u8; 4];
        conn.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");
        names.push(name);
    }
    assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    for o in &origins {
        assert_eq!(o.connections.load(Ordering::SeqCst), 2);
    }
    proxy.shutdown().await;
}

/// A backend that refuses connections costs no client connection: each is retried on the
/// next backend, and passive health takes the dead one out.
#[tokio::test]
async fn a_dead_backend_is_skipped() {
    let (a, b) = (spawn_echo("a").await, spawn_echo("b").await);
    let dead = closed_port();
    let proxy = spawn_steelyard(config(&tcp_toml(
        &[a.addr, dead.addr, b.addr],
        "",
        "passive = { consecutive_failures = 1 }",
    )))
    .await;
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(open(proxy.addr).await.1);
    }
    assert!(names.iter().all(|n| n == "a" || n == "b"), "{names:?}");
    assert_eq!(
        a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst),
        8
    );
    proxy.shutdown().await;
}

/// The client's half-close reaches the backend, which still sends everything back and then
/// closes; that close reaches the client.
#[tokio::test]
async fn half_closes_pass_both_ways() {
    let origin = spawn_echo("a").await;
    let proxy = spawn_steelyard(config(&tcp_toml(&[origin.addr], "", ""))).await;
    let (mut conn, _) = open(proxy.addr).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    conn.get_mut().write_all(&data).await.expect("write");
    conn.get_mut().shutdown().await.expect("half-close");
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut back))
        .await
        .expect("EOF in time")
        .expect("read");
    assert_eq!(back, data, "everything echoed after our half-close, then EOF");
    assert_eq!(origin.received.load(Ordering::SeqCst), data.len() as u64);
    proxy.shutdown().await;
}

/// A connection on which nothing moves for `tunnel_idle` is closed.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let origin = spawn_echo("a").await;
    let proxy = spawn_steelyard(config(&tcp_toml(
        &[origin.addr],
        "timeouts = { tunnel_idle = \"300ms\" }",
        "",
    )))
    .await;
    let (mut conn, _) = open(proxy.addr).await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, conn.read_to_end(&mut rest))
        .await
        .expect("closed within the deadline")
        .expect("read");
    assert_eq!(n, 0, "closed without more data");
    proxy.shutdown().await;
}

/// 100 MiB each way through the binary at once, with the proxy's memory flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mebibytes_each_way_keep_memory_flat() {
    let origin = spawn_echo("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("tcp.toml");
    std::fs::write(&file, tcp_toml(&[origin.addr], "", "")).expect("write");
    let mut p = Process::start(&["--config", file.to_str().expect("utf-8")]);
    let addr = p.listening_addr();
    let (conn, _) = open(addr).await;
    let before = p.peak_rss_kib();
    const TOTAL: u64 = 100 << 20;
    let (mut rd, mut wr) = conn.into_inner().into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            wr.write_all(&chunk).await.expect("write");
            sent += chunk.len() as u64;
        }
        wr.shutdown().await.expect("half-close");
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(DEADLINE, rd.read(&mut buf))
            .await
            .expect("progress")
            .expect("read");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 0x5a));
        got += n as u64;
    }
    writer.await.expect("writer");
    assert_eq!(got, TOTAL);
    assert_eq!(origin.received.load(Ordering::SeqCst), TOTAL);
    let after = p.peak_rss_kib();
    assert!(
        after < before + 4 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB while 200 MiB passed"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// A tcp listener needs a pool and takes nothing HTTP; an http listener takes no pool.
#[test]
fn tcp_listener_settings_are_checked() {
    let cases = [
        (
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\n\n[pools.db]\nbackends = [\"127.0.0.1:1\"]\n",
            "listeners[0]: a tcp listener needs pool = \"NAME\"",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"db\"\nroutes = [{ pool = \"db\" }]\n\n[pools.db]\nbackends = [\"127.0.0.1:1\"]\n",
            "listeners[0].routes: applies to http listeners only",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\npool = \"db\"\nroutes = [{ pool = \"db\" }]\n\n[pools.db]\nbackends = [\"127.0.0.1:1\"]\n",
            "listeners[0].pool: only tcp listeners take a pool",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"udp\"\nroutes = [{ pool = \"db\" }]\n\n[pools.db]\nbackends = [\"127.0.0.1:1\"]\n",
            "listeners[0].mode: \"udp\" is not",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"nope\"\n\n[pools.db]\nbackends = [\"127.0.0.1:1\"]\n",
            "listeners[0].pool: no pool named \"nope\"",
        ),
    ];
    for (toml, expected) in cases {
        let err = config_error(toml);
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(err.contains("t.toml:"), "{err}");
    }
}

/// `least_connections` counts open connections: each new connection goes to a backend with
/// the fewest open, so held connections spread evenly.
#[tokio::test]
async fn least_connections_counts_open_connections() {
    let (a, b) = (spawn_echo("a").await, spawn_echo("b").await);
    let proxy = spawn_steelyard(config(&tcp_toml(
        &[a.addr, b.addr],
        "",
        "algorithm = \"least_connections\"",
    )))
    .await;
    let mut held = Vec::new();
    let mut open_per = std::collections::HashMap::from([("a".to_owned(), 0), ("b".to_owned(), 0)]);
    for _ in 0..6 {
        let fewest = *open_per.values().min().expect("two backends");
        let (conn, name) = open(proxy.addr).await;
        assert_eq!(
            open_per[&name], fewest,
            "{name} was not among the least loaded: {open_per:?}"
        );
        *open_per.get_mut(&name).expect("known") += 1;
        held.push(conn);
    }
    assert_eq!(open_per["a"], 3);
    assert_eq!(open_per["b"], 3);
    drop(held);
    proxy.shutdown().await;
}

/// A reload keeps established connections up on their backend, while new connections follow
/// the new config.
#[tokio::test]
async fn a_reload_keeps_established_connections() {
    let (a, b) = (spawn_echo("a").await, spawn_echo("b").await);
    let proxy = spawn_steelyard(config(&tcp_toml(&[a.addr], "", ""))).await;
    let (mut old, name) = open(proxy.addr).await;
    assert_eq!(name, "a");
    proxy
        .reload
        .apply(config(&tcp_toml(&[b.addr], "", "")))
        .await
        .expect("reload");
    assert_eq!(open(proxy.addr).await.1, "b", "new connections use the new pool");
    old.get_mut().write_all(b"still here").await.expect("write");
    let mut echo = [0u8; 10];
    old.read_exact(&mut echo).await.expect("echo on the old connection");
    assert_eq!(&echo, b"still here");
    // Shutdown drains open TCP connections (up to drain_timeout): close ours first.
    drop(old);
    proxy.shutdown().await;
}

/// A TLS origin named `name` presenting certificate `file` of `pki`.
async fn tls_backend(pki: &Pki, name: &str, file: &str) -> Origin {
    spawn_origin_with(
        name,
        OriginOptions {
            tls: Some(pki.server_config(file, &[b"http/1.1"])),
            ..OriginOptions::default()
        },
    )
    .await
}

/// One HTTPS request through a passthrough listener with `sni` (an IP address sends none);
/// returns the certificate the backend presented and the response body.
async fn https_get(pki: &Pki, addr: SocketAddr, sni: &str) -> (Vec<u8>, String) {
    let name = match sni.parse::<std::net::IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name"),
    };
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = pki
        .connector(&[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("certificates")[0].to_vec();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response))
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (leaf, body)
}

/// A tls-passthrough listener routes by the ClientHello's server name (exact, wildcard, the
/// route without a host as default) and passes the TLS through untouched: each client sees
/// its backend's own certificate.
#[tokio::test]
async fn tls_passthrough_routes_by_server_name() {
    let pki = Pki::new("passthrough");
    let a_cert = pki.issue("a", &["a.test", "127.0.0.1"]);
    let b_cert = pki.issue("b", &["*.b.test"]);
    let (a, b) = (tls_backend(&pki, "a", "a").await, tls_backend(&pki, "b", "b").await);
    let toml = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\nroutes = [{{ host = \"*.b.test\", pool = \"b\" }}, {{ pool = \"a\" }}]\n\n[pools.a]\nbackends = [\"{}\"]\n\n[pools.b]\nbackends = [\"{}\"]\n",
        a.addr, b.addr
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    for (sni, cert, body, origin) in [
        ("a.test", &a_cert, "a", &a),
        ("x.b.test", &b_cert, "b", &b),
        ("127.0.0.1", &a_cert, "a", &a),
    ] {
        let (leaf, got) = https_get(&pki, proxy.addr, sni).await;
        assert_eq!(&leaf, cert.as_ref() as &[u8], "{sni}: the backend's own certificate");
        assert_eq!(got, body, "{sni}");
        let expected_sni = if sni == "127.0.0.1" { "" } else { sni };
        assert_eq!(
            origin.last_sni(),
            expected_sni,
            "the ClientHello reached the backend untouched"
        );
    }
    proxy.shutdown().await;
}

/// Bytes that are not a ClientHello, and a client that sends nothing, are closed; neither
/// reaches a backend.
#[tokio::test]
async fn tls_passthrough_closes_what_is_not_a_client_hello() {
    let pki = Pki::new("passthrough-bad");
    pki.issue("a", &["a.test"]);
    let a = tls_backend(&pki, "a", "a").await;
    let toml = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\ntimeouts = {{ head = \"300ms\" }}\nroutes = [{{ pool = \"a\" }}]\n\n[pools.a]\nbackends = [\"{}\"]\n",
        a.addr
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "plain HTTP is not a ClientHello: closed without a byte");
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let n = tokio::time::timeout(DEADLINE, silent.read_to_end(&mut rest))
        .await
        .expect("closed after the head timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(a.connections(), 0, "nothing reached the backend");
    proxy.shutdown().await;
}

/// A tls-passthrough listener routes by host only.
#[test]
fn tls_passthrough_routes_have_no_paths() {
    let toml = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\nroutes = [{ path_prefix = \"/api\", pool = \"a\" }]\n\n[pools.a]\nbackends = [\"127.0.0.1:1\"]\n";
    let err = config_error(toml);
    assert!(
        err.contains("listeners[0].routes[0].path_prefix: a tls-passthrough listener sees no paths"),
        "{err}"
    );
}

/// TCP connections show in the metrics: open and total, bytes each way, and how long they
/// lasted.
#[tokio::test]
async fn tcp_connections_are_in_the_metrics() {
    let origin = spawn_echo("a").await;
    let toml = tcp_toml(&[origin.addr], "name = \"db\"", "")
        .replace("[server]\n", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[server]\n");
    let proxy = spawn_steelyard(config(&toml)).await;
    let admin = proxy.admin.expect("admin listener");
    for _ in 0..2 {
        let (mut conn, _) = open(proxy.addr).await;
        conn.get_mut().write_all(b"12345").await.expect("write");
        conn.get_mut().shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.expect("echo and EOF");
        assert_eq!(rest, b"12345");
    }
    let metrics = || async { get(&client(), &format!("http://{admin}/metrics")).await.1 };
    eventually("both connections to be counted as closed", || async {
        metrics()
            .await
            .contains("steelyard_tunnel_duration_seconds_count{listener=\"db\"} 2")
    })
    .await;
    let text = metrics().await;
    for line in [
        "steelyard_upgraded_connections{listener=\"db\"} 0",
        "steelyard_upgraded_connections_total{listener=\"db\"} 2",
        "steelyard_tunnel_duration_seconds_bucket{listener=\"db\",le=\"+Inf\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let sent = format!(
        "steelyard_upstream_bytes_sent_total{{pool=\"db\",backend=\"{}\"}} 10",
        origin.addr
    );
    let received = format!(
        "steelyard_upstream_bytes_received_total{{pool=\"db\",backend=\"{}\"}} 14",
        origin.addr
    );
    assert!(text.contains(&sent), "{sent} missing");
    assert!(
        text.contains(&received),
        "{received} missing (greeting 2 + echo 5, twice)"
    );
    proxy.shutdown().await;
}

fn temp_log(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("steelyard-tcp-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A TCP listener's access log has one line per connection, written when it closes: the
/// backend, the bytes each way, why it ended; a connection no backend would take says so.
#[tokio::test]
async fn tcp_connections_are_logged_one_line_each() {
    let origin = spawn_echo("a").await;
    let dead = closed_port();
    let path = temp_log("json");
    let listener = format!("access_log = {{ path = \"{}\", format = \"json\" }}", path.display());
    let proxy = spawn_steelyard(config(&tcp_toml(&[origin.addr], &listener, ""))).await;
    let (mut conn, _) = open(proxy.addr).await;
    conn.get_mut().write_all(&[7u8; 1000]).await.expect("write");
    conn.get_mut().shutdown().await.expect("half-close");
    let mut back = Vec::new();
    conn.read_to_end(&mut back).await.expect("echo");
    assert_eq!(back.len(), 1000);
    let line: serde_json::Value = serde_json::from_str(&log_lines(&path, 1).await[0]).expect("json");
    assert_eq!(line["mode"], "tcp");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_received"], 1000, "{line}");
    assert_eq!(line["bytes_sent"], 1002, "greeting + echo: {line}");
    assert_eq!(line["upstream"], origin.addr.to_string());
    assert_eq!(line["pool"], "db");
    assert_eq!(line["retries"], 0);
    assert_eq!(line["end"], "closed");
    assert!(line["duration_ms"].as_f64().expect("number") >= 0.0);

    // Only a dead backend: the connect fails and the client is closed; one line says why.
    proxy
        .reload
        .apply(config(&tcp_toml(&[dead.addr], &listener, "")))
        .await
        .expect("reload");
    let mut refused = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, refused.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let line: serde_json::Value = serde_json::from_str(&log_lines(&path, 2).await[1]).expect("json");
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["end"], "connect-failed");
    assert_eq!(line["upstream"], dead.addr.to_string());
    assert_eq!(line["bytes_sent"], 0);
    proxy.shutdown().await;
}

/// A passthrough listener logs the server name each connection asked for, in the combined
/// layout, and what it did with a connection that sent no ClientHello.
#[tokio::test]
async fn tls_passthrough_connections_are_logged_with_their_server_name() {
    let pki = Pki::new("passthrough-log");
    pki.issue("a", &["a.test"]);
    let a = tls_backend(&pki, "a", "a").await;
    let path = temp_log("combined");
    let toml = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tls-passthrough\"\naccess_log = {{ path = \"{}\" }}\nroutes = [{{ host = \"a.test\", pool = \"a\" }}]\n\n[pools.a]\nbackends = [\"{}\"]\n",
        path.display(),
        a.addr
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    let (_, body) = https_get(&pki, proxy.addr, "a.test").await;
    assert_eq!(body, "a");
    let line = log_lines(&path, 1).await.remove(0);
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"TLS a.test\" 200 "), "{line}");
    assert!(line.contains(&format!(" {} a 0 closed", a.addr)), "{line}");

    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    let line = log_lines(&path, 2).await.remove(1);
    assert!(line.contains("] \"TLS -\" 400 0 0 "), "{line}");
    assert!(line.ends_with(" - - 0 bad-client-hello"), "{line}");
    proxy.shutdown().await;
}
