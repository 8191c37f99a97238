//! A client for etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/watch`), which every etcd since
//! 3.4 serves on its client port over HTTP/1.1: no gRPC stubs, so no `protoc` at build time.
//! Used by the config kept in etcd and by pools whose backends are registered under a key
//! prefix.
//!
//! A cluster is given as its members' client endpoints, comma-separated: a request goes to
//! the member that answered last, and to the next ones in turn when it cannot be reached or
//! answers with a server error, so losing one member costs one failed attempt (a watch on it
//! ends, and is opened again on another).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Longest wait for one request to etcd (not a watch, which stays open).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one member to accept a connection: a member that is down without
/// refusing (powered off, partitioned) must not use up a request's time before the others
/// are tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP keepalive on connections to etcd: a watch waits for news as long as there is none, so
/// an etcd host gone without a reset (a partition, a dropped NAT entry) is found by the
/// kernel's probes: idle 10 s, then 3 probes 5 s apart.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(10))
    .with_interval(Duration::from_secs(5))
    .with_retries(3);

/// The pause before reading again after etcd failed: 200 ms, doubling to 5 s, back to 200 ms
/// once a watch is open again.
#[derive(Debug)]
pub struct Backoff {
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { pause: Backoff::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(5);

    /// The next pause.
    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// Sleeps the pause, and doubles the next one.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Backoff::LONGEST);
    }

    /// etcd answered a watch: the next failure starts over from 200 ms.
    pub fn reset(&mut self) {
        self.pause = Backoff::FIRST;
    }
}

/// An etcd cluster's client endpoints.
#[derive(Debug)]
pub struct Gateway {
    /// `HOST:PORT` of each member.
    endpoints: Vec<String>,
    /// The member that answered last, tried first.
    preferred: AtomicUsize,
}

/// A key and its value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// Its value (UTF-8).
    pub value: String,
    /// The store revision that last changed it.
    pub mod_revision: i64,
}

/// What a range read found.
#[derive(Debug)]
pub struct Range {
    /// The store's revision at the read (a watch from `store + 1` misses nothing).
    pub store: i64,
    /// The keys found, in key order.
    pub kvs: Vec<Kv>,
}

/// One change a watch reports.
#[derive(Debug)]
pub struct Event {
    /// The key was deleted (or its lease expired); `kv.value` is empty then.
    pub deleted: bool,
    /// The key and its new value.
    pub kv: Kv,
}

/// An open watch: the gateway streams one JSON message per line.
pub struct Watch {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl Gateway {
    /// The members `endpoints` names: `HOST:PORT`, comma-separated.
    pub fn new(endpoints: &str) -> Gateway {
        Gateway {
            endpoints: endpoints.split(',').map(|e| e.trim().to_owned()).collect(),
            preferred: AtomicUsize::new(0),
        }
    }

    /// The keys from `key` (alone, or up to `range_end` exclusive).
    pub async fn range(&self, key: &str, range_end: Option<&[u8]>) -> Result<Range, String> {
        let mut request = json!({ "key": b64(key.as_bytes()) });
        if let Some(end) = range_end {
            request["range_end"] = json!(b64(end));
        }
        let reply = self.post("/v3/kv/range", request).await?;
        let kvs = reply["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(kv)
            .collect::<Result<_, _>>()?;
        Ok(Range {
            store: int(&reply["header"]["revision"]),
            kvs,
        })
    }

    /// Watches `key` (alone, or up to `range_end`) from store revision `start`.
    pub async fn watch(&self, key: &str, range_end: Option<&[u8]>, start: i64) -> Result<Watch, String> {
        let mut create = json!({ "key": b64(key.as_bytes()), "start_revision": start.to_string() });
        if let Some(end) = range_end {
            create["range_end"] = json!(b64(end));
        }
        let res = self.send("/v3/watch", json!({ "create_request": create })).await?;
        if !res.status().is_success() {
            return Err(format!("watch refused: {}", res.status()));
        }
        Ok(Watch {
            body: res.into_body(),
            pending: Vec::new(),
        })
    }

    /// One JSON request to the gateway.
    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let res = self.send(path, body).await?;
        let status = res.status();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, res.into_body().collect())
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not the v3 JSON gateway: {e}"))?;
        if !status.is_success() {
            return Err(format!("{status}: {}", value["message"].as_str().unwrap_or("")));
        }
        Ok(value)
    }

    /// Sends to the preferred member, then to each other in turn while one cannot be reached
    /// or answers with a server error (a learner, a member without a leader or in alarm); the
    /// last member's answer is returned whatever it is.
    async fn send(&self, path: &str, body: Value) -> Result<http::Response<hyper::body::Incoming>, String> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let count = self.endpoints.len();
        for i in 0..count {
            let at = (first + i) % count;
            match self.send_to(&self.endpoints[at], path, &body).await {
                Ok(res) if res.status().is_server_error() && i + 1 < count => {
                    failures.push((at, format!("answered {}", res.status())));
                }
                Ok(res) => {
                    if res.status().is_success() {
                        self.preferred.store(at, Ordering::Relaxed);
                    }
                    return Ok(res);
                }
                Err(why) => failures.push((at, why)),
            }
        }
        Err(match failures.as_slice() {
            [(_, why)] => why.clone(),
            all => all
                .iter()
                .map(|(at, why)| format!("{}: {why}", self.endpoints[*at]))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    async fn send_to(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&KEEPALIVE)
            .map_err(|e| format!("cannot set TCP keepalive: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = http::Request::post(path)
            .header(http::header::HOST, endpoint)
            .header(http::header::CONTENT_TYPE, "application/json")
            // etcd's "require leader" (clientv3's WithRequireLeader): a member cut off from
            // the cluster cancels its watches instead of keeping them open and silent, so the
            // watch is opened again on a member that hears the leader.
            .header("grpc-metadata-hasleader", "true")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }
}

impl Watch {
    /// The next batch of changes (possibly empty: the watch's creation, progress notices).
    /// An error ends the watch: etcd closed it, cancelled it (a compacted revision) or sent
    /// something else than the gateway's messages.
    pub async fn next(&mut self) -> Result<Vec<Event>, String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return events(&line);
            }
            let frame = match self.body.frame().await {
                None => return Err("etcd closed the watch".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// The events of one watch message.
fn events(line: &[u8]) -> Result<Vec<Event>, String> {
    let message: Value = serde_json::from_slice(line).map_err(|e| format!("bad watch message: {e}"))?;
    if message.get("error").is_some() {
        return Err(format!("etcd ended the watch: {}", message["error"]));
    }
    let result = &message["result"];
    if result["canceled"].as_bool() == Some(true) {
        return Err("etcd cancelled the watch (compacted)".into());
    }
    result["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|event| {
            Ok(Event {
                deleted: event["type"].as_str() == Some("DELETE"),
                kv: kv(&event["kv"])?,
            })
        })
        .collect()
}

fn kv(v: &Value) -> Result<Kv, String> {
    Ok(Kv {
        key: unb64(v["key"].as_str().unwrap_or(""))?,
        value: unb64(v["value"].as_str().unwrap_or(""))?,
        mod_revision: int(&v["mod_revision"]),
    })
}

/// The end of the range of keys starting with `prefix` (etcd's `--prefix`): the prefix with
/// its last byte incremented, shorter when that byte is already 0xff.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty: every key; etcd spells that as the single byte 0.
    vec![0]
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64 from etcd: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "a key or value from etcd is not UTF-8".to_owned())
}

/// The gateway writes 64-bit integers as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(unb64(&b64(b"a = 1")).as_deref(), Ok("a = 1"));
        assert_eq!(prefix_end("/pools/web/"), b"/pools/web0");
        assert_eq!(prefix_end("a"), b"b");
        let events = events(
            br#"{"result":{"events":[{"type":"DELETE","kv":{"key":"L2sx","mod_revision":"9"}},{"kv":{"key":"L2sy","value":"Mw==","mod_revision":"10"}}]}}"#,
        )
        .expect("events");
        assert_eq!(events.len(), 2);
        assert!(events[0].deleted && events[0].kv.key == "/k1" && events[0].kv.mod_revision == 9);
        assert!(!events[1].deleted && events[1].kv.value == "3");
    }
}
