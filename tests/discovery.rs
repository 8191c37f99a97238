//! Backends discovered from DNS: SRV records (weights, priority groups as backups) and A
//! records from a real dnsmasq on loopback, changed while traffic flows; and backup backends.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

/// `--srv-host` records for origins on 127.0.0.1: (port, priority, weight).
fn srv(records: &[(u16, u16, u16)]) -> Vec<String> {
    let mut out = vec!["--host-record=web.app.test,127.0.0.1".to_owned()];
    for (port, priority, weight) in records {
        out.push(format!(
            "--srv-host=_http._tcp.app.test,web.app.test,{port},{priority},{weight}"
        ));
    }
    out
}

fn discover_toml(dns: &Dnsmasq, what: &str) -> String {
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"web\" }}]\n\n[pools.web]\ndiscover = {{ {what}, nameserver = \"{}\", min_ttl = \"100ms\", max_ttl = \"1s\" }}\n",
        dns.addr
    )
}

/// The names that answered `n` requests in a row.
async fn names(client: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(client, url).await.1);
    }
    out
}

/// SRV records make the pool: the lowest priority value serves, in proportion to the weights;
/// records can change while requests flow, and not one request fails: backends join and
/// leave, and a DNS server that stops answering changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_drive_the_pool_while_traffic_flows() {
    let (a, b, c) = (
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    );
    let (pa, pb, pc) = (a.addr.port(), b.addr.port(), c.addr.port());
    let mut dns = Dnsmasq::start(&srv(&[(pa, 10, 1), (pb, 10, 2), (pc, 20, 1)]));
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        discover_toml(&dns, "srv = \"_http._tcp.app.test\"")
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let client = client();
    let url = sy.url("/");
    let metrics = format!("http://{}/metrics", sy.admin.expect("admin"));
    let discovery_line = |text: &str, name: &str| {
        let prefix = format!("steelyard_discovery_{name}{{pool=\"web\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // Weights 1 and 2 over priority 10; c (priority 20) is a backup and gets nothing.
    let got = names(&client, &url, 30).await;
    let count = |n: &str| got.iter().filter(|g| *g == n).count();
    assert_eq!((count("a"), count("b"), count("c")), (10, 20, 0), "{got:?}");

    // Traffic flows while the records change; every request must succeed.
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (client, url, running, failures, served) = (
            client.clone(),
            url.clone(),
            running.clone(),
            failures.clone(),
            served.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while running.load(Ordering::SeqCst) && n < 100_000 {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::SeqCst),
                    _ => failures.fetch_add(1, Ordering::SeqCst),
                };
                n += 1;
            }
        })
    };
    let seen_only = |want: &'static [&'static str]| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let got: BTreeSet<String> = names(&client, &url, 12).await.into_iter().collect();
            got == want.iter().map(|s| s.to_string()).collect()
        }
    };
    // b leaves, c joins the serving group.
    dns.restart(&srv(&[(pa, 10, 1), (pc, 10, 1)]));
    eventually("a and c to serve", || seen_only(&["a", "c"])).await;
    // Only backups left: they serve.
    dns.restart(&srv(&[(pb, 20, 1)]));
    eventually("b alone to serve", || seen_only(&["b"])).await;
    // Three answers applied (the first, then two changes), the server answering.
    let (_, text) = get(&client, &metrics).await;
    assert_eq!(
        (discovery_line(&text, "up"), discovery_line(&text, "updates_total")),
        (Some(1), Some(3)),
        "{text}"
    );
    // DNS goes away: the last answer stands.
    dns.stop();
    let before = served.load(Ordering::SeqCst);
    eventually("requests to keep flowing without DNS", || {
        let served = served.clone();
        async move { served.load(Ordering::SeqCst) > before + 200 }
    })
    .await;
    assert_eq!(names(&client, &url, 4).await, ["b", "b", "b", "b"]);
    eventually("the metrics to show DNS failing", || {
        let (client, metrics) = (client.clone(), metrics.clone());
        async move {
            let (_, text) = get(&client, &metrics).await;
            discovery_line(&text, "up") == Some(0) && discovery_line(&text, "failures_total") >= Some(1)
        }
    })
    .await;
    running.store(false, Ordering::SeqCst);
    load.await.expect("load");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "not one request failed");
    assert!(served.load(Ordering::SeqCst) > 200);
    sy.shutdown().await;
}

/// A records: every address of the name is a backend on the configured port.
#[tokio::test]
async fn a_records_are_backends_on_the_port() {
    let a = spawn_origin("a").await;
    let dns = Dnsmasq::start(&["--host-record=svc.app.test,127.0.0.1".to_owned()]);
    let sy = spawn_steelyard(config(&discover_toml(
        &dns,
        &format!("a = \"svc.app.test:{}\"", a.addr.port()),
    )))
    .await;
    assert_eq!(names(&client(), &sy.url("/"), 3).await, ["a", "a", "a"]);
    sy.shutdown().await;
}

/// A pool whose name does not resolve answers 503 until it does.
#[tokio::test]
async fn an_unknown_name_answers_503_until_it_resolves() {
    let a = spawn_origin("a").await;
    let mut dns = Dnsmasq::start(&[]);
    let sy = spawn_steelyard(config(&discover_toml(&dns, "srv = \"_http._tcp.app.test\""))).await;
    let client = client();
    assert_eq!(get(&client, &sy.url("/")).await.0, 503);
    dns.restart(&srv(&[(a.addr.port(), 1, 1)]));
    let url = sy.url("/");
    eventually("the discovered backend to serve", || {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await.1 == "a" }
    })
    .await;
    sy.shutdown().await;
}

/// `backup = true` backends serve only while no other backend can.
#[tokio::test]
async fn backup_backends_serve_only_when_the_others_cannot() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n\n[pools.p]\nbackends = [\"{}\", {{ address = \"{}\", backup = true }}]\npassive = {{ consecutive_failures = 1 }}\n",
        a.addr, b.addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let client = client();
    let url = sy.url("/");
    assert_eq!(names(&client, &url, 4).await, ["a", "a", "a", "a"]);
    a.kill();
    eventually("the backup to serve", || {
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await.1 == "b" }
    })
    .await;
    assert_eq!(names(&client, &url, 3).await, ["b", "b", "b"]);
    sy.shutdown().await;
}

/// Discovery settings are checked.
#[test]
fn discovery_settings_are_checked() {
    let pool = |body: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n\n[pools.p]\n{body}\n")
    };
    let cases = [
        (
            pool("discover = { srv = \"_x._tcp.a\", a = \"a:1\" }"),
            "pools.p.discover: give exactly one of srv",
        ),
        (
            pool("discover = { a = \"app.internal\" }"),
            "pools.p.discover.a: \"app.internal\" is not NAME:PORT",
        ),
        (
            pool("discover = { srv = \"_x._tcp.a\", nameserver = \"localhost\" }"),
            "pools.p.discover.nameserver: \"localhost\" is not IP:PORT",
        ),
        (
            pool("backends = [\"127.0.0.1:1\"]\ndiscover = { srv = \"_x._tcp.a\" }"),
            "pools.p.backends: a pool with discover takes its backends from DNS or etcd",
        ),
        (
            pool("discover = { etcd = \"http://127.0.0.1:2379/web/\" }"),
            "pools.p.discover.etcd: \"http://127.0.0.1:2379/web/\" is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX/",
        ),
        (
            pool("discover = { etcd = \"etcd://127.0.0.1:2379/\" }"),
            "pools.p.discover.etcd: \"etcd://127.0.0.1:2379/\" is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX/",
        ),
        (
            pool("discover = { etcd = \"etcd://127.0.0.1:2379/web/\", min_ttl = \"1s\" }"),
            "pools.p.discover.min_ttl: applies to DNS discovery",
        ),
        (
            pool("discover = { etcd = \"etcd://127.0.0.1:2379/web/\", a = \"a:1\" }"),
            "pools.p.discover: give exactly one of srv = \"NAME\", a = \"NAME:PORT\" or etcd",
        ),
        (pool("algorithm = \"random\""), "pools.p: no backends; add backends"),
    ];
    for (toml, expected) in cases {
        let err = config_error(&toml);
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
}

/// An etcd prefix names a directory of keys: `/web` and `/web/` both follow `/web/IP:PORT`
/// keys, never `/web2/...`.
#[test]
fn an_etcd_prefix_is_a_directory() {
    for written in [
        "etcd://127.0.0.1:2379/web",
        "etcd://127.0.0.1:2379/web/",
        "etcd://127.0.0.1:2379//web//",
    ] {
        let c = config(&format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n\n[pools.p]\ndiscover = {{ etcd = \"{written}\" }}\n"
        ));
        let discover = c.pools[0].discover.as_ref().expect("discover");
        assert_eq!(
            discover.name,
            steelyard::config::DiscoverName::Etcd {
                endpoint: "127.0.0.1:2379".into(),
                prefix: "/web/".into()
            },
            "{written}"
        );
    }
}
