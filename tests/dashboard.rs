//! The live dashboard in a real browser: Debian's Chromium, driven by playwright-core
//! (tests/browser). `./test` installs both when missing; without them this test fails and says
//! how to install them. It is never skipped.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

fn browser_ready() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("tests/browser/node_modules/playwright-core").exists() {
        return Err("tests/browser/node_modules is missing".into());
    }
    if !Path::new("/usr/bin/chromium").exists() {
        return Err("/usr/bin/chromium is missing".into());
    }
    if std::process::Command::new("node").arg("--version").output().is_err() {
        return Err("node is missing".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_backends_and_drains_one() {
    if let Err(why) = browser_ready() {
        panic!(
            "the dashboard test needs a browser: {why}. Run ./test, which installs what is missing \
             (apt-get install chromium nodejs npm; npm ci --prefix tests/browser), then runs cargo test"
        );
    }
    let origins = [
        spawn_origin("web-1").await,
        spawn_origin_delayed("web-2", Duration::from_millis(4)).await,
        spawn_origin("web-3").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        one_pool_toml(&addrs, "algorithm = \"least_request\"").replace("[pools.main]", "[pools.main]\n")
    )
    .replace("pools.main", "pools.web")
    .replace("pool = \"main\"", "pool = \"web\"")
    .replace(
        "[pools.web]",
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"web\"\n\n[pools.web]",
    );
    let sy = spawn_steelyard(config(&toml)).await;
    let admin = sy.admin.expect("admin listener");

    // Traffic flows while the page is open, bounded in time and count.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (url, running) = (sy.url("/"), Arc::clone(&running));
        tokio::spawn(async move {
            let client = client();
            let mut n = 0;
            while running.load(Ordering::SeqCst) && n < 200_000 {
                let _ = client.get(&url).send().await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await; // a steady, modest rate
            }
        })
    };
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(format!("http://{admin}/"))
            .arg(origins[0].addr.to_string())
            .arg(&screenshot)
            .output(),
    )
    .await
    .expect("browser run finishes")
    .expect("node runs");
    running.store(false, Ordering::SeqCst);
    let _ = load.await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("dashboard ok"),
        "{stdout}\n{stderr}"
    );
    assert!(screenshot.exists());
}
