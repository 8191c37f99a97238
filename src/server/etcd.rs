//! The config kept in etcd: `--config etcd://HOST:PORT/KEY` loads the TOML document stored
//! under KEY, then watches the key and applies each new revision through the same validated,
//! transactional reload as a file (an invalid revision is logged with its revision number and
//! `line:column`, and the running config stays).
//!
//! It speaks etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/watch`) over HTTP/1.1, which every
//! etcd since 3.4 serves on its client port: no gRPC stubs, so no `protoc` at build time. When
//! the watch breaks (etcd restarting, a compacted revision), it reads the key again after a
//! short pause and watches on from there; revisions already applied are not applied twice.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::dns::System;
use super::ReloadHandle;
use crate::config::Config;

/// Where the config lives: `etcd://HOST:PORT/KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSource {
    /// `HOST:PORT` of an etcd client endpoint.
    pub endpoint: String,
    /// The key holding the TOML document.
    pub key: String,
}

/// Why the config could not be read from etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd could not be reached or answered something else than the gateway's JSON.
    #[error("etcd at {endpoint}: {why}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        why: String,
    },
    /// The key does not exist.
    #[error(
        "etcd at {endpoint}: no key {key:?}; put the config there first (etcdctl put {key} \"$(cat steelyard.toml)\")"
    )]
    Missing {
        /// The endpoint.
        endpoint: String,
        /// The key.
        key: String,
    },
    /// The document under the key is not a valid config.
    #[error("{0}")]
    Invalid(String),
}

/// One revision of the key.
#[derive(Debug)]
struct Revision {
    /// The key's `mod_revision`.
    number: i64,
    /// The store's revision when it was read (the watch starts after it).
    store: i64,
    text: String,
}

impl EtcdSource {
    /// Parses `etcd://HOST:PORT/KEY`; `None` when `s` is not an etcd URL.
    pub fn parse(s: &str) -> Option<Result<EtcdSource, String>> {
        let rest = s.strip_prefix("etcd://")?;
        Some(match rest.split_once('/') {
            Some((endpoint, key)) if !endpoint.is_empty() && !key.is_empty() => Ok(EtcdSource {
                endpoint: endpoint.to_owned(),
                key: format!("/{key}"),
            }),
            _ => Err(format!("{s:?} is not etcd://HOST:PORT/KEY")),
        })
    }

    /// The URL it was given as.
    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoint, self.key)
    }

    /// Reads and validates the config at the key, returning it with the revision to watch
    /// from.
    pub async fn load(&self) -> Result<(Config, i64), EtcdError> {
        let rev = self.read().await?;
        let config = self.parse_revision(&rev).map_err(EtcdError::Invalid)?;
        Ok((config, rev.number))
    }

    fn parse_revision(&self, rev: &Revision) -> Result<Config, String> {
        let name = format!("{}@{}", self.url(), rev.number);
        Config::from_toml(&rev.text, &name, &System).map_err(|e| e.to_string())
    }

    async fn read(&self) -> Result<Revision, EtcdError> {
        let reply = self
            .post("/v3/kv/range", json!({ "key": b64(&self.key) }))
            .await
            .map_err(|why| self.unreachable(why))?;
        let store = int(&reply["header"]["revision"]);
        let Some(kv) = reply["kvs"].as_array().and_then(|k| k.first()) else {
            return Err(EtcdError::Missing {
                endpoint: self.endpoint.clone(),
                key: self.key.clone(),
            });
        };
        Ok(Revision {
            number: int(&kv["mod_revision"]),
            store,
            text: unb64(kv["value"].as_str().unwrap_or("")).map_err(|why| self.unreachable(why))?,
        })
    }

    fn unreachable(&self, why: String) -> EtcdError {
        EtcdError::Unreachable {
            endpoint: self.endpoint.clone(),
            why,
        }
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

    async fn send(&self, path: &str, body: Value) -> Result<http::Response<hyper::body::Incoming>, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(self.endpoint.as_str()))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let req = http::Request::post(path)
            .header(http::header::HOST, self.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Watches the key forever from after revision `applied`, applying each new revision
    /// through `reload` after `adjust` (the command line's overrides) has been applied to it.
    pub async fn watch(self, mut applied: i64, reload: ReloadHandle, adjust: impl Fn(&mut Config) + Send) {
        let mut pause = Duration::from_millis(200);
        loop {
            match self.watch_once(&mut applied, &reload, &adjust).await {
                Ok(()) => pause = Duration::from_millis(200),
                Err(why) => {
                    tracing::warn!(source = %self.url(), "etcd watch broken: {why}; reading the key again in {pause:?}");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Catches up with the key, then applies its changes until the watch ends.
    async fn watch_once(
        &self,
        applied: &mut i64,
        reload: &ReloadHandle,
        adjust: &impl Fn(&mut Config),
    ) -> Result<(), String> {
        let current = match self.read().await {
            Ok(rev) => rev,
            Err(EtcdError::Missing { .. }) => return Err("the key is gone; the running config stays".into()),
            Err(e) => return Err(e.to_string()),
        };
        let from = current.store + 1;
        if current.number > *applied {
            self.apply(current, applied, reload, adjust).await;
        }
        let create = json!({ "create_request": { "key": b64(&self.key), "start_revision": from.to_string() } });
        let res = self.send("/v3/watch", create).await?;
        if !res.status().is_success() {
            return Err(format!("watch refused: {}", res.status()));
        }
        let mut body = res.into_body();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                None => return Err("etcd closed the watch".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let message: Value = serde_json::from_slice(&line).map_err(|e| format!("bad watch message: {e}"))?;
                if message.get("error").is_some() {
                    return Err(format!("etcd ended the watch: {}", message["error"]));
                }
                let result = &message["result"];
                if result["canceled"].as_bool() == Some(true) {
                    return Err("etcd cancelled the watch (compacted)".into());
                }
                for event in result["events"].as_array().into_iter().flatten() {
                    let number = int(&event["kv"]["mod_revision"]);
                    if event["type"].as_str() == Some("DELETE") {
                        tracing::warn!(source = %self.url(), revision = number, "the config key was deleted; the running config stays");
                        continue;
                    }
                    let text = unb64(event["kv"]["value"].as_str().unwrap_or(""))?;
                    if number > *applied {
                        let rev = Revision {
                            number,
                            store: number,
                            text,
                        };
                        self.apply(rev, applied, reload, adjust).await;
                    }
                }
            }
        }
    }

    /// Validates and applies one revision; an invalid one is logged and skipped.
    async fn apply(&self, rev: Revision, applied: &mut i64, reload: &ReloadHandle, adjust: &impl Fn(&mut Config)) {
        *applied = rev.number;
        match self.parse_revision(&rev) {
            Err(errors) => {
                tracing::error!(source = %self.url(), revision = rev.number, "etcd revision {} is not a valid config; the running config stays:\n{errors}", rev.number)
            }
            Ok(mut config) => {
                adjust(&mut config);
                match reload.apply(config).await {
                    Ok(_) => {
                        tracing::info!(source = %self.url(), revision = rev.number, "applied etcd revision {}", rev.number)
                    }
                    Err(e) => {
                        tracing::error!(source = %self.url(), revision = rev.number, "etcd revision {} not applied: {e}; the running config stays", rev.number)
                    }
                }
            }
        }
    }
}

/// Longest wait for one request to etcd (not the watch, which stays open).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(s: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64 from etcd: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the config is not UTF-8".to_owned())
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
    fn urls_parse() {
        assert_eq!(
            EtcdSource::parse("etcd://127.0.0.1:2379/steelyard/config"),
            Some(Ok(EtcdSource {
                endpoint: "127.0.0.1:2379".into(),
                key: "/steelyard/config".into()
            }))
        );
        assert!(EtcdSource::parse("etcd://127.0.0.1:2379").expect("etcd").is_err());
        assert_eq!(EtcdSource::parse("/etc/steelyard.toml"), None);
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(unb64(&b64("a = 1")).as_deref(), Ok("a = 1"));
    }
}
