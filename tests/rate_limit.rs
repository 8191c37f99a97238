//! Rate limits: local token buckets per key with 429, `Retry-After` and the `RateLimit`
//! fields over HTTP/1 and HTTP/2; a hundred thousand keys in fixed memory; global limits
//! shared by two processes through a real `redis-server`, failing open while it is down.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `count` requests to `url` with header `x-api-key: key` (none when empty), one after
/// another, and returns their statuses.
async fn statuses(client: &reqwest::Client, url: &str, key: &str, count: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut req = client.get(url);
        if !key.is_empty() {
            req = req.header("x-api-key", key);
        }
        out.push(req.send().await.expect("request").status().as_u16());
    }
    out
}

/// A burst of five passes and the rest get 429 with the fields that say when to come back;
/// the origin sees exactly the five.
#[tokio::test]
async fn a_burst_passes_and_the_rest_get_429_with_when_to_retry() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(
        &[origin.addr],
        "rate_limit = { rate = \"5/m\", burst = 5 }",
    )))
    .await;
    let client = client();
    let got = statuses(&client, &sy.url("/"), "", 8).await;
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(origin.requests(), 5, "refused requests never reach the backend");
    let res = client.get(sy.url("/")).send().await.expect("request");
    assert_eq!(res.status(), 429);
    let h = res.headers();
    // One token every 12 s; the bucket (5 tokens) is full again 60 s after the last one.
    assert_eq!(h["retry-after"], "12");
    assert_eq!(h["ratelimit-policy"], "\"main\";q=5;w=60");
    assert_eq!(h["ratelimit"], "\"main\";r=0;t=60");
    assert_eq!(res.text().await.expect("body"), "429 Too Many Requests\n");
    sy.shutdown().await;
}

/// Each key has its own bucket, over HTTP/1 and HTTP/2 alike; a request without the key is
/// not limited.
#[tokio::test]
async fn keys_have_their_own_buckets_on_both_protocols() {
    let origin = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&one_pool_toml(
        &[origin.addr],
        "rate_limit = { key = \"header:x-api-key\", rate = \"3/h\" }",
    )))
    .await;
    let (h1, h2) = (client(), h2_client());
    assert_eq!(statuses(&h1, &sy.url("/"), "alice", 4).await, [200, 200, 200, 429]);
    assert_eq!(
        statuses(&h2, &sy.url("/"), "alice", 1).await,
        [429],
        "HTTP/2 shares the bucket"
    );
    assert_eq!(statuses(&h2, &sy.url("/"), "bob", 4).await, [200, 200, 200, 429]);
    let res = h2
        .get(sy.url("/"))
        .header("x-api-key", "bob")
        .send()
        .await
        .expect("request");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.headers()["ratelimit-policy"], "\"main\";q=3;w=3600");
    assert_eq!(res.headers()["retry-after"], "1200");
    assert_eq!(statuses(&h1, &sy.url("/"), "", 5).await, [200; 5], "no key, no limit");
    assert_eq!(origin.requests(), 3 + 3 + 5);
    sy.shutdown().await;
}

/// Sends `keys` requests, each with its own `x-api-key`, pipelined on one connection in
/// batches, and returns how many were answered 200 and 429.
async fn pipelined(addr: SocketAddr, keys: std::ops::Range<u32>) -> (usize, usize) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ok, mut refused) = (0, 0);
    let mut start = keys.start;
    while start < keys.end {
        let end = (start + 500).min(keys.end);
        let mut batch = Vec::new();
        for k in start..end {
            batch.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Api-Key: key-{k}\r\n\r\n").as_bytes());
        }
        conn.write_all(&batch).await.expect("write");
        let want = (end - start) as usize;
        let mut seen = 0;
        let mut text = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while seen < want {
            let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
                .await
                .expect("responses in time")
                .expect("read");
            assert!(n > 0, "closed after {seen} of {want} responses");
            text.extend_from_slice(&buf[..n]);
            let s = String::from_utf8_lossy(&text);
            let (o, r) = (s.matches("HTTP/1.1 200 ").count(), s.matches("HTTP/1.1 429 ").count());
            seen = o + r;
            if seen >= want {
                ok += o;
                refused += r;
            }
        }
        start = end;
    }
    (ok, refused)
}

/// A client cycling through 100,000 keys costs no memory: the table of buckets is fixed in
/// size. The keys it saw last are still limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_keep_memory_fixed() {
    let origin = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys.toml");
    std::fs::write(
        &file,
        one_pool_toml(
            &[origin.addr],
            "rate_limit = { key = \"header:x-api-key\", rate = \"1/h\", burst = 1 }",
        ),
    )
    .expect("write");
    let mut p = Process::start(&["--config", file.to_str().expect("utf-8"), "--workers", "1"]);
    let addr = p.listening_addr();
    assert_eq!(
        pipelined(addr, 0..2_000).await,
        (2_000, 0),
        "new keys have full buckets"
    );
    let before = p.peak_rss_kib();
    assert_eq!(pipelined(addr, 2_000..100_000).await, (98_000, 0));
    let after = p.peak_rss_kib();
    assert!(
        after < before + 2 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB over 98,000 new keys"
    );
    assert_eq!(
        pipelined(addr, 99_000..100_000).await,
        (0, 1_000),
        "recent keys stay limited"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// Bad rate limits and a global scope without Redis are config errors naming the key.
#[test]
fn rate_limit_settings_are_checked() {
    let pool = |extra: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n{extra}\n")
    };
    let cases = [
        (pool("rate_limit = { rate = \"100\" }"), "t.toml:7:23: pools.p.rate_limit.rate: \"100\" has no period"),
        (pool("rate_limit = { rate = \"10/d\" }"), "pools.p.rate_limit.rate: \"d\" is not a period"),
        (pool("rate_limit = { rate = \"10/s\", burst = 0 }"), "pools.p.rate_limit.burst: must be from 1"),
        (pool("rate_limit = { rate = \"10/s\", key = \"ip\" }"), "pools.p.rate_limit.key: invalid key \"ip\""),
        (
            pool("rate_limit = { rate = \"10/s\", scope = \"global\" }"),
            "pools.p.rate_limit.scope: \"global\" counts in Redis; add [redis]",
        ),
        (
            pool("rate_limit = { rate = \"10/s\", scope = \"global\", on_redis_error = \"maybe\" }\n[redis]\nurl = \"redis://127.0.0.1:6379\""),
            "pools.p.rate_limit.on_redis_error: \"maybe\" is not \"allow\" or \"deny\"",
        ),
        (pool("[redis]\nurl = \"http://127.0.0.1:6379\""), "redis.url: \"http://127.0.0.1:6379\" is not a redis://HOST:PORT URL"),
    ];
    for (toml, expected) in cases {
        let err = config_error(&toml);
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
}

/// A config with a global limit shared through `redis`, the limit keyed by `x-api-key`.
fn global_toml(origin: SocketAddr, redis: SocketAddr, limit: &str) -> String {
    format!(
        "[redis]\nurl = \"redis://{redis}\"\ntimeout = \"200ms\"\n\n{}",
        one_pool_toml(
            &[origin],
            &format!("rate_limit = {{ key = \"header:x-api-key\", scope = \"global\", {limit} }}"),
        )
    )
}

/// Two processes sharing one Redis enforce one combined limit: 40/s with a burst of 20 over
/// two seconds admits 20 + 40 x 2 = 100 requests in all, whichever process they reach
/// (within 10%: an instance's unspent batch tokens are lost, at most one per instance here,
/// and the clock edges of the window cost a few). Counted locally it would be twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_limit_through_redis() {
    let redis = RedisServer::start();
    let origin = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-rl-global-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("global.toml");
    std::fs::write(
        &file,
        global_toml(origin.addr, redis.addr, "rate = \"40/s\", burst = 20"),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let mut a = Process::start(&["--config", path]);
    let mut b = Process::start(&["--config", path]);
    let urls = [
        format!("http://{}/", a.listening_addr()),
        format!("http://{}/", b.listening_addr()),
    ];
    let started = Instant::now();
    let window = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for url in urls.clone() {
        tasks.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut refused) = (0usize, 0usize);
            while started.elapsed() < window {
                match client
                    .get(&url)
                    .header("x-api-key", "shared")
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16()
                {
                    200 => ok += 1,
                    429 => refused += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, refused)
        }));
    }
    let mut per_process = Vec::new();
    for t in tasks {
        per_process.push(t.await.expect("load"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted: usize = per_process.iter().map(|(ok, _)| ok).sum();
    let expected = 20.0 + 40.0 * elapsed;
    assert!(
        (admitted as f64 - expected).abs() <= expected * 0.10,
        "admitted {admitted} in {elapsed:.2}s (per process {per_process:?}); expected {expected:.0} within 10%"
    );
    assert!(
        per_process.iter().all(|(ok, refused)| *ok > 0 && *refused > 0),
        "{per_process:?}"
    );
    assert_eq!(origin.requests(), admitted);
    for p in [&mut a, &mut b] {
        p.signal("-TERM");
        assert_eq!(p.wait(), 0);
    }
}

/// Killing Redis fails open (by default): requests pass beyond the limit, the outage is
/// logged once and shown in the metrics. When Redis is back on its port the limit holds
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_fails_open_and_the_limit_returns_with_it() {
    let mut redis = RedisServer::start();
    let origin = spawn_origin("a").await;
    let toml = global_toml(origin.addr, redis.addr, "rate = \"3/h\"")
        .replace("[redis]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[redis]");
    let sy = spawn_steelyard(config(&toml)).await;
    let admin = sy.admin.expect("admin listener");
    let client = client();
    let url = sy.url("/");
    assert_eq!(statuses(&client, &url, "k1", 4).await, [200, 200, 200, 429]);

    redis.kill();
    assert_eq!(
        statuses(&client, &url, "k2", 6).await,
        [200; 6],
        "Redis down: fail open"
    );
    let metrics = get(&client, &format!("http://{admin}/metrics")).await.1;
    assert!(
        metrics.contains("steelyard_rate_limit_redis_up{pool=\"main\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("steelyard_rate_limit_redis_errors_total{pool=\"main\"} 0\n"),
        "{metrics}"
    );

    let _back = RedisServer::start_at(redis.addr);
    // The first request after the outage may still find the old connection broken.
    eventually("the limit to be enforced again", || {
        let (client, url) = (client.clone(), url.clone());
        async move { statuses(&client, &url, "k3", 1).await == [200] }
    })
    .await;
    assert_eq!(statuses(&client, &url, "k3", 3).await, [200, 200, 429]);
    let metrics = get(&client, &format!("http://{admin}/metrics")).await.1;
    assert!(
        metrics.contains("steelyard_rate_limit_redis_up{pool=\"main\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("steelyard_rate_limited_total{pool=\"main\"} 2"),
        "{metrics}"
    );
    sy.shutdown().await;
}

/// With `on_redis_error = "deny"`, an unreachable Redis refuses requests.
#[tokio::test]
async fn failing_closed_refuses_while_redis_is_unreachable() {
    let origin = spawn_origin("a").await;
    let dead = closed_port();
    let sy = spawn_steelyard(config(&global_toml(
        origin.addr,
        dead.addr,
        "rate = \"100/s\", on_redis_error = \"deny\"",
    )))
    .await;
    assert_eq!(statuses(&client(), &sy.url("/"), "k", 3).await, [429; 3]);
    assert_eq!(origin.requests(), 0);
    sy.shutdown().await;
}
