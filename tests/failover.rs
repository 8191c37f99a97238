//! The failover story through the binary: kill one of three origins under a steady stream of
//! GETs, then bring it back.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 3;
const HEALTHY_THRESHOLD: u64 = 2;
/// Scheduling and logging latency allowed on top of the ideal bounds (debug build, 2 cores).
const SLACK: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_origin_under_load_fails_no_request_and_it_comes_back() {
    kill_and_revive("", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_alone_detect_a_dead_origin_within_their_bound() {
    // A third of the traffic needs a retry until the checks notice: a budget above that.
    kill_and_revive("passive = { consecutive_failures = 0 }", 50).await;
}

/// Kills origin b under load and revives it; `extra` goes into the pool's config.
async fn kill_and_revive(extra: &str, budget_percent: u32) {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let file = std::env::temp_dir().join(format!(
        "steelyard-failover-{}-{}.toml",
        std::process::id(),
        origins[0].addr.port()
    ));
    std::fs::write(
        &file,
        format!(
            r#"[[listeners]]
listen = "127.0.0.1:0"
routes = [{{ pool = "app" }}]

[pools.app]
backends = ["{}", "{}", "{}"]
retries = {{ attempts = 2, on = ["connect-failure", "reset"], budget_percent = {budget_percent} }}
{extra}

[pools.app.health_check]
path = "/healthz"
interval = "{INTERVAL_MS}ms"
timeout = "100ms"
healthy_threshold = {HEALTHY_THRESHOLD}
unhealthy_threshold = {UNHEALTHY_THRESHOLD}
"#,
            origins[0].addr, origins[1].addr, origins[2].addr
        ),
    )
    .expect("write config");
    let mut p = Process::start(&["-c", file.to_str().expect("path")]);
    let addr = p.listening_addr();

    // A steady stream of GETs until told to stop; every status is kept.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let running = Arc::clone(&running);
        tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            while running.load(Ordering::SeqCst) && statuses.len() < 100_000 {
                let status = match client.get(format!("http://{addr}/")).send().await {
                    Ok(res) => res.status().as_u16(),
                    Err(_) => 0,
                };
                statuses.push(status);
            }
            statuses
        })
    };
    eventually("traffic to reach b", || async { origins[1].requests() >= 20 }).await;

    let killed = Instant::now();
    origins[1].kill();
    // Whichever sees it first takes it out: passive ejection (real requests failing) or the
    // active checks.
    let down_line = p.wait_for_any(&["backend unhealthy", "backend ejected"], DEADLINE);
    if extra.contains("consecutive_failures = 0") {
        assert!(down_line.contains("backend unhealthy"), "{down_line}");
    }
    let detection = killed.elapsed();
    assert!(down_line.contains(&origins[1].addr.to_string()), "{down_line}");

    let revived_at = Instant::now();
    let revived = respawn_origin("b", origins[1].addr).await;
    let up_line = p.wait_for_line("backend healthy");
    let recovery = revived_at.elapsed();
    assert!(up_line.contains(&origins[1].addr.to_string()), "{up_line}");
    eventually("the revived origin to get traffic", || async {
        revived.requests() >= 10
    })
    .await;

    running.store(false, Ordering::SeqCst);
    let statuses = load.await.expect("load task");
    let failed = statuses.iter().filter(|&&s| s != 200).count();
    eprintln!(
        "{extra:?}: {} requests, {failed} failed; detection {detection:?} (bound {}ms), recovery {recovery:?} (bound {}ms)",
        statuses.len(),
        INTERVAL_MS * UNHEALTHY_THRESHOLD,
        INTERVAL_MS * HEALTHY_THRESHOLD
    );
    assert_eq!(failed, 0, "retries hide the failure from clients");
    assert!(
        detection <= Duration::from_millis(INTERVAL_MS * UNHEALTHY_THRESHOLD) + SLACK,
        "{detection:?}"
    );
    assert!(
        recovery <= Duration::from_millis(INTERVAL_MS * HEALTHY_THRESHOLD) + SLACK,
        "{recovery:?}"
    );
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_health_check_flag_takes_a_failing_backend_out() {
    let (a, b) = (spawn_origin("a").await, spawn_origin("b").await);
    b.set_health(500);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let mut p = Process::start(&[
        "--listen",
        "127.0.0.1:0",
        "-b",
        &a_addr,
        "-b",
        &b_addr,
        "--health-check",
        "/healthz",
    ]);
    let addr = p.listening_addr();
    // Probes run every 5 s; the third failure (about 10 s in) takes b out.
    let line = p.wait_for_line_within("backend unhealthy", Duration::from_secs(20));
    assert!(line.contains(&b_addr), "{line}");
    let client = client();
    for _ in 0..6 {
        assert_eq!(get(&client, &format!("http://{addr}/")).await.1, "a");
    }
}
