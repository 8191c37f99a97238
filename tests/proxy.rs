//! Proxy semantics through a real Steelyard with real origins and clients.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use support::*;

#[tokio::test]
async fn equal_backends_take_strict_turns() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let sy = spawn_steelyard(config(&one_pool_toml(&addrs, ""))).await;
    let client = client();
    let mut seen = String::new();
    for _ in 0..9 {
        let (status, body) = get(&client, &sy.url("/")).await;
        assert_eq!(status, 200);
        seen.push_str(&body);
    }
    assert_eq!(seen, "abcabcabc");
    sy.shutdown().await;
}

#[tokio::test]
async fn weights_5_1_1_give_the_smooth_sequence() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"w\" }}]\n[pools.w]\nbackends = [{{ address = \"{}\", weight = 5 }}, \"{}\", \"{}\"]\n",
        origins[0].addr, origins[1].addr, origins[2].addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let client = client();
    let mut seen = String::new();
    for _ in 0..14 {
        seen.push_str(&get(&client, &sy.url("/")).await.1);
    }
    assert_eq!(seen, "aabacaaaabacaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_split_exactly_evenly() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let sy = spawn_steelyard(config(&one_pool_toml(&addrs, ""))).await;
    let url = sy.url("/");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = client();
                for _ in 0..20 {
                    assert_eq!(get(&client, &url).await.0, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let counts: Vec<usize> = origins.iter().map(|o| o.requests()).collect();
    assert_eq!(counts, vec![200, 200, 200]);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let origins = [spawn_origin("a").await, spawn_origin("b").await];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let sy = spawn_steelyard(config(&one_pool_toml(&addrs, ""))).await;
    let client = client();
    for _ in 0..200 {
        assert_eq!(get(&client, &sy.url("/")).await.0, 200);
    }
    for o in &origins {
        assert_eq!(o.requests(), 100);
        // A connection goes back to the pool a moment after its response ends, so a
        // back-to-back request may occasionally open a second one; never one per request.
        assert!(
            o.connections() <= 3,
            "{} opened {} connections for 100 requests",
            o.name,
            o.connections()
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let request = "GET /hop HTTP/1.1\r\nHost: app.test:1234\r\nConnection: close, X-Named\r\nX-Named: secret\r\n\
                   Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
                   Upgrade: h2c\r\nX-Forwarded-For: 203.0.113.9\r\nVia: 1.1 edge\r\nX-End-To-End: yes\r\n\r\n";
    let response = raw_exchange(sy.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let seen = origin.last_headers();
    for hop in ["x-named", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
        assert!(!seen.contains_key(hop), "{hop} reached the origin: {seen:?}");
    }
    // The proxy's own upstream connection is keep-alive, so no Connection header goes upstream.
    assert!(!seen.contains_key("connection"), "{seen:?}");
    assert_eq!(seen["host"], "app.test:1234");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "app.test:1234");
    assert_eq!(seen["via"], "1.1 edge, 1.1 steelyard");
    assert_eq!(seen["x-end-to-end"], "yes");

    let headers = raw_header_map(&response);
    for hop in ["x-hop-named", "keep-alive", "proxy-connection", "trailer"] {
        assert!(!headers.contains_key(hop), "{hop} reached the client: {response}");
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_eq!(headers["x-origin"], "a");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = h2_client();
    let tasks: Vec<_> = (0..20).map(|_| client.get(sy.url("/h2")).send()).collect();
    for t in tasks {
        let res = t.await.expect("h2 request");
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.expect("body"), "a");
    }
    let seen = origin.last_headers();
    assert_eq!(
        seen["host"],
        sy.addr.to_string(),
        "the :authority becomes the Host header"
    );
    assert_eq!(seen["via"], "2.0 steelyard");
    assert_eq!(origin.requests(), 20);
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let chunks: Vec<Bytes> = (0..50u64).map(|i| pattern_chunk(i * 1000, 1000)).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let body = reqwest::Body::wrap_stream(stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>)));
    let res = client().post(sy.url("/echo")).body(body).send().await.expect("post");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["transfer-encoding"],
        "chunked",
        "response is chunked to the client"
    );
    assert_eq!(res.bytes().await.expect("body").as_ref(), expected.as_slice());
    let seen = origin.last_headers();
    assert_eq!(seen["transfer-encoding"], "chunked", "request is chunked to the origin");
    assert!(!seen.contains_key("content-length"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_through_intact() {
    const SIZE: u64 = 64 << 20;
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = client();

    let chunks = (0..SIZE / 65536).map(|i| Ok::<_, std::io::Error>(pattern_chunk(i * 65536, 65536)));
    let res = client
        .post(sy.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    let expected_sum = (0..SIZE / 65536).fold(CHECKSUM_SEED, |s, i| checksum(s, &pattern_chunk(i * 65536, 65536)));
    assert_eq!(res.text().await.expect("body"), format!("{SIZE} {expected_sum}"));

    let mut res = client
        .get(sy.url(&format!("/download?bytes={SIZE}")))
        .send()
        .await
        .expect("download");
    let (mut n, mut sum) = (0u64, CHECKSUM_SEED);
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        sum = checksum(sum, &chunk);
        n += chunk.len() as u64;
    }
    assert_eq!((n, sum), (SIZE, expected_sum));
}

#[tokio::test]
async fn refused_backend_is_502_and_names_nothing() {
    let dead = closed_port();
    let sy = spawn_steelyard(config(&one_pool_toml(&[dead.addr], ""))).await;
    let (status, body) = get(&client(), &sy.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(body, "502 Bad Gateway\n");
}

#[tokio::test]
async fn reset_backend_is_502() {
    let sy = spawn_steelyard(config(&one_pool_toml(&[spawn_resetting_origin().await], ""))).await;
    let (status, _) = get(&client(), &sy.url("/")).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn response_header_timeout_is_504() {
    let hanging = spawn_hanging_origin().await;
    let toml = one_pool_toml(&[hanging], "timeouts = { response_header = \"300ms\" }");
    let sy = spawn_steelyard(config(&toml)).await;
    let start = Instant::now();
    let (status, body) = get(&client(), &sy.url("/")).await;
    let took = start.elapsed();
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let (blackhole, _fillers, _socket) = blackhole_port();
    // The blackhole must really swallow connection attempts for this test to mean anything.
    assert!(std::net::TcpStream::connect_timeout(&blackhole, Duration::from_millis(200)).is_err());
    let toml = one_pool_toml(&[blackhole], "timeouts = { connect = \"300ms\" }");
    let sy = spawn_steelyard(config(&toml)).await;
    let start = Instant::now();
    let (status, _) = get(&client(), &sy.url("/")).await;
    let took = start.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let (web, api, v2, wild) = (
        spawn_origin("web").await,
        spawn_origin("api").await,
        spawn_origin("v2").await,
        spawn_origin("wild").await,
    );
    let toml = format!(
        r#"
[[listeners]]
listen = "127.0.0.1:0"
routes = [
  {{ pool = "web" }},
  {{ path_prefix = "/api", pool = "api" }},
  {{ path_prefix = "/api/v2", pool = "v2" }},
  {{ host = "*.example.test", pool = "wild" }},
]
[pools.web]
backends = ["{}"]
[pools.api]
backends = ["{}"]
[pools.v2]
backends = ["{}"]
[pools.wild]
backends = ["{}"]
"#,
        web.addr, api.addr, v2.addr, wild.addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let client = client();
    let cases = [
        ("plain.test", "/", "web"),
        ("plain.test", "/api/users", "api"),
        ("plain.test", "/api/v2/users", "v2"),
        ("www.example.test", "/api", "wild"),
        ("example.test", "/api", "api"),
    ];
    for (host, path, want) in cases {
        let res = client
            .get(sy.url(path))
            .header("host", host)
            .send()
            .await
            .expect("request");
        assert_eq!(res.text().await.expect("body"), want, "{host}{path}");
    }
}

#[tokio::test]
async fn unmatched_host_is_404() {
    let origin = spawn_origin("a").await;
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ host = \"only.test\", pool = \"p\" }}]\n[pools.p]\nbackends = [\"{}\"]\n",
        origin.addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let res = client()
        .get(sy.url("/"))
        .header("host", "other.test")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.expect("body"), "404 Not Found\n");
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn malformed_request_is_400_and_the_connection_closes() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n"[..],
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ] {
        // raw_exchange reads to EOF, so returning at all means the connection was closed.
        let response = raw_exchange(sy.addr, request).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response:?}");
    }
    assert_eq!(origin.requests(), 0, "malformed requests are never forwarded");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let origin = spawn_origin("a").await;
    let mut sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let url = sy.url("/slow?ms=500");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    eventually("the origin to receive the request", || async { origin.requests() == 1 }).await;
    let drained = sy.begin_shutdown();
    let addr = sy.addr;
    eventually("the listener to stop accepting", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let (status, body) = in_flight.await.expect("client task");
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    tokio::time::timeout(DEADLINE, drained)
        .await
        .expect("drained")
        .expect("task");
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let origin = spawn_origin("a").await;
    let toml = format!(
        "[server]\ndrain_timeout = \"200ms\"\n{}",
        one_pool_toml(&[origin.addr], "")
    );
    let mut sy = spawn_steelyard(config(&toml)).await;
    let url = sy.url("/slow?ms=20000");
    let _in_flight = tokio::spawn(async move { client().get(url).send().await });
    eventually("the origin to receive the request", || async { origin.requests() == 1 }).await;
    let start = Instant::now();
    tokio::time::timeout(DEADLINE, sy.begin_shutdown())
        .await
        .expect("returns")
        .expect("task");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_backend_closing_its_connections_costs_no_request() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = client();
    for i in 0..40 {
        let path = if i % 2 == 0 { "/close" } else { "/" };
        assert_eq!(
            get(&client, &sy.url(path)).await,
            (reqwest::StatusCode::OK, "a".to_owned()),
            "request {i}"
        );
    }
    assert_eq!(origin.requests(), 40);
}

#[tokio::test]
async fn empty_responses_return_their_connection_to_the_pool() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = client();
    for _ in 0..30 {
        let res = client.get(sy.url("/empty")).send().await.expect("request");
        assert_eq!(res.status(), 204);
        let res = client.head(sy.url("/")).send().await.expect("request");
        assert_eq!(res.status(), 200);
    }
    assert_eq!(origin.requests(), 60);
    assert!(
        origin.connections() <= 3,
        "{} connections for 60 requests",
        origin.connections()
    );
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(
        &[origin.addr],
        "timeouts = { idle = \"300ms\" }",
    )))
    .await;
    let started = Instant::now();
    assert_eq!(get(&client(), &sy.url("/")).await.0, 200);
    eventually("the response's connection to be pooled", || async {
        origin.open_connections() == 1
    })
    .await;
    eventually("the idle connection to be closed", || async {
        origin.open_connections() == 0
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout"
    );
}

#[tokio::test]
async fn an_abandoned_download_does_not_poison_the_pool() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(&[origin.addr], ""))).await;
    let client = client();
    for _ in 0..5 {
        let mut res = client
            .get(sy.url("/download?bytes=50000000"))
            .send()
            .await
            .expect("download");
        assert!(res.chunk().await.expect("chunk").is_some());
        drop(res); // hang up mid-body
        assert_eq!(
            get(&client, &sy.url("/")).await,
            (reqwest::StatusCode::OK, "a".to_owned())
        );
    }
}

#[tokio::test]
async fn a_backend_given_by_host_name_is_resolved_and_kept_resolved() {
    let origin = spawn_origin("a").await;
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n[pools.p]\ndns_refresh = \"1s\"\nbackends = [\"localhost:{}\"]\n",
        origin.addr.port()
    );
    let config = config(&toml);
    assert_eq!(
        config.pools[0].backends[0].dns_name.as_deref(),
        Some(format!("localhost:{}", origin.addr.port()).as_str())
    );
    let sy = spawn_steelyard(config).await;
    let client = client();
    let started = Instant::now();
    // Across a couple of refreshes (nothing changes, so nothing is rebuilt) it keeps serving.
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            get(&client, &sy.url("/")).await,
            (reqwest::StatusCode::OK, "a".to_owned())
        );
    }
}

/// At shutdown, idle keep-alive connections close at once; a busy one finishes its response,
/// marked `Connection: close`; the drain ends as soon as that response is done.
#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = spawn_origin("a").await;
    let toml = format!(
        "[server]\ndrain_timeout = \"30s\"\n{}",
        one_pool_toml(&[origin.addr], "")
    );
    let mut sy = spawn_steelyard(config(&toml)).await;
    // An idle keep-alive connection that has served one request.
    let mut idle = tokio::net::TcpStream::connect(sy.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("\r\n\r\na"));
    // A busy one.
    let mut busy = tokio::net::TcpStream::connect(sy.addr).await.expect("connect");
    busy.write_all(b"GET /slow?ms=500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    eventually("the slow request to reach the origin", || async {
        origin.requests() == 2
    })
    .await;
    let started = Instant::now();
    let drained = sy.begin_shutdown();
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, busy.read_to_end(&mut response))
        .await
        .expect("the busy connection closes after its response")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert!(
        response.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{response:?}"
    );
    tokio::time::timeout(DEADLINE, drained)
        .await
        .expect("drained")
        .expect("task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained in {:?}",
        started.elapsed()
    );
}
