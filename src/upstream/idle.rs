//! Idle HTTP/1.1 keep-alive connections to one backend, for the HTTP/1 engine.
//!
//! An idle connection is just its socket in a per-worker lock-free queue: no task, no buffer
//! (nginx keeps its upstream keep-alive connections the same way). A request pops one, checks
//! that the backend has not closed it (readiness the reactor already recorded: no syscall in
//! the common case), and pushes it back once its response ended exactly. A periodic sweep
//! closes connections idle past the pool's idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::backend::clock_nanos;
use crate::stream::UpstreamIo;

/// Most idle connections kept per backend and worker; beyond it, released ones are closed.
pub const MAX_IDLE_PER_WORKER: usize = 128;

/// A backend's connect and idle timeouts, which a reload may change while its connections
/// stay pooled.
#[derive(Debug)]
pub struct UpstreamTimeouts {
    connect_nanos: AtomicU64,
    idle_nanos: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl UpstreamTimeouts {
    /// These timeouts.
    pub fn new(connect: Duration, idle: Duration) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect_nanos: AtomicU64::new(nanos(connect)),
            idle_nanos: AtomicU64::new(nanos(idle)),
        }
    }

    /// Replaces both (on reload).
    pub fn set(&self, connect: Duration, idle: Duration) {
        self.connect_nanos.store(nanos(connect), Ordering::Relaxed);
        self.idle_nanos.store(nanos(idle), Ordering::Relaxed);
    }

    /// Time allowed to connect.
    pub fn connect(&self) -> Duration {
        Duration::from_nanos(self.connect_nanos.load(Ordering::Relaxed))
    }

    /// How long a connection may stay idle, in nanoseconds.
    pub fn idle_nanos(&self) -> u64 {
        self.idle_nanos.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Idle {
    stream: UpstreamIo,
    since: u64,
}

/// The idle connections to one backend, per worker.
#[derive(Debug)]
pub struct IdleConnections {
    /// Its timeouts (a reload may change them).
    pub timeouts: UpstreamTimeouts,
    queues: Vec<ArrayQueue<Idle>>,
}

impl IdleConnections {
    /// None yet, for one backend (which its [`super::connect::Connector`] reaches).
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, workers: usize) -> IdleConnections {
        IdleConnections {
            timeouts: UpstreamTimeouts::new(connect_timeout, idle_timeout),
            queues: (0..workers.max(1))
                .map(|_| ArrayQueue::new(MAX_IDLE_PER_WORKER))
                .collect(),
        }
    }

    /// Worker `worker`'s queue.
    fn local(&self, worker: usize) -> &ArrayQueue<Idle> {
        &self.queues[worker % self.queues.len()]
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.timeouts.connect()
    }

    /// Connections waiting for a request, over all workers.
    pub fn idle_count(&self) -> usize {
        self.queues.iter().map(ArrayQueue::len).sum()
    }

    /// An idle connection of this worker that the backend has not closed, if any; `now` is
    /// [`clock_nanos`] time.
    pub fn checkout(&self, worker: usize, now: u64) -> Option<UpstreamIo> {
        while let Some(mut idle) = self.local(worker).pop() {
            if now.saturating_sub(idle.since) > self.timeouts.idle_nanos() {
                continue;
            }
            // Closed by the backend (or it sent something unasked): not usable.
            if idle.stream.is_quiet() {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request of this worker. Call only when its last response
    /// ended exactly and nothing more was read.
    pub fn checkin(&self, worker: usize, stream: UpstreamIo, now: u64) {
        let _ = self.local(worker).push(Idle { stream, since: now });
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        for queue in &self.queues {
            while queue.pop().is_some() {}
        }
    }

    /// Closes connections idle past the idle timeout.
    pub fn sweep(&self) {
        let now = clock_nanos();
        for queue in &self.queues {
            for _ in 0..queue.len() {
                let Some(idle) = queue.pop() else { break };
                if now.saturating_sub(idle.since) <= self.timeouts.idle_nanos() {
                    let _ = queue.push(idle);
                }
            }
        }
    }
}
