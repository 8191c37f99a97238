//! The server: binds listeners, builds the runtime state, serves until shutdown, reloads its
//! config on request without dropping anything, then drains.
//!
//! The thread that calls [`Server::run`] is the control plane: it owns the config, reloads,
//! DNS refreshes, health probes, selection rebuilds and the admin API. Traffic is served only
//! by the worker threads it starts ([`workers`]), which read what the control plane publishes.

pub mod carry;
pub mod dns;
pub mod etcd;
pub mod inherit;
pub mod listener;
pub mod privilege;
mod reload;
pub mod systemd;
pub mod upgrade;
pub mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::admin::{Access, AdminState, AdminView};
use crate::config::{Config, ListenerConfig};
use crate::events::{self, Kind, Level};
use crate::http1::connection::{Registry, Shared};
use crate::proxy::access_log::{AccessLog, AccessLogConfig};
use crate::proxy::Router;
use crate::upstream::registry::BackendRegistry;
use crate::upstream::Pool;
pub use inherit::Inherited;
pub use reload::{ReloadError, ReloadHandle, ReloadSummary};
pub use upgrade::UpgradeError;

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
    /// A listener's certificates could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The worker threads could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// The `[redis]` settings do not make a client.
    #[error("{0}")]
    Redis(String),
    /// `[server] user` could not be taken on.
    #[error("{0}")]
    Privilege(#[from] privilege::PrivilegeError),
}

/// A server whose listeners are bound (so their ports are known) but not yet serving.
#[derive(Debug)]
pub struct Server {
    config: Config,
    /// Each listener's sockets, in config order.
    listeners: Vec<Vec<std::net::TcpListener>>,
    admin: Option<std::net::TcpListener>,
    reloads: mpsc::Receiver<reload::Command>,
    reload_handle: ReloadHandle,
    /// Told once the server serves, when this process replaces another.
    inherited: Inherited,
    /// The binary an upgrade starts: the path this one was started from.
    binary: Option<std::path::PathBuf>,
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
    /// Duplicates of the sockets the workers accept on, to hand to a new process.
    sockets: Vec<std::net::TcpListener>,
}

impl RunningListener {
    /// Stops accepting; idle connections close now, busy ones after their request.
    fn stop(&self) {
        let _ = self.stop.send(true);
        self.registry.stop();
    }

    /// Stops accepting for a successor that now accepts on the same sockets: connections
    /// close after their next response (with `Connection: close`) or after
    /// [`crate::http1::connection::HANDOVER_IDLE`] idle.
    fn hand_over(&self) {
        let _ = self.stop.send(true);
        self.registry.stop_after_next_request();
    }
}

/// The admin listener while it serves.
struct RunningAdmin {
    /// The address configured (what a reload compares).
    listen: SocketAddr,
    /// Set to stop it.
    stop: watch::Sender<bool>,
    /// A duplicate of its socket, to hand to a new process.
    socket: Option<std::net::TcpListener>,
}

/// Everything a serving server holds; replaced as a whole by each reload's commit.
struct Running {
    config: Config,
    /// Pools' backends found in DNS (and when to look again) or registered in etcd.
    discovery: crate::fleet::discovery::Discovery,
    registry: BackendRegistry,
    /// Each accept loop and connection holds a clone; when all are gone, draining is done.
    active: mpsc::Sender<()>,
    listeners: Vec<RunningListener>,
    pools: Vec<Arc<Pool>>,
    /// What the admin API reads; lives as long as the server, whether the admin listener runs.
    admin_state: Arc<AdminState>,
    admin: Option<RunningAdmin>,
    /// The worker runtimes every listener accepts on.
    workers: workers::Workers,
    /// Open access log writers, reused across reloads while their settings stay the same.
    access_logs: HashMap<AccessLogConfig, AccessLog>,
}

impl Server {
    /// Binds every listener of `config`. Port 0 picks a free port; see [`Server::local_addrs`].
    pub fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_inherited(config, Inherited::none())
    }

    /// Like [`Server::bind`], but listeners first take the sockets `inherited` holds for them
    /// (systemd socket activation, or a binary upgrade's predecessor); the rest bind.
    pub fn bind_inherited(config: Config, mut inherited: Inherited) -> Result<Server, StartError> {
        let shared = config.workers.unwrap_or(1) > 1;
        let listeners = config
            .listeners
            .iter()
            .map(|l| match inherited.take(&l.name, l.listen) {
                given if given.is_empty() => Ok(vec![listener::bind(l.listen, shared)?]),
                given => {
                    tracing::info!(listener = %l.name, sockets = given.len(), "listening on sockets handed to this process");
                    Ok(given)
                }
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let admin = match &config.admin {
            None => None,
            Some(a) => match inherited.take_admin(a.listen) {
                Some(socket) => Some(socket),
                None => match listener::bind(a.listen, false) {
                    Ok(socket) => Some(socket),
                    Err(e) if !a.explicit => {
                        tracing::warn!(
                            "admin API not started: {e}; set [admin] listen (or --admin) to another address"
                        );
                        None
                    }
                    Err(e) => return Err(e),
                },
            },
        };
        inherited.close_unused();
        let (tx, reloads) = mpsc::channel(8);
        Ok(Server {
            config,
            listeners,
            admin,
            reloads,
            reload_handle: ReloadHandle::new(tx),
            inherited,
            binary: std::env::current_exe().ok(),
        })
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.config
            .listeners
            .iter()
            .zip(&self.listeners)
            .map(|(l, sockets)| sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or(l.listen))
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
    /// most the configured drain timeout. The calling thread is the control plane's; traffic
    /// runs on worker threads started here.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let (active, mut drained) = mpsc::channel::<()>(1);
        let workers = workers::Workers::start(self.config.workers.unwrap_or(1)).map_err(StartError::Workers)?;
        let access = self.config.admin.as_ref().map(Access::of).unwrap_or_default();
        let mut running = Running {
            registry: BackendRegistry::new(workers.handles().len()),
            workers,
            active,
            listeners: Vec::new(),
            pools: Vec::new(),
            admin_state: AdminState::new(access, self.reload_handle.clone()),
            admin: None,
            access_logs: HashMap::new(),
            config: self.config.clone(),
            discovery: Default::default(),
        };
        // Pools that discover their backends start with what DNS or etcd says (or empty,
        // answering 503, until it answers).
        running.discovery.follow(&self.config);
        running.discovery.first_answers().await;
        running.discovery.refresh_due().await;
        crate::admin::sample_rates(&running.admin_state);
        // Starting is the first reload: the same prepare (everything that can fail) and
        // commit (nothing that can), over the sockets bound by `bind`.
        let sockets = reload::Sockets {
            listeners: self.listeners,
            admin: self.admin,
        };
        let mut staged = running.prepare(self.config.clone(), sockets, true)?;
        // Listeners are bound, logs open and certificates read: root is no longer needed,
        // and no request has been served yet.
        if let Some(run_as) = &self.config.run_as {
            let ids = privilege::become_user(&run_as.user, run_as.group.as_deref())?;
            tracing::info!(uid = ids.uid, gid = ids.gid, "running as user {}", run_as.user);
        }
        staged.carried = self.inherited.take_carried();
        running.commit(staged);
        running.discovery.applied(true);
        events::record(
            Kind::Start,
            Level::Info,
            format!("serving (PID {}): {}", std::process::id(), running.config.summary()),
        );
        if self.inherited.has_predecessor() {
            // The predecessor tells systemd which process is the service's now.
            self.inherited.ready();
        } else {
            systemd::notify("READY=1");
        }
        tokio::pin!(shutdown);
        let mut dns_tick = dns_ticker(&running.config);
        let mut successor = None;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(command) = self.reloads.recv() => {
                    if let reload::Command::Upgrade(reply) = command {
                        events::record(Kind::Upgrade, Level::Info, "upgrade asked: starting the binary again");
                        let started = running.start_successor(self.binary.as_deref()).await;
                        match &started {
                            Ok(pid) => events::record(Kind::Upgrade, Level::Info, format!("upgrade: PID {pid} serves; this process drains")),
                            Err(e) => {
                                tracing::error!("upgrade failed: {e}");
                                events::record(Kind::Upgrade, Level::Error, format!("upgrade failed: {e}"));
                            }
                        }
                        successor = started.as_ref().ok().copied();
                        let _ = reply.send(started);
                        if successor.is_some() {
                            break;
                        }
                        continue;
                    }
                    running.handle(command);
                    dns_tick = dns_ticker(&running.config);
                }
                Some(()) = tick(&mut dns_tick) => running.refresh_dns().await,
                () = until(running.discovery.next_due()) => running.refresh_discovery().await,
                () = running.discovery.registered_changed() => running.refresh_discovery().await,
            }
        }

        if let Some(admin) = running.admin.take() {
            let _ = admin.stop.send(true);
        }
        let drain = running.config.drain_timeout;
        match successor {
            Some(pid) => {
                tracing::info!(
                    "upgrade: PID {pid} serves now; this process (PID {}) no longer accepts and drains for up to {drain:?}",
                    std::process::id()
                );
                systemd::notify(&format!("MAINPID={pid}\nREADY=1"));
                for l in &running.listeners {
                    l.hand_over();
                }
            }
            None => {
                tracing::info!("shutting down: no longer accepting; draining in-flight requests for up to {drain:?}");
                events::record(
                    Kind::Shutdown,
                    Level::Warn,
                    format!("shutting down: draining for up to {drain:?}"),
                );
                systemd::notify("STOPPING=1");
                for l in &running.listeners {
                    l.stop();
                }
            }
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

/// Waits until `deadline` (forever, without one).
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
    /// Looks up the pools whose discovery is due and applies their new backends, if any.
    async fn refresh_discovery(&mut self) {
        if !self.discovery.refresh_due().await {
            return;
        }
        let applied = self.apply(self.config.clone());
        if let Err(e) = &applied {
            tracing::error!("applying discovered backends failed: {e}; keeping the previous backends");
        }
        self.discovery.applied(applied.is_ok());
        self.publish();
    }

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
            tracing::error!("applying new DNS answers failed: {e}; keeping the previous backends");
        }
        self.publish();
    }

    /// Starts `binary` as this process's successor with every listening socket (see
    /// [`upgrade`]); returns its PID once it serves.
    async fn start_successor(&self, binary: Option<&std::path::Path>) -> Result<u32, UpgradeError> {
        let binary = binary.ok_or_else(|| UpgradeError::NoBinary("the path of this binary is unknown".into()))?;
        let mut handed = Vec::new();
        for l in &self.listeners {
            for socket in &l.sockets {
                handed.push(upgrade::Handed {
                    name: &l.config.name,
                    socket,
                });
            }
        }
        if let Some(socket) = self.admin.as_ref().and_then(|a| a.socket.as_ref()) {
            handed.push(upgrade::Handed {
                name: inherit::ADMIN,
                socket,
            });
        }
        // Health, ejections, slow start and counters go on in the new process; without them
        // (a failure here) it starts fresh, which is no reason to refuse the upgrade.
        let state = match carry::Carried::snapshot(&self.pools).to_memfd() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("upgrade: cannot hand over backend state ({e}); the new process starts fresh");
                None
            }
        };
        upgrade::start_successor(binary, &handed, state.as_ref()).await
    }

    /// Shows the current state to the admin API.
    fn publish(&self) {
        self.admin_state.view.store(Arc::new(AdminView {
            config_file: self.config.source.clone(),
            config_hash: self.config.hash,
            config_text: self.config.text.clone(),
            config_summary: self.config.summary(),
            listeners: self
                .listeners
                .iter()
                .map(|l| {
                    let router = l.router.load();
                    crate::admin::ListenerView {
                        name: l.config.name.clone(),
                        named: l.config.name != l.config.listen.to_string(),
                        address: l.addr,
                        mode: router.mode().name(),
                        tls: l.config.tls.is_some(),
                        routes: match router.tcp_pool() {
                            Some(pool) => pool.name().to_owned(),
                            None => router.describe(),
                        },
                        route_table: router
                            .table()
                            .map(|(host, path_prefix, pool)| crate::admin::RouteView {
                                host,
                                path_prefix: path_prefix.to_owned(),
                                pool: pool.to_owned(),
                            })
                            .collect(),
                        limit: Arc::clone(&l.limit),
                    }
                })
                .collect(),
            pools: self.pools.clone(),
            discovery: self.discovery.statuses(),
        }));
    }

    /// Starts accepting on sockets bound for every worker (one each, in worker order).
    fn start_listener(
        &self,
        config: ListenerConfig,
        router: Router,
        sockets: Vec<std::net::TcpListener>,
    ) -> RunningListener {
        let addr = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(config.listen);
        match (router.mode(), router.tcp_pool()) {
            (crate::config::ListenerMode::TlsPassthrough, _) => {
                tracing::info!(listener = %config.name, "listening on tcp://{addr}, passing TLS through by server name: {}", router.describe());
            }
            (_, Some(pool)) => {
                tracing::info!(listener = %config.name, "listening on tcp://{addr}, connections to pool {}", pool.name())
            }
            (_, None) => {
                let scheme = if router.tls().is_some() { "https" } else { "http" };
                tracing::info!(listener = %config.name, "listening on {scheme}://{addr}, routing {}", router.describe());
            }
        }
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
        let handover = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
        // Each worker accepts on a socket of its own; extra sockets (handed over by a process
        // that ran more workers) go round the workers, and workers left without one accept on
        // a duplicate.
        let handles = self.workers.handles();
        let mut assigned: Vec<(usize, std::net::TcpListener)> = Vec::with_capacity(handles.len().max(sockets.len()));
        for (i, socket) in sockets.into_iter().enumerate() {
            assigned.push((i % handles.len(), socket));
        }
        for index in assigned.len()..handles.len() {
            match assigned.first().map(|(_, s)| s.try_clone()) {
                Some(Ok(socket)) => assigned.push((index, socket)),
                Some(Err(e)) => tracing::error!("worker {index} cannot accept on {addr}: {e}"),
                None => {}
            }
        }
        for (index, socket) in assigned {
            let shared = Arc::clone(&shared);
            let stopped = stopped.clone();
            handles[index].spawn(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(socket) => listener::accept_loop(socket, index, shared, stopped).await,
                    Err(e) => tracing::error!("cannot accept on {addr}: {e}"),
                }
            });
        }
        RunningListener {
            config,
            addr,
            router,
            limit,
            registry,
            stop,
            sockets: handover,
        }
    }

    /// Starts the admin API on a bound socket.
    fn start_admin(&self, listen: SocketAddr, socket: std::net::TcpListener) -> Option<RunningAdmin> {
        let addr = socket.local_addr().unwrap_or(listen);
        let handover = socket.try_clone().ok();
        let socket = match tokio::net::TcpListener::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("admin API not started on {addr}: {e}");
                return None;
            }
        };
        let (stop, stopped) = watch::channel(false);
        tracing::info!("admin API and dashboard on http://{addr}/");
        tokio::spawn(crate::admin::serve(socket, Arc::clone(&self.admin_state), stopped));
        Some(RunningAdmin {
            listen,
            stop,
            socket: handover,
        })
    }
}
