//! The timeline operators read on the dashboard: health transitions, ejections, drains,
//! reloads with their outcome, upgrades, start and stop. Process-wide (one process is one
//! server) and bounded: the last [`CAPACITY`] events. Recording takes a lock, so it is only
//! ever done off the request path, where something changed state.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many events are kept.
pub const CAPACITY: usize = 200;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The server started serving.
    Start,
    /// An active health check changed a backend's state.
    Health,
    /// Passive health ejected a backend.
    Ejection,
    /// An operator drained or re-enabled a backend.
    Drain,
    /// A config reload, applied or refused.
    Reload,
    /// A binary upgrade started, succeeded or failed.
    Upgrade,
    /// The server stopped accepting to shut down.
    Shutdown,
    /// A pool's discovered backends changed, or its source stopped or started answering.
    Discovery,
}

impl Kind {
    /// Its name in the status API.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Start => "start",
            Kind::Health => "health",
            Kind::Ejection => "ejection",
            Kind::Drain => "drain",
            Kind::Reload => "reload",
            Kind::Upgrade => "upgrade",
            Kind::Shutdown => "shutdown",
            Kind::Discovery => "discovery",
        }
    }
}

/// How much it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Routine.
    Info,
    /// Capacity was lost or something was refused.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// Its name in the status API.
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Its number: events are numbered 1, 2, 3... in the order they happened, across a
    /// binary upgrade too, so a client can ask for those after the last it saw.
    #[serde(default)]
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What kind.
    pub kind: Kind,
    /// How much it matters.
    pub level: Level,
    /// The pool it concerns, if one.
    pub pool: Option<String>,
    /// The backend it concerns, if one.
    pub backend: Option<SocketAddr>,
    /// What happened, in a sentence.
    pub message: String,
}

static LOG: Mutex<Log> = Mutex::new(Log {
    events: VecDeque::new(),
    last_seq: 0,
});

/// The kept events and the number of the newest ever recorded.
struct Log {
    events: VecDeque<Event>,
    last_seq: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Records an event about the server as a whole.
pub fn record(kind: Kind, level: Level, message: impl Into<String>) {
    push(Event {
        seq: 0,
        unix_ms: unix_ms(),
        kind,
        level,
        pool: None,
        backend: None,
        message: message.into(),
    });
}

/// Records an event about `backend` of `pool`.
pub fn record_backend(kind: Kind, level: Level, pool: &str, backend: SocketAddr, message: impl Into<String>) {
    push(Event {
        seq: 0,
        unix_ms: unix_ms(),
        kind,
        level,
        pool: Some(pool.to_owned()),
        backend: Some(backend),
        message: message.into(),
    });
}

fn push(mut event: Event) {
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    log.last_seq += 1;
    event.seq = log.last_seq;
    if log.events.len() == CAPACITY {
        log.events.pop_front();
    }
    log.events.push_back(event);
}

/// Puts a predecessor process's `events` (oldest first) before this process's own, keeping
/// the newest [`CAPACITY`]; this process's events are numbered on from the predecessor's.
pub fn restore(events: Vec<Event>) {
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let mut seq = events.iter().map(|e| e.seq).max().unwrap_or(0);
    let own = std::mem::take(&mut log.events);
    log.events.extend(events);
    for mut e in own {
        seq += 1;
        e.seq = seq;
        log.events.push_back(e);
    }
    log.last_seq = log.last_seq.max(seq);
    while log.events.len() > CAPACITY {
        log.events.pop_front();
    }
}

/// The events kept, oldest first.
pub fn recent() -> Vec<Event> {
    since(0)
}

/// The number of the newest event recorded (0: none yet).
pub fn last_seq() -> u64 {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).last_seq
}

/// The events kept whose number is above `seq`, oldest first.
pub fn since(seq: u64) -> Vec<Event> {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    log.events.iter().filter(|e| e.seq > seq).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_events_in_order() {
        for i in 0..CAPACITY + 5 {
            record(Kind::Reload, Level::Info, format!("event-test {i}"));
        }
        let ours: Vec<String> = recent()
            .into_iter()
            .filter(|e| e.message.starts_with("event-test "))
            .map(|e| e.message)
            .collect();
        // Other tests in this process may record too; ours are the newest and in order.
        assert!(ours.len() <= CAPACITY);
        assert_eq!(ours.last().map(String::as_str), Some("event-test 204"));
        let numbers: Vec<usize> = ours.iter().filter_map(|m| m[11..].parse().ok()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(!ours.iter().any(|m| m == "event-test 0"));
    }

    #[test]
    fn events_are_numbered_in_order_and_can_be_asked_for_after_a_number() {
        record(Kind::Reload, Level::Info, "seq-test a");
        record(Kind::Reload, Level::Info, "seq-test b");
        let ours: Vec<Event> = recent()
            .into_iter()
            .filter(|e| e.message.starts_with("seq-test "))
            .collect();
        assert_eq!(ours.len(), 2);
        assert!(ours[0].seq < ours[1].seq);
        let after: Vec<String> = since(ours[0].seq)
            .into_iter()
            .filter(|e| e.message.starts_with("seq-test "))
            .map(|e| e.message)
            .collect();
        assert_eq!(after, ["seq-test b"]);
    }
}
