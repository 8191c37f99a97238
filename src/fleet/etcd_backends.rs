//! Backends registered in etcd (`discover = { etcd = "etcd://HOST:PORT[,...]/PREFIX/" }`):
//! each key `PREFIX` + `IP:PORT` is a backend, its value (if not empty) the weight. A backend
//! registers itself with a lease it keeps alive (`etcdctl lease grant`, `put --lease`, `lease
//! keep-alive`), so it leaves when it stops or dies: etcd deletes the key when the lease runs
//! out.
//!
//! One task per pool reads the prefix, then watches it from the revision read and keeps the
//! set current, publishing each new set for the control thread (which applies it through the
//! reload path as a set difference, like DNS discovery). When etcd cannot be reached or the
//! watch breaks, the last set stays and the prefix is read again after a pause (200 ms,
//! doubling to 5 s).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use super::discovery_status::DiscoveryStatus;
use super::etcd::{prefix_end, Backoff, Gateway, Kv};
use crate::config::{BackendConfig, MAX_WEIGHT};

/// A pool's registered backends, followed by a task that ends when this is dropped.
pub struct Registered {
    found: watch::Receiver<Option<Vec<BackendConfig>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registered {
    /// Starts following `prefix` at `endpoint` (comma-separated members) for the pool of
    /// `status`; `changed` is notified whenever the set changes.
    pub fn follow(endpoint: &str, prefix: &str, status: Arc<DiscoveryStatus>, changed: Arc<Notify>) -> Registered {
        let (tx, found) = watch::channel(None);
        let follower = Follower {
            status,
            gateway: Gateway::new(endpoint),
            prefix: prefix.to_owned(),
            tx,
            changed,
        };
        Registered {
            found,
            task: tokio::spawn(follower.run()),
        }
    }

    /// The set published since the last call, if it changed (sorted by address).
    pub fn take_changed(&mut self) -> Option<Vec<BackendConfig>> {
        if !self.found.has_changed().unwrap_or(false) {
            return None;
        }
        self.found.borrow_and_update().clone()
    }

    /// Waits until `deadline` at most for the first set (etcd read at start), leaving it for
    /// [`Registered::take_changed`].
    pub async fn first(&mut self, deadline: tokio::time::Instant) {
        let mut peek = self.found.clone();
        let _ = tokio::time::timeout_at(deadline, peek.wait_for(Option::is_some)).await;
    }
}

struct Follower {
    /// The pool's status, which also names the pool and the source for the log.
    status: Arc<DiscoveryStatus>,
    gateway: Gateway,
    prefix: String,
    tx: watch::Sender<Option<Vec<BackendConfig>>>,
    changed: Arc<Notify>,
}

/// Why following the prefix stopped.
enum Ended {
    /// etcd could not be read or watched: the source failed.
    Failed(String),
    /// A watch that etcd had answered ended (a member going away, a compaction): read again,
    /// which says whether the source failed.
    WatchEnded(String),
}

impl Follower {
    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let Err(ended) = self.follow(&mut backoff).await;
            let (pool, source, pause) = (&self.status.pool, &self.status.source, backoff.pause());
            match ended {
                Ended::Failed(why) => {
                    self.status.failed(&why);
                    tracing::warn!(
                        pool = %pool,
                        "etcd discovery at {source}: {why}; keeping the backends found before, reading again in {pause:?}"
                    );
                }
                Ended::WatchEnded(why) => tracing::info!(
                    pool = %pool,
                    "etcd discovery at {source}: the watch ended ({why}); reading the prefix again in {pause:?}"
                ),
            }
            backoff.wait().await;
        }
    }

    /// Reads the prefix, then follows its changes until the watch breaks (with why). The
    /// source counts as answering once a watch is open on it.
    async fn follow(&self, backoff: &mut Backoff) -> Result<std::convert::Infallible, Ended> {
        let end = prefix_end(&self.prefix);
        let range = self
            .gateway
            .range(&self.prefix, Some(&end))
            .await
            .map_err(Ended::Failed)?;
        let mut keys: BTreeMap<String, BackendConfig> = range.kvs.iter().filter_map(|kv| self.backend(kv)).collect();
        self.publish(&keys);
        let mut watch = self
            .gateway
            .watch(&self.prefix, Some(&end), range.store + 1)
            .await
            .map_err(Ended::Failed)?;
        let mut answered = false;
        loop {
            let events = watch.next().await.map_err(|why| match answered {
                true => Ended::WatchEnded(why),
                false => Ended::Failed(why),
            })?;
            answered = true;
            backoff.reset();
            self.status.answered();
            if events.is_empty() {
                continue;
            }
            for event in events {
                keys.remove(&event.kv.key);
                if !event.deleted {
                    keys.extend(self.backend(&event.kv));
                }
            }
            self.publish(&keys);
        }
    }

    /// The backend a key names, or `None` (logged) when the key or value is not one.
    fn backend(&self, kv: &Kv) -> Option<(String, BackendConfig)> {
        let name = kv.key.strip_prefix(&self.prefix).unwrap_or(&kv.key);
        let Ok(address) = name.parse::<SocketAddr>() else {
            tracing::warn!(pool = %self.status.pool, key = %kv.key, "etcd discovery: the key is not {}IP:PORT; skipped", self.prefix);
            return None;
        };
        let value = kv.value.trim();
        let weight = if value.is_empty() {
            1
        } else {
            match value.parse::<u32>() {
                Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
                _ => {
                    tracing::warn!(pool = %self.status.pool, key = %kv.key, value, "etcd discovery: the value is not a weight from 1 to {MAX_WEIGHT} (or empty); skipped");
                    return None;
                }
            }
        };
        let backend = BackendConfig {
            address,
            weight,
            dns_name: None,
            backup: false,
        };
        Some((kv.key.clone(), backend))
    }

    /// Publishes the backends of `keys`, one per address (`[::1]:80` and `[0::1]:80` are one
    /// backend: the first key in key order counts).
    fn publish(&self, keys: &BTreeMap<String, BackendConfig>) {
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(keys.len());
        for (key, backend) in keys {
            if backends.iter().any(|b| b.address == backend.address) {
                tracing::warn!(pool = %self.status.pool, key = %key, "etcd discovery: {} is registered under another key too; skipped", backend.address);
                continue;
            }
            backends.push(backend.clone());
        }
        backends.sort_by_key(|b| b.address);
        let modified = self.tx.send_if_modified(|current| {
            if current.as_ref() == Some(&backends) {
                return false;
            }
            *current = Some(backends);
            true
        });
        if modified {
            self.changed.notify_one();
        }
    }
}
