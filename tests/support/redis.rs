//! A real `redis-server` (Debian's) on a loopback port, started by the test that needs it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A running `redis-server` without persistence; killed when dropped.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one on a free loopback port. Fails loudly when `redis-server` is missing.
    pub fn start() -> RedisServer {
        RedisServer::start_at(super::free_port())
    }

    /// Starts one on `addr` (a port another server used before, to come back on).
    pub fn start_at(addr: SocketAddr) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("steelyard-redis-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-server ({e}): run ./test, which installs it \
                         (apt-get install redis-server), then runs cargo test"
                    )
                });
            let mut server = RedisServer {
                addr,
                child: Some(child),
                dir: dir.clone(),
            };
            while Instant::now() < deadline {
                if server.ping() {
                    return server;
                }
                if let Some(Ok(Some(_))) = server.child.as_mut().map(Child::try_wait) {
                    break; // exited (the port was still taken, say): start again
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() < deadline, "redis-server on {addr} did not answer PING");
            server.child = None;
        }
    }

    /// True when it answers `PING`.
    pub fn ping(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command and returns the raw reply (enough for short replies).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
