//! A pool: named backends, the selector over them, and the upstream connection pool.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::select::{self, Select};
use super::Backend;
use crate::config::{Algorithm, PoolConfig, Timeouts};

/// HTTP client with pooled keep-alive connections to the pool's backends.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

/// A named group of backends and how to choose among them. Immutable once built.
#[derive(Debug)]
pub struct Pool {
    name: String,
    algorithm: Algorithm,
    backends: Vec<Arc<Backend>>,
    selector: Box<dyn Select>,
    timeouts: Timeouts,
    client: UpstreamClient,
}

impl Pool {
    /// Builds the pool, its selector and its upstream client. Must run inside a tokio runtime.
    pub fn new(config: &PoolConfig) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.address, b.weight)))
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeouts.connect));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.timeouts.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .retry_canceled_requests(false)
            .build(connector);
        Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            selector: select::build(config.algorithm, &backends),
            backends,
            timeouts: config.timeouts,
            client,
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

    /// The client holding pooled connections to its backends.
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Chooses the backend for the next request.
    pub fn pick(&self) -> Option<&Arc<Backend>> {
        self.selector.pick(&self.backends).and_then(|i| self.backends.get(i))
    }
}
