//! The server: binds listeners, builds the runtime state, serves until shutdown, reloads its
//! config on request without dropping anything, then drains.

pub mod dns;
pub mod listener;
mod reload;
pub mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::admin::{AdminState, AdminView};
use crate::config::{self, Config, ListenerConfig};
use crate::http1::connection::{Registry, Shared};
use crate::proxy::access_log::{AccessLog, AccessLogConfig};
use crate::proxy::Router;
use crate::upstream::registry::BackendRegistry;
use crate::upstream::Pool;
pub use reload::{ReloadError, ReloadHandle};

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
    /// An access log file could not be opened.
    #[error("cannot open access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A server whose listeners are bound (so their ports are known) but not yet serving.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
    reloads: mpsc::Receiver<reload::Command>,
    reload_handle: ReloadHandle,
}

/// A listener that is accepting.
struct RunningListener {
    config: ListenerConfig,
    /// The address it is bound to.
    addr: SocketAddr,
    router: Arc<ArcSwap<Router>>,
    limit: Arc<listener::ConnectionLimit>,
    /// Its open HTTP/1 connections, closed when idle at shutdown.
    registry: Arc<Registry>,
    /// Set to stop accepting and drain this listener's connections.
    stop: watch::Sender<bool>,
}

impl RunningListener {
    /// Stops accepting; idle connections close now, busy ones after their request.
    fn stop(&self) {
        let _ = self.stop.send(true);
        self.registry.stop();
    }
}

/// Everything a serving server holds; replaced piece by piece on reload.
struct Running {
    config: Config,
    registry: BackendRegistry,
    /// Each accept loop and connection holds a clone; when all are gone, draining is done.
    active: mpsc::Sender<()>,
    listeners: Vec<RunningListener>,
    pools: Vec<Arc<Pool>>,
    admin: Option<Arc<AdminState>>,
    /// The worker runtimes every listener accepts on.
    workers: workers::Workers,
    /// Open access log writers, reused across reloads while their settings stay the same.
    access_logs: HashMap<AccessLogConfig, AccessLog>,
}

impl Server {
    /// Binds every listener of `config`. Port 0 picks a free port; see [`Server::local_addrs`].
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let listeners = config
            .listeners
            .iter()
            .map(|l| Ok((l.clone(), listener::bind(l.listen, config.workers.unwrap_or(1) > 1)?)))
            .collect::<Result<Vec<_>, StartError>>()?;
        let admin = match &config.admin {
            None => None,
            Some(a) => match listener::bind(a.listen, false) {
                Ok(socket) => Some(socket),
                Err(e) if !a.explicit => {
                    tracing::warn!("admin API not started: {e}; set [admin] listen (or --admin) to another address");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let (tx, reloads) = mpsc::channel(8);
        Ok(Server {
            config,
            listeners,
            admin,
            reloads,
            reload_handle: ReloadHandle::new(tx),
        })
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|(l, sock)| sock.local_addr().unwrap_or(l.listen))
            .collect()
    }

    /// The bound address of the admin listener, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// A handle that asks the running server to reload its config.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload_handle.clone()
    }

    /// Serves until `shutdown` completes, reloading whenever asked through a
    /// [`ReloadHandle`]; then stops accepting and waits for in-flight requests to finish, at
    /// most the configured drain timeout.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let (active, mut drained) = mpsc::channel::<()>(1);
        let workers = workers::Workers::start(self.config.workers.unwrap_or(1)).map_err(|source| StartError::Bind {
            addr: self
                .config
                .listeners
                .first()
                .map_or(config::DEFAULT_ADMIN_LISTEN, |l| l.listen),
            source,
        })?;
        let mut running = Running {
            workers,
            registry: BackendRegistry::new(),
            active,
            listeners: Vec::new(),
            pools: Vec::new(),
            admin: None,
            access_logs: HashMap::new(),
            config: self.config.clone(),
        };
        running.pools = running.build_pools(&self.config);
        for (config, socket) in self.listeners {
            running.start_listener(config, socket)?;
        }
        let (admin_stop, admin_stopped) = watch::channel(false);
        if let (Some(socket), Some(admin)) = (self.admin, &self.config.admin) {
            let addr = socket.local_addr().unwrap_or(admin.listen);
            let socket =
                tokio::net::TcpListener::from_std(socket).map_err(|source| StartError::Bind { addr, source })?;
            let state = AdminState::new(crate::admin::Access::of(admin), self.reload_handle.clone());
            tracing::info!("admin API and dashboard on http://{addr}/");
            tokio::spawn(crate::admin::serve(socket, Arc::clone(&state), admin_stopped));
            running.admin = Some(state);
        }
        running.publish();
        tokio::pin!(shutdown);
        let mut dns_tick = dns_ticker(&running.config);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(command) = self.reloads.recv() => {
                    running.handle(command);
                    dns_tick = dns_ticker(&running.config);
                }
                Some(()) = tick(&mut dns_tick) => running.refresh_dns().await,
            }
        }

        let _ = admin_stop.send(true);
        let drain = running.config.drain_timeout;
        tracing::info!("shutting down: no longer accepting; draining in-flight requests for up to {drain:?}");
        for l in &running.listeners {
            l.stop();
        }
        let Running {
            active,
            listeners,
            workers,
            ..
        } = running;
        drop(active);
        let waiting = async {
            drained.recv().await;
            drop(listeners);
        };
        match tokio::time::timeout(drain, waiting).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!("drain timeout of {drain:?} reached; closing remaining connections"),
        }
        // Worker runtimes stop only now, after their connections drained (or the time ran out).
        drop(workers);
        Ok(())
    }
}

/// A timer for DNS refreshes, when the config names backends by host name.
fn dns_ticker(config: &Config) -> Option<tokio::time::Interval> {
    let (_, refresh) = dns::names(config);
    refresh.map(|period| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    })
}

/// The next tick of an optional timer (never, without one).
async fn tick(timer: &mut Option<tokio::time::Interval>) -> Option<()> {
    match timer {
        Some(t) => {
            t.tick().await;
            Some(())
        }
        None => std::future::pending().await,
    }
}

impl Running {
    /// Resolves host names again and applies the config with their new addresses, if any.
    async fn refresh_dns(&mut self) {
        let (names, _) = dns::names(&self.config);
        let lookups = dns::lookup(&names).await;
        let Some(new) = dns::with_resolved(&self.config, &lookups) else {
            return;
        };
        for (name, addrs) in &lookups {
            tracing::info!(name, addresses = ?addrs, "DNS answer changed; updating backends");
        }
        if let Err(e) = self.apply(new) {
            tracing::error!("applying new DNS answers failed: {e}");
        }
        self.publish();
    }

    /// Shows the current state to the admin API.
    fn publish(&self) {
        let Some(admin) = &self.admin else { return };
        admin.view.store(Arc::new(AdminView {
            config_file: self.config.source.clone(),
            config_hash: self.config.hash,
            listeners: self
                .listeners
                .iter()
                .map(|l| (l.config.name.clone(), l.addr, Arc::clone(&l.limit)))
                .collect(),
            pools: self.pools.clone(),
        }));
    }

    fn build_pools(&self, config: &Config) -> Vec<Arc<Pool>> {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::with_registry(p, &self.registry)))
            .collect();
        for pool in &pools {
            pool.start();
        }
        pools
    }

    /// The router of listener `config` over the current pools, with its access log.
    fn router(&mut self, config: &ListenerConfig) -> Result<Router, StartError> {
        let log = match &config.access_log {
            None => None,
            Some(c) => Some(match self.access_logs.get(c) {
                Some(log) => log.clone(),
                None => {
                    let log = AccessLog::open(c).map_err(|source| StartError::AccessLog {
                        path: c.path.as_ref().map_or("-".into(), |p| p.display().to_string()),
                        source,
                    })?;
                    self.access_logs.insert(c.clone(), log.clone());
                    log
                }
            }),
        };
        Ok(Router::new(config, &self.pools).with_access_log(log))
    }

    /// Starts accepting on an already bound socket.
    fn start_listener(&mut self, config: ListenerConfig, socket: std::net::TcpListener) -> Result<(), StartError> {
        let addr = socket.local_addr().unwrap_or(config.listen);
        let router = self.router(&config)?;
        tracing::info!(listener = %config.name, "listening on http://{addr}, routing {}", router.describe());
        let router = Arc::new(ArcSwap::from_pointee(router));
        let limit = listener::ConnectionLimit::new(
            config
                .max_client_connections
                .unwrap_or_else(listener::default_max_client_connections),
        );
        let registry = Arc::new(Registry::new(Arc::clone(&limit)));
        registry.spawn_sweeper();
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            router: Arc::clone(&router),
            limit: Arc::clone(&limit),
            registry: Arc::clone(&registry),
            stop: stopped.clone(),
            active: self.active.clone(),
        });
        // One socket per worker, all bound to the same address; the first is already bound.
        let mut sockets = vec![socket];
        for _ in 1..self.workers.handles().len() {
            sockets.push(listener::bind(addr, true)?);
        }
        for (worker, socket) in self.workers.handles().iter().zip(sockets) {
            let shared = Arc::clone(&shared);
            let stopped = stopped.clone();
            worker.spawn(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(socket) => listener::accept_loop(socket, shared, stopped).await,
                    Err(e) => tracing::error!("cannot accept on {addr}: {e}"),
                }
            });
        }
        self.listeners.push(RunningListener {
            config,
            addr,
            router,
            limit,
            registry,
            stop,
        });
        Ok(())
    }
}
