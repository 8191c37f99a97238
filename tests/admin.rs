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

/// A POST as the dashboard (or `curl -H 'X-Steelyard-Admin: 1'`) sends it.
async fn admin_post(sy: &Steelyard, path: &str) -> (u16, String) {
    let admin = sy.admin.expect("admin listener");
    let res = client()
        .post(format!("http://{admin}{path}"))
        .header("x-steelyard-admin", "1")
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
    // A response is counted when the worker finishes it, which may be just after the client
    // read its last byte: wait until all 11 are in.
    let text = metrics_once_counted(&sy, 11).await;
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
        line("steelyard_pool_request_duration_seconds_count{pool=\"main\"}"),
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
    let listener = &doc["listeners"][0];
    assert_eq!(listener["mode"], "http");
    assert_eq!(listener["tls"], false);
    assert_eq!(listener["address"], sy.addr.to_string());
    assert!(
        listener["routes"].as_str().expect("routes").contains("pool main"),
        "{listener}"
    );
    // Unnamed, the listener shows the address it is bound to, not the configured port 0.
    assert_eq!(listener["name"], sy.addr.to_string());
    assert_eq!(
        listener["route_table"],
        serde_json::json!([{ "host": null, "path_prefix": "/", "pool": "main" }])
    );
}

#[tokio::test]
async fn status_events_can_be_asked_for_after_a_number() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr, b.addr], "", ""))).await;
    let doc = |body: String| serde_json::from_str::<serde_json::Value>(&body).expect("json");
    let first = doc(admin_get(&sy, "/api/status", None).await.1);
    let last = first["events_last_seq"].as_u64().expect("events_last_seq");
    let seqs: Vec<u64> = first["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&last));
    // Nothing new since the last one; a drain is one new event, and only it comes back.
    let none = doc(admin_get(&sy, &format!("/api/status?events_since={last}"), None)
        .await
        .1);
    assert_eq!(none["events"], serde_json::json!([]));
    admin_post(&sy, &format!("/api/pools/main/backends/{}/drain", a.addr)).await;
    let new = doc(admin_get(&sy, &format!("/api/status?events_since={last}"), None)
        .await
        .1);
    let events = new["events"].as_array().expect("events");
    assert!(events.iter().all(|e| e["seq"].as_u64() > Some(last)), "{events:?}");
    assert!(events.iter().any(|e| e["kind"] == "drain"), "{events:?}");
    let (status, _) = admin_get(&sy, "/api/status?events_since=soon", None).await;
    assert_eq!(status, 400);
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

/// Rotating the token is a reload, not a restart.
#[tokio::test]
async fn a_reload_rotates_the_token() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr], "token = \"old-token\"", ""))).await;
    assert_eq!(admin_get(&sy, "/api/status", Some("old-token")).await.0, 200);
    sy.reload
        .apply(config(&admin_toml(&[a.addr], "token = \"new-token\"", "")))
        .await
        .expect("reload");
    assert_eq!(admin_get(&sy, "/api/status", Some("old-token")).await.0, 401);
    assert_eq!(admin_get(&sy, "/api/status", Some("new-token")).await.0, 200);
}

#[tokio::test]
async fn reload_through_the_api_reports_errors_and_counts_them() {
    let a = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-admin-{}-{}", std::process::id(), a.addr.port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("admin.toml");
    std::fs::write(&file, admin_toml(&[a.addr], "", "")).expect("write");
    let sy = spawn_steelyard(steelyard::Config::load(&file, &steelyard::server::dns::System).expect("valid")).await;
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

/// The metrics page once `steelyard_requests_total` sums to `responses` (the worker counts a
/// response when it finishes it, possibly just after the client read its last byte).
async fn metrics_once_counted(sy: &Steelyard, responses: u64) -> String {
    eventually("every response to be counted", || async {
        let (status, body) = admin_get(sy, "/metrics", None).await;
        status == 200 && family_sum(&body, "steelyard_requests_total") >= responses
    })
    .await;
    admin_get(sy, "/metrics", None).await.1
}

/// The sum of every series of `family` in a Prometheus text exposition.
fn family_sum(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("integer value")
        })
        .sum()
}

/// Summing `steelyard_requests_total` gives exactly the responses sent: from backends, the
/// 502s Steelyard wrote for a dead one, 404s for unrouted hosts and 400s for malformed
/// requests, over HTTP/1 and HTTP/2, each once; the pool's histogram has a family of its own.
#[tokio::test]
async fn requests_total_sums_to_every_response_sent() {
    let a = spawn_origin("a").await;
    let dead = closed_port();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nroutes = [{{ host = \"app.test\", pool = \"main\" }}]\n[pools.main]\nbackends = [\"{}\", \"{}\"]\nretries = {{ attempts = 0 }}\npassive = {{ consecutive_failures = 0 }}\n",
        a.addr, dead.addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let client = client();
    let mut sent = 0;
    // Round robin: a, dead, a, dead.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = client
            .get(sy.url("/"))
            .header("host", "app.test")
            .send()
            .await
            .expect("request");
        statuses.push(res.status().as_u16());
        sent += 1;
    }
    assert_eq!(statuses, [200, 502, 200, 502]);
    for _ in 0..3 {
        assert_eq!(get(&client, &sy.url("/")).await.0, 404);
        sent += 1;
    }
    for bad in ["GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"] {
        assert!(raw_exchange(sy.addr, bad.as_bytes()).await.starts_with("HTTP/1.1 400"));
        sent += 1;
    }
    let h2 = h2_client();
    let res = h2.get(sy.url("/h2")).send().await.expect("h2 request");
    assert_eq!(res.status(), 404);
    sent += 1;

    let text = metrics_once_counted(&sy, sent).await;
    assert_eq!(family_sum(&text, "steelyard_requests_total"), sent, "{text}");
    let series = |labels: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("steelyard_requests_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no series {labels}"))
            .to_owned()
    };
    assert_eq!(
        series(&format!("pool=\"main\",backend=\"{}\",code=\"2xx\"", a.addr)),
        "2"
    );
    assert_eq!(series("pool=\"main\",backend=\"\",code=\"5xx\""), "2");
    assert_eq!(series("pool=\"\",backend=\"\",code=\"4xx\""), "6");
    assert!(
        text.contains("steelyard_listener_local_responses_total{listener=\"web\",code=\"4xx\"} 6"),
        "{text}"
    );
    assert!(
        !text.contains("backend=\"\",le="),
        "no per-pool series in the per-backend histogram"
    );
}

/// The status line of a raw admin exchange.
async fn raw_status(addr: SocketAddr, request: &str) -> String {
    let response = raw_exchange(addr, request.as_bytes()).await;
    response.lines().next().unwrap_or_default().to_owned()
}

/// What a page on another site can make a browser send: a simple POST (no custom header, a
/// form content type), with the browser's Origin and Sec-Fetch-Site. None of it may drain a
/// backend or reload; the same request with the dashboard's header may.
#[tokio::test]
async fn cross_site_requests_cannot_change_state() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr], "", ""))).await;
    let admin = sy.admin.expect("admin");
    let drain = format!("/api/pools/main/backends/{}/drain", a.addr);
    let forged = [
        ("no header a form cannot send", String::new()),
        ("a form from another site", "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Steelyard-Admin: 1\r\n".to_owned()),
        ("another origin, even with the header", "Origin: http://evil.example\r\nX-Steelyard-Admin: 1\r\n".to_owned()),
        ("another port of localhost", "Origin: http://localhost:1\r\nX-Steelyard-Admin: 1\r\n".to_owned()),
        ("a same-site page", "Sec-Fetch-Site: same-site\r\nX-Steelyard-Admin: 1\r\n".to_owned()),
    ];
    for (what, headers) in &forged {
        for path in [drain.as_str(), "/api/reload"] {
            let status = raw_status(
                admin,
                &format!(
                    "POST {path} HTTP/1.1\r\nHost: {admin}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            assert!(status.starts_with("HTTP/1.1 403"), "{what} {path}: {status}");
        }
    }
    assert_eq!(get(&client(), &sy.url("/")).await.1, "a", "nothing was drained");
    let (_, metrics) = admin_get(&sy, "/metrics", None).await;
    assert!(
        metrics.contains("steelyard_config_reloads_total{result=\"success\"} 0"),
        "{metrics}"
    );

    // The admin's own page (same origin), JSON, or the custom header: allowed.
    let own = raw_status(
        admin,
        &format!("POST {drain} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\nX-Steelyard-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    let json = raw_status(
        admin,
        &format!("POST /api/pools/main/backends/{}/enable HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", a.addr),
    )
    .await;
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
}

/// DNS rebinding: a page on attacker.example whose name later resolves to 127.0.0.1 sends
/// `Host: attacker.example`. Only IP literals, localhost and configured names pass.
#[tokio::test]
async fn requests_for_other_host_names_are_refused() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr], "hosts = [\"lb.internal\"]", ""))).await;
    let admin = sy.admin.expect("admin");
    let port = admin.port();
    let get_with_host = |host: String| async move {
        raw_status(
            admin,
            &format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await
    };
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".into(),
        format!("localhost.evil:{port}"),
    ] {
        let status = get_with_host(host.clone()).await;
        assert!(status.starts_with("HTTP/1.1 421"), "{host}: {status}");
    }
    let missing = raw_status(admin, "GET /api/status HTTP/1.0\r\n\r\n").await;
    assert!(
        missing.starts_with("HTTP/1.0 421") || missing.starts_with("HTTP/1.1 421"),
        "no Host: {missing}"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LB.internal:{port}"),
        format!("[::1]:{port}"),
        "10.1.2.3".into(),
    ] {
        let status = get_with_host(host.clone()).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{host}: {status}");
    }
}

/// A client that connects and sends nothing, or half a head, is closed after the admin's
/// header timeout; the admin keeps answering others meanwhile.
#[tokio::test]
async fn silent_admin_clients_are_closed() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&admin_toml(&[a.addr], "", ""))).await;
    let admin = sy.admin.expect("admin");
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for partial in ["", "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"] {
        let mut s = tokio::net::TcpStream::connect(admin).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, partial.as_bytes())
            .await
            .expect("write");
        silent.push(s);
    }
    assert_eq!(admin_get(&sy, "/healthz", None).await.0, 200);
    for mut s in silent {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf))
            .await
            .expect("closed by the admin server");
    }
    let took = started.elapsed();
    assert!(took >= steelyard::admin::HEADER_TIMEOUT, "closed after {took:?}");
}

#[test]
fn an_exposed_admin_listener_needs_a_token() {
    let text = "[admin]\nlisten = \"0.0.0.0:9901\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ pool = \"p\" }]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let err = steelyard::Config::from_toml(text, "a.toml", &steelyard::server::dns::System)
        .expect_err("refused")
        .to_string();
    assert!(
        err.starts_with("a.toml:2:10: admin.listen: 0.0.0.0:9901 is reachable from other machines"),
        "{err}"
    );
    let with_token = text.replace("[admin]\n", "[admin]\ntoken = \"t\"\n");
    assert!(steelyard::Config::from_toml(&with_token, "a.toml", &steelyard::server::dns::System).is_ok());
}

/// Out of descriptors, `accept` fails at once every time it is called; the admin server backs
/// off instead of spinning on it. With every descriptor held by idle admin connections, the
/// process uses well under a third of a core, and the admin answers again once they are gone.
#[test]
fn admin_accept_errors_back_off_instead_of_spinning() {
    let script = format!(
        "ulimit -n 40 && exec {BIN} --listen 127.0.0.1:0 --backend 127.0.0.1:1 --workers 1 --admin 127.0.0.1:0"
    );
    let mut p = Process::start_command(std::process::Command::new("sh").args(["-c", &script]));
    let line = p.wait_for_line("admin API and dashboard on http://");
    let admin: SocketAddr = line[line.find("http://").expect("url") + 7..]
        .trim_end_matches('/')
        .parse()
        .expect("admin address");
    // Connections wait in the accept queue even when the process cannot take them.
    let held: Vec<_> = (0..60)
        .map(|_| std::net::TcpStream::connect(admin).expect("connect"))
        .collect();
    p.wait_for_line("admin accept failed");
    let before = p.cpu_ticks();
    // A measurement window, not a wait for an event: CPU used while accept keeps failing.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = p.cpu_ticks() - before;
    assert!(used < 30, "{used} ticks of CPU in 1 s while out of descriptors");
    drop(held);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(eventually("the admin to answer again", || async {
        client()
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }));
    p.signal("-TERM");
    p.wait();
}
