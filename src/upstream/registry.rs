//! Backends shared across config reloads: the same pool and address keep the same
//! [`Backend`], so health, in-flight counts and latency figures survive a reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use super::Backend;
use crate::stats::StatusCounts;

/// Every live backend by (pool name, address). Used only while building pools, off the hot
/// path; entries whose backend is gone are pruned as pools are built.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: Mutex<HashMap<(String, SocketAddr), Weak<Backend>>>,
    /// Figures of each pool name ever configured, kept across reloads (a handful of counters
    /// per name).
    pools: Mutex<HashMap<String, Arc<PoolStats>>>,
}

/// A pool's own figures, which outlive any one build of the pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Responses Steelyard wrote itself for requests routed to the pool (502, 503, 504...).
    pub local_responses: StatusCounts,
}

impl BackendRegistry {
    /// An empty registry.
    pub fn new() -> BackendRegistry {
        BackendRegistry::default()
    }

    /// The figures of the pool named `pool`, the same object across reloads.
    pub fn pool_stats(&self, pool: &str) -> Arc<PoolStats> {
        let mut map = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(map.entry(pool.to_owned()).or_default())
    }

    /// True when `pool` has live backends: it is being rebuilt by a reload.
    pub fn has_pool(&self, pool: &str) -> bool {
        let map = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter().any(|((p, _), b)| p == pool && b.strong_count() > 0)
    }

    /// The live backend of `pool` at `address`, its weight set to `weight`, or a new one;
    /// the flag says whether it is new.
    pub fn get_or_create(&self, pool: &str, address: SocketAddr, weight: u32) -> (Arc<Backend>, bool) {
        let mut map = self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, b| b.strong_count() > 0);
        let key = (pool.to_owned(), address);
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            existing.set_weight(weight);
            return (existing, false);
        }
        let backend = Arc::new(Backend::new(address, weight));
        map.insert(key, Arc::downgrade(&backend));
        (backend, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_backend_is_shared_and_a_dropped_one_is_new() {
        let registry = BackendRegistry::new();
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let (a, new_a) = registry.get_or_create("web", addr, 1);
        let (b, new_b) = registry.get_or_create("web", addr, 3);
        assert!(new_a && !new_b);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.weight(), 3);
        let (other_pool, new_other) = registry.get_or_create("api", addr, 1);
        assert!(new_other && !Arc::ptr_eq(&a, &other_pool));
        drop((a, b));
        assert!(
            registry.get_or_create("web", addr, 1).1,
            "dropped backends are not revived"
        );
    }
}
