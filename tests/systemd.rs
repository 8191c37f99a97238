//! systemd's notify protocol with a real socket: the test listens on `$NOTIFY_SOCKET` the way
//! systemd does and checks what the binary says when it is ready, reloading and stopping.

mod support;

use std::process::Command;

use support::*;
use tokio::net::UnixDatagram;

#[tokio::test]
async fn ready_reloading_and_stopping_reach_systemd() {
    let origin = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let file = dir.join("steelyard.toml");
    std::fs::write(&file, one_pool_toml(&[origin.addr], "")).expect("config");

    let mut p = Process::start_command(
        Command::new(BIN)
            .args(["--config", file.to_str().expect("utf-8"), "--admin", "off"])
            .env("NOTIFY_SOCKET", &path),
    );
    assert_eq!(notification(&socket).await, "READY=1");
    let addr = p.listening_addr();
    assert_eq!(get(&client(), &format!("http://{addr}/")).await.1, "a");

    // A reload: RELOADING=1 (with the monotonic time systemd 253+ wants), then READY=1.
    p.signal("-HUP");
    let reloading = notification(&socket).await;
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert!(
        reloading["RELOADING=1\nMONOTONIC_USEC=".len()..].parse::<u64>().is_ok(),
        "{reloading:?}"
    );
    assert_eq!(notification(&socket).await, "READY=1");

    // A refused reload is a reload too, and the old config is ready again.
    std::fs::write(&file, "[[listeners]]\nlisten = 7\n").expect("bad config");
    p.signal("-HUP");
    assert!(notification(&socket).await.starts_with("RELOADING=1"));
    assert_eq!(notification(&socket).await, "READY=1");
    assert_eq!(get(&client(), &format!("http://{addr}/")).await.1, "a");

    p.signal("-TERM");
    assert_eq!(notification(&socket).await, "STOPPING=1");
    assert_eq!(p.wait(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The unit shipped in `dist/` is a notify service reloaded with SIGHUP, with the hardening
/// the README promises.
#[test]
fn the_shipped_unit_is_a_hardened_notify_service() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/steelyard.service")).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
}
