//! Every load-balancing algorithm, through a real Steelyard with real origins.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

async fn origins(n: usize) -> Vec<Origin> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(spawn_origin(&format!("o{i}")).await);
    }
    v
}

fn addrs(origins: &[Origin]) -> Vec<SocketAddr> {
    origins.iter().map(|o| o.addr).collect()
}

/// Starts a slow request and waits until some origin holds it; returns that origin's index.
async fn hold_slow_request(sy: &Steelyard, origins: &[Origin]) -> (usize, tokio::task::JoinHandle<()>) {
    let url = sy.url("/slow?ms=3000");
    let task = tokio::spawn(async move {
        let _ = client().get(url).send().await;
    });
    eventually("an origin to hold the slow request", || async {
        origins.iter().map(|o| o.requests()).sum::<usize>() == 1
    })
    .await;
    let busy = origins.iter().position(|o| o.requests() == 1).expect("busy origin");
    (busy, task)
}

async fn send_fast(sy: &Steelyard, origins: &[Origin], n: usize) -> Vec<usize> {
    let before: Vec<usize> = origins.iter().map(|o| o.requests()).collect();
    let client = client();
    for _ in 0..n {
        assert_eq!(get(&client, &sy.url("/")).await.0, 200);
    }
    origins.iter().zip(before).map(|(o, b)| o.requests() - b).collect()
}

#[tokio::test]
async fn least_connections_avoids_a_backend_holding_a_slow_request() {
    let origins = origins(3).await;
    let sy = spawn_steelyard(config(&one_pool_toml(
        &addrs(&origins),
        "algorithm = \"least_connections\"",
    )))
    .await;
    let (busy, _slow) = hold_slow_request(&sy, &origins).await;
    let got = send_fast(&sy, &origins, 40).await;
    assert_eq!(got[busy], 0, "{got:?}");
    // The idle two share by rotation.
    let idle: Vec<usize> = (0..3).filter(|&i| i != busy).map(|i| got[i]).collect();
    assert_eq!(idle, vec![20, 20], "{got:?}");
}

#[tokio::test]
async fn least_request_avoids_a_backend_holding_a_slow_request() {
    let origins = origins(3).await;
    let sy = spawn_steelyard(config(&one_pool_toml(
        &addrs(&origins),
        "algorithm = \"least_request\"",
    )))
    .await;
    let (busy, _slow) = hold_slow_request(&sy, &origins).await;
    let got = send_fast(&sy, &origins, 60).await;
    // Two distinct candidates per pick: the busy one loses every comparison.
    assert_eq!(got[busy], 0, "{got:?}");
    assert!(
        got.iter().all(|&n| n == 0 || n >= 10),
        "both idle backends get traffic: {got:?}"
    );
}

#[tokio::test]
async fn peak_ewma_moves_traffic_away_from_a_10x_slower_backend() {
    let fast = [
        spawn_origin_delayed("fast0", Duration::from_millis(3)).await,
        spawn_origin_delayed("fast1", Duration::from_millis(3)).await,
    ];
    let slow = spawn_origin_delayed("slow", Duration::from_millis(30)).await;
    let backends = [fast[0].addr, slow.addr, fast[1].addr];
    let sy = spawn_steelyard(config(&one_pool_toml(&backends, "algorithm = \"peak_ewma\""))).await;
    let client = client();
    for _ in 0..100 {
        assert_eq!(get(&client, &sy.url("/")).await.0, 200);
    }
    // Once measured, the slow backend loses every comparison until its estimate decays
    // (10s); before that it can win only against unmeasured backends. Round robin would give
    // it 33 of 100.
    assert!(slow.requests() <= 3, "slow backend got {} of 100", slow.requests());
    assert_eq!(fast[0].requests() + fast[1].requests() + slow.requests(), 100);
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let origins = origins(2).await;
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n[pools.p]\nalgorithm = \"random\"\nbackends = [\"{}\", {{ address = \"{}\", weight = 3 }}]\n",
        origins[0].addr, origins[1].addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let got = send_fast(&sy, &origins, 400).await;
    // Expected 100 : 300; the binomial standard deviation is about 8.7, so 5 sigma is 44.
    assert!(got[0].abs_diff(100) <= 44, "{got:?}");
}

async fn owner_of(client: &reqwest::Client, sy: &Steelyard, key: &str) -> String {
    let res = client
        .get(sy.url("/"))
        .header("x-user-id", key)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    res.text().await.expect("body")
}

async fn key_owners(sy: &Steelyard, keys: usize) -> Vec<String> {
    let client = client();
    let mut owners = Vec::new();
    for k in 0..keys {
        owners.push(owner_of(&client, sy, &format!("user-{k}")).await);
    }
    owners
}

async fn consistent_hashing_properties(algorithm: &str) {
    let origins = origins(5).await;
    let extra = format!("algorithm = \"{algorithm}\"\nhash_key = \"header:x-user-id\"");
    let toml = one_pool_toml(&addrs(&origins), &extra);
    let first = spawn_steelyard(config(&toml)).await;
    let second = spawn_steelyard(config(&toml)).await;

    let owners = key_owners(&first, 300).await;
    assert_eq!(owners, key_owners(&first, 300).await, "a key stays on its backend");
    assert_eq!(owners, key_owners(&second, 300).await, "two instances agree");
    let mut spread: HashMap<&str, usize> = HashMap::new();
    for o in &owners {
        *spread.entry(o).or_default() += 1;
    }
    assert_eq!(spread.len(), 5, "keys spread over all backends: {spread:?}");

    // Remove o2: about 1/5 of keys move, nearly all of them o2's.
    let rest: Vec<SocketAddr> = origins.iter().filter(|o| o.name != "o2").map(|o| o.addr).collect();
    let smaller = spawn_steelyard(config(&one_pool_toml(&rest, &extra))).await;
    let after = key_owners(&smaller, 300).await;
    let moved = owners.iter().zip(&after).filter(|(a, b)| a != b).count();
    let moved_needlessly = owners.iter().zip(&after).filter(|(a, b)| a != b && *a != "o2").count();
    let on_removed = owners.iter().filter(|o| *o == "o2").count();
    assert_eq!(
        moved - moved_needlessly,
        on_removed,
        "every key of the removed backend moved"
    );
    // 1/5 of 300 is 60; the binomial standard deviation is about 7, so 3.5 sigma is 25.
    assert!(moved.abs_diff(60) <= 25, "{algorithm}: {moved} of 300 keys moved");
    assert!(
        moved_needlessly <= 9,
        "{algorithm}: {moved_needlessly} keys moved needlessly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_keeps_keys_agrees_across_instances_and_moves_few() {
    consistent_hashing_properties("maglev").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_keys_agrees_across_instances_and_moves_few() {
    consistent_hashing_properties("ring_hash").await;
}

#[tokio::test]
async fn a_missing_hash_key_falls_back_to_a_random_pick() {
    let origins = origins(3).await;
    let extra = "algorithm = \"maglev\"\nhash_key = \"cookie:uid\"";
    let sy = spawn_steelyard(config(&one_pool_toml(&addrs(&origins), extra))).await;
    let got = send_fast(&sy, &origins, 150).await;
    // Uniform: 50 each expected; 5 standard deviations is about 29.
    assert!(got.iter().all(|&n| n.abs_diff(50) <= 29), "{got:?}");
}

#[tokio::test]
async fn sticky_cookie_pins_a_client_to_its_backend() {
    let origins = origins(3).await;
    let extra = "sticky = { cookie = \"sy_route\", ttl = \"1h\" }";
    let sy = spawn_steelyard(config(&one_pool_toml(&addrs(&origins), extra))).await;
    let client = client();

    let res = client.get(sy.url("/")).send().await.expect("request");
    let set_cookie = res.headers()["set-cookie"].to_str().expect("ascii").to_owned();
    let first = res.text().await.expect("body");
    let pair = set_cookie.split(';').next().expect("pair").to_owned();
    let id = pair.strip_prefix("sy_route=").expect("cookie name");
    assert_eq!(id.len(), 16, "{set_cookie}");
    assert!(
        set_cookie.contains("Max-Age=3600") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    for o in &origins {
        assert!(
            !set_cookie.contains(&o.addr.port().to_string()),
            "the cookie must not reveal the address"
        );
    }

    for _ in 0..12 {
        let res = client
            .get(sy.url("/"))
            .header("cookie", format!("a=b; {pair}"))
            .send()
            .await
            .expect("request");
        assert!(res.headers().get("set-cookie").is_none(), "a valid cookie is not reset");
        assert_eq!(res.text().await.expect("body"), first);
    }

    // An unknown id: the algorithm picks again and the cookie is reset.
    let res = client
        .get(sy.url("/"))
        .header("cookie", "sy_route=00000000deadbeef")
        .send()
        .await
        .expect("request");
    assert!(res.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .starts_with("sy_route="));
}

/// A fleet sharing a secret agrees on cookie values; another secret gives other values, so the
/// value reveals nothing to whoever lacks the secret.
#[tokio::test]
async fn sticky_ids_are_keyed_by_the_shared_secret() {
    let origin = spawn_origin("only").await;
    let cookie_of = |secret: &'static str| {
        let toml = one_pool_toml(
            &[origin.addr],
            &format!("sticky = {{ cookie = \"srv\", secret = \"{secret}\" }}"),
        );
        async move {
            let sy = spawn_steelyard(config(&toml)).await;
            let res = client().get(sy.url("/")).send().await.expect("request");
            let set_cookie = res.headers()["set-cookie"].to_str().expect("ascii").to_owned();
            set_cookie.split(';').next().expect("pair").to_owned()
        }
    };
    let a = cookie_of("fleet-secret-0123456789").await;
    let b = cookie_of("fleet-secret-0123456789").await;
    let other = cookie_of("another-secret-987654321").await;
    assert_eq!(a, b, "two instances with one secret agree");
    assert_ne!(a, other, "another secret, another id");

    let short = one_pool_toml(&[origin.addr], "sticky = { cookie = \"srv\", secret = \"short\" }");
    let errors = steelyard::Config::from_toml(&short, "s.toml", &steelyard::server::dns::System)
        .expect_err("too short")
        .to_string();
    assert!(errors.contains("sticky.secret: use at least 16 characters"), "{errors}");
}

#[tokio::test]
async fn bad_algorithm_settings_are_rejected_with_positions() {
    let text = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{ pool = \"p\" }]\n[pools.p]\nalgorithm = \"round_robin\"\nhash_key = \"path\"\nbackends = [\"127.0.0.1:1\"]\n[pools.q]\nalgorithm = \"maglev\"\nmaglev_table_size = 65536\nhash_key = \"header:\"\nbackends = [\"127.0.0.1:1\"]\n";
    let errors = steelyard::Config::from_toml(text, "a.toml", &steelyard::server::dns::System)
        .expect_err("invalid")
        .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(
        lines[0].starts_with("a.toml:6:12: pools.p.hash_key: only maglev and ring_hash"),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("a.toml:10:21: pools.q.maglev_table_size: must be a prime"),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("a.toml:11:12: pools.q.hash_key: invalid hash_key"),
        "{errors}"
    );
}

/// `balance_factor` belongs to hashing pools and must leave room above the mean.
#[test]
fn balance_factor_is_checked() {
    let pool = |extra: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"p\" }}]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n{extra}\n")
    };
    for (extra, expected) in [
        (
            "balance_factor = 1.25",
            "pools.p.balance_factor: only applies to algorithm = \"maglev\" or \"ring_hash\"",
        ),
        (
            "algorithm = \"maglev\"\nbalance_factor = 1.0",
            "pools.p.balance_factor: must be more than 1.0",
        ),
    ] {
        let err = config_error(&pool(extra));
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
    assert!(steelyard::Config::from_toml(
        &pool("algorithm = \"ring_hash\"\nbalance_factor = 1.25"),
        "a.toml",
        &steelyard::server::dns::System
    )
    .is_ok());
}

#[tokio::test]
async fn slow_start_ramps_a_backend_added_by_reload() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let extra = "slow_start = \"1500ms\"\nslow_start_min_weight_percent = 10";
    let sy = spawn_steelyard(config(&one_pool_toml(&[a.addr], extra))).await;
    assert_eq!(send_fast(&sy, &[a.clone(), b.clone()], 10).await, vec![10, 0]);
    sy.reload
        .apply(config(&one_pool_toml(&[a.addr, b.addr], extra)))
        .await
        .expect("reload");
    // Just added, b starts at 10% of its weight: about 1 request in 11, rising as the ramp goes.
    let early = send_fast(&sy, &[a.clone(), b.clone()], 40).await;
    assert!(
        early[1] >= 1 && early[1] <= 12,
        "b got {} of 40 right after joining",
        early[1]
    );
    // After the window both weigh the same.
    eventually("b to reach its full weight", || async {
        let later = send_fast(&sy, &[a.clone(), b.clone()], 20).await;
        later == vec![10, 10]
    })
    .await;
}

#[tokio::test]
async fn without_slow_start_an_added_backend_takes_its_full_share_at_once() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    let sy = spawn_steelyard(config(&one_pool_toml(&[a.addr], ""))).await;
    sy.reload
        .apply(config(&one_pool_toml(&[a.addr, b.addr], "")))
        .await
        .expect("reload");
    assert_eq!(send_fast(&sy, &[a.clone(), b.clone()], 40).await, vec![20, 20]);
}
