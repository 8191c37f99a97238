//! The server: binds listeners, builds the runtime state, serves until shutdown, then drains.

pub mod listener;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ListenerConfig};
use crate::proxy::Router;
use crate::upstream::Pool;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A server whose listeners are bound (so their ports are known) but not yet serving.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
}

impl Server {
    /// Binds every listener of `config`. Port 0 picks a free port; see [`Server::local_addrs`].
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let listeners = config
            .listeners
            .iter()
            .map(|l| Ok((l.clone(), listener::bind(l.listen)?)))
            .collect::<Result<Vec<_>, StartError>>()?;
        Ok(Server { config, listeners })
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|(l, sock)| sock.local_addr().unwrap_or(l.listen))
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and waits for in-flight
    /// requests to finish, at most the configured drain timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let pools: Vec<Arc<Pool>> = self.config.pools.iter().map(|p| Arc::new(Pool::new(p))).collect();
        for pool in &pools {
            pool.start();
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every accept loop and connection holds a sender; when all are gone, draining is done.
        let (active_tx, mut active_rx) = mpsc::channel::<()>(1);
        let http = Arc::new(listener::http_builder());
        for (config, socket) in self.listeners {
            let addr = socket.local_addr().unwrap_or(config.listen);
            let socket =
                tokio::net::TcpListener::from_std(socket).map_err(|source| StartError::Bind { addr, source })?;
            let router = Router::new(&config, &pools);
            tracing::info!(listener = %config.name, "listening on http://{addr}, routing {}", router.describe());
            let router = Arc::new(ArcSwap::from_pointee(router));
            let limit = listener::ConnectionLimit::new(config.max_client_connections.unwrap_or(usize::MAX));
            tokio::spawn(listener::accept_loop(
                socket,
                router,
                Arc::clone(&http),
                limit,
                stop_rx.clone(),
                active_tx.clone(),
            ));
        }
        drop(active_tx);

        shutdown.await;
        let drain = self.config.drain_timeout;
        tracing::info!("shutting down: no longer accepting; draining in-flight requests for up to {drain:?}");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(drain, active_rx.recv()).await {
            Ok(_) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!("drain timeout of {drain:?} reached; closing remaining connections"),
        }
        Ok(())
    }
}
