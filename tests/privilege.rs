//! `[server] user`: started as root, the real binary binds, then becomes the configured user
//! in every thread before serving; a binary upgrade keeps that identity.
//!
//! These tests need root (`./test` runs as root, as it installs packages); as another user
//! they fail, saying so, rather than pass by skipping.

mod support;

use std::process::Command;

use support::*;

/// The uid and gid of user `name`, from `id`.
fn ids_of(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, name]).output().expect("id");
        assert!(out.status.success(), "id {flag} {name}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("a number")
    };
    (id("-u"), id("-g"))
}

fn assert_root() {
    // SAFETY: a plain query.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests start steelyard as root to see it drop to another user: run ./test as root"
    );
}

/// Every thread's real, effective, saved and filesystem uid and gid, from /proc.
fn thread_ids(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.expect("task").path().join("status")).expect("status");
            let line = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            };
            (line("Uid:"), line("Gid:"))
        })
        .collect()
}

fn write_config(dir: &std::path::Path, backend: std::net::SocketAddr, server: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("steelyard.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\n{server}\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n\n\
             [pools.main]\nbackends = [\"{backend}\"]\n"
        ),
    )
    .expect("config");
    path
}

#[tokio::test]
async fn started_as_root_it_serves_as_the_configured_user_in_every_thread() {
    assert_root();
    let origin = spawn_origin("origin").await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("privilege-{}", std::process::id()));
    let config = write_config(&dir, origin.addr, "user = \"nobody\"");
    let (uid, gid) = ids_of("nobody");
    assert_ne!(uid, 0);

    let mut p = Process::start(&["--config", config.to_str().expect("utf-8"), "--workers", "2"]);
    let addr = p.listening_addr();
    p.wait_for_line("running as user nobody");
    let (code, body) = get(&client(), &format!("http://{addr}/")).await;
    assert_eq!((code.as_u16(), body.as_str()), (200, "origin"));
    let expected = (format!("{uid} {uid} {uid} {uid}"), format!("{gid} {gid} {gid} {gid}"));
    let threads = thread_ids(p.pid());
    assert!(threads.len() >= 3, "main thread and two workers at least: {threads:?}");
    for ids in &threads {
        assert_eq!(ids, &expected);
    }

    // The successor of an upgrade starts as that user already, and stays it.
    p.signal("-USR2");
    let (new, _) = upgrade_pids(&p.wait_for_line("upgrade: PID"));
    let _successor = Successor(new);
    p.wait_for_line("drained; exiting");
    let (code, _) = get(&client(), &format!("http://{addr}/")).await;
    assert_eq!(code, 200);
    for ids in thread_ids(new) {
        assert_eq!(ids, expected);
    }
    let _ = Command::new("kill").args(["-TERM", &new.to_string()]).status();
    p.wait_for_nth("drained; exiting", 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unknown_user_or_group_stops_the_start() {
    assert_root();
    let origin = spawn_origin("origin").await;
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("privilege-bad-{}", std::process::id()));
    for (server, expected) in [
        (
            "user = \"no-such-user-here\"",
            "server.user: no user named \"no-such-user-here\"",
        ),
        (
            "user = \"nobody\"\ngroup = \"no-such-group-here\"",
            "server.group: no group named \"no-such-group-here\"",
        ),
    ] {
        let config = write_config(&base, origin.addr, server);
        let mut p = Process::start(&["--config", config.to_str().expect("utf-8")]);
        p.wait_for_line(expected);
        assert_ne!(p.wait(), 0);
    }
    assert_eq!(origin.requests(), 0);
    let _ = std::fs::remove_dir_all(&base);
}
