//! A real single-node `etcd` (Debian's etcd-server) on loopback ports, started by the test,
//! and a client for its v3 JSON gateway.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::DEADLINE;

/// A running etcd; killed when dropped (its data directory removed).
pub struct EtcdServer {
    /// Its client endpoint.
    pub addr: SocketAddr,
    peer: SocketAddr,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts one with an empty store. Fails loudly when `etcd` is missing.
    pub async fn start() -> EtcdServer {
        let addr = super::free_port();
        let peer = super::free_port();
        let dir = std::env::temp_dir().join(format!("steelyard-etcd-{}-{}", std::process::id(), addr.port()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = EtcdServer {
            addr,
            peer,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Starts it (again) on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        let (client, peer) = (format!("http://{}", self.addr), format!("http://{}", self.peer));
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args([
                "--initial-cluster",
                &format!("t={peer}"),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): run ./test, which installs it \
                     (apt-get install etcd-server), then runs cargo test"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        let client = super::client();
        loop {
            let health = client
                .get(format!("http://{}/health", self.addr))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(r) = health {
                if r.text().await.unwrap_or_default().contains("\"health\":\"true\"") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} did not become healthy",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts `value` under `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = serde_json::json!({ "key": b64(key), "value": b64(value) }).to_string();
        let reply = super::client()
            .post(format!("http://{}/v3/kv/put", self.addr))
            .body(body)
            .send()
            .await
            .expect("put")
            .text()
            .await
            .expect("put reply");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("json");
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("revision")
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
