//! Hot reload: swap configs under load without failing a request.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

fn toml_with(listen_extra: &str, pool_extra: &str, backends: &[&Origin]) -> String {
    let list: Vec<String> = backends.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n{listen_extra}\n[pools.main]\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
        spawn_origin("d").await,
    ];
    let o = &origins;
    // Each config: (backends, algorithm); consecutive configs add and remove backends.
    let configs: Vec<(Vec<&Origin>, &str)> = vec![
        (vec![&o[0], &o[1]], "round_robin"),
        (vec![&o[1], &o[2]], "least_connections"),
        (vec![&o[0], &o[2], &o[3]], "random"),
        (vec![&o[3]], "peak_ewma"),
        (vec![&o[0], &o[1], &o[2], &o[3]], "maglev"),
    ];
    let render = |i: usize| {
        let (backends, algorithm) = &configs[i % configs.len()];
        config(&toml_with("", &format!("algorithm = \"{algorithm}\""), backends))
    };
    let names = |i: usize| -> Vec<String> { configs[i % configs.len()].0.iter().map(|o| o.name.clone()).collect() };
    let sy = spawn_steelyard(render(0)).await;

    // Reloads: (version, asked at, done at). Version v may route requests from the moment its
    // reload was asked for until the next reload is done.
    let t0 = Instant::now();
    let versions: Arc<Mutex<Vec<(usize, Instant, Instant)>>> = Arc::new(Mutex::new(vec![(0, t0, t0)]));
    let running = Arc::new(AtomicBool::new(true));
    let mut loads = Vec::new();
    for fresh_connections in [false, true] {
        let (url, running) = (sy.url("/"), Arc::clone(&running));
        loads.push(tokio::spawn(async move {
            let keep_alive = client();
            let mut seen = Vec::new();
            while running.load(Ordering::SeqCst) {
                let c = if fresh_connections {
                    client()
                } else {
                    keep_alive.clone()
                };
                let sent = Instant::now();
                let result = c.get(&url).send().await;
                let answer = match result {
                    Ok(res) => (res.status().as_u16(), res.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                seen.push((sent, Instant::now(), answer));
            }
            seen
        }));
    }
    for version in 1..=20 {
        tokio::time::sleep(Duration::from_millis(30)).await; // let load run under this config
        let asked = Instant::now();
        sy.reload.apply(render(version)).await.expect("reload");
        versions.lock().expect("lock").push((version, asked, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    running.store(false, Ordering::SeqCst);

    let versions = versions.lock().expect("lock").clone();
    let mut total = 0;
    for load in loads {
        for (sent, received, (status, body)) in load.await.expect("load") {
            total += 1;
            assert_eq!(status, 200, "{body}");
            // The versions that may have routed it: those whose time in force overlaps the
            // request's.
            let possible: Vec<usize> = versions
                .iter()
                .enumerate()
                .filter(|(i, (_, asked, _))| {
                    let until = versions.get(i + 1).map(|(_, _, done)| *done);
                    *asked <= received && until.is_none_or(|u| u >= sent)
                })
                .map(|(_, (v, _, _))| *v)
                .collect();
            assert!(
                possible.iter().any(|&v| names(v).contains(&body)),
                "{body} answered, but configs {possible:?} do not include it"
            );
        }
    }
    eprintln!("{total} requests over 20 reloads, 0 failed");
    assert!(total >= 100, "enough load to mean something: {total}");
}

#[tokio::test]
async fn an_invalid_config_is_reported_and_the_old_one_keeps_serving() {
    let a = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-reload-{}-{}", std::process::id(), a.addr.port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("steelyard.toml");
    std::fs::write(&file, toml_with("", "", &[&a])).expect("write");
    let sy = spawn_steelyard(steelyard::Config::load(&file, &steelyard::server::dns::System).expect("valid")).await;
    std::fs::write(&file, toml_with("", "algorithm = \"fastest\"", &[&a])).expect("write");
    let err = sy.reload.reload().await.expect_err("invalid").to_string();
    assert!(
        err.contains("steelyard.toml:7:13: pools.main.algorithm: unknown algorithm"),
        "{err}"
    );
    assert_eq!(get(&client(), &sy.url("/")).await.1, "a", "the old config still serves");

    let b = spawn_origin("b").await;
    std::fs::write(&file, toml_with("", "", &[&b])).expect("write");
    sy.reload.reload().await.expect("valid reload");
    assert_eq!(get(&client(), &sy.url("/")).await.1, "b");
}

#[tokio::test]
async fn backends_keep_their_load_figures_across_a_reload() {
    let origins = [spawn_origin("a").await, spawn_origin("b").await];
    let sy = spawn_steelyard(config(&toml_with(
        "",
        "algorithm = \"least_connections\"",
        &[&origins[0], &origins[1]],
    )))
    .await;
    let slow = {
        let url = sy.url("/slow?ms=3000");
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
    };
    eventually("a slow request in flight", || async {
        origins[0].requests() + origins[1].requests() == 1
    })
    .await;
    let busy = if origins[0].requests() == 1 { 0 } else { 1 };
    // Same backends, new pool objects: the in-flight count must survive.
    sy.reload
        .apply(config(&toml_with(
            "",
            "algorithm = \"least_connections\"\ntimeouts = { idle = \"30s\" }",
            &[&origins[0], &origins[1]],
        )))
        .await
        .expect("reload");
    let client = client();
    for _ in 0..10 {
        assert_eq!(get(&client, &sy.url("/")).await.1, origins[1 - busy].name);
    }
    assert_eq!(origins[busy].requests(), 1);
    drop(slow);
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_reload() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&toml_with("", "", &[&a]))).await;
    let extra_port = free_port();
    let two = format!(
        "{}\n[[listeners]]\nlisten = \"{extra_port}\"\nroutes = [{{ pool = \"main\" }}]\n",
        toml_with("", "", &[&a])
    );
    sy.reload.apply(config(&two)).await.expect("add listener");
    assert_eq!(get(&client(), &format!("http://{extra_port}/")).await.1, "a");
    sy.reload
        .apply(config(&toml_with("", "", &[&a])))
        .await
        .expect("remove listener");
    eventually("the removed listener to stop accepting", || async {
        tokio::net::TcpStream::connect(extra_port).await.is_err()
    })
    .await;
    assert_eq!(
        get(&client(), &sy.url("/")).await.1,
        "a",
        "the kept listener still serves"
    );
}

/// A reload that fails part-way (a new listener's address is taken, or an access log cannot
/// be opened) changes nothing: the shared backend keeps its weight, the new listeners that did
/// bind are closed again, and the old config keeps serving on its warm upstream connections.
#[tokio::test]
async fn a_failed_reload_changes_nothing() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let sy = spawn_steelyard(config(&toml_with("", "", &[&a, &b]))).await;
    let client = client();
    for _ in 0..4 {
        get(&client, &sy.url("/")).await;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let heavier_b = toml_with("", "", &[&a, &b]).replace(
        &format!("\"{}\"]", b.addr),
        &format!("{{ address = \"{}\", weight = 3 }}]", b.addr),
    );
    for (what, extra_listener, expected) in [
        (
            "a taken address",
            format!("listen = \"{taken_addr}\"\n"),
            taken_addr.to_string(),
        ),
        (
            "an access log in a missing directory",
            "listen = \"127.0.0.1:0\"\naccess_log = { path = \"/nonexistent-steelyard-dir/a.log\" }\n".to_owned(),
            "/nonexistent-steelyard-dir/a.log".to_owned(),
        ),
    ] {
        let free = free_port();
        let bad = format!(
            "{heavier_b}\n[[listeners]]\nlisten = \"{free}\"\nroutes = [{{ pool = \"main\" }}]\n[[listeners]]\n{extra_listener}routes = [{{ pool = \"main\" }}]\n"
        );
        let err = sy.reload.apply(config(&bad)).await.expect_err(what);
        assert!(err.to_string().contains(&expected), "{what}: {err}");
        assert!(
            tokio::net::TcpStream::connect(free).await.is_err(),
            "{what}: the listener that did bind was closed again"
        );
        // Still round robin 1:1 (weight 3 was never applied), on the same upstream connections.
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(get(&client, &sy.url("/")).await.1);
        }
        got.sort();
        assert_eq!(got, ["a", "a", "b", "b"], "{what}");
        assert_eq!(
            (a.connections(), b.connections()),
            (1, 1),
            "{what}: warm connections kept"
        );
    }
}

/// Out of descriptors half-way through starting new listeners (each needs one socket per
/// worker): the reload fails as a whole and the running listener keeps accepting.
#[test]
fn a_reload_that_runs_out_of_descriptors_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let origin = rt.block_on(spawn_origin("a"));
    let dir = std::env::temp_dir().join(format!(
        "steelyard-emfile-{}-{}",
        std::process::id(),
        origin.addr.port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("emfile.toml");
    let base = format!(
        "[server]\nworkers = 4\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n[pools.main]\nbackends = [\"{}\"]\n",
        origin.addr
    );
    std::fs::write(&file, &base).expect("write");
    let script = format!("ulimit -n 64 && exec {} --config {} --admin off", BIN, file.display());
    let mut p = Process::start_command(std::process::Command::new("sh").args(["-c", &script]));
    let addr = p.listening_addr();
    // 30 more listeners on distinct loopback addresses need 120 sockets: more than 64.
    let more: String = (2..32)
        .map(|i| format!("[[listeners]]\nlisten = \"127.0.0.{i}:0\"\nroutes = [{{ pool = \"main\" }}]\n"))
        .collect();
    std::fs::write(&file, format!("{base}{more}")).expect("write");
    p.signal("-HUP");
    let line = p.wait_for_line("config reload failed");
    assert!(
        line.contains("Too many open files") || line.contains("os error 24"),
        "{line}"
    );
    let client = client();
    for _ in 0..3 {
        assert_eq!(rt.block_on(get(&client, &format!("http://{addr}/"))).1, "a");
    }
    p.signal("-TERM");
    p.wait();
}

/// A successful reload that keeps a backend keeps its idle upstream connections too.
#[tokio::test]
async fn a_reload_keeps_warm_upstream_connections() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&toml_with("", "", &[&a]))).await;
    let client = client();
    for i in 0..6 {
        if i == 3 {
            let summary = sy
                .reload
                .apply(config(&toml_with("", "algorithm = \"least_request\"", &[&a])))
                .await
                .expect("reload");
            assert!(summary.restart_needed.is_empty());
        }
        assert_eq!(get(&client, &sy.url("/")).await.1, "a");
    }
    assert_eq!(a.requests(), 6);
    assert_eq!(a.connections(), 1, "one upstream connection across the reload");
}

/// `server.workers` applies at start only; a reload says so instead of ignoring it silently.
#[tokio::test]
async fn a_reload_names_what_needs_a_restart() {
    let a = spawn_origin("a").await;
    let sy = spawn_steelyard(config(&toml_with("", "", &[&a]))).await;
    let summary = sy
        .reload
        .apply(config(&format!("[server]\nworkers = 3\n{}", toml_with("", "", &[&a]))))
        .await
        .expect("reload");
    assert_eq!(summary.restart_needed.len(), 1, "{summary:?}");
    assert!(summary.restart_needed[0].starts_with("server.workers (1 running, 3 in the file)"));
    assert_eq!(get(&client(), &sy.url("/")).await.1, "a");
}

/// `[admin]` applies on reload: moved to another address, then turned off.
#[tokio::test]
async fn a_reload_moves_and_stops_the_admin_listener() {
    let a = spawn_origin("a").await;
    let with_admin = |listen: &str| format!("[admin]\nlisten = \"{listen}\"\n{}", toml_with("", "", &[&a]));
    let sy = spawn_steelyard(config(&with_admin("127.0.0.1:0"))).await;
    let first = sy.admin.expect("admin");
    assert_eq!(get(&client(), &format!("http://{first}/healthz")).await.0, 200);
    let moved = free_port();
    sy.reload
        .apply(config(&with_admin(&moved.to_string())))
        .await
        .expect("move");
    assert_eq!(get(&client(), &format!("http://{moved}/healthz")).await.0, 200);
    eventually("the old admin address to close", || async {
        tokio::net::TcpStream::connect(first).await.is_err()
    })
    .await;
    let off = format!("[admin]\nenabled = false\n{}", toml_with("", "", &[&a]));
    sy.reload.apply(config(&off)).await.expect("off");
    eventually("the admin listener to stop", || async {
        tokio::net::TcpStream::connect(moved).await.is_err()
    })
    .await;
    assert_eq!(get(&client(), &sy.url("/")).await.1, "a");
}

/// The data path does not run on the control thread: with the thread that runs the server
/// (config, DNS, health, admin) blocked, requests are still answered. The origin runs on a
/// thread of its own for the same reason.
#[tokio::test]
async fn requests_are_served_while_the_control_thread_is_blocked() {
    use std::io::{Read, Write};
    let origin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let origin_addr = origin.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in origin.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n[pools.main]\nbackends = [\"{origin_addr}\"]\n"
    );
    let sy = spawn_steelyard(config(&toml)).await;
    assert_eq!(get(&client(), &sy.url("/")).await.1, "ok");
    let addr = sy.addr;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let blocked = Duration::from_millis(1500);
    let requests = std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        for _ in 0..20 {
            stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"ok") {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "closed");
                got.extend_from_slice(&buf[..n]);
            }
        }
        let _ = done_tx.send(started.elapsed());
    });
    // Block this thread (the control plane's runtime) outright.
    let done = done_rx.recv_timeout(blocked);
    requests.join().expect("request thread");
    let took = done.expect("20 requests answered while the control thread was blocked");
    assert!(took < blocked, "{took:?}");
}

/// A pool's own figures (retries, Steelyard's own responses) and its retry budget outlive a
/// reload: counters do not restart from 0, and a reload does not refill the budget.
#[tokio::test]
async fn pool_figures_survive_a_reload() {
    let live = spawn_origin("live").await;
    let dead = closed_port();
    let toml = |algorithm: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n[pools.main]\nalgorithm = \"{algorithm}\"\nbackends = [\"{}\", \"{}\"]\npassive = {{ consecutive_failures = 0 }}\n",
            dead.addr, live.addr
        )
    };
    let sy = spawn_steelyard(config(&toml("round_robin"))).await;
    let admin = sy.admin.expect("admin");
    let client = client();
    // Round robin sends every request to the dead backend first (a retry moves the turn on to
    // the live one, so the next request starts at the dead one again): 4 retries.
    for _ in 0..4 {
        assert_eq!(get(&client, &sy.url("/")).await.1, "live");
    }
    let retries = || async {
        let text = get(&client, &format!("http://{admin}/metrics")).await.1;
        text.lines()
            .find(|l| l.starts_with("steelyard_retries_total{pool=\"main\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .expect("retries series")
            .to_owned()
    };
    assert_eq!(retries().await, "4");
    sy.reload.apply(config(&toml("least_request"))).await.expect("reload");
    assert_eq!(retries().await, "4", "the counter is the same after the reload");
}
