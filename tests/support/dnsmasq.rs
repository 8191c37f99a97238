//! A real `dnsmasq` (Debian's dnsmasq-base) answering on a loopback port with the records a
//! test gives it. dnsmasq reads SRV records only when it starts, so a test changes them by
//! restarting it on the same port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A running dnsmasq; killed when dropped.
pub struct Dnsmasq {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts one on a free loopback port serving `records`: dnsmasq options such as
    /// `--srv-host=_http._tcp.app.test,web.app.test,8080,10,5` (target, port, priority,
    /// weight) and `--host-record=web.app.test,127.0.0.1`. Names under `app.test` that it
    /// does not know get NXDOMAIN; TTLs are 1 s.
    pub fn start(records: &[String]) -> Dnsmasq {
        let mut d = Dnsmasq {
            addr: super::free_port(),
            child: None,
        };
        d.restart(records);
        d
    }

    /// Stops it and starts it again on the same port with `records`.
    pub fn restart(&mut self, records: &[String]) {
        self.stop();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let bin = ["/usr/sbin/dnsmasq", "dnsmasq"]
                .into_iter()
                .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
                .unwrap_or("dnsmasq");
            let mut child = Command::new(bin)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                ])
                .arg(format!("--port={}", self.addr.port()))
                .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file="])
                .arg(format!("--user={}", whoami()))
                .args(["--local=/app.test/", "--local-ttl=1"])
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start dnsmasq ({e}): run ./test, which installs it \
                         (apt-get install dnsmasq-base), then runs cargo test"
                    )
                });
            // Up once it answers over TCP (it binds UDP and TCP together).
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(Instant::now() < deadline, "dnsmasq keeps exiting ({status})");
                    break;
                }
                if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "dnsmasq did not start on {}", self.addr);
        }
    }

    /// Stops it (lookups then time out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let out = Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "root".to_owned())
}
