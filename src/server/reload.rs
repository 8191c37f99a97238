//! Reloading the config of a running server: validate, build off the hot path, swap.
//!
//! A new config is read and validated first; if it is invalid, every error is logged as
//! `FILE:LINE:COL: message` and the old config keeps serving untouched. If it is valid, new
//! listeners are bound before anything changes (a bind failure aborts the reload), new pools
//! are built (backends present before keep their health and figures), each kept listener's
//! router is swapped atomically, removed listeners stop accepting and drain, and old pools
//! live on only as long as requests still use them.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::{listener, Running, StartError};
use crate::config::{Config, LoadError};

/// Why a reload did not happen. The old config keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server runs a config that came from flags, not from a file.
    #[error("no config file to reload (started without --config)")]
    NoConfigFile,
    /// The file could not be read or is invalid.
    #[error("{0}")]
    Invalid(#[from] LoadError),
    /// A new listener could not be bound.
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
}

pub(super) enum Command {
    /// Re-read the config file the server runs.
    FromFile(oneshot::Sender<Result<ReloadSummary, ReloadError>>),
    /// Apply this validated config.
    Apply(Box<Config>, oneshot::Sender<Result<ReloadSummary, ReloadError>>),
    /// Reopen every access log file (SIGUSR1, after logrotate).
    ReopenLogs(oneshot::Sender<()>),
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

impl Running {
    pub(super) fn handle(&mut self, command: Command) {
        let (result, reply) = match command {
            Command::FromFile(reply) => {
                let result = match self.config.source.clone() {
                    None => Err(ReloadError::NoConfigFile),
                    Some(path) => Config::load(&path)
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
        };
        if let Some(admin) = &self.admin {
            admin.reloads.record(result.is_ok());
        }
        self.publish();
        match &result {
            Ok(summary) => {
                tracing::info!("config reloaded: {}", summary.config);
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

    pub(super) fn apply(&mut self, mut config: Config) -> Result<ReloadSummary, ReloadError> {
        if config.source.is_none() {
            config.source = self.config.source.clone();
        }
        // Listeners are matched by their configured address; bind the new ones first, so a
        // failure leaves everything as it was.
        let mut kept = vec![false; self.listeners.len()];
        let mut plan = Vec::new();
        for l in &config.listeners {
            let existing = (0..self.listeners.len()).find(|&i| !kept[i] && self.listeners[i].config.listen == l.listen);
            match existing {
                Some(i) => {
                    kept[i] = true;
                    plan.push((l.clone(), Ok(i)));
                }
                None => plan.push((
                    l.clone(),
                    Err(listener::bind(l.listen, self.workers.handles().len() > 1)?),
                )),
            }
        }

        let new_pools = self.build_pools(&config);
        let old_pools = std::mem::replace(&mut self.pools, new_pools);
        // Open new access logs before anything is swapped: a failure leaves everything as it
        // was (the new pools are simply dropped).
        let routers = match config
            .listeners
            .iter()
            .map(|l| self.router(l))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(routers) => routers,
            Err(e) => {
                self.pools = old_pools;
                return Err(e.into());
            }
        };
        let mut routers = routers.into_iter();
        let mut listeners = Vec::new();
        let old: Vec<_> = std::mem::take(&mut self.listeners).into_iter().map(Some).collect();
        let mut old = old;
        for (l, target) in plan {
            match target {
                Ok(i) => {
                    let Some(mut running) = old[i].take() else { continue };
                    if let Some(router) = routers.next() {
                        running.router.store(std::sync::Arc::new(router));
                    }
                    running.limit.set_max(
                        l.max_client_connections
                            .unwrap_or_else(listener::default_max_client_connections),
                    );
                    running.config = l;
                    listeners.push(running);
                }
                Err(socket) => {
                    routers.next();
                    self.start_listener(l, socket)?;
                    listeners.extend(self.listeners.pop());
                }
            }
        }
        for removed in old.into_iter().flatten() {
            tracing::info!(listener = %removed.config.name, "listener removed; draining its connections");
            removed.stop();
        }
        self.listeners = listeners;
        // Writers of logs no listener uses any more end once their last request is logged.
        self.access_logs
            .retain(|c, _| config.listeners.iter().any(|l| l.access_log.as_ref() == Some(c)));
        if let (Some(admin), Some(settings)) = (&self.admin, &config.admin) {
            admin
                .access
                .store(std::sync::Arc::new(crate::admin::Access::of(settings)));
        }
        let summary = ReloadSummary {
            config: config.summary(),
            file: config.source.clone(),
        };
        self.config = config;
        Ok(summary)
    }
}
