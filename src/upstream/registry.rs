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
use crate::config::{PoolConfig, RedisConfig, UpstreamProtocol};
use crate::fleet::rate_limit::RateLimiter;
use crate::fleet::redis_limit::RedisClient;
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
    /// Each pool's rate limiter, kept while its settings (and the Redis it counts in) stay
    /// the same, so that a reload does not hand every client a fresh bucket.
    limiters: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// The client of the config's `[redis]`, kept while its settings stay the same.
    redis: Mutex<Option<Arc<RedisClient>>>,
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
            limiters: Mutex::default(),
            redis: Mutex::default(),
        }
    }

    /// The Redis client for `config` (the same one while the settings stay the same), or
    /// none; an invalid URL is an error for the reload to report.
    pub fn redis(&self, config: Option<&RedisConfig>) -> Result<Option<Arc<RedisClient>>, String> {
        let mut current = self.redis.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(config) = config else {
            return Ok(None);
        };
        if let Some(c) = current.as_ref().filter(|c| c.config() == config) {
            return Ok(Some(Arc::clone(c)));
        }
        let client = Arc::new(RedisClient::new(config).map_err(|e| format!("redis.url: {e}"))?);
        *current = Some(Arc::clone(&client));
        Ok(Some(client))
    }

    /// Pool `config`'s rate limiter: the one it had while its settings and Redis client are
    /// the same, else a new one.
    pub fn rate_limiter(&self, config: &PoolConfig, redis: Option<&Arc<RedisClient>>) -> Option<Arc<RateLimiter>> {
        let wanted = config.rate_limit.as_ref()?;
        let mut map = self.limiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(l) = map.get(&config.name) {
            if l.config() == wanted && l.uses(redis) {
                return Some(Arc::clone(l));
            }
        }
        let limiter = Arc::new(RateLimiter::new(&config.name, wanted, redis));
        map.insert(config.name.clone(), Arc::clone(&limiter));
        Some(limiter)
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
