//! A pool: named backends, the selector over them, and the upstream connection pool.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::HeaderValue;

use super::connection::ConnectionPool;
use super::select::{self, PickContext, Select};
use super::sticky::Sticky;
use super::{Backend, HashKey, RequestView};
use crate::config::{Algorithm, PoolConfig, Timeouts};

/// A named group of backends and how to choose among them. Immutable once built.
#[derive(Debug)]
pub struct Pool {
    name: String,
    algorithm: Algorithm,
    backends: Vec<Arc<Backend>>,
    selector: Box<dyn Select>,
    hash_key: Option<HashKey>,
    sticky: Option<Sticky>,
    timeouts: Timeouts,
    ewma_decay: Duration,
    /// `connections[i]` holds the idle keep-alive connections to `backends[i]`.
    connections: Vec<Arc<ConnectionPool>>,
}

/// The outcome of a pick.
#[derive(Debug)]
pub struct Picked<'a> {
    /// Index of the backend in the pool.
    pub index: usize,
    /// The backend.
    pub backend: &'a Arc<Backend>,
    /// A sticky-session cookie to set on the response, when the client had none for it.
    pub set_cookie: Option<&'a HeaderValue>,
}

impl Pool {
    /// Builds the pool, its selector and its upstream client. Must run inside a tokio runtime.
    pub fn new(config: &PoolConfig) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.address, b.weight)))
            .collect();
        let connections: Vec<Arc<ConnectionPool>> = backends
            .iter()
            .map(|b| {
                Arc::new(ConnectionPool::new(
                    b.address(),
                    config.timeouts.connect,
                    config.timeouts.idle,
                ))
            })
            .collect();
        spawn_idle_sweeper(&connections, config.timeouts.idle);
        Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            selector: select::build(config.algorithm, &backends, &config.select),
            sticky: config.sticky.as_ref().map(|s| Sticky::new(s, &backends)),
            backends,
            hash_key: config.hash_key.clone(),
            timeouts: config.timeouts,
            ewma_decay: config.ewma_decay,
            connections,
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// All its backends, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Its timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The peak-EWMA decay window for latency observations.
    pub fn ewma_decay(&self) -> Duration {
        self.ewma_decay
    }

    /// The keep-alive connections to backend `index`.
    pub fn connections(&self, index: usize) -> Option<&Arc<ConnectionPool>> {
        self.connections.get(index)
    }

    /// Chooses the backend for `req`, never one of `exclude` (indices of backends already
    /// tried). A valid sticky cookie wins over the algorithm; otherwise the algorithm picks
    /// and, in a sticky pool, the response must set the returned cookie.
    pub fn pick(&self, req: &RequestView, exclude: &[usize]) -> Option<Picked<'_>> {
        let ctx = PickContext {
            hash: self.hash_key.as_ref().and_then(|k| k.hash(req)),
            exclude,
        };
        if let Some(sticky) = &self.sticky {
            if let Some(index) = sticky.requested(req.headers).filter(|&i| ctx.allows(i)) {
                return Some(Picked {
                    index,
                    backend: &self.backends[index],
                    set_cookie: None,
                });
            }
        }
        let index = self.selector.pick(&self.backends, &ctx)?;
        Some(Picked {
            index,
            backend: self.backends.get(index)?,
            set_cookie: self.sticky.as_ref().and_then(|s| s.set_cookie(index)),
        })
    }
}

/// Closes idle connections past their idle timeout, about twice per timeout, until the pool is
/// dropped.
fn spawn_idle_sweeper(connections: &[Arc<ConnectionPool>], idle: Duration) {
    let weak: Vec<Weak<ConnectionPool>> = connections.iter().map(Arc::downgrade).collect();
    let period = (idle / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut alive = false;
            for pool in weak.iter().filter_map(Weak::upgrade) {
                pool.sweep();
                alive = true;
            }
            if !alive {
                return;
            }
        }
    });
}
