//! A real `etcd` (Debian's etcd-server), one node or a cluster, on loopback ports started by the test,
//! and a client for its v3 JSON gateway.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long etcd may take to report healthy.
const ETCD_START: Duration = Duration::from_secs(30);

/// A running etcd; killed when dropped (its data directory removed).
pub struct EtcdServer {
    /// Its client endpoint.
    pub addr: SocketAddr,
    peer: SocketAddr,
    dir: std::path::PathBuf,
    child: Option<Child>,
    /// Its member name, and `--initial-cluster` (every member's name=peer URL).
    name: String,
    cluster: String,
}

impl EtcdServer {
    /// Starts one with an empty store. Fails loudly when `etcd` is missing.
    ///
    /// The ports come from [`super::free_port`], so another process can take one between
    /// the probe and etcd's bind; a start that fails on a taken port tries fresh ports.
    pub async fn start() -> EtcdServer {
        for attempt in 1..=3 {
            let addr = super::free_port();
            let peer = super::free_port();
            let dir = std::env::temp_dir().join(format!("steelyard-etcd-{}-{}", std::process::id(), addr.port()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut server = EtcdServer {
                addr,
                peer,
                dir,
                child: None,
                name: "t".into(),
                cluster: format!("t=http://{peer}"),
            };
            match server.try_start().await {
                Ok(()) => return server,
                Err(log) if attempt < 3 && log.contains("address already in use") => continue,
                Err(log) => panic!("etcd on {} did not become healthy; its log ends:\n{log}", server.addr),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// Starts a cluster of `members` members, each on its own loopback ports, and waits until
    /// every one reports healthy (a leader elected).
    ///
    /// Like [`EtcdServer::start`], a start that fails on a port another process took between
    /// the probe and etcd's bind tries again on fresh ports.
    pub async fn cluster(members: usize) -> Vec<EtcdServer> {
        for attempt in 1..=3 {
            let mut servers = EtcdServer::cluster_on_fresh_ports(members);
            // A member alone cannot elect a leader: start them all, then wait for each.
            for s in &mut servers {
                s.spawn();
            }
            let mut failed = None;
            for s in &mut servers {
                if let Err(log) = s.wait_healthy().await {
                    failed = Some((s.name.clone(), s.addr, log));
                    break;
                }
            }
            match failed {
                None => return servers,
                Some((_, _, log)) if attempt < 3 && log.contains("address already in use") => continue,
                Some((name, addr, log)) => {
                    panic!("etcd member {name} on {addr} did not become healthy; its log ends:\n{log}")
                }
            }
        }
        unreachable!("the last attempt panics")
    }

    fn cluster_on_fresh_ports(members: usize) -> Vec<EtcdServer> {
        let ports: Vec<(SocketAddr, SocketAddr)> =
            (0..members).map(|_| (super::free_port(), super::free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (addr, peer))| {
                let dir = std::env::temp_dir().join(format!("steelyard-etcd-{}-{}", std::process::id(), addr.port()));
                let _ = std::fs::remove_dir_all(&dir);
                EtcdServer {
                    addr,
                    peer,
                    dir,
                    child: None,
                    name: format!("m{i}"),
                    cluster: cluster.clone(),
                }
            })
            .collect()
    }

    /// Starts it (again) on the same ports and data.
    pub async fn restart(&mut self) {
        if let Err(log) = self.try_start().await {
            panic!("etcd on {} did not become healthy; its log ends:\n{log}", self.addr);
        }
    }

    /// Starts etcd and waits until it reports healthy. On failure returns the tail of its log.
    async fn try_start(&mut self) -> Result<(), String> {
        self.spawn();
        self.wait_healthy().await
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.join("etcd.log")
    }

    /// Starts the etcd process.
    fn spawn(&mut self) {
        self.kill();
        std::fs::create_dir_all(&self.dir).expect("etcd directory");
        let log = std::fs::File::create(self.log_path()).expect("etcd log");
        let (client, peer) = (format!("http://{}", self.addr), format!("http://{}", self.peer));
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster, "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): run ./test, which installs it \
                     (apt-get install etcd-server), then runs cargo test"
                )
            });
        self.child = Some(child);
    }

    /// Waits until it reports healthy. On failure returns the tail of its log.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        // etcd on a loaded two-core machine (other tests running beside it) can take a
        // while to elect itself; its own exit ends the wait early.
        let deadline = Instant::now() + ETCD_START;
        let client = super::client();
        loop {
            let health = client
                .get(format!("http://{}/health", self.addr))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(r) = health {
                if r.text().await.unwrap_or_default().contains("\"health\":\"true\"") {
                    return Ok(());
                }
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("(exited: {status})\n{}", tail()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts `value` under `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        self.put_with_lease(key, value, "0").await
    }

    /// Puts `value` under `key` attached to lease `lease` ("0": none): the key goes when the
    /// lease does.
    pub async fn put_with_lease(&self, key: &str, value: &str, lease: &str) -> i64 {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let v = self
            .call(
                "/v3/kv/put",
                serde_json::json!({ "key": b64(key), "value": b64(value), "lease": lease }),
            )
            .await;
        revision(&v)
    }

    /// Whether this member is the cluster's leader now.
    pub async fn is_leader(&self) -> bool {
        let v = self.call("/v3/maintenance/status", serde_json::json!({})).await;
        v["leader"].as_str().is_some() && v["leader"] == v["header"]["member_id"]
    }

    /// Grants a lease of `ttl_seconds`; returns its ID.
    pub async fn grant_lease(&self, ttl_seconds: u64) -> String {
        let v = self
            .call("/v3/lease/grant", serde_json::json!({ "TTL": ttl_seconds }))
            .await;
        v["ID"].as_str().expect("lease ID").to_owned()
    }

    /// Revokes lease `lease`: etcd deletes every key attached to it, as when it runs out.
    pub async fn revoke_lease(&self, lease: &str) -> i64 {
        let v = self.call("/v3/lease/revoke", serde_json::json!({ "ID": lease })).await;
        revision(&v)
    }

    /// One request to the v3 JSON gateway; its JSON reply.
    /// Retried while etcd answers "unavailable" (gRPC code 14: a cluster electing a new
    /// leader after a member was killed), for up to 30 s.
    async fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = super::client()
                .post(format!("http://{}{path}", self.addr))
                .body(body.to_string())
                .send()
                .await
                .expect(path)
                .text()
                .await
                .expect("etcd reply");
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{path}: {e}: {reply}"));
            if v["code"] == 14 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return v;
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The store revision an etcd reply's header names.
fn revision(reply: &serde_json::Value) -> i64 {
    reply["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {reply}"))
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
