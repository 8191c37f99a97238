//! The config kept in etcd: three processes load it from a real etcd on loopback and converge
//! on each new revision; an invalid revision changes nothing; etcd restarting is survived.
//! Backends registered under a key prefix join, leave with their lease, and keep serving
//! while etcd is away.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Which origin answered each of `n` requests in a row, counted by name; every one must be a 200.
async fn served(client: &reqwest::Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = get(client, url).await;
        assert_eq!(status.as_u16(), 200, "{body}");
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

fn counts(expected: &[(&str, usize)]) -> BTreeMap<String, usize> {
    expected.iter().map(|(name, n)| (name.to_string(), *n)).collect()
}

/// A client requesting in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    /// Ends with the number of requests that were not a 200.
    task: tokio::task::JoinHandle<usize>,
}

fn keep_requesting(url: String) -> Load {
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (flag, count) = (Arc::clone(&stop), Arc::clone(&sent));
    let task = tokio::spawn(async move {
        let client = client();
        let mut failed = 0;
        while !flag.load(Ordering::SeqCst) {
            let ok = matches!(client.get(&url).send().await, Ok(r) if r.status() == 200);
            failed += usize::from(!ok);
            count.fetch_add(1, Ordering::SeqCst);
        }
        failed
    });
    Load { stop, sent, task }
}

/// `discover = { etcd = ... }`: every key under the prefix is a backend (`PREFIX` + IP:PORT,
/// the value its weight). Backends registered before the start serve the first request; one
/// that registers joins with its weight; one whose lease ends leaves without a request
/// failing; while etcd is down the last set serves, through a reload that moves the pool to
/// another prefix too, and when etcd is back the new prefix is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_registered_under_a_prefix_come_and_go_with_their_leases() {
    const PREFIX: &str = "/steelyard/pools/web/backends/";
    let (a, b, c) = (
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    );
    let mut etcd = EtcdServer::start().await;
    let lease = etcd.grant_lease(60).await;
    etcd.put_with_lease(&format!("{PREFIX}{}", a.addr), "", &lease).await;
    etcd.put(&format!("{PREFIX}{}", b.addr), "").await;
    let dir = std::env::temp_dir().join(format!("steelyard-etcd-discovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("discover.toml");
    let etcd_addr = etcd.addr;
    let toml = move |prefix: &str| {
        format!(
            "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"web\" }}]\n\n[pools.web]\ndiscover = {{ etcd = \"etcd://{}{prefix}\" }}\n",
            etcd_addr
        )
    };
    std::fs::write(&file, toml(PREFIX)).expect("write");
    let mut p = Process::start(&["--config", file.to_str().expect("utf-8"), "--admin", "127.0.0.1:0"]);
    let url = format!("http://{}/", p.listening_addr());
    let admin = p.wait_for_line("admin API and dashboard on http://");
    let admin = admin[admin.find("http://").expect("url")..]
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let client = client();
    assert_eq!(served(&client, &url, 4).await, counts(&[("a", 2), ("b", 2)]));

    // c registers with weight 3: a rotation is a, b and three c.
    let put = Instant::now();
    etcd.put(&format!("{PREFIX}{}", c.addr), "3").await;
    eventually("c to be served", || {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await.1 == "c" }
    })
    .await;
    eprintln!("a registered backend served {:?} after the put", put.elapsed());
    assert_eq!(
        served(&client, &url, 50).await,
        counts(&[("a", 10), ("b", 10), ("c", 30)])
    );

    // a's lease ends (revoked here, as when its holder stops keeping it alive): a leaves
    // while requests flow, and none fails.
    let load = keep_requesting(url.clone());
    eventually("the load to start", || async { load.sent.load(Ordering::SeqCst) >= 10 }).await;
    etcd.revoke_lease(&lease).await;
    // The third change: a and b at the start, then c, now a gone.
    let line = p.wait_for_nth("etcd discovery: backends changed", 3);
    assert!(
        !line.contains(&a.addr.to_string()) && line.contains(&b.addr.to_string()) && line.contains(&c.addr.to_string()),
        "{line}"
    );
    // Any 5 requests in a row include one for a while it is in the rotation (a, b, 3 c).
    eventually("a to be out of the rotation", || {
        let (client, url, a) = (client.clone(), url.clone(), a.clone());
        async move {
            let before = a.requests();
            served(&client, &url, 5).await;
            a.requests() == before
        }
    })
    .await;
    let during = a.requests();
    load.stop.store(true, Ordering::SeqCst);
    let failed = load.task.await.expect("load");
    let sent = load.sent.load(Ordering::SeqCst);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed while a left");
    eprintln!("{sent} requests while a left, none failed");
    assert_eq!(served(&client, &url, 8).await, counts(&[("b", 2), ("c", 6)]));
    assert_eq!(a.requests(), during, "a gets nothing once it left");

    // a registers under another prefix, which the pool does not follow (yet).
    const MOVED: &str = "/steelyard/pools/web-v2/backends/";
    etcd.put(&format!("{MOVED}{}", a.addr), "").await;
    assert_eq!(served(&client, &url, 8).await, counts(&[("b", 2), ("c", 6)]));

    // Three sets applied (a and b, then c, then a gone), no failure.
    let (metrics, _) = discovery_figures(&client, &admin).await;
    assert!(
        metrics.contains(&"steelyard_discovery_up{pool=\"web\"} 1".to_owned()),
        "{metrics:?}"
    );
    assert!(
        metrics.contains(&"steelyard_discovery_updates_total{pool=\"web\"} 3".to_owned()),
        "{metrics:?}"
    );
    assert!(
        metrics.contains(&"steelyard_discovery_failures_total{pool=\"web\"} 0".to_owned()),
        "{metrics:?}"
    );

    // etcd goes away: the last set keeps serving, through a reload that moves the pool to
    // the other prefix too. Back, the new prefix is read: only a.
    etcd.kill();
    p.wait_for_line("keeping the backends found before");
    assert_eq!(served(&client, &url, 8).await, counts(&[("b", 2), ("c", 6)]));
    let (metrics, status) = discovery_figures(&client, &admin).await;
    assert!(
        metrics.contains(&"steelyard_discovery_up{pool=\"web\"} 0".to_owned()),
        "{metrics:?}"
    );
    let discovery = &status["pools"][0]["discovery"];
    assert_eq!(discovery["source"], format!("etcd://{}{PREFIX}", etcd.addr));
    assert_eq!(discovery["up"], false);
    assert!(discovery["failures"].as_u64() >= Some(1), "{discovery}");
    assert!(discovery["last_error"].as_str().is_some(), "{discovery}");
    let warnings: Vec<&serde_json::Value> = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "discovery" && e["level"] == "warn")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one event when the source stops answering: {warnings:?}"
    );
    std::fs::write(&file, toml(MOVED)).expect("write");
    p.signal("-HUP");
    p.wait_for_line("config reloaded");
    assert_eq!(served(&client, &url, 8).await, counts(&[("b", 2), ("c", 6)]));
    // The admin API shows the new source as soon as the reload is done.
    let (_, status) = discovery_figures(&client, &admin).await;
    assert_eq!(
        status["pools"][0]["discovery"]["source"],
        format!("etcd://{}{MOVED}", etcd.addr)
    );
    etcd.restart().await;
    eventually("only a to be served", || {
        let (client, url) = (client.clone(), url.clone());
        async move { served(&client, &url, 4).await == counts(&[("a", 4)]) }
    })
    .await;
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// An etcd cluster is given by its members' endpoints: when the member Steelyard reads from
/// (the first listed, a follower, so that the cluster keeps its leader and writes go on)
/// dies, its watch moves to another member and registrations made there are followed; the
/// backends found before serve all along. The config source takes the same list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_member_lost_moves_the_watch_to_another() {
    const PREFIX: &str = "/steelyard/pools/web/backends/";
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let mut members = EtcdServer::cluster(3).await;
    // The leader last: Steelyard reads from the first, a follower.
    let mut leader = None;
    for (i, m) in members.iter().enumerate() {
        if m.is_leader().await {
            leader = Some(i);
        }
    }
    members.swap(leader.expect("a leader"), 2);
    members[1].put(&format!("{PREFIX}{}", a.addr), "").await;
    let endpoints: Vec<String> = members.iter().map(|m| m.addr.to_string()).collect();
    let config = format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"web\" }}]\n\n[pools.web]\ndiscover = {{ etcd = \"etcd://{}{PREFIX}\" }}\n",
        endpoints.join(",")
    );
    // The config itself comes from the cluster too.
    members[2].put(KEY, &config).await;
    let mut p = Process::start(&["--config", &format!("etcd://{}{KEY}", endpoints.join(","))]);
    let url = format!("http://{}/", p.listening_addr());
    let client = client();
    assert_eq!(served(&client, &url, 2).await, counts(&[("a", 2)]));

    members[0].kill();
    p.wait_for_line("etcd discovery at");
    assert_eq!(served(&client, &url, 2).await, counts(&[("a", 2)]));
    members[1].put(&format!("{PREFIX}{}", b.addr), "").await;
    eventually("b to be served", || {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await.1 == "b" }
    })
    .await;
    assert_eq!(served(&client, &url, 4).await, counts(&[("a", 2), ("b", 2)]));
    // The config's watch moved over too: a new revision written on another member applies.
    let revision = members[1].put(KEY, &format!("{config}# revision 2\n")).await;
    p.wait_for_line(&format!("applied etcd revision {revision}"));
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// The `steelyard_discovery_*` lines of `/metrics`, and `/api/status`, from the admin API at
/// `admin` (`http://ADDR`).
async fn discovery_figures(client: &reqwest::Client, admin: &str) -> (Vec<String>, serde_json::Value) {
    let (_, metrics) = get(client, &format!("{admin}/metrics")).await;
    let lines = metrics
        .lines()
        .filter(|l| l.starts_with("steelyard_discovery_"))
        .map(str::to_owned)
        .collect();
    let (_, status) = get(client, &format!("{admin}/api/status")).await;
    let status = serde_json::from_str(&status).expect("status json");
    (lines, status)
}
