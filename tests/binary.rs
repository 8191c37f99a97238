//! The compiled `steelyard` binary, end to end: quick mode, check, demo, signals, memory.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use futures_util::stream;
use support::*;

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run steelyard")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("steelyard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_from_flags_balances_by_weight() {
    let (a, b, c) = (
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    );
    let (a_url, b_arg, c_arg) = (
        a.addr.to_string(),
        format!("http://{}", b.addr),
        format!("{},weight=3", c.addr),
    );
    let mut p = Process::start(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &a_url,
        "--backend",
        &b_arg,
        "--backend",
        &c_arg,
    ]);
    let addr = p.listening_addr();
    let client = client();
    let mut seen = String::new();
    for _ in 0..10 {
        seen.push_str(&get(&client, &format!("http://{addr}/")).await.1);
    }
    // Smooth weighted round robin over weights 1, 1, 3.
    assert_eq!(seen, "cacbccacbc");
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_run_and_startup_line() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let file = temp_file(
        "run.toml",
        &format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"app\" }}]\n[pools.app]\nbackends = [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        ),
    );
    let mut p = Process::start(&["-c", file.to_str().expect("path"), "--log-format", "json"]);
    let line = p.wait_for_line("listening on");
    // Once it listens, SIGINT (2) and SIGTERM (15) drain it: neither may take the default
    // action that kills it mid-request.
    assert_eq!((p.catches(2), p.catches(15)), (true, true), "signal handlers installed");
    let json_start = line.trim_start();
    assert!(
        json_start.starts_with('{') && json_start.ends_with('}'),
        "JSON log line: {line}"
    );
    assert!(
        line.contains(&a.addr.to_string()) && line.contains(&b.addr.to_string()),
        "{line}"
    );
    let addr = p.listening_addr();
    let (status, body) = get(&client(), &format!("http://{addr}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    p.signal("-INT");
    assert_eq!(p.wait(), 0);
}

/// A SIGTERM that arrives while Steelyard is still starting, its listener bound (here it
/// waits up to 5 s for an etcd that does not answer), ends it cleanly with 0: the handler is
/// in place before the listener opens, so the signal never takes the default action that
/// kills the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_start_is_a_clean_shutdown() {
    let etcd = closed_port();
    let listen = free_port();
    let file = temp_file(
        "starting.toml",
        &format!(
            "[[listeners]]\nlisten = \"{listen}\"\nroutes = [{{ pool = \"web\" }}]\n[pools.web]\ndiscover = {{ etcd = \"etcd://{}/web/\" }}\n",
            etcd.addr
        ),
    );
    let mut p = Process::start(&["-c", file.to_str().expect("path")]);
    eventually("the listener to be bound", || async {
        tokio::net::TcpStream::connect(listen).await.is_ok()
    })
    .await;
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
    let out = p.collect().join("\n");
    assert!(out.contains("received SIGTERM"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let origin = spawn_origin("a").await;
    let mut p = Process::start(&["--listen", "127.0.0.1:0", "--backend", &origin.addr.to_string()]);
    let addr = p.listening_addr();
    let in_flight = tokio::spawn(async move { get(&client(), &format!("http://{addr}/slow?ms=600")).await });
    eventually("the origin to receive the request", || async { origin.requests() == 1 }).await;
    p.signal("-TERM");
    let (status, body) = in_flight.await.expect("client");
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    assert_eq!(p.wait(), 0);
    let out = p.collect().join("\n");
    assert!(out.contains("received SIGTERM") && out.contains("drained"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backend_is_logged_once_with_its_address() {
    let closed = closed_port();
    let dead = closed.addr;
    let mut p = Process::start(&["--listen", "127.0.0.1:0", "--backend", &dead.to_string()]);
    let addr = p.listening_addr();
    let (status, body) = get(&client(), &format!("http://{addr}/")).await;
    assert_eq!(status, 502);
    assert!(!body.contains(&dead.to_string()), "the client is not told internals");
    p.wait_for_line("backend request failed");
    p.signal("-TERM");
    p.wait();
    let failures: Vec<String> = p
        .collect()
        .into_iter()
        .filter(|l| l.contains("backend request failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains(&dead.to_string()), "{}", failures[0]);
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/steelyard.example.toml");
    let out = run(&["check", "--config", example]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(": OK: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn check_reports_every_problem_with_file_line_column() {
    let file = temp_file(
        "bad.toml",
        r#"[[listeners]]
listen = "127.0.0.1:7001"
routes = [{ pool = "missing" }]

[[listeners]]
listen = "127.0.0.1:7001"
routes = [{ pool = "web" }]

[pools.web]
backends = ["not an address", { address = "127.0.0.1:8081", weight = 0 }]
"#,
    );
    let path = file.to_str().expect("path");
    let out = run(&["check", "-c", path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    let expect = [
        (3, 20, "listeners[0].routes[0].pool: no pool named \"missing\""),
        (6, 10, "listeners[1].listen: duplicate listener address"),
        (10, 13, "pools.web.backends[0].address: invalid backend address"),
        (10, 70, "pools.web.backends[1].weight: must be from 1 to 256"),
    ];
    for (line, (l, c, msg)) in lines.iter().zip(expect) {
        let prefix = format!("{path}:{l}:{c}: {msg}");
        assert!(line.starts_with(&prefix), "{line:?} should start with {prefix:?}");
    }
}

#[test]
fn check_reports_unknown_keys() {
    let file = temp_file("typo.toml", "[[listeners]]\nlisten = \"127.0.0.1:0\"\nrouts = []\n");
    let path = file.to_str().expect("path");
    let out = run(&["check", "--config", path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{path}:3:1: unknown field `routs`")),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--backend",
        "--algorithm",
        "--hash-key",
        "--connect-timeout",
        "--response-header-timeout",
        "--idle-timeout",
        "--request-timeout",
        "--health-check",
        "--drain-timeout",
        "--workers",
        "--watch",
        "--admin",
        "--log-format",
        "--log-level",
        "check",
        "demo",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_flags_fail_clearly() {
    let out = run(&["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1,weight=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weight must be a number from 1 to 256"));
    let out = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one --backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_three_named_origins_in_turn() {
    let mut p = Process::start(&["demo", "--listen", "127.0.0.1:0"]);
    let line = p.wait_for_line("balancer  http://");
    let url = line.trim().trim_start_matches("balancer").trim().to_owned();
    p.wait_for_line("Ctrl-C");
    let client = client();
    let mut names = Vec::new();
    for _ in 0..6 {
        let (status, body) = get(&client, &url).await;
        assert_eq!(status, 200);
        names.push(body.split_whitespace().nth(2).expect("origin name").to_owned());
    }
    assert_eq!(
        names,
        ["origin-1", "origin-2", "origin-3", "origin-1", "origin-2", "origin-3"]
    );
    p.signal("-INT");
    assert_eq!(p.wait(), 0);
}

/// Streams 1 GiB up and 1 GiB down through the binary; its peak RSS must stay small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_bodies_stream_in_flat_memory() {
    const GIB: u64 = 1 << 30;
    const CHUNK: u64 = 256 * 1024;
    let origin = spawn_origin("a").await;
    let mut p = Process::start(&["--listen", "127.0.0.1:0", "--backend", &origin.addr.to_string()]);
    let addr = p.listening_addr();
    let client = client();
    let before = p.peak_rss_kib();

    let chunk = pattern_chunk(0, CHUNK as usize);
    let chunks = (0..GIB / CHUNK).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let res = client
        .post(format!("http://{addr}/upload"))
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    let answer = res.text().await.expect("body");
    assert!(answer.starts_with(&format!("{GIB} ")), "{answer}");

    let mut res = client
        .get(format!("http://{addr}/download?bytes={GIB}"))
        .send()
        .await
        .expect("download");
    let mut n = 0u64;
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        n += chunk.len() as u64;
    }
    assert_eq!(n, GIB);

    let after = p.peak_rss_kib();
    eprintln!("steelyard peak RSS: {before} KiB at start, {after} KiB after 1 GiB up + 1 GiB down");
    assert!(after < 64 * 1024, "peak RSS {after} KiB: bodies are being buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_is_selectable_from_the_command_line() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let (a, b) = (a.addr.to_string(), b.addr.to_string());
    let client = client();
    for name in [
        "round_robin",
        "least_connections",
        "least_request",
        "peak_ewma",
        "random",
        "maglev",
        "ring_hash",
    ] {
        let mut p = Process::start(&["--listen", "127.0.0.1:0", "-b", &a, "-b", &b, "--algorithm", name]);
        let line = p.wait_for_line("listening on");
        assert!(line.contains(&format!("({name})")), "{line}");
        let addr = p.listening_addr();
        for _ in 0..4 {
            assert_eq!(get(&client, &format!("http://{addr}/")).await.0, 200, "{name}");
        }
    }
    let out = run(&["--listen", "127.0.0.1:0", "-b", &a, "--algorithm", "fastest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of: round_robin, least_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_hash_keys_to_the_same_backends() {
    let mut origins = Vec::new();
    for i in 0..4 {
        origins.push(spawn_origin(&format!("o{i}")).await.addr.to_string());
    }
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--algorithm",
        "maglev",
        "--hash-key",
        "header:x-user-id",
    ];
    for o in &origins {
        args.extend(["-b", o.as_str()]);
    }
    let (mut p1, mut p2) = (Process::start(&args), Process::start(&args));
    let (addr1, addr2) = (p1.listening_addr(), p2.listening_addr());
    let client = client();
    let mut used = std::collections::HashSet::new();
    for k in 0..60 {
        let mut answers = Vec::new();
        for addr in [addr1, addr2] {
            let res = client
                .get(format!("http://{addr}/"))
                .header("x-user-id", format!("user-{k}"))
                .send()
                .await
                .expect("request");
            answers.push(res.text().await.expect("body"));
        }
        assert_eq!(answers[0], answers[1], "user-{k}");
        used.insert(answers[0].clone());
    }
    assert_eq!(used.len(), 4, "keys spread over every backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_keeps_the_old_one_when_invalid() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let body = |backends: &str, extra: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n[pools.p]\nbackends = [{backends}]\n{extra}")
    };
    let file = temp_file("hup.toml", &body(&format!("\"{}\"", a.addr), ""));
    let path = file.to_str().expect("path").to_owned();
    let mut p = Process::start(&["-c", &path]);
    let addr = p.listening_addr();
    let client = client();
    assert_eq!(get(&client, &format!("http://{addr}/")).await.1, "a");

    std::fs::write(&file, body(&format!("\"{}\"", b.addr), "")).expect("write");
    p.signal("-HUP");
    p.wait_for_line("config reloaded");
    assert_eq!(get(&client, &format!("http://{addr}/")).await.1, "b");

    std::fs::write(&file, body(&format!("\"{}\"", a.addr), "weight = 2\n")).expect("write");
    p.signal("-HUP");
    let error = p.wait_for_line(&format!("{path}:6:1: unknown field `weight`"));
    assert!(error.contains("ERROR"), "{error}");
    p.wait_for_line("still running the previous config");
    assert_eq!(
        get(&client, &format!("http://{addr}/")).await.1,
        "b",
        "the old config keeps serving"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_one_rotation_and_drain_together() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--workers".to_owned(),
        "3".to_owned(),
    ];
    for o in &origins {
        args.extend(["-b".to_owned(), o.addr.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Process::start(&args);
    let addr = p.listening_addr();
    // New connections each time: the kernel spreads them over the workers' sockets.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(get(&client(), &format!("http://{addr}/")).await.0, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let counts: Vec<usize> = origins.iter().map(|o| o.requests()).collect();
    assert_eq!(counts, vec![20, 20, 20], "one shared rotation across workers");
    let slow = tokio::spawn(async move { get(&client(), &format!("http://{addr}/slow?ms=500")).await });
    eventually("the slow request to arrive", || async {
        origins.iter().map(|o| o.requests()).sum::<usize>() == 61
    })
    .await;
    p.signal("-TERM");
    assert_eq!(slow.await.expect("client").0, 200);
    assert_eq!(p.wait(), 0);
}
