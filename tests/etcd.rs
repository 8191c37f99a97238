//! The config kept in etcd: three processes load it from a real etcd on loopback and converge
//! on each new revision; an invalid revision changes nothing; etcd restarting is survived.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const KEY: &str = "/steelyard/config";

fn toml_for(origin: SocketAddr) -> String {
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"web\" }}]\n\n[pools.web]\nbackends = [\"{origin}\"]\n"
    )
}

/// Waits until every one of `urls` is answered by `name`; returns how long that took.
async fn converge(urls: &[String], name: &str) -> Duration {
    let started = Instant::now();
    let client = client();
    for url in urls {
        eventually(&format!("{url} to be served by {name}"), || {
            let (client, url) = (client.clone(), url.clone());
            async move { get(&client, &url).await.1 == name }
        })
        .await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_follow_the_config_in_etcd() {
    let (a, b, c) = (
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    );
    let mut etcd = EtcdServer::start().await;
    etcd.put(KEY, &toml_for(a.addr)).await;
    let source = format!("etcd://{}{KEY}", etcd.addr);
    let mut procs: Vec<Process> = (0..3).map(|_| Process::start(&["--config", &source])).collect();
    let urls: Vec<String> = procs
        .iter_mut()
        .map(|p| format!("http://{}/", p.listening_addr()))
        .collect();
    assert!(
        converge(&urls, "a").await < Duration::from_secs(1),
        "started on the first revision"
    );

    // A new revision: every process applies it.
    etcd.put(KEY, &toml_for(b.addr)).await;
    let took = converge(&urls, "b").await;
    assert!(took < Duration::from_secs(3), "converged in {took:?}");
    eprintln!("three processes converged on the new revision in {took:?}");

    // An invalid revision is reported with its number and position; nothing changes.
    let bad = etcd
        .put(KEY, "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = 7\n")
        .await;
    for p in &mut procs {
        let line = p.wait_for_line(&format!("etcd revision {bad} is not a valid config"));
        assert!(line.contains("running config stays"), "{line}");
        let detail = p.wait_for_line(&format!("{source}@{bad}:3:"));
        assert!(detail.contains("invalid type"), "{detail}");
    }
    let client = client();
    for url in &urls {
        assert_eq!(get(&client, url).await.1, "b");
    }

    // etcd restarts: the watches come back and the next revision is applied.
    etcd.kill();
    etcd.restart().await;
    etcd.put(KEY, &toml_for(c.addr)).await;
    converge(&urls, "c").await;
    for p in &mut procs {
        p.signal("-TERM");
        assert_eq!(p.wait(), 0);
    }
}

/// A missing key or an unreachable etcd stops the start with a clear message.
#[tokio::test]
async fn a_missing_key_or_etcd_fails_the_start_clearly() {
    let etcd = EtcdServer::start().await;
    let mut p = Process::start(&["--config", &format!("etcd://{}/nope", etcd.addr)]);
    let line = p.wait_for_line("no key \"/nope\"");
    assert!(line.contains("etcdctl put /nope"), "{line}");
    assert_ne!(p.wait(), 0);
    let dead = closed_port();
    let mut p = Process::start(&["--config", &format!("etcd://{}/steelyard/config", dead.addr)]);
    p.wait_for_line(&format!("etcd at {}", dead.addr));
    assert_ne!(p.wait(), 0);
}
