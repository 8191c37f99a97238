//! What outlives a reload: the same pool and address keep the same [`Backend`] (health,
//! in-flight counts, latency figures) and the same idle upstream connections, and each pool
//! name keeps its own figures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use super::connect::Connector;
use super::connection::ConnectionPool;
use super::idle::IdleConnections;
use super::retry_budget::RetryBudget;
use super::Backend;
use crate::config::{PoolConfig, UpstreamProtocol};
use crate::stats::StatusCounts;

/// Every live backend by (pool name, address), with its connections. Used only while building
/// pools, off the hot path; entries whose backend is gone are pruned as pools are built.
#[derive(Debug)]
pub struct BackendRegistry {
    /// Worker threads: idle connections are kept per worker.
    workers: usize,
    backends: Mutex<HashMap<Key, Entry>>,
    /// Figures of each pool name ever configured, kept across reloads (a handful of counters
    /// per name).
    pools: Mutex<HashMap<String, Arc<PoolStats>>>,
}

/// A backend is the same across configs when its pool, address and way of talking to it
/// (protocol, TLS or not) are: a pooled plain connection must never serve a TLS pool.
type Key = (String, SocketAddr, UpstreamProtocol, bool);

#[derive(Debug)]
struct Entry {
    connector: Weak<Connector>,
    backend: Weak<Backend>,
    idle: Weak<IdleConnections>,
    connections: Weak<ConnectionPool>,
}

/// A backend with its pooled connections, shared by every build of its pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// How it is reached.
    pub connector: Arc<Connector>,
    /// The backend and its live figures.
    pub backend: Arc<Backend>,
    /// Idle connections of the HTTP/1 engine.
    pub idle: Arc<IdleConnections>,
    /// Idle connections of hyper's client (requests that arrived over HTTP/2).
    pub connections: Arc<ConnectionPool>,
}

/// A pool's own figures, which outlive any one build of the pool.
#[derive(Debug)]
pub struct PoolStats {
    /// Responses Steelyard wrote itself for requests routed to the pool (502, 503, 504...).
    pub local_responses: StatusCounts,
    /// The retry budget and its counters: a reload neither refills nor resets it.
    pub retry_budget: RetryBudget,
}

impl PoolStats {
    fn new(retry_percent: u32) -> PoolStats {
        PoolStats {
            local_responses: StatusCounts::default(),
            retry_budget: RetryBudget::new(retry_percent),
        }
    }
}

impl BackendRegistry {
    /// An empty registry for a server with `workers` worker threads.
    pub fn new(workers: usize) -> BackendRegistry {
        BackendRegistry {
            workers: workers.max(1),
            backends: Mutex::default(),
            pools: Mutex::default(),
        }
    }

    /// The figures of the pool named `pool`, the same object across reloads (created with a
    /// retry budget of `retry_percent` the first time).
    pub fn pool_stats(&self, pool: &str, retry_percent: u32) -> Arc<PoolStats> {
        let mut map = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            map.entry(pool.to_owned())
                .or_insert_with(|| Arc::new(PoolStats::new(retry_percent))),
        )
    }

    /// True when `pool` has live backends: it is being rebuilt by a reload.
    pub fn has_pool(&self, pool: &str) -> bool {
        let map = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter().any(|((p, ..), e)| p == pool && e.backend.strong_count() > 0)
    }

    /// The live backend of pool `config` at `address` with its connections, or a new one
    /// (with `weight` and the pool's timeouts); the flag says whether it is new. Nothing about
    /// an existing backend changes here: a reload that fails later must leave it as it was.
    pub fn get_or_create(&self, config: &PoolConfig, address: SocketAddr, weight: u32) -> (Upstream, bool) {
        let mut map = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, e| e.backend.strong_count() > 0);
        let key = (config.name.clone(), address, config.protocol, config.tls.is_some());
        if let Some(e) = map.get(&key) {
            if let (Some(connector), Some(backend), Some(idle), Some(connections)) = (
                e.connector.upgrade(),
                e.backend.upgrade(),
                e.idle.upgrade(),
                e.connections.upgrade(),
            ) {
                return (
                    Upstream {
                        connector,
                        backend,
                        idle,
                        connections,
                    },
                    false,
                );
            }
        }
        let (connect, idle) = (config.timeouts.connect, config.timeouts.idle);
        let connector = Arc::new(Connector::new(address, config.protocol));
        let upstream = Upstream {
            backend: Arc::new(Backend::for_workers(address, weight, self.workers)),
            idle: Arc::new(IdleConnections::new(connect, idle, self.workers)),
            connections: Arc::new(ConnectionPool::new(Arc::clone(&connector), connect, idle, self.workers)),
            connector,
        };
        map.insert(
            key,
            Entry {
                connector: Arc::downgrade(&upstream.connector),
                backend: Arc::downgrade(&upstream.backend),
                idle: Arc::downgrade(&upstream.idle),
                connections: Arc::downgrade(&upstream.connections),
            },
        );
        (upstream, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> PoolConfig {
        let mut config = crate::config::Config::original_demo().pools.remove(0);
        config.name = name.into();
        config
    }

    #[test]
    fn a_live_backend_is_shared_unchanged_and_a_dropped_one_is_new() {
        let registry = BackendRegistry::new(1);
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let web = pool("web");
        let (a, new_a) = registry.get_or_create(&web, addr, 1);
        let (b, new_b) = registry.get_or_create(&web, addr, 3);
        assert!(new_a && !new_b);
        assert!(Arc::ptr_eq(&a.backend, &b.backend) && Arc::ptr_eq(&a.idle, &b.idle));
        assert_eq!(
            a.backend.weight(),
            1,
            "the weight changes only when the new pool starts"
        );
        let (other_pool, new_other) = registry.get_or_create(&pool("api"), addr, 1);
        assert!(new_other && !Arc::ptr_eq(&a.backend, &other_pool.backend));
        let mut h2c = pool("web");
        h2c.protocol = UpstreamProtocol::H2c;
        let (other_protocol, new_protocol) = registry.get_or_create(&h2c, addr, 1);
        assert!(new_protocol && !Arc::ptr_eq(&a.idle, &other_protocol.idle));
        drop((a, b));
        assert!(
            registry.get_or_create(&web, addr, 1).1,
            "dropped backends are not revived"
        );
    }
}
