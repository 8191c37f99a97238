//! Backends found in DNS (`discover = { srv = ... }` or `{ a = ... }`), looked up again as
//! their records' TTLs run out, or registered in etcd (`{ etcd = ... }`, followed by
//! [`super::etcd_backends`], which pushes each change).
//!
//! SRV records follow RFC 2782: each record is a backend (its target's addresses on its port,
//! its weight); the records with the lowest priority value serve and the others are backups,
//! used only while none of the first can be. A/AAAA records are each a backend on the
//! configured port. Lookups go to the pool's `nameserver` (or the system's) through
//! hickory-resolver, with no cache of its own: the next lookup is due when the shortest TTL
//! of the answer runs out, bounded by `min_ttl` and `max_ttl`. A failed lookup keeps the
//! backends found before; a changed answer is applied as a set difference through the same
//! path as a reload (backends that stay keep their state and connections, new ones join,
//! removed ones drain).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::discovery_status::DiscoveryStatus;
use super::etcd::REQUEST_TIMEOUT;
use super::etcd_backends::Registered;
use crate::config::{BackendConfig, Config, DiscoverConfig, DiscoverName, MAX_WEIGHT};

/// Every pool's discovery: what each found, and when each looks again.
#[derive(Default)]
pub struct Discovery {
    watched: Vec<Watched>,
    /// Notified when a pool's registered backends (etcd) change.
    registered_changed: Arc<Notify>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("pools", &self.watched.len()).finish()
    }
}

struct Watched {
    pool: String,
    config: DiscoverConfig,
    source: Source,
    /// The next DNS lookup (unused for etcd, which pushes changes).
    next: Instant,
    /// The last answer; `None` until a lookup succeeded.
    found: Option<Vec<BackendConfig>>,
    /// `found` changed and is not applied yet: counted and announced once it is.
    unapplied: bool,
    status: Arc<DiscoveryStatus>,
}

impl Watched {
    /// Takes `backends` as what `via` (DNS or etcd) found; true (and logged) when they differ
    /// from what it found before, to be applied.
    fn take(&mut self, backends: Vec<BackendConfig>, via: &str) -> bool {
        if self.found.as_ref() == Some(&backends) {
            return false;
        }
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{}{}", b.address, if b.backup { " (backup)" } else { "" }))
            .collect();
        tracing::info!(pool = %self.pool, backends = %list.join(", "), "{via} discovery: backends changed");
        self.unapplied = true;
        self.found = Some(backends);
        true
    }
}

/// How a pool's backends are found.
enum Source {
    /// Looked up in DNS (no resolver when it could not be made; logged). Boxed: a resolver
    /// is some 300 bytes, a pool or two hold one, and only the control thread reads it.
    Dns(Option<Box<TokioResolver>>),
    /// Registered under an etcd prefix, followed by a task.
    Etcd(Registered),
}

impl Discovery {
    /// Follows `config`'s pools: keeps what pools whose discovery did not change found, looks
    /// up new ones at once, forgets the rest. A pool whose discovery changed keeps the
    /// backends found before until its new source answers.
    pub fn follow(&mut self, config: &Config) {
        let mut old = std::mem::take(&mut self.watched);
        for pool in &config.pools {
            let Some(d) = &pool.discover else { continue };
            let kept = old
                .iter()
                .position(|w| w.pool == pool.name && w.config == *d)
                .map(|i| old.swap_remove(i));
            let mut before = || {
                old.iter_mut()
                    .find(|w| w.pool == pool.name)
                    .and_then(|w| w.found.take())
            };
            self.watched.push(kept.unwrap_or_else(|| {
                let status = Arc::new(DiscoveryStatus::new(&pool.name, describe(&d.name)));
                let source = match &d.name {
                    DiscoverName::Etcd { endpoint, prefix } => Source::Etcd(Registered::follow(
                        endpoint,
                        prefix,
                        Arc::clone(&status),
                        Arc::clone(&self.registered_changed),
                    )),
                    DiscoverName::A { .. } | DiscoverName::Srv(_) => Source::Dns(
                        resolver(d.nameserver)
                            .inspect_err(|e| tracing::error!(pool = %pool.name, "cannot make a DNS resolver: {e}"))
                            .ok()
                            .map(Box::new),
                    ),
                };
                Watched {
                    pool: pool.name.clone(),
                    config: d.clone(),
                    source,
                    next: Instant::now(),
                    found: before(),
                    unapplied: false,
                    status,
                }
            }));
        }
    }

    /// Gives `config`'s discovering pools the backends found for them (none until found). A
    /// pool whose discovery a reload changes gets what its old source found, until the new
    /// one answers.
    pub fn fill(&self, config: &mut Config) {
        for pool in &mut config.pools {
            if pool.discover.is_none() {
                continue;
            }
            if let Some(found) = self
                .watched
                .iter()
                .find(|w| w.pool == pool.name)
                .and_then(|w| w.found.as_ref())
            {
                pool.backends.clone_from(found);
            }
        }
    }

    /// The sets [`Discovery::refresh_due`] found were applied (`true`) or refused: counts and
    /// announces the applied ones.
    pub fn applied(&mut self, ok: bool) {
        for w in self.watched.iter_mut().filter(|w| w.unapplied) {
            w.unapplied = false;
            if let (true, Some(found)) = (ok, &w.found) {
                w.status.updated(found);
            }
        }
    }

    /// Every discovering pool's status, for the admin API.
    pub fn statuses(&self) -> Vec<Arc<DiscoveryStatus>> {
        self.watched.iter().map(|w| Arc::clone(&w.status)).collect()
    }

    /// When the next DNS lookup is due, if any pool looks up DNS.
    pub fn next_due(&self) -> Option<Instant> {
        self.watched
            .iter()
            .filter(|w| matches!(w.source, Source::Dns(_)))
            .map(|w| w.next)
            .min()
    }

    /// Completes when some pool's registered backends (etcd) changed: then
    /// [`Discovery::refresh_due`] takes the new set.
    pub async fn registered_changed(&self) {
        self.registered_changed.notified().await;
    }

    /// Waits for the first set of every pool registered in etcd that has none yet, for up to
    /// the time one etcd request may take (at start: a pool whose etcd is unreachable starts
    /// empty, answering 503, and fills when etcd answers).
    pub async fn first_answers(&mut self) {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        for w in self.watched.iter_mut().filter(|w| w.found.is_none()) {
            if let Source::Etcd(registered) = &mut w.source {
                registered.first(deadline).await;
            }
        }
    }

    /// Takes what etcd pushed and looks up every DNS pool whose time has come; true when some
    /// pool's backends changed.
    pub async fn refresh_due(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for w in &mut self.watched {
            let Source::Etcd(registered) = &mut w.source else {
                continue;
            };
            if let Some(backends) = registered.take_changed() {
                changed |= w.take(backends, "etcd");
            }
        }
        for w in self.watched.iter_mut().filter(|w| w.next <= now) {
            let resolver = match &w.source {
                Source::Etcd(_) => continue,
                Source::Dns(Some(resolver)) => resolver,
                Source::Dns(None) => {
                    w.next = now + w.config.max_ttl;
                    w.status.failed("no DNS resolver could be made (logged at start)");
                    continue;
                }
            };
            match lookup(resolver, &w.config.name).await {
                Ok((mut backends, valid_until)) => {
                    w.status.answered();
                    backends.sort_by_key(|b| (b.backup, b.address));
                    let ttl = valid_until.saturating_duration_since(Instant::now());
                    w.next = Instant::now() + ttl.clamp(w.config.min_ttl, w.config.max_ttl);
                    changed |= w.take(backends, "DNS");
                }
                Err(e) => {
                    w.next = Instant::now() + w.config.min_ttl;
                    tracing::warn!(pool = %w.pool, error = %e, "DNS discovery failed; keeping the backends found before");
                    w.status.failed(&e);
                }
            }
        }
        changed
    }
}

/// Where `name` takes a pool's backends from, as the admin API shows it.
fn describe(name: &DiscoverName) -> String {
    match name {
        DiscoverName::Srv(srv) => format!("dns srv {srv}"),
        DiscoverName::A { host, port } => format!("dns a {host}:{port}"),
        DiscoverName::Etcd { endpoint, prefix } => format!("etcd://{endpoint}{prefix}"),
    }
}

/// A resolver asking only `nameserver` (or the system's servers), without a cache.
fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.try_tcp_on_error = true;
    options.ndots = 0;
    let builder = match nameserver {
        Some(ns) => {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = ns.port();
            tcp.port = ns.port();
            let server = NameServerConfig::new(ns.ip(), true, vec![udp, tcp]);
            let config = ResolverConfig::from_parts(None, vec![], vec![server]);
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => Resolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    builder.with_options(options).build().map_err(|e| e.to_string())
}

/// The backends `name` names now, and until when the answer holds.
async fn lookup(resolver: &TokioResolver, name: &DiscoverName) -> Result<(Vec<BackendConfig>, Instant), String> {
    match name {
        DiscoverName::A { host, port } => {
            let found = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            let backends = found
                .iter()
                .map(|ip| backend(SocketAddr::new(ip, *port), 1, false))
                .collect();
            Ok((backends, Instant::from_std(found.valid_until())))
        }
        DiscoverName::Srv(srv) => {
            let found = resolver
                .srv_lookup(srv.as_str())
                .await
                .map_err(|e| format!("{srv}: {e}"))?;
            let mut valid_until = found.valid_until();
            let records: Vec<(u16, u16, u16, String)> = found
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            let first = records.iter().map(|r| r.0).min();
            let mut addresses: HashMap<String, Vec<IpAddr>> = HashMap::new();
            let mut backends = Vec::new();
            for (priority, weight, port, target) in &records {
                if !addresses.contains_key(target) {
                    let ips = resolver
                        .lookup_ip(target.as_str())
                        .await
                        .map_err(|e| format!("{target}: {e}"))?;
                    valid_until = valid_until.min(ips.valid_until());
                    addresses.insert(target.clone(), ips.iter().collect());
                }
                // SRV weights run 0..=65535, 0 meaning "very rarely"; ours start at 1.
                let weight = u32::from(*weight).clamp(1, MAX_WEIGHT);
                for ip in &addresses[target] {
                    let address = SocketAddr::new(*ip, *port);
                    if !backends.iter().any(|b: &BackendConfig| b.address == address) {
                        backends.push(backend(address, weight, Some(*priority) != first));
                    }
                }
            }
            Ok((backends, Instant::from_std(valid_until)))
        }
        DiscoverName::Etcd { .. } => Err("etcd prefixes are followed, not looked up".into()),
    }
}

fn backend(address: SocketAddr, weight: u32, backup: bool) -> BackendConfig {
    BackendConfig {
        address,
        weight,
        dns_name: None,
        backup,
    }
}
