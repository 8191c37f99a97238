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
    let sy = spawn_steelyard(steelyard::Config::load(&file).expect("valid")).await;
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
