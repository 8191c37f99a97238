//! The admin API: health, metrics, status, drain/enable, reload, token.

mod support;

use std::net::SocketAddr;

use support::*;

fn admin_toml(backends: &[SocketAddr], admin_extra: &str, pool_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n{}",
        one_pool_toml(backends, pool_extra)
    )
}

async fn admin_get(sy: &Steelyard, path: &str, token: Option<&str>) -> (u16, String) {
    let admin = sy.admin.expect("admin listener");
    let mut req = client().get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("admin request");
    (res.status().as_u16(), res.text().await.expect("body"))
}

async fn admin_post(sy: &Steelyard, path: &str) -> (u16, String) {
    let admin = sy.admin.expect("admin listener");
    let res = client()
        .post(format!("http://{admin}{path}"))
        .send()
        .await
        .expect("admin request");
    (res.status().as_u16(), res.text().await.expect("body"))
}

#[tokio::test]
async fn metrics_count_requests_by_backend_and_status_class() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    b.set_status(503);
    let sy = spawn_steelyard(config(&admin_toml(
        &[a.addr, b.addr],
        "",
        "retries = { attempts = 0 }\npassive = { consecutive_failures = 0 }",
    )))
    .await;
    let client = client();
    for _ in 0..10 {
        get(&client, &sy.url("/")).await;
    }
    // The 11th request (a's turn) carries a body.
    let res = client
        .post(sy.url("/upload"))
        .body(vec![7u8; 1234])
        .send()
        .await
        .expect("post");
    assert_eq!(res.text().await.expect("body").split(' ').next(), Some("1234"));
    let (status, text) = admin_get(&sy, "/metrics", None).await;
    assert_eq!(status, 200);
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .rsplit(' ')
            .next()
            .expect("value")
            .to_owned()
    };
    assert_eq!(
        line(&format!(
            "steelyard_requests_total{{pool=\"main\",backend=\"{}\",code=\"2xx\"}}",
            a.addr
        )),
        "6"
    );
    assert_eq!(
        line(&format!(
            "steelyard_requests_total{{pool=\"main\",backend=\"{}\",code=\"5xx\"}}",
            b.addr
        )),
        "5"
    );
    assert_eq!(
        line("steelyard_request_duration_seconds_count{pool=\"main\",backend=\"\"}"),
        "11"
    );
    assert_eq!(
        line(&format!(
            "steelyard_upstream_bytes_sent_total{{pool=\"main\",backend=\"{}\"}}",
            a.addr
        )),
        "1234"
    );
    assert_eq!(
        line("steelyard_listener_requests_total{listener=\"127.0.0.1:0\"}"),
        "11"
    );
    assert_eq!(
        line(&format!(
            "steelyard_backend_healthy{{pool=\"main\",backend=\"{}\"}}",
            a.addr
        )),
        "1"
    );
    assert_eq!(line("steelyard_config_reloads_total{result=\"success\"}"), "0");
    for name in [
        "steelyard_in_flight_requests",
        "steelyard_client_connections",
        "steelyard_listener_requests_total",
        "steelyard_upstream_bytes_received_total",
        "steelyard_upstream_bytes_sent_total",
        "steelyard_retries_total",
        "steelyard_retries_refused_total",
        "steelyard_ejections_total",
        "steelyard_health_transitions_total",
        "steelyard_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
}

#[tokio::test]
async fn status_shows_pools_backends_and_their_state() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let sy = spawn_steelyard(config(&admin_toml(
        &[a.addr, b.addr],
        "",
        "algorithm = \"least_request\"",
    )))
    .await;
    assert_eq!(admin_get(&sy, "/healthz", None).await, (200, "ok\n".to_owned()));
    let (status, body) = admin_get(&sy, "/api/status", None).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let pool = &doc["pools"][0];
    assert_eq!(pool["name"], "main");
    assert_eq!(pool["algorithm"], "least_request");
    let backends = pool["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0]["address"], a.addr.to_string());
    assert_eq!(backends[0]["state"], "healthy");
    assert_eq!(backends[0]["weight"], 1);
}

#[tokio::test]
async fn drain_stops_new_requests_and_enable_restores_them() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr, b.addr], "", ""))).await;
    let (status, body) = admin_post(&sy, &format!("/api/pools/main/backends/{}/drain", a.addr)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"drained\""), "{body}");
    let client = client();
    for _ in 0..6 {
        assert_eq!(get(&client, &sy.url("/")).await.1, "b");
    }
    let (_, status_doc) = admin_get(&sy, "/api/status", None).await;
    assert!(status_doc.contains("\"state\":\"drained\""), "{status_doc}");
    assert_eq!(
        admin_post(&sy, &format!("/api/pools/main/backends/{}/enable", a.addr))
            .await
            .0,
        200
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(get(&client, &sy.url("/")).await.1);
    }
    assert!(names.contains(&"a".to_owned()), "{names:?}");
    assert_eq!(
        admin_post(&sy, "/api/pools/main/backends/10.9.9.9:1/drain").await.0,
        404
    );
    assert_eq!(admin_post(&sy, "/api/pools/nope/backends/x/drain").await.0, 404);
}

#[tokio::test]
async fn a_token_protects_everything_but_the_balancers_own_health() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr], "token = \"s3cret\"", ""))).await;
    assert_eq!(admin_get(&sy, "/healthz", None).await.0, 200);
    assert_eq!(admin_get(&sy, "/metrics", None).await.0, 401);
    assert_eq!(admin_get(&sy, "/api/status", Some("wrong")).await.0, 401);
    assert_eq!(admin_get(&sy, "/api/status", Some("s3cret")).await.0, 200);
    assert_eq!(admin_post(&sy, "/api/reload").await.0, 401);
}

#[tokio::test]
async fn reload_through_the_api_reports_errors_and_counts_them() {
    let a = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-admin-{}-{}", std::process::id(), a.addr.port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("admin.toml");
    std::fs::write(&file, admin_toml(&[a.addr], "", "")).expect("write");
    let sy = spawn_steelyard(steelyard::Config::load(&file).expect("valid")).await;
    let (status, body) = admin_post(&sy, "/api/reload").await;
    assert_eq!(status, 200, "{body}");
    std::fs::write(&file, admin_toml(&[a.addr], "", "weight = 3")).expect("write");
    let (status, body) = admin_post(&sy, "/api/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("admin.toml:10:1: unknown field `weight`"), "{body}");
    let (_, metrics) = admin_get(&sy, "/metrics", None).await;
    assert!(
        metrics.contains("steelyard_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("steelyard_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert_eq!(get(&client(), &sy.url("/")).await.1, "a");
}

#[test]
fn an_exposed_admin_listener_needs_a_token() {
    let text = "[admin]\nlisten = \"0.0.0.0:9901\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ pool = \"p\" }]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let err = steelyard::Config::from_toml(text, "a.toml")
        .expect_err("refused")
        .to_string();
    assert!(
        err.starts_with("a.toml:2:10: admin.listen: 0.0.0.0:9901 is reachable from other machines"),
        "{err}"
    );
    let with_token = text.replace("[admin]\n", "[admin]\ntoken = \"t\"\n");
    assert!(steelyard::Config::from_toml(&with_token, "a.toml").is_ok());
}
