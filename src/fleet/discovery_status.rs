//! What a pool's discovery (DNS or etcd) has done: whether its source answers, how often the
//! backends changed, how often asking failed and why, for the admin API, the metrics and the
//! events timeline. Written by the control thread (DNS) or a pool's etcd follower, read by the
//! admin API; never on the request path.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::config::BackendConfig;
use crate::events::{self, Kind, Level};

/// Not asked yet, answering, or failing.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One pool's discovery.
#[derive(Debug)]
pub struct DiscoveryStatus {
    /// The pool.
    pub pool: String,
    /// Where its backends come from, e.g. `etcd://127.0.0.1:2379/web/` or `dns srv
    /// _http._tcp.app.internal.`.
    pub source: String,
    state: AtomicU8,
    updates: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DiscoveryStatus {
    /// A pool's discovery from `source`, not asked yet.
    pub fn new(pool: &str, source: String) -> DiscoveryStatus {
        DiscoveryStatus {
            pool: pool.to_owned(),
            source,
            state: AtomicU8::new(UNKNOWN),
            updates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// The source answered (a lookup, a read or a watch message).
    pub fn answered(&self) {
        if self.state.swap(UP, Ordering::Relaxed) == DOWN {
            events::record(
                Kind::Discovery,
                Level::Info,
                format!("pool {}: {} answers again", self.pool, self.source),
            );
        }
    }

    /// Asking the source failed; the backends found before stay. The first failure after an
    /// answer is an event; the ones after it are counted.
    pub fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why.to_owned());
        }
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            events::record(
                Kind::Discovery,
                Level::Warn,
                format!(
                    "pool {}: {} failed ({why}); keeping the backends found before",
                    self.pool, self.source
                ),
            );
        }
    }

    /// A changed set of backends was applied.
    pub fn updated(&self, backends: &[BackendConfig]) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let list: Vec<String> = backends.iter().map(|b| b.address.to_string()).collect();
        let list = if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        };
        events::record(
            Kind::Discovery,
            Level::Info,
            format!("pool {}: backends from {}: {list}", self.pool, self.source),
        );
    }

    /// Whether the source answered the last time it was asked (false before the first answer).
    pub fn up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// Changed sets applied so far.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Failed attempts to ask the source so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Why the last failed attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}
