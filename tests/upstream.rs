//! TLS and HTTP/2 to backends: `https://` backends verified against a private CA (rcgen),
//! SNI from `server_name`, verification failures as 502s with the reason logged, `verify =
//! false` with a warning, `protocol = "h2"` by ALPN and `"h2c"` by prior knowledge with
//! multiplexed connections, a GOAWAY that loses no request, health checks over TLS, client
//! certificates for backends that require them (mutual TLS), and the config errors. Real origins (hyper over tokio-rustls), the real binary or server, real
//! clients.

mod support;

use std::net::SocketAddr;

use http::Version;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The payload of a chunked body (extensions and trailers ignored).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (line, rest) = body.split_once("\r\n").expect("chunk line");
        let size = usize::from_str_radix(line.split(';').next().expect("size"), 16).expect("hex");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A pool named `main` with one route to it, over `backends` (written as given).
fn pool_toml(backends: &[String], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// A CA, and a TLS origin presenting a certificate for `backend.test` signed by it.
async fn tls_origin(name: &str, alpn: &[&[u8]]) -> (Pki, Origin) {
    let pki = Pki::new(&format!("upstream-{name}"));
    pki.issue("backend", &["backend.test"]);
    let origin = spawn_origin_with(
        name,
        OriginOptions {
            tls: Some(pki.server_config("backend", alpn)),
            ..OriginOptions::default()
        },
    )
    .await;
    (pki, origin)
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

/// Requests over HTTP/1.1 reach an HTTPS backend verified against the pool's CA, with the
/// configured SNI, on one reused connection; bodies stream both ways.
#[tokio::test]
async fn an_https_backend_is_verified_against_the_pool_ca() {
    let (pki, origin) = tls_origin("verified", &[b"http/1.1"]).await;
    let ca = pki.write_ca();
    let proxy = spawn_steelyard(config(&pool_toml(
        &[https(origin.addr)],
        &format!("tls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}"),
    )))
    .await;
    let client = client();
    for _ in 0..5 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "verified"));
    }
    assert_eq!(origin.last_sni(), "backend.test");
    assert_eq!(origin.connections(), 1, "one TLS connection, reused");

    let upload = vec![5u8; 2 << 20];
    let res = client
        .post(proxy.url("/upload"))
        .body(upload.clone())
        .send()
        .await
        .expect("upload");
    let expected = format!("{} {}", upload.len(), checksum(CHECKSUM_SEED, &upload));
    assert_eq!(res.text().await.expect("body"), expected);
    let res = client
        .get(proxy.url("/download?bytes=3000000"))
        .send()
        .await
        .expect("download");
    assert_eq!(res.bytes().await.expect("body").len(), 3_000_000);
    proxy.shutdown().await;
}

/// A backend whose certificate does not verify (unknown CA, or a name it does not cover) is a
/// 502 whose reason is in the log, never a silent downgrade to something unverified.
#[tokio::test]
async fn a_certificate_that_does_not_verify_is_a_502_with_the_reason() {
    let (_pki, origin) = tls_origin("unverified", &[b"http/1.1"]).await;
    let other = Pki::new("upstream-other-ca");
    let other_ca = other.write_ca();
    let (pki_b, origin_b) = tls_origin("wrong-name", &[b"http/1.1"]).await;
    let ca_b = pki_b.write_ca();
    let toml = format!(
        "{}\n[pools.named]\nbackends = [\"{}\"]\ntls = {{ ca = \"{ca_b}\", server_name = \"other.test\" }}\n",
        pool_toml(&[https(origin.addr)], &format!("tls = {{ ca = \"{other_ca}\" }}")),
        https(origin_b.addr)
    )
    .replace(
        "routes = [{ pool = \"main\" }]",
        "routes = [{ path_prefix = \"/named\", pool = \"named\" }, { pool = \"main\" }]",
    );
    let dir = other.dir.clone();
    let file = dir.join("unverified.toml");
    std::fs::write(&file, toml).expect("write");
    let mut p = Process::start(&["--config", file.to_str().expect("utf-8")]);
    let addr = p.listening_addr();
    let client = client();
    let (status, _) = get(&client, &format!("http://{addr}/")).await;
    assert_eq!(status.as_u16(), 502);
    let line = p.wait_for_line("UnknownIssuer");
    assert!(
        line.contains(&format!(
            "cannot open a connection to the backend backend={}",
            origin.addr
        )),
        "{line}"
    );
    let (status, _) = get(&client, &format!("http://{addr}/named")).await;
    assert_eq!(status.as_u16(), 502);
    let line = p.wait_for_line("certificate not valid for name \"other.test\"");
    assert!(
        line.contains(&format!(
            "cannot open a connection to the backend backend={}",
            origin_b.addr
        )),
        "{line}"
    );
    assert_eq!(
        origin.requests() + origin_b.requests(),
        0,
        "nothing was sent unverified"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// `verify = false` talks to a backend with any certificate, and `check` warns about it.
#[tokio::test]
async fn verify_false_works_and_check_warns() {
    let (pki, origin) = tls_origin("noverify", &[b"http/1.1"]).await;
    let toml = pool_toml(&[https(origin.addr)], "tls = { verify = false }");
    let file = pki.dir.join("noverify.toml");
    std::fs::write(&file, &toml).expect("write");
    let out = run_check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!("warning: {}:10:7: pools.main.tls.verify = false", file.display());
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
    let proxy = spawn_steelyard(config(&toml)).await;
    let (status, body) = get(&client(), &proxy.url("/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "noverify"));
    assert_eq!(origin.last_sni(), "", "an IP address is not sent as SNI");
    proxy.shutdown().await;
}

/// `protocol = "h2"` agrees on HTTP/2 by ALPN with an HTTPS backend; `"h2c"` speaks it in
/// cleartext. Requests from HTTP/2 clients arrive over HTTP/2, many on one connection.
#[tokio::test]
async fn h2_and_h2c_backends_carry_multiplexed_requests() {
    let (pki, tls_backend) = tls_origin("h2", &[b"h2", b"http/1.1"]).await;
    let ca = pki.write_ca();
    let h2c_backend = spawn_origin_with(
        "h2c",
        OriginOptions {
            h2c: true,
            ..OriginOptions::default()
        },
    )
    .await;
    let toml = format!(
        "{}\n[pools.clear]\nprotocol = \"h2c\"\nbackends = [\"{}\"]\n",
        pool_toml(
            &[https(tls_backend.addr)],
            &format!("protocol = \"h2\"\ntls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}"),
        ),
        h2c_backend.addr
    )
    .replace(
        "routes = [{ pool = \"main\" }]",
        "routes = [{ path_prefix = \"/clear\", pool = \"clear\" }, { pool = \"main\" }]",
    );
    let proxy = spawn_steelyard(config(&toml)).await;
    let client = h2_client();
    let requests = (0..20).map(|i| {
        let client = client.clone();
        let url = proxy.url(if i % 2 == 0 { "/" } else { "/clear" });
        async move { get(&client, &url).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        let expected = if i % 2 == 0 { "h2" } else { "h2c" };
        assert_eq!((status.as_u16(), body.as_str()), (200, expected));
    }
    let (status, body) = get(&support::client(), &proxy.url("/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "h2"), "an HTTP/1.1 client too");
    assert_eq!(tls_backend.last_version(), Version::HTTP_2);
    assert_eq!(h2c_backend.last_version(), Version::HTTP_2);
    assert_eq!(tls_backend.requests() + h2c_backend.requests(), 21);
    assert_eq!(tls_backend.connections(), 1, "one multiplexed connection per worker");
    assert_eq!(h2c_backend.connections(), 1);
    let headers = h2c_backend.last_headers();
    assert!(headers.get("x-forwarded-for").is_some(), "{headers:?}");
    proxy.shutdown().await;
}

/// An h2c backend that sends GOAWAY every 7 requests: in-flight streams finish, new ones go
/// to a new connection, and no request fails.
#[tokio::test]
async fn a_goaway_from_an_h2c_backend_fails_no_request() {
    let backend = spawn_origin_with(
        "goaway",
        OriginOptions {
            h2c: true,
            goaway_after: Some(7),
            ..OriginOptions::default()
        },
    )
    .await;
    let proxy = spawn_steelyard(config(&pool_toml(&[backend.addr.to_string()], "protocol = \"h2c\""))).await;
    let client = h2_client();
    let mut failures = 0;
    for round in 0..10 {
        let requests = (0..5).map(|i| {
            let client = client.clone();
            let url = proxy.url(&format!("/slow?ms={}", (round + i) % 3 * 5));
            async move { get(&client, &url).await }
        });
        for (status, body) in futures_util::future::join_all(requests).await {
            if status.as_u16() != 200 || body != "goaway" {
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 0);
    assert_eq!(backend.requests(), 50);
    // At most the 7, the rest of their batch and one batch racing the GOAWAY per connection.
    assert!(
        backend.connections() >= 4,
        "GOAWAY after 7 requests: {} connections",
        backend.connections()
    );
    proxy.shutdown().await;
}

/// Health checks go over the pool's TLS: a backend whose certificate verifies is healthy; one
/// that does not is marked down with the reason.
#[tokio::test]
async fn health_checks_use_the_pool_tls() {
    let (pki, origin) = tls_origin("health", &[b"http/1.1"]).await;
    let ca = pki.write_ca();
    let check = "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let good = pool_toml(
        &[https(origin.addr)],
        &format!("tls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}\npanic_threshold = 0\n{check}"),
    );
    let proxy = spawn_steelyard(config(&good)).await;
    for _ in 0..3 {
        let (status, _) = get(&client(), &proxy.url("/")).await;
        assert_eq!(status.as_u16(), 200);
    }
    let bad = good.replace("server_name = \"backend.test\"", "server_name = \"elsewhere.test\"");
    proxy.reload.apply(config(&bad)).await.expect("reload");
    eventually("the backend to be marked down", || async {
        get(&client(), &proxy.url("/")).await.0.as_u16() == 503
    })
    .await;
    proxy.shutdown().await;
}

/// A pool's `tls.cert` and `tls.key` are presented to a backend that requires a client
/// certificate: it sees exactly that certificate, on one pooled connection. A pool without
/// one is refused by the same backend (a 502 with the reason logged, nothing forwarded).
/// `--watch` follows the files: a renewed certificate is presented on the next connection.
#[tokio::test]
async fn a_client_certificate_is_presented_to_backends_that_require_it() {
    let servers = Pki::new("mtls-servers");
    servers.issue("backend", &["backend.test"]);
    let clients = Pki::new("mtls-clients");
    let first = clients.issue("steelyard", &["steelyard.test"]);
    let origin = spawn_origin_with(
        "mtls",
        OriginOptions {
            tls: Some(servers.server_config_requiring_clients("backend", &[b"http/1.1"], &clients)),
            ..OriginOptions::default()
        },
    )
    .await;
    let ca = servers.write_ca();
    let (cert, key) = (clients.path("steelyard.pem"), clients.path("steelyard.key"));
    let toml = format!(
        "{}
[pools.anonymous]
backends = [\"{}\"]\ntls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}\nretries = {{ attempts = 0 }}\n",
        pool_toml(
            &[https(origin.addr)],
            &format!("tls = {{ ca = \"{ca}\", server_name = \"backend.test\", cert = \"{cert}\", key = \"{key}\" }}"),
        ),
        https(origin.addr)
    )
    .replace(
        "routes = [{ pool = \"main\" }]",
        "routes = [{ path_prefix = \"/anonymous\", pool = \"anonymous\" }, { pool = \"main\" }]",
    );
    let file = clients.dir.join("mtls.toml");
    std::fs::write(&file, toml).expect("write");
    let out = run_check(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut p = Process::start(&["--config", file.to_str().expect("utf-8"), "--watch"]);
    let addr = p.listening_addr();
    let client = client();
    for _ in 0..3 {
        let (status, body) = get(&client, &format!("http://{addr}/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "mtls"));
    }
    assert_eq!(origin.last_client_certificate(), Some(first.to_vec()));
    assert_eq!((origin.connections(), origin.failed_handshakes()), (1, 0));

    let (status, _) = get(&client, &format!("http://{addr}/anonymous")).await;
    assert_eq!(status.as_u16(), 502);
    let line = p.wait_for_line("the backend ended the TLS session");
    assert!(
        line.contains(&origin.addr.to_string()) && line.contains("received fatal alert: CertificateRequired"),
        "{line}"
    );
    assert_eq!(origin.requests(), 3, "nothing of the refused request was forwarded");
    eventually("the origin to count the refused handshake", || async {
        origin.failed_handshakes() == 1
    })
    .await;

    // Renewed in place: the next connection presents the new certificate.
    let renewed = clients.issue("steelyard", &["steelyard.test"]);
    assert_ne!(renewed, first);
    p.wait_for_line("file changed: reloading the config");
    p.wait_for_line("config reloaded");
    let (status, _) = get(&client, &format!("http://{addr}/close")).await;
    assert_eq!(status.as_u16(), 200);
    let (status, body) = get(&client, &format!("http://{addr}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "mtls"));
    assert_eq!(origin.last_client_certificate(), Some(renewed.to_vec()));
    assert_eq!(
        origin.connections(),
        3,
        "the pooled connection, the refused one, one after renewal"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// A client certificate whose key is missing, unreadable or another certificate's fails
/// `check` at the `cert` setting, naming the files.
#[test]
fn a_client_certificate_that_cannot_be_used_fails_check_where_it_is_set() {
    let clients = Pki::new("mtls-check");
    clients.issue("one", &["one.test"]);
    clients.issue("two", &["two.test"]);
    let (one_pem, two_key) = (clients.path("one.pem"), clients.path("two.key"));
    let cases = [
        (
            format!("tls = {{ cert = \"{one_pem}\" }}"),
            "10:16: pools.main.tls.cert: set key too".to_owned(),
        ),
        (
            format!("tls = {{ key = \"{two_key}\" }}"),
            "10:15: pools.main.tls.key: set cert too".to_owned(),
        ),
        (
            format!("tls = {{ cert = \"{one_pem}\", key = \"{two_key}\" }}"),
            format!("10:16: pools.main.tls.cert: the key in {two_key} does not belong to {one_pem}"),
        ),
        (
            format!("tls = {{ cert = \"{one_pem}\", key = \"nowhere.key\" }}"),
            format!(
                "10:16: pools.main.tls.cert: cannot read a private key from {}",
                clients.dir.join("nowhere.key").display()
            ),
        ),
    ];
    for (i, (tls, expected)) in cases.iter().enumerate() {
        let file = clients.dir.join(format!("bad-{i}.toml"));
        std::fs::write(&file, pool_toml(&["https://127.0.0.1:1".into()], tls)).expect("write");
        let out = run_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tls}");
        let expected = format!("{}:{expected}", file.display());
        assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
    }
}

/// An expired client certificate is a warning, like a listener's: `check` names it and passes.
#[test]
fn an_expired_client_certificate_is_a_warning() {
    let clients = Pki::new("mtls-expired");
    clients.issue_with("old", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(1999, 1, 1);
        p.not_after = rcgen::date_time_ymd(2000, 1, 1);
    });
    let (cert, key) = (clients.path("old.pem"), clients.path("old.key"));
    let file = clients.dir.join("expired.toml");
    let tls = format!("tls = {{ cert = \"{cert}\", key = \"{key}\" }}");
    std::fs::write(&file, pool_toml(&["https://127.0.0.1:1".into()], &tls)).expect("write");
    let out = run_check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "warning: {}:10:16: pools.main.tls.cert: {cert} expired on 2000-01-01",
        file.display()
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
}

/// Protocol and TLS settings that contradict each other are errors at their line and column.
#[test]
fn contradictory_settings_are_located() {
    let cases = [
        (
            pool_toml(&["127.0.0.1:1".into()], "protocol = \"h2\""),
            "pools.main.protocol: \"h2\" is HTTP/2 over TLS",
        ),
        (
            pool_toml(&["https://127.0.0.1:1".into()], "protocol = \"h2c\""),
            "pools.main.protocol: \"h2c\" is cleartext HTTP/2",
        ),
        (
            pool_toml(&["https://127.0.0.1:1".into(), "http://127.0.0.1:2".into()], ""),
            "pools.main.backends: http:// in a pool that uses TLS",
        ),
        (
            pool_toml(&["127.0.0.1:1".into()], "protocol = \"spdy\""),
            "pools.main.protocol: \"spdy\" is not",
        ),
        (
            pool_toml(&["127.0.0.1:1".into()], "tls = { server_name = \"not a name\" }"),
            "pools.main.tls.server_name: \"not a name\" is not a DNS name",
        ),
    ];
    for (toml, expected) in cases {
        let err = config_error(&toml);
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(err.contains("t.toml:"), "{err}");
    }
}

/// A CA file that cannot be read fails `check` at the pool's tls entry, naming the file.
#[test]
fn a_missing_ca_file_fails_check_at_its_entry() {
    let dir = std::env::temp_dir().join(format!("steelyard-upstream-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("missing-ca.toml");
    std::fs::write(
        &file,
        pool_toml(&["https://127.0.0.1:1".into()], "tls = { ca = \"nowhere/ca.pem\" }"),
    )
    .expect("write");
    let out = run_check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let expected = format!(
        "{}:10:7: pools.main.tls: cannot read CA certificates from {}",
        file.display(),
        dir.join("nowhere/ca.pem").display()
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
}

/// Bodies of the hyper client path (HTTP/2 clients) also stream to an HTTPS backend.
#[tokio::test]
async fn http2_clients_reach_an_https_backend() {
    let (pki, origin) = tls_origin("h2-client", &[b"http/1.1"]).await;
    let ca = pki.write_ca();
    let proxy = spawn_steelyard(config(&pool_toml(
        &[https(origin.addr)],
        &format!("tls = {{ ca = \"{ca}\", server_name = \"backend.test\" }}"),
    )))
    .await;
    let res = h2_client()
        .post(proxy.url("/echo"))
        .body(vec![9u8; 100_000])
        .send()
        .await
        .expect("echo");
    assert_eq!(res.status().as_u16(), 200);
    let body = res.bytes().await.expect("body");
    assert_eq!(body.len(), 100_000);
    assert_eq!(origin.last_version(), Version::HTTP_11);
    proxy.shutdown().await;
}

/// HTTP/1 clients of an HTTP/2 pool: requests and their bodies (length-delimited and
/// chunked) reach the backend over HTTP/2 and the responses come back as HTTP/1.1, chunked
/// when their length is unknown, close-delimited for HTTP/1.0 clients.
#[tokio::test]
async fn http1_clients_reach_h2_backends() {
    let backend = spawn_origin_with(
        "h2c",
        OriginOptions {
            h2c: true,
            ..OriginOptions::default()
        },
    )
    .await;
    let proxy = spawn_steelyard(config(&pool_toml(&[backend.addr.to_string()], "protocol = \"h2c\""))).await;
    let client = client();
    for _ in 0..3 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "h2c"));
    }
    assert_eq!(backend.last_version(), Version::HTTP_2);
    assert_eq!(backend.connections(), 1);
    let upload = vec![3u8; 1 << 20];
    let res = client
        .post(proxy.url("/upload"))
        .body(upload.clone())
        .send()
        .await
        .expect("upload");
    let expected = format!("{} {}", upload.len(), checksum(CHECKSUM_SEED, &upload));
    assert_eq!(res.text().await.expect("body"), expected);

    // Chunked both ways: the body is decoded into DATA frames, the echo comes back chunked.
    let raw = raw_exchange(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    let headers = raw_header_map(&raw);
    assert_eq!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked"),
        "{raw}"
    );
    let body = raw.split_once("\r\n\r\n").expect("head").1;
    assert_eq!(dechunk(body), "hello world", "{raw}");
    let seen = backend.last_headers();
    assert_eq!(
        seen.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"127.0.0.1"[..])
    );
    assert!(seen.get("transfer-encoding").is_none());

    // HTTP/1.0: no chunks, the close ends the body.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /download?bytes=70000 HTTP/1.0\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("in time")
        .expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&raw[..split]);
    assert!(
        head.starts_with("HTTP/1.0 200 OK\r\n") && head.contains("connection: close"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(raw.len() - split, 70_000);
    assert_eq!(raw[split..], pattern_chunk(0, 70_000)[..]);
    proxy.shutdown().await;
}
