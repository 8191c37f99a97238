//! Health checks, outlier ejection, panic mode, retries and limits, through a real Steelyard.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::*;

fn pool_toml(backends: &[std::net::SocketAddr], extra: &str) -> String {
    one_pool_toml(backends, extra)
}

async fn statuses(sy: &Steelyard, n: usize) -> Vec<u16> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&client, &sy.url("/")).await.0.as_u16());
    }
    out
}

const CHECK_FAST: &str = r#"
[pools.main.health_check]
path = "/healthz"
interval = "50ms"
timeout = "200ms"
healthy_threshold = 1
unhealthy_threshold = 1
start_unhealthy = true
"#;

#[tokio::test]
async fn no_eligible_backend_is_an_immediate_503_with_retry_after() {
    let origins = [spawn_origin("a").await, spawn_origin("b").await];
    for o in &origins {
        o.set_health(500);
    }
    let extra = format!("panic_threshold = 0\n{CHECK_FAST}");
    let sy = spawn_steelyard(config(&pool_toml(&[origins[0].addr, origins[1].addr], &extra))).await;
    let start = Instant::now();
    let res = client().get(sy.url("/")).send().await.expect("request");
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no hang: {:?}",
        start.elapsed()
    );
    assert_eq!(origins[0].requests() + origins[1].requests(), 0);
}

#[tokio::test]
async fn active_checks_gate_traffic_both_ways() {
    let origins = [spawn_origin("a").await, spawn_origin("b").await];
    origins[1].set_health(503);
    let extra = format!("panic_threshold = 0\n{CHECK_FAST}");
    let sy = spawn_steelyard(config(&pool_toml(&[origins[0].addr, origins[1].addr], &extra))).await;
    let client = client();
    eventually("a to pass its check", || async {
        get(&client, &sy.url("/")).await.0 == 200
    })
    .await;
    let before = origins[1].requests();
    for _ in 0..10 {
        assert_eq!(get(&client, &sy.url("/")).await, (StatusCode::OK, "a".to_owned()));
    }
    assert_eq!(origins[1].requests(), before, "b is unhealthy: no traffic");

    origins[1].set_health(200);
    eventually("b to get traffic once healthy", || async {
        get(&client, &sy.url("/")).await.1 == "b"
    })
    .await;
    origins[0].set_health(500);
    eventually("a to be taken out", || async {
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(get(&client, &sy.url("/")).await.1);
        }
        names.iter().all(|n| n == "b")
    })
    .await;
}

#[tokio::test]
async fn panic_mode_routes_to_all_when_too_few_are_healthy() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    for o in &origins {
        o.set_health(500);
    }
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let sy = spawn_steelyard(config(&pool_toml(
        &addrs,
        &format!("panic_threshold = 50\n{CHECK_FAST}"),
    )))
    .await;
    // 0 of 3 healthy is under 50%: fail open and use all of them.
    assert_eq!(statuses(&sy, 9).await, vec![200; 9]);
    assert!(
        origins.iter().all(|o| o.requests() == 3),
        "all three serve in panic mode"
    );
    // 2 of 3 healthy is over 50%: only those two.
    origins[0].set_health(200);
    origins[1].set_health(200);
    let client = client();
    eventually("c to be left out", || async {
        let before = origins[2].requests();
        for _ in 0..6 {
            get(&client, &sy.url("/")).await;
        }
        origins[2].requests() == before
    })
    .await;
}

#[tokio::test]
async fn a_hanging_backend_times_out_and_is_ejected() {
    let hanging = spawn_hanging_origin().await;
    let good = spawn_origin("good").await;
    let extra = r#"timeouts = { response_header = "200ms" }
retries = { attempts = 0 }
passive = { consecutive_failures = 2, base_ejection_time = "30s" }"#;
    let sy = spawn_steelyard(config(&pool_toml(&[hanging, good.addr], extra))).await;
    let got = statuses(&sy, 12).await;
    // Round robin: the hanging backend gets requests 1 and 3, fails both, and is ejected.
    assert_eq!(got, vec![504, 200, 504, 200, 200, 200, 200, 200, 200, 200, 200, 200]);
    assert_eq!(good.requests(), 10);
}

#[tokio::test]
async fn backends_answering_500_are_ejected_only_when_configured() {
    for (eject, expect_failing) in [(true, 3), (false, 10)] {
        let failing = spawn_origin("failing").await;
        failing.set_status(500);
        let good = spawn_origin("good").await;
        let extra = format!(
            "retries = {{ attempts = 0 }}\npassive = {{ consecutive_failures = 3, eject_on_5xx = {eject}, base_ejection_time = \"30s\" }}"
        );
        let sy = spawn_steelyard(config(&pool_toml(&[failing.addr, good.addr], &extra))).await;
        statuses(&sy, 20).await;
        assert_eq!(failing.requests(), expect_failing, "eject_on_5xx = {eject}");
        assert_eq!(good.requests(), 20 - expect_failing);
    }
}

#[tokio::test]
async fn an_ejected_backend_returns_after_its_ejection_time() {
    let failing = spawn_origin("flaky").await;
    failing.set_status(502);
    let good = spawn_origin("good").await;
    let extra = "retries = { attempts = 0 }\npassive = { consecutive_failures = 1, eject_on_5xx = true, base_ejection_time = \"300ms\" }";
    let sy = spawn_steelyard(config(&pool_toml(&[failing.addr, good.addr], extra))).await;
    let ejected_at = Instant::now();
    statuses(&sy, 4).await;
    assert_eq!(failing.requests(), 1);
    failing.set_status(200);
    let client = client();
    eventually("the flaky backend to be back", || async {
        get(&client, &sy.url("/")).await.1 == "flaky"
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_never_retried() {
    let (resetting, seen) = spawn_counting_resetting_origin().await;
    let good = spawn_origin("good").await;
    let extra = r#"retries = { attempts = 2, on = ["connect-failure", "reset"] }
passive = { consecutive_failures = 0 }"#;
    let sy = spawn_steelyard(config(&pool_toml(&[resetting, good.addr], extra))).await;
    let client = client();
    // Round robin sends the first request to the resetting backend.
    let res = client
        .post(sy.url("/upload"))
        .body("pay once")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 502);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(good.requests(), 0, "the POST was not sent again");
    // An idempotent GET that hits the same failure is retried on the other backend.
    let _ = get(&client, &sy.url("/")).await; // good's turn
    let (status, body) = get(&client, &sy.url("/")).await; // resetting's turn, retried
    assert_eq!((status.as_u16(), body.as_str()), (200, "good"));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_whose_connection_failed_is_retried_once_elsewhere() {
    let good = spawn_origin("good").await;
    let extra = "passive = { consecutive_failures = 0 }";
    let dead = closed_port();
    let sy = spawn_steelyard(config(&pool_toml(&[dead.addr, good.addr], extra))).await;
    let client = client();
    for _ in 0..4 {
        let res = client.post(sy.url("/upload")).body("12345").send().await.expect("post");
        assert_eq!(res.status(), 200);
        assert!(res.text().await.expect("body").starts_with("5 "));
    }
    assert_eq!(good.requests(), 4, "each POST reached the good backend exactly once");
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    for o in &origins {
        o.set_status(503);
    }
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let extra = r#"retries = { attempts = 2, on = ["503"], budget_percent = 20 }
passive = { consecutive_failures = 0 }"#;
    let sy = spawn_steelyard(config(&pool_toml(&addrs, extra))).await;
    let got = statuses(&sy, 100).await;
    assert!(got.iter().all(|&s| s == 503));
    let total: usize = origins.iter().map(|o| o.requests()).sum();
    // 100 requests, and retries of at most 20% of them plus a reserve of 10.
    assert!(
        (100 + 25..=100 + 30).contains(&total),
        "{total} requests reached the origins"
    );
}

#[tokio::test]
async fn max_connections_queues_requests_then_refuses() {
    let slow = spawn_origin_delayed("slow", Duration::from_millis(300)).await;
    let extra = "max_connections = 1\nqueue_timeout = \"5s\"";
    let sy = spawn_steelyard(config(&pool_toml(&[slow.addr], extra))).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let url = sy.url("/");
            tokio::spawn(async move { get(&client(), &url).await.0.as_u16() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    // One at a time: three 300 ms responses take at least 900 ms.
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());

    let extra = "max_connections = 1\nqueue_timeout = \"100ms\"";
    let sy = spawn_steelyard(config(&pool_toml(&[slow.addr], extra))).await;
    let first = {
        let url = sy.url("/");
        tokio::spawn(async move { get(&client(), &url).await.0.as_u16() })
    };
    eventually("the first request to hold the slot", || async { slow.requests() >= 4 }).await;
    let start = Instant::now();
    let res = client().get(sy.url("/")).send().await.expect("request");
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(290),
        "{waited:?}"
    );
    assert_eq!(first.await.expect("task"), 200);
}

#[tokio::test]
async fn max_client_connections_refuses_cleanly_beyond_the_limit() {
    let origin = spawn_origin("a").await;
    let toml = pool_toml(&[origin.addr], "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_client_connections = 2",
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let held = [
        tokio::net::TcpStream::connect(sy.addr).await.expect("first"),
        tokio::net::TcpStream::connect(sy.addr).await.expect("second"),
    ];
    let refused = raw_exchange(sy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(held);
    let addr = sy.addr;
    eventually("a slot to free up", || async {
        raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn the_request_timeout_bounds_the_whole_exchange() {
    let hanging = spawn_hanging_origin().await;
    let extra = "timeouts = { request = \"300ms\", response_header = \"10s\" }";
    let sy = spawn_steelyard(config(&pool_toml(&[hanging], extra))).await;
    let start = Instant::now();
    let (status, body) = get(&client(), &sy.url("/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (504, "504 Gateway Timeout\n"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn health_settings_are_validated_with_positions() {
    let text = r#"[[listeners]]
listen = "127.0.0.1:0"
routes = [{ pool = "p" }]
[pools.p]
backends = ["127.0.0.1:1"]
retries = { on = ["sometimes"] }
[pools.p.health_check]
kind = "tcp"
path = "/x"
expect_status = "500-200"
healthy_threshold = 0
"#;
    let errors = steelyard::Config::from_toml(text, "h.toml", &steelyard::server::dns::System)
        .expect_err("invalid")
        .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 4, "{errors}");
    assert!(
        lines[0].starts_with("h.toml:6:19: pools.p.retries.on: unknown condition \"sometimes\""),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("h.toml:9:8: pools.p.health_check.path: only applies to kind = \"http\""),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("h.toml:10:17: pools.p.health_check.expect_status: only applies"),
        "{errors}"
    );
    assert!(
        lines[3].starts_with("h.toml:11:21: pools.p.health_check.healthy_threshold: must be from 1 to 100"),
        "{errors}"
    );
}
