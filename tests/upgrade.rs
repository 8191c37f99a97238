//! Binary upgrades (`SIGUSR2`) and systemd socket activation, through the real binary: a load
//! generator runs across three upgrades in a row and counts every refused connection and
//! every request that did not get its whole response.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }
}

/// One client: connects, sends up to `per_connection` requests one after the other (the
/// last with `Connection: close`), reads each whole response, and starts again, until `stop`.
/// A refused connect is `refused`; any other error, or a response cut short, is `failed`.
async fn client_loop(
    addr: SocketAddr,
    per_connection: usize,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tally.refused.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Err(e) => panic!("connect to {addr}: {e}"),
        };
        tally.connections.fetch_add(1, Ordering::SeqCst);
        let mut buf = Vec::with_capacity(1024);
        for i in 0..per_connection {
            let last = i + 1 == per_connection || *stop.borrow();
            let request: &[u8] = if last {
                b"GET / HTTP/1.1\r\nHost: upgrade.test\r\nConnection: close\r\n\r\n"
            } else {
                b"GET / HTTP/1.1\r\nHost: upgrade.test\r\n\r\n"
            };
            match exchange(&mut stream, request, &mut buf).await {
                Ok(keep_alive) => {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                    if last || !keep_alive {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("request failed: {e}");
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

/// Writes `request` and reads one whole 200 response (Content-Length framed); returns whether
/// the server keeps the connection open.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<bool, String> {
    stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .map_err(|_| "no response in time".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes of the response", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200 ") {
        return Err(format!("not a 200: {head:?}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head:?}"))?;
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed in the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(!head.contains("\r\nconnection: close"))
}

/// Waits until the load generator has `n` more successful requests than `from`.
async fn progress(tally: &Tally, from: u64, n: u64) {
    eventually("the load generator to make progress", || async move {
        tally.ok() >= from + n
    })
    .await;
}

fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_under_load_refuse_nothing_and_fail_nothing() {
    let fast = spawn_origin("fast").await;
    let slow = spawn_origin_delayed("slow", Duration::from_millis(150)).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The binary runs from a path of its own, which the "package manager" below replaces.
    let binary = dir.join("steelyard");
    std::fs::hard_link(BIN, &binary)
        .or_else(|_| std::fs::copy(BIN, &binary).map(|_| ()))
        .expect("install the binary");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let config = dir.join("steelyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"fast\"\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"fast\" }}]\n\n\
             [[listeners]]\nname = \"slow\"\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"slow\" }}]\n\n\
             [pools.fast]\nbackends = [\"{}\"]\n\n[pools.slow]\nbackends = [\"{}\"]\n",
            fast.addr, slow.addr
        ),
    )
    .expect("config");

    let mut first = Process::start_command(
        Command::new(&binary)
            .args([
                "--config",
                config.to_str().expect("utf-8"),
                "--admin",
                "off",
                "--workers",
                "2",
            ])
            .env("NOTIFY_SOCKET", &notify_path),
    );
    assert_eq!(notification(&notify).await, "READY=1");
    let fast_addr = first.listening_addr();
    let slow_addr = first.listening_addr_of("slow");

    let tally = Arc::new(Tally::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    // Keep-alive clients, clients with a new connection per request, and clients whose
    // requests take 150 ms (so some are always in flight when a process hands over).
    for (addr, per_connection, count) in [(fast_addr, 50, 8), (fast_addr, 1, 4), (slow_addr, 20, 4)] {
        for _ in 0..count {
            clients.push(tokio::spawn(client_loop(
                addr,
                per_connection,
                Arc::clone(&tally),
                stopped.clone(),
            )));
        }
    }

    let mut pid = first.pid();
    let mut successors = Vec::new();
    for round in 1..=3 {
        progress(&tally, tally.ok(), 1_500).await;
        if round == 2 {
            // A package upgrade replaces the file by renaming a new one over it; the next
            // SIGUSR2 must start the new file, not the running one.
            let staged = dir.join("steelyard.new");
            std::fs::write(
                &staged,
                format!("#!/bin/sh\necho 'the new binary starts'\nexec {BIN} \"$@\"\n"),
            )
            .expect("new binary");
            let mut perms = std::fs::metadata(&staged).expect("meta").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&staged, perms).expect("chmod");
            std::fs::rename(&staged, &binary).expect("replace the binary");
        }
        send_signal(pid, "-USR2");
        let line = first.wait_for_nth("upgrade: PID", round);
        let (new, old) = upgrade_pids(&line);
        successors.push(Successor(new));
        assert_eq!(old, pid, "{line}");
        assert_eq!(notification(&notify).await, format!("MAINPID={new}\nREADY=1"));
        if round == 2 {
            first.wait_for_line("the new binary starts");
        }
        // The old process drains and exits; the new one serves.
        first.wait_for_nth("drained; exiting", round);
        eventually("the old process to exit", || async move {
            !std::path::Path::new(&format!("/proc/{old}")).exists()
                || std::fs::read_to_string(format!("/proc/{old}/stat")).is_ok_and(|s| s.contains(") Z "))
        })
        .await;
        pid = new;
    }
    assert_eq!(first.wait(), 0, "the first process exits cleanly after handing over");
    progress(&tally, tally.ok(), 1_500).await;
    stop.send(true).expect("stop the clients");
    for c in clients {
        c.await.expect("client");
    }

    let (ok, refused, failed, connections) = (
        tally.ok(),
        tally.refused.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        tally.connections.load(Ordering::SeqCst),
    );
    eprintln!("three upgrades: {ok} requests on {connections} connections, {refused} refused, {failed} failed");
    assert_eq!((refused, failed), (0, 0), "{ok} requests on {connections} connections");
    assert!(ok >= 1_200 && fast.requests() > 0 && slow.requests() > 0);

    send_signal(pid, "-TERM");
    assert_eq!(notification(&notify).await, "STOPPING=1");
    first.wait_for_nth("drained; exiting", 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let origin = spawn_origin("a").await;
    let dir = std::env::temp_dir().join(format!("steelyard-upgrade-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("steelyard.toml");
    std::fs::write(&config, one_pool_toml(&[origin.addr], "")).expect("config");
    let mut p = Process::start(&["--config", config.to_str().expect("utf-8")]);
    let addr = p.listening_addr();
    std::fs::write(&config, "[[listeners]]\nlisten = 7\n").expect("break the config");
    p.signal("-USR2");
    let line = p.wait_for_line("upgrade failed");
    assert!(line.contains("exited before serving"), "{line}");
    assert!(line.contains("still running this one"), "{line}");
    assert_eq!(get(&client(), &format!("http://{addr}/")).await.1, "a");
    // Fixed, the next upgrade goes through.
    std::fs::write(&config, one_pool_toml(&[origin.addr], "")).expect("config");
    p.signal("-USR2");
    p.wait_for_line("upgrade: PID");
    assert_eq!(p.wait(), 0);
    assert_eq!(get(&client(), &format!("http://{addr}/")).await.1, "a");
    let line = p.wait_for_line("upgrade: PID");
    send_signal(upgrade_pids(&line).0, "-TERM");
    p.wait_for_nth("drained; exiting", 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// systemd socket activation: the socket is bound by the "service manager" (this test) and
/// handed over as descriptor 3 with `LISTEN_FDS=1` and `LISTEN_PID`; the listener on that
/// address uses it, another listener binds its own.
#[tokio::test]
async fn socket_activation_serves_on_the_handed_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let origin = spawn_origin("a").await;
    let handed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let handed_addr = handed.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("steelyard-activation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("steelyard.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nname = \"activated\"\nlisten = \"{handed_addr}\"\nroutes = [{{ pool = \"main\" }}]\n\n\
             [[listeners]]\nname = \"bound\"\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n\n\
             [pools.main]\nbackends = [\"{}\"]\n",
            origin.addr
        ),
    )
    .expect("config");
    let fd = handed.as_raw_fd();
    let mut command = Command::new("sh");
    // `$$` is the shell's PID, which `exec` gives to steelyard: systemd sets LISTEN_PID the
    // same way, between fork and exec.
    command
        .args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=activated exec \"$0\" \"$@\"",
            BIN,
            "--config",
            config.to_str().expect("utf-8"),
            "--admin",
            "off",
        ])
        .env_remove("LISTEN_PID");
    // SAFETY: dup2 between fork and exec is async-signal-safe; descriptor 3 becomes the
    // socket (without close-on-exec), as systemd passes it.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut p = Process::start_command(&mut command);
    p.wait_for_line("listening on sockets handed to this process");
    assert_eq!(p.listening_addr(), handed_addr);
    drop(handed);
    assert_eq!(get(&client(), &format!("http://{handed_addr}/")).await.1, "a");
    let bound_addr = p.listening_addr_of("bound");
    assert_ne!(bound_addr, handed_addr);
    assert_eq!(get(&client(), &format!("http://{bound_addr}/")).await.1, "a");
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status API's JSON from the admin API at `admin`.
async fn status(admin: SocketAddr) -> serde_json::Value {
    let body = client()
        .get(format!("http://{admin}/api/status"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("status body");
    serde_json::from_str(&body).expect("status JSON")
}

/// The status API's entry for the backend at `addr`.
fn backend_entry(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    status["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in {status}"))
}

#[tokio::test]
async fn backend_state_counters_and_events_carry_over_an_upgrade() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let mut p = Process::start(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &a.addr.to_string(),
        "--backend",
        &b.addr.to_string(),
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ]);
    let addr = p.listening_addr();
    let line = p.wait_for_line("admin API and dashboard on http://");
    let admin: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(|c: char| c == '/' || c.is_whitespace()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("admin address in {line:?}"));
    let http = client();
    for _ in 0..20 {
        let (code, _) = get(&http, &format!("http://{addr}/")).await;
        assert_eq!(code, 200);
    }
    let drained = http
        .post(format!("http://{admin}/api/pools/default/backends/{}/drain", b.addr))
        .header("x-steelyard-admin", "1")
        .send()
        .await
        .expect("drain");
    assert!(drained.status().is_success(), "{:?}", drained.status());
    let before = status(admin).await;
    let old_pid = before["pid"].as_u64().expect("pid");
    assert_eq!(backend_entry(&before, a.addr)["requests"], 10);
    assert_eq!(backend_entry(&before, b.addr)["requests"], 10);

    send_signal(p.pid(), "-USR2");
    let (new_pid, _) = upgrade_pids(&p.wait_for_line("upgrade: PID"));
    let _successor = Successor(new_pid);
    // The old process answers one more request on each open connection; wait until it is
    // gone so that every request below is the new one's.
    p.wait_for_line("drained; exiting");
    let http = client();
    // The admin socket was handed over too: the same address now answers from the new PID.
    let after = status(admin).await;
    assert_eq!(after["pid"].as_u64(), Some(u64::from(new_pid)), "old PID was {old_pid}");
    let (ea, eb) = (backend_entry(&after, a.addr), backend_entry(&after, b.addr));
    assert_eq!(eb["state"], "drained", "{eb}");
    assert_eq!(ea["requests"], 10, "{ea}");
    assert_eq!(eb["requests"], 10, "{eb}");
    let events = after["events"].as_array().expect("events");
    let drain_at = events
        .iter()
        .position(|e| e["kind"] == "drain")
        .unwrap_or_else(|| panic!("the drain event carried over: {events:?}"));
    let start_at = events
        .iter()
        .rposition(|e| e["kind"] == "start")
        .expect("the new process's start");
    assert!(drain_at < start_at, "{events:?}");
    // Numbered on from the old process's events: a dashboard asking for those after the
    // last it saw misses nothing across the upgrade.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(after["events_last_seq"].as_u64(), seqs.last().copied());
    // Drained in the new process too: everything goes to a.
    for _ in 0..10 {
        let (code, body) = get(&http, &format!("http://{addr}/")).await;
        assert_eq!((code.as_u16(), body.as_str()), (200, "a"));
    }
    assert_eq!(b.requests(), 10);
    assert_eq!(backend_entry(&status(admin).await, a.addr)["requests"], 20);
    send_signal(new_pid, "-TERM");
    p.wait_for_nth("drained; exiting", 2);
}
