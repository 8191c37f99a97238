//! Reloading the config of a running server as one transaction: prepare, then commit.
//!
//! **Prepare** does everything that can fail and changes nothing anyone sees: the config is
//! read and validated (every error is logged as `FILE:LINE:COL: message`), every new
//! listener's sockets are bound (one per worker), a moved admin listener is bound, access logs
//! are opened, and pools are built over the backends they share with the running config
//! (taken as they are: weights and health switches wait for the commit). If any step fails,
//! what was prepared is dropped (sockets closed) and the running config keeps serving,
//! untouched; the failure is logged and counted.
//!
//! **Commit** cannot fail: pools start (shared backends take their new weights; backends in
//! both configs keep their health, figures and idle connections), kept listeners swap their
//! router atomically, new listeners start accepting, removed ones stop and drain, the admin
//! API takes its new token, hosts and address. Old pools live on only as long as requests
//! still use them. Starting the server is the first reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{listener, Running, StartError};
use crate::admin::Access;
use crate::config::{Config, ListenerConfig, LoadError};
use crate::events::{self, Kind, Level};
use crate::proxy::access_log::{AccessLog, AccessLogConfig};
use crate::proxy::Router;
use crate::upstream::Pool;

/// Why a reload did not happen. The old config keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server runs a config that came from flags, not from a file.
    #[error("no config file to reload (started without --config)")]
    NoConfigFile,
    /// The file could not be read or is invalid.
    #[error("{0}")]
    Invalid(#[from] LoadError),
    /// A new listener could not be bound, an access log opened or a certificate loaded.
    #[error("{0}")]
    Bind(#[from] StartError),
    /// The server has stopped.
    #[error("the server is not running")]
    Stopped,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// The one-line summary of the new config.
    pub config: String,
    /// The file it came from.
    pub file: Option<PathBuf>,
    /// Settings that changed in the file but apply only at the next start (`server.workers`).
    pub restart_needed: Vec<String>,
}

pub(super) enum Command {
    /// Re-read the config file the server runs.
    FromFile(oneshot::Sender<Result<ReloadSummary, ReloadError>>),
    /// Apply this validated config.
    Apply(Box<Config>, oneshot::Sender<Result<ReloadSummary, ReloadError>>),
    /// Reopen every access log file (SIGUSR1, after logrotate).
    ReopenLogs(oneshot::Sender<()>),
    /// Start the binary again and hand it the listeners (SIGUSR2); answers the new PID.
    Upgrade(oneshot::Sender<Result<u32, super::upgrade::UpgradeError>>),
}

/// Asks a running server to reload. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Command>,
}

impl ReloadHandle {
    pub(super) fn new(tx: mpsc::Sender<Command>) -> ReloadHandle {
        ReloadHandle { tx }
    }

    /// Re-reads the config file and applies it (what SIGHUP does).
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::FromFile(reply))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)?
    }

    /// Applies an already validated config.
    pub async fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Apply(Box::new(config), reply))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)?
    }

    /// Starts the binary at this process's path with the same arguments, hands it the
    /// listening sockets and, once it serves, stops accepting and drains (what SIGUSR2 does).
    /// Answers the new process's PID; on error this process keeps serving.
    pub async fn upgrade(&self) -> Result<u32, super::upgrade::UpgradeError> {
        use super::upgrade::UpgradeError;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Upgrade(reply))
            .await
            .map_err(|_| UpgradeError::Stopped)?;
        answer.await.map_err(|_| UpgradeError::Stopped)?
    }

    /// Reopens every access log file by its path (what SIGUSR1 does, for logrotate); returns
    /// once every writer has been asked.
    pub async fn reopen_logs(&self) -> Result<(), ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::ReopenLogs(reply))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)
    }
}

/// Sockets bound before the server ran (at start: by [`super::Server::bind`]).
#[derive(Debug, Default)]
pub(super) struct Sockets {
    /// Sockets for each listener of the config, in order: bound by `bind` or handed to the
    /// process; empty when the listener binds its own.
    pub listeners: Vec<Vec<std::net::TcpListener>>,
    /// The admin listener's.
    pub admin: Option<std::net::TcpListener>,
}

/// A listener of the new config, ready to go.
enum StagedListener {
    /// Already running (same address): gets a new router.
    Kept {
        index: usize,
        config: ListenerConfig,
        router: Router,
    },
    /// Not running yet: its sockets, one per worker, are bound.
    New {
        config: ListenerConfig,
        router: Router,
        sockets: Vec<std::net::TcpListener>,
    },
}

/// What becomes of the admin listener.
enum StagedAdmin {
    /// It stays as it is (or stays off).
    Keep,
    /// It stops.
    Stop,
    /// It (re)starts on this socket, configured at this address.
    Start(SocketAddr, std::net::TcpListener),
}

/// Everything a new config needs, prepared and not yet visible.
pub(super) struct Staged {
    config: Config,
    pools: Vec<Arc<Pool>>,
    listeners: Vec<StagedListener>,
    admin: StagedAdmin,
    access_logs: HashMap<AccessLogConfig, AccessLog>,
    restart_needed: Vec<String>,
    /// A predecessor's backend state, applied once the pools are built and before any
    /// listener accepts (the first commit after a binary upgrade only).
    pub(super) carried: Option<super::carry::Carried>,
}

impl Running {
    pub(super) fn handle(&mut self, command: Command) {
        if matches!(command, Command::FromFile(_) | Command::Apply(..)) {
            super::systemd::reloading();
        }
        let (result, reply) = match command {
            Command::FromFile(reply) => {
                let result = match self.config.source.clone() {
                    None => Err(ReloadError::NoConfigFile),
                    Some(path) => Config::load(&path, &super::dns::System)
                        .map_err(ReloadError::from)
                        .and_then(|c| self.apply(c)),
                };
                (result, reply)
            }
            Command::Apply(config, reply) => (self.apply(*config), reply),
            Command::ReopenLogs(reply) => {
                self.reopen_logs();
                let _ = reply.send(());
                return;
            }
            // The server's loop handles upgrades: a successful one ends it.
            Command::Upgrade(reply) => {
                let _ = reply.send(Err(super::upgrade::UpgradeError::Busy));
                return;
            }
        };
        self.admin_state.reloads.record(result.is_ok());
        // Discovery follows the pools now served before the admin API shows them and the
        // reload is answered.
        self.discovery.follow(&self.config);
        self.publish();
        // Ready again either way: a refused reload leaves the old config serving.
        super::systemd::notify("READY=1");
        match &result {
            Ok(summary) => events::record(
                Kind::Reload,
                Level::Info,
                format!("config reloaded: {}", summary.config),
            ),
            Err(e) => events::record(Kind::Reload, Level::Error, format!("config reload refused: {e}")),
        }
        match &result {
            Ok(summary) => {
                tracing::info!("config reloaded: {}", summary.config);
                for key in &summary.restart_needed {
                    tracing::warn!("{key} changed: it applies at the next start; still running the old value");
                }
                self.reopen_logs();
            }
            Err(ReloadError::Invalid(LoadError::Invalid(errors))) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    "config reload failed ({} problems); still running the previous config",
                    errors.0.len()
                );
            }
            Err(e) => tracing::error!("config reload failed: {e}; still running the previous config"),
        }
        let _ = reply.send(result);
    }

    /// Asks every access log writer to reopen its file.
    pub(super) fn reopen_logs(&self) {
        for log in self.access_logs.values() {
            log.reopen();
        }
    }

    /// Prepares and commits `config`; on error nothing changed.
    pub(super) fn apply(&mut self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let staged = self.prepare(config, Sockets::default(), false)?;
        Ok(self.commit(staged))
    }

    /// Everything that can fail, with no effect anyone sees (see the module's docs). `sockets`
    /// holds sockets already bound for the config's listeners (at start); `starting` is true
    /// for the server's first config.
    pub(super) fn prepare(&self, mut config: Config, sockets: Sockets, starting: bool) -> Result<Staged, StartError> {
        if config.source.is_none() {
            config.source = self.config.source.clone();
        }
        // Discovering pools keep the backends found for them (the file names none).
        self.discovery.fill(&mut config);
        let workers = self.workers.handles().len();
        let mut restart_needed = Vec::new();
        match config.workers {
            Some(w) if w != workers && !starting => {
                restart_needed.push(format!("server.workers ({workers} running, {w} in the file)"));
                config.workers = Some(workers);
            }
            _ => config.workers = Some(workers),
        }
        if !starting && config.run_as != self.config.run_as {
            let shown = |r: &Option<crate::config::RunAs>| match r {
                Some(r) => format!("{:?}", r.user),
                None => "none".to_owned(),
            };
            restart_needed.push(format!(
                "server.user/group ({} running, {} in the file)",
                shown(&self.config.run_as),
                shown(&config.run_as)
            ));
            config.run_as = self.config.run_as.clone();
        }

        // Listeners are matched by their configured address; new ones get all their sockets.
        let mut given = sockets.listeners;
        let mut kept = vec![false; self.listeners.len()];
        let mut plan: Vec<(ListenerConfig, Result<usize, Vec<std::net::TcpListener>>)> = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let existing = (0..self.listeners.len()).find(|&k| !kept[k] && self.listeners[k].config.listen == l.listen);
            match existing {
                Some(k) => {
                    kept[k] = true;
                    plan.push((l.clone(), Ok(k)));
                }
                None => {
                    let mut all = given.get_mut(i).map(std::mem::take).unwrap_or_default();
                    if all.is_empty() {
                        all.push(listener::bind(l.listen, workers > 1)?);
                    }
                    // One socket per worker where the address allows more (`SO_REUSEPORT`);
                    // otherwise workers share (see `start_listener`).
                    let first = &all[0];
                    let addr = first.local_addr().unwrap_or(l.listen);
                    if socket2::SockRef::from(first).reuse_port().unwrap_or(false) {
                        while all.len() < workers {
                            all.push(listener::bind(addr, true)?);
                        }
                    }
                    plan.push((l.clone(), Err(all)));
                }
            }
        }

        let admin = match (&config.admin, &self.admin, sockets.admin) {
            (Some(a), _, Some(socket)) => StagedAdmin::Start(a.listen, socket),
            (Some(a), Some(running), None) if running.listen == a.listen => StagedAdmin::Keep,
            // `Server::bind` could not take the default address; it said so.
            (Some(_), _, None) if starting => StagedAdmin::Keep,
            (Some(a), _, None) => match listener::bind(a.listen, false) {
                Ok(socket) => StagedAdmin::Start(a.listen, socket),
                Err(e) if !a.explicit => {
                    tracing::warn!("admin API not moved: {e}");
                    StagedAdmin::Keep
                }
                Err(e) => return Err(e),
            },
            (None, Some(_), _) => StagedAdmin::Stop,
            (None, None, _) => StagedAdmin::Keep,
        };

        let redis = self.registry.redis(config.redis.as_ref()).map_err(StartError::Redis)?;
        let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let tls = match &p.tls {
                None => None,
                Some(t) => {
                    let built = crate::tls::upstream::client_config(t, p.protocol)?;
                    for w in &built.warnings {
                        tracing::warn!("{w}");
                    }
                    Some(built.config)
                }
            };
            pools.push(Arc::new(Pool::with_registry(p, &self.registry, tls, redis.as_ref())));
        }
        let mut access_logs = HashMap::new();
        let mut listeners = Vec::with_capacity(plan.len());
        for (l, target) in plan {
            let log = match &l.access_log {
                None => None,
                Some(c) => Some(match access_logs.get(c).or_else(|| self.access_logs.get(c)) {
                    Some(log) => AccessLog::clone(log),
                    None => AccessLog::open(c).map_err(|source| StartError::AccessLog {
                        path: c.path.as_ref().map_or("-".into(), |p| p.display().to_string()),
                        source,
                    })?,
                }),
            };
            if let (Some(c), Some(log)) = (&l.access_log, &log) {
                access_logs.insert(c.clone(), log.clone());
            }
            let tls = match &l.tls {
                None => None,
                Some(t) => {
                    let built = crate::tls::server_config(t)?;
                    for w in &built.warnings {
                        tracing::warn!("{w}");
                    }
                    Some(built.config)
                }
            };
            let router = Router::new(&l, &pools).with_access_log(log).with_tls(tls);
            listeners.push(match target {
                Ok(index) => StagedListener::Kept {
                    index,
                    config: l,
                    router,
                },
                Err(sockets) => StagedListener::New {
                    config: l,
                    router,
                    sockets,
                },
            });
        }
        Ok(Staged {
            config,
            pools,
            listeners,
            admin,
            access_logs,
            restart_needed,
            carried: None,
        })
    }

    /// Makes a prepared config the running one. Nothing here can fail.
    pub(super) fn commit(&mut self, staged: Staged) -> ReloadSummary {
        let Staged {
            config,
            pools,
            listeners: staged_listeners,
            admin,
            access_logs,
            restart_needed,
            carried,
        } = staged;
        for pool in &pools {
            pool.start();
        }
        if let Some(carried) = carried {
            let restored = carried.apply(&pools);
            tracing::info!(
                backends = restored,
                "took on the previous process's backend state and counters"
            );
        }
        let mut old: Vec<Option<super::RunningListener>> =
            std::mem::take(&mut self.listeners).into_iter().map(Some).collect();
        let mut listeners = Vec::with_capacity(staged_listeners.len());
        for staged in staged_listeners {
            match staged {
                StagedListener::Kept { index, config, router } => {
                    let Some(mut running) = old.get_mut(index).and_then(Option::take) else {
                        continue;
                    };
                    running.router.store(Arc::new(router));
                    running.limit.set_max(
                        config
                            .max_client_connections
                            .unwrap_or_else(listener::default_max_client_connections),
                    );
                    running.config = config;
                    listeners.push(running);
                }
                StagedListener::New {
                    config,
                    router,
                    sockets,
                } => listeners.push(self.start_listener(config, router, sockets)),
            }
        }
        for removed in old.into_iter().flatten() {
            tracing::info!(listener = %removed.config.name, "listener removed; draining its connections");
            removed.stop();
        }
        self.listeners = listeners;
        self.pools = pools;
        // Writers of logs no listener uses any more end once their last request is logged.
        self.access_logs = access_logs;

        let access = config.admin.as_ref().map(Access::of).unwrap_or_default();
        self.admin_state.access.store(Arc::new(access));
        match admin {
            StagedAdmin::Keep => {}
            StagedAdmin::Stop => {
                if let Some(old) = self.admin.take() {
                    tracing::info!("admin API stopped");
                    let _ = old.stop.send(true);
                }
            }
            StagedAdmin::Start(listen, socket) => {
                if let Some(old) = self.admin.take() {
                    let _ = old.stop.send(true);
                }
                self.admin = self.start_admin(listen, socket);
            }
        }
        let summary = ReloadSummary {
            config: config.summary(),
            file: config.source.clone(),
            restart_needed,
        };
        self.config = config;
        self.publish();
        summary
    }
}
