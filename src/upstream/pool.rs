//! A pool: named backends, the selection over its eligible ones, and the upstream connections.
//!
//! The backends a request may go to (healthy, not ejected) form a [`Selection`], built off the
//! hot path and swapped in whole whenever health changes; a request loads it once and picks.
//! Algorithms therefore never see an unhealthy backend. When too few backends are eligible the
//! pool panics (Envoy's term) and selects over all of them rather than crush the few left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use tokio::sync::{Notify, Semaphore};

use super::backend::clock_nanos;
use super::connect::{Connector, TlsTarget};
use super::connection::ConnectionPool;
use super::idle::IdleConnections;
use super::registry::{BackendRegistry, PoolStats};
use super::retry_budget::RetryBudget;
use super::select::{self, PickContext, Select, SelectOptions};
use super::sticky::Sticky;
use super::{Backend, HashKey, RequestView};
use crate::config::{Algorithm, PoolConfig, StickyConfig};
use crate::fleet::rate_limit::RateLimiter;
use crate::fleet::redis_limit::RedisClient;

/// One configured backend with what belongs to it in this pool.
#[derive(Debug)]
pub struct Member {
    /// How the backend is reached.
    pub connector: Arc<Connector>,
    /// TLS to it under this config, applied to the connector when the pool starts.
    tls: Option<Arc<TlsTarget>>,
    /// The backend and its live figures.
    pub backend: Arc<Backend>,
    /// Its idle keep-alive connections for requests that arrived over HTTP/2 (hyper's client).
    pub connections: Arc<ConnectionPool>,
    /// Its idle keep-alive connections for the HTTP/1 engine.
    pub idle: Arc<IdleConnections>,
    /// Slots under `max_connections`, if limited.
    pub slots: Option<Arc<Semaphore>>,
    /// Its weight in this config (applied to the shared backend when the pool starts).
    weight: u32,
    /// True when this build created the backend (no running config had it).
    created: bool,
    /// Used only while no other member is eligible.
    pub backup: bool,
}

/// The backends picks choose from right now, with the selector built for exactly them.
#[derive(Debug)]
pub struct Selection {
    /// Indices into the pool's members, in selector order.
    members: Vec<usize>,
    backends: Vec<Arc<Backend>>,
    selector: Box<dyn Select>,
    sticky: Option<Sticky>,
    /// True when built over all members because too few were eligible.
    panic: bool,
}

/// A named group of backends and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    members: Vec<Member>,
    selection: ArcSwap<Selection>,
    /// Signalled from the hot path when a backend was ejected (and on drop); the pool's
    /// rebuilding task waits on it.
    changed: Arc<Notify>,
    /// Figures (and the retry budget) shared by every build of the pool.
    stats: Arc<PoolStats>,
    in_panic: AtomicBool,
    /// Set once the first selection is built (backends present from the start do not ramp).
    built: AtomicBool,
    /// True while some backend's slow-start ramp is under way: the selection is rebuilt on a
    /// short period so its weight keeps rising.
    ramping: AtomicBool,
    /// Built by a reload while an earlier build of the pool runs: backends it adds ramp up.
    reloading: bool,
    /// Its `rate_limit`, if it has one.
    rate_limiter: Option<Arc<RateLimiter>>,
}

/// The outcome of a pick.
#[derive(Debug)]
pub struct Picked<'a> {
    /// Index of the backend among the pool's members.
    pub index: usize,
    /// The member.
    pub member: &'a Member,
    /// A sticky-session cookie to set on the response, when the client had none for it.
    pub set_cookie: Option<HeaderValue>,
}

impl Selection {
    fn build(
        members: &[Member],
        chosen: Vec<usize>,
        weights: &[u32],
        algorithm: Algorithm,
        options: &SelectOptions,
        sticky: Option<&StickyConfig>,
        panic: bool,
    ) -> Selection {
        let backends: Vec<Arc<Backend>> = chosen.iter().map(|&i| Arc::clone(&members[i].backend)).collect();
        Selection {
            selector: select::build_weighted(algorithm, &backends, weights, options),
            sticky: sticky.map(|s| Sticky::new(s, &backends)),
            members: chosen,
            backends,
            panic,
        }
    }

    /// How many backends picks choose from.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no backend can be picked.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Pool {
    /// Builds the pool with backends of its own, ready to pick. Call [`Pool::start`] inside
    /// a tokio runtime to run its health checks as well.
    /// Without TLS to the backends (whatever `config.tls` says): for tests.
    pub fn new(config: &PoolConfig) -> Pool {
        let pool = Pool::with_registry(config, &BackendRegistry::new(1), None, None);
        pool.commit();
        pool
    }

    /// Prepares the pool, taking the backends (and their idle connections) it shares with a
    /// previous config from `registry`. Nothing shared changes until [`Pool::start`]: a
    /// reload that fails after this leaves every running backend as it was. `tls` is the
    /// client config built from `config.tls`.
    pub fn with_registry(
        config: &PoolConfig,
        registry: &BackendRegistry,
        tls: Option<Arc<rustls::ClientConfig>>,
        redis: Option<&Arc<RedisClient>>,
    ) -> Pool {
        // A backend added by a reload (the pool already has live backends) ramps up.
        let reloading = registry.has_pool(&config.name);
        let members: Vec<Member> = config
            .backends
            .iter()
            .map(|b| {
                let (upstream, fresh) = registry.get_or_create(config, b.address, b.weight);
                let tls = tls.as_ref().zip(config.tls.as_ref()).map(|(client, settings)| {
                    Arc::new(TlsTarget {
                        config: Arc::clone(client),
                        name: crate::tls::upstream::server_name(settings, b),
                        settings: settings.clone(),
                    })
                });
                Member {
                    connector: upstream.connector,
                    tls,
                    idle: upstream.idle,
                    connections: upstream.connections,
                    slots: config.max_connections.map(|n| Arc::new(Semaphore::new(n as usize))),
                    backend: upstream.backend,
                    weight: b.weight,
                    created: fresh,
                    backup: b.backup,
                }
            })
            .collect();
        let empty = Selection::build(&[], Vec::new(), &[], config.algorithm, &config.select, None, false);
        Pool {
            rate_limiter: registry.rate_limiter(config, redis),
            stats: registry.pool_stats(&config.name, config.retries.budget_percent),
            config: config.clone(),
            members,
            selection: ArcSwap::from_pointee(empty),
            changed: Arc::new(Notify::new()),
            in_panic: AtomicBool::new(false),
            built: AtomicBool::new(false),
            ramping: AtomicBool::new(false),
            reloading,
        }
    }

    /// Applies this config to the backends it shares with earlier ones (weights, timeouts,
    /// health-check switches, slow start for backends a reload added) and builds the first
    /// selection. Infallible: the commit step of a reload.
    fn commit(&self) {
        let now = clock_nanos();
        self.stats.retry_budget.set_percent(self.config.retries.budget_percent);
        for m in &self.members {
            m.backend.set_weight(m.weight);
            if m.connector.set_tls(m.tls.clone()) {
                // Verified against other settings: new connections only from now on.
                m.idle.clear();
                m.connections.clear();
            }
            m.idle
                .timeouts
                .set(self.config.timeouts.connect, self.config.timeouts.idle);
            m.connections
                .timeouts
                .set(self.config.timeouts.connect, self.config.timeouts.idle);
            if m.created && self.reloading && self.config.slow_start.is_some() {
                m.backend.mark_ready(now);
            }
            match &self.config.health_check {
                Some(h) if m.created && h.start_unhealthy => {
                    m.backend.set_probed_down(true);
                }
                // Checks were turned off: nothing will ever mark it up again.
                None => {
                    m.backend.set_probed_down(false);
                }
                Some(_) => {}
            }
        }
        self.rebuild();
    }

    /// Commits the pool (see [`Pool::with_registry`]) and starts its background work: active
    /// health checks, the task that rebuilds the selection when backends are ejected or
    /// return, and the idle-connection sweeper. Each ends by itself once the pool is dropped.
    pub fn start(self: &Arc<Self>) {
        self.commit();
        if let Some(check) = &self.config.health_check {
            for index in 0..self.members.len() {
                crate::health::active::spawn(Arc::downgrade(self), index, check.clone());
            }
        }
        spawn_rebuilder(Arc::downgrade(self), Arc::clone(&self.changed));
        spawn_idle_sweeper(Arc::downgrade(self), self.config.timeouts.idle);
    }

    /// The pool's validated config.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Its rate limit, if it has one.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_deref()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.config.algorithm
    }

    /// Every configured backend, eligible or not, in config order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every configured backend, in config order.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.members.iter().map(|m| &m.backend)
    }

    /// Its figures that outlive reloads.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Its retry budget.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.stats.retry_budget
    }

    /// The current selection.
    pub fn selection(&self) -> arc_swap::Guard<Arc<Selection>> {
        self.selection.load()
    }

    /// Rebuilds the selection from the members' current health. Off the hot path.
    pub fn rebuild(&self) {
        let now = clock_nanos();
        let is_eligible = |&i: &usize| self.members[i].backend.is_eligible(now);
        let primaries: Vec<usize> = (0..self.members.len()).filter(|&i| !self.members[i].backup).collect();
        let backups: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].backup).collect();
        let mut eligible: Vec<usize> = primaries.iter().copied().filter(is_eligible).collect();
        // Backups serve only while no primary can (and then they are the pool).
        // (A pool of backups alone treats them as its primaries.)
        let group = if primaries.is_empty() || (eligible.is_empty() && backups.iter().any(is_eligible)) {
            eligible = backups.iter().copied().filter(is_eligible).collect();
            backups
        } else {
            primaries
        };
        let total = group.len();
        let threshold = self.config.panic_threshold as usize;
        let panic = total > 0 && eligible.len() * 100 < threshold * total;
        let was_panic = self.in_panic.swap(panic, Ordering::Relaxed);
        if panic && !was_panic {
            tracing::warn!(
                pool = self.name(),
                eligible = eligible.len(),
                total,
                "panic mode: fewer than {threshold}% of backends are healthy; routing to all of them"
            );
        } else if !panic && was_panic {
            tracing::info!(pool = self.name(), eligible = eligible.len(), total, "panic mode over");
        }
        if self.config.slow_start.is_some() && self.built.swap(true, Ordering::Relaxed) {
            // Backends that just became eligible (recovered, or back from ejection) ramp up.
            let previous = self.selection.load();
            if !previous.panic {
                for &i in &eligible {
                    if !previous.members.contains(&i) {
                        self.members[i].backend.mark_ready(now);
                    }
                }
            }
        }
        let chosen: Vec<usize> = if panic { group } else { eligible };
        let weights = self.effective_weights(&chosen, now);
        let position = self.selection.load().selector.position();
        let selection = Selection::build(
            &self.members,
            chosen,
            &weights,
            self.config.algorithm,
            &self.config.select,
            self.config.sticky.as_ref(),
            panic,
        );
        selection.selector.resume_at(position);
        self.selection.store(Arc::new(selection));
    }

    /// The weights picks use now: configured weights, lowered by slow start for backends
    /// still ramping (scaled by 20 so the ramp moves in 5% steps).
    fn effective_weights(&self, chosen: &[usize], now: u64) -> Vec<u32> {
        let configured: Vec<u32> = chosen.iter().map(|&i| self.members[i].backend.weight()).collect();
        let Some(slow) = self.config.slow_start else {
            self.ramping.store(false, Ordering::Relaxed);
            return configured;
        };
        let factors: Vec<f64> = chosen
            .iter()
            .map(|&i| self.members[i].backend.ready_for(now).map_or(1.0, |t| slow.factor(t)))
            .collect();
        let ramping = factors.iter().any(|&f| f < 1.0);
        self.ramping.store(ramping, Ordering::Relaxed);
        let total: u64 = configured.iter().map(|&w| u64::from(w)).sum();
        if !ramping || total * 20 > 1_000_000 {
            return configured;
        }
        configured
            .iter()
            .zip(factors)
            .map(|(&w, f)| ((f64::from(w) * 20.0 * f).round() as u32).max(1))
            .collect()
    }

    /// Asks the pool's task to rebuild the selection soon (callable from the hot path).
    pub fn request_rebuild(&self) {
        self.changed.notify_one();
    }

    /// Chooses a backend for `req` from the current selection, never one of `exclude`
    /// (member indices already tried). A valid sticky cookie wins over the algorithm;
    /// otherwise the algorithm picks and, in a sticky pool, the response must set the
    /// returned cookie.
    pub fn pick(&self, req: &RequestView, exclude: &[usize]) -> Option<Picked<'_>> {
        let selection = self.selection.load();
        // Exclusions arrive as member indices; the selector thinks in selection indices.
        let local_exclude: Vec<usize> = if exclude.is_empty() {
            Vec::new()
        } else {
            (0..selection.members.len())
                .filter(|&i| exclude.contains(&selection.members[i]))
                .collect()
        };
        let ctx = PickContext {
            hash: self.config.hash_key.as_ref().and_then(|k: &HashKey| k.hash(req)),
            exclude: &local_exclude,
        };
        let mut set_cookie = None;
        let local = match selection
            .sticky
            .as_ref()
            .and_then(|s| s.requested(&req.headers))
            .filter(|&i| ctx.allows(i))
        {
            Some(i) => i,
            None => {
                let i = selection.selector.pick(&selection.backends, &ctx)?;
                set_cookie = selection.sticky.as_ref().and_then(|s| s.set_cookie(i)).cloned();
                i
            }
        };
        let index = *selection.members.get(local)?;
        Some(Picked {
            index,
            member: &self.members[index],
            set_cookie,
        })
    }

    /// True when the current selection covers all backends because too few were healthy.
    pub fn in_panic(&self) -> bool {
        self.selection.load().panic
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Wakes the rebuilding task so that it notices the pool is gone and ends.
        self.changed.notify_one();
    }
}

/// Rebuilds the selection when the hot path asks (an ejection) and when an ejection ends.
fn spawn_rebuilder(pool: Weak<Pool>, changed: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            let next_return = {
                let Some(pool) = pool.upgrade() else { return };
                let now = clock_nanos();
                let ejection_end = pool.members.iter().filter_map(|m| m.backend.ejected_until(now)).min();
                // While a slow-start ramp is under way, rebuild every 1/20 of its window.
                let ramp_step = pool
                    .config
                    .slow_start
                    .filter(|_| pool.ramping.load(Ordering::Relaxed))
                    .map(|s| {
                        now + u64::try_from((s.window / 20).max(Duration::from_millis(20)).as_nanos())
                            .unwrap_or(u64::MAX)
                    });
                match (ejection_end, ramp_step) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            match next_return {
                Some(t) => {
                    let wait = Duration::from_nanos(t.saturating_sub(clock_nanos())) + Duration::from_millis(1);
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => changed.notified().await,
            }
            let Some(pool) = pool.upgrade() else { return };
            pool.rebuild();
        }
    });
}

/// Closes idle connections past their idle timeout, about twice per timeout, until the pool is
/// dropped (a reload's new build of the pool sweeps the connections it took over).
fn spawn_idle_sweeper(pool: Weak<Pool>, idle: Duration) {
    let period = (idle / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            for m in &pool.members {
                m.connections.sweep();
                m.idle.sweep();
            }
        }
    });
}
