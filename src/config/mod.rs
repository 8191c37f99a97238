//! Validated configuration: what the rest of Steelyard runs on.
//!
//! [`Config::from_toml`] turns the raw file ([`file::FileConfig`]) into a [`Config`] whose every
//! address is parsed, every duration converted and every pool reference resolved, or into a list
//! of [`ConfigError`]s that each name the file, line, column and key. Quick mode
//! ([`Config::quick`]) builds the same model from command-line flags.

pub mod client;
pub mod file;
pub mod resilience;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use resilience::{CheckKind, HealthCheckConfig, PassiveConfig, RetryConfig, SlowStart, StatusSet};

use crate::proxy::access_log::{AccessLogConfig, AccessLogFormat};
use crate::upstream::hash_key::HashKey;
use crate::upstream::select::SelectOptions;
pub use client::ClientSettings;
use file::{BackendEntry, FileConfig, PoolSection, TimeoutsSection};

/// Largest accepted backend weight (HAProxy's limit too); keeps the weighted schedule small.
pub const MAX_WEIGHT: u32 = 256;

/// Default time allowed to connect to a backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for a backend's response headers after the request was sent.
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default lifetime of an unused pooled upstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin listener: API, metrics, dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// False for the default address: if it is taken, Steelyard runs without the admin API
    /// rather than not at all.
    pub explicit: bool,
    /// Host names accepted in an admin request's `Host` besides IP literals and `localhost`
    /// (a DNS-rebinding defence: a page served from another name is refused).
    pub hosts: Vec<String>,
}

/// Where the admin listener goes unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN,
            token: None,
            explicit: false,
            hosts: Vec::new(),
        }
    }
}

/// The runtime configuration, fully validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (quick mode has none).
    pub source: Option<PathBuf>,
    /// A hash of the file's text (0 for quick mode), to tell versions apart.
    pub hash: u64,
    /// The admin listener, unless turned off.
    pub admin: Option<AdminConfig>,
    /// Addresses to accept on, with their routes.
    pub listeners: Vec<ListenerConfig>,
    /// Named pools of backends; routes refer to them by index.
    pub pools: Vec<PoolConfig>,
    /// How long in-flight requests get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Worker threads; `None` means one per core.
    pub workers: Option<usize>,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name used in logs.
    pub name: String,
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Routes in the order written; the router sorts them by specificity.
    pub routes: Vec<RouteConfig>,
    /// Most client connections open at once, if limited.
    pub max_client_connections: Option<usize>,
    /// Its access log, if any.
    pub access_log: Option<AccessLogConfig>,
    /// Edge timeouts and request limits.
    pub client: ClientSettings,
}

/// One route: which requests go to which pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match.
    pub host: HostMatch,
    /// Path prefix to match, always starting with `/`.
    pub path_prefix: String,
    /// Index into [`Config::pools`].
    pub pool: usize,
}

/// How a route matches the request's host (port ignored, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// Any host, or none.
    Any,
    /// Exactly this host, lowercase.
    Exact(String),
    /// Any host ending in this suffix, lowercase, with its leading dot (`*.example.com` →
    /// `.example.com`), so subdomains match and the bare domain does not.
    Suffix(String),
}

/// The load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's).
    RoundRobin,
    /// Fewest in-flight requests relative to weight, ties by rotation.
    LeastConnections,
    /// Power of two random choices on in-flight requests.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency x (in-flight + 1).
    PeakEwma,
    /// Weighted random.
    Random,
    /// Maglev consistent hashing.
    Maglev,
    /// Ketama-style consistent hash ring.
    RingHash,
}

impl Algorithm {
    /// Every algorithm with its config name.
    pub const ALL: &'static [(&'static str, Algorithm)] = &[
        ("round_robin", Algorithm::RoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("least_request", Algorithm::LeastRequest),
        ("peak_ewma", Algorithm::PeakEwma),
        ("random", Algorithm::Random),
        ("maglev", Algorithm::Maglev),
        ("ring_hash", Algorithm::RingHash),
    ];

    /// True for the algorithms that hash a request key.
    pub fn hashes(self) -> bool {
        matches!(self, Algorithm::Maglev | Algorithm::RingHash)
    }

    /// The algorithm named `name` in the config, if there is one.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The config name of this algorithm.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn names() -> String {
        Self::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }
}

/// A pool of backends and how to use them.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The name from `[pools.NAME]`.
    pub name: String,
    /// How a backend is chosen.
    pub algorithm: Algorithm,
    /// At least one backend, no duplicates.
    pub backends: Vec<BackendConfig>,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// What hashing algorithms hash (`None` for the others).
    pub hash_key: Option<HashKey>,
    /// Algorithm settings beyond the name.
    pub select: SelectOptions,
    /// Peak-EWMA decay window.
    pub ewma_decay: Duration,
    /// Sticky sessions, if on.
    pub sticky: Option<StickyConfig>,
    /// Active health checks, if on.
    pub health_check: Option<HealthCheckConfig>,
    /// Outlier detection from real traffic.
    pub passive: PassiveConfig,
    /// Below this percentage of eligible backends the pool routes to all of them (0: never).
    pub panic_threshold: u32,
    /// Retry policy.
    pub retries: RetryConfig,
    /// Most concurrent requests per backend, if limited.
    pub max_connections: Option<u32>,
    /// How long a request may wait for a backend slot under `max_connections`.
    pub queue_timeout: Duration,
    /// Weight ramp for new and recovered backends, if on.
    pub slow_start: Option<SlowStart>,
    /// How often backends given by name are resolved again.
    pub dns_refresh: Duration,
}

/// Default interval between DNS resolutions of backends given by name.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// Sticky sessions: a cookie naming the backend a client was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie's name.
    pub cookie: String,
    /// Its `Max-Age`; `None` makes it a session cookie.
    pub ttl: Option<Duration>,
    /// The key of the hash from backend address to cookie value: from `secret`, else the
    /// `STEELYARD_STICKY_SECRET` environment variable; `None` means a random key per process
    /// (cookies then name nothing after a restart, and a fleet does not share them).
    pub secret: Option<String>,
}

/// The environment variable that gives sticky cookies their hash key when a pool's `sticky`
/// table has no `secret`.
pub const STICKY_SECRET_ENV: &str = "STEELYARD_STICKY_SECRET";

/// Default peak-EWMA decay window.
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// One backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of traffic, 1..=[`MAX_WEIGHT`].
    pub weight: u32,
    /// The `host:port` it was resolved from, when given as a name: re-resolved every
    /// `dns_refresh`, each address being a backend of this weight.
    pub dns_name: Option<String>,
}

/// Upstream timeouts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed to open a TCP connection to a backend (504 when exceeded).
    pub connect: Duration,
    /// Time allowed from sending the request to receiving response headers (504 when exceeded).
    pub response_header: Duration,
    /// How long an unused pooled upstream connection stays open.
    pub idle: Duration,
    /// Time for the whole request until response headers, retries included (504 when
    /// exceeded); `None` means only the per-attempt timeouts apply.
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            response_header: DEFAULT_RESPONSE_HEADER_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            request: None,
        }
    }
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Every problem found in a config file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded from disk.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

/// Collects located errors while validating one file.
pub(crate) struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.error(v.span(), format!("{key}: {msg}"));
                default
            }
        }
    }
}

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses a human duration such as `"250ms"`, `"2s"` or `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"500ms\", \"2s\" or \"1m\""))
}

/// Parses a backend address: `host:port` or `http://host:port` (trailing `/` allowed).
///
/// A host name is resolved here; the first IPv4 address wins over IPv6 ones. See
/// [`parse_backend_addresses`] for all of them.
pub fn parse_backend_address(s: &str) -> Result<SocketAddr, String> {
    parse_backend_addresses(s).map(|(addrs, _)| addrs[0])
}

/// Parses a backend address into every address it resolves to (IPv4 first, at least one),
/// with the `host:port` name when it was not an IP literal.
pub fn parse_backend_addresses(s: &str) -> Result<(Vec<SocketAddr>, Option<String>), String> {
    let rest = if let Some(rest) = s.strip_prefix("http://") {
        rest
    } else if s.starts_with("https://") {
        return Err(format!(
            "invalid backend address {s:?}: TLS to backends is not supported yet; use http://"
        ));
    } else if s.contains("://") {
        return Err(format!("invalid backend address {s:?}: only http:// is supported"));
    } else {
        s
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') {
        return Err(format!(
            "invalid backend address {s:?}: a backend is host:port, without a path"
        ));
    }
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok((vec![addr], None));
    }
    resolve_all(hostport)
        .map(|addrs| (addrs, Some(hostport.to_owned())))
        .map_err(|why| format!("invalid backend address {s:?}: {why}"))
}

/// Parses a listen address `ip:port` (or `host:port`, resolved once).
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    resolve(s).map_err(|why| format!("invalid listen address {s:?}: {why}"))
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = hostport.parse::<SocketAddr>() {
        return Ok(addr);
    }
    resolve_all(hostport).map(|addrs| addrs[0])
}

/// Every address of `host:port`, IPv4 ones first, without duplicates; never empty.
pub fn resolve_all(hostport: &str) -> Result<Vec<SocketAddr>, String> {
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if host.is_empty() {
        return Err("missing host before ':'".into());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("port {port:?} is not a number from 0 to 65535"));
    }
    let found: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
        .collect();
    let addrs = order_addresses(found);
    if addrs.is_empty() {
        return Err(format!("host {host:?} resolved to no address"));
    }
    Ok(addrs)
}

/// IPv4 addresses first, each once, otherwise in resolver order.
pub fn order_addresses(found: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found
        .iter()
        .filter(|a| a.is_ipv4())
        .chain(found.iter().filter(|a| a.is_ipv6()))
    {
        if !addrs.contains(a) {
            addrs.push(*a);
        }
    }
    addrs
}

/// Parses a route host: `example.com`, `*.example.com`, or `*` (any).
fn parse_host(s: &str) -> Result<HostMatch, String> {
    let lower = s.trim().to_ascii_lowercase();
    if lower.is_empty() || lower == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(format!("invalid host {s:?}: a wildcard is \"*.example.com\""));
        }
        return Ok(HostMatch::Suffix(format!(".{suffix}")));
    }
    if lower.contains('*') || lower.contains('/') || lower.contains(' ') {
        return Err(format!("invalid host {s:?}: use \"example.com\" or \"*.example.com\""));
    }
    Ok(HostMatch::Exact(lower))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Validates config text; `file` is the name errors carry.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let mut check = Checker {
            file,
            text,
            errors: Vec::new(),
        };
        let raw: FileConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                check.error(span, e.message().trim_end().to_owned());
                return Err(ConfigErrors(check.errors));
            }
        };
        let mut config = Self::validate(raw, &mut check);
        config.hash = crate::upstream::hash::hash64(text.as_bytes());
        check.errors.sort_by_key(|e| (e.line, e.column));
        if check.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(check.errors))
        }
    }

    fn validate(raw: FileConfig, check: &mut Checker) -> Config {
        let drain_timeout = check.duration("server.drain_timeout", &raw.server.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let workers = raw
            .server
            .workers
            .as_ref()
            .and_then(|w| match usize::try_from(*w.get_ref()) {
                Ok(n) if (1..=1024).contains(&n) => Some(n),
                _ => {
                    check.error(w.span(), "server.workers: must be from 1 to 1024");
                    None
                }
            });

        let pool_names: Vec<&String> = raw.pools.keys().collect();
        let pools: Vec<PoolConfig> = raw
            .pools
            .iter()
            .map(|(name, section)| validate_pool(name, section, check))
            .collect();

        if raw.listeners.is_empty() {
            check.error(0..0, "no [[listeners]]: at least one listener is required");
        }
        let mut listen_addrs = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let l_span = l.span();
            let l = l.get_ref();
            let listen = match parse_listen_address(l.listen.get_ref()) {
                Ok(a) => a,
                Err(msg) => {
                    check.error(l.listen.span(), format!("listeners[{i}].listen: {msg}"));
                    continue;
                }
            };
            if listen.port() != 0 && !listen_addrs.insert(listen) {
                check.error(
                    l.listen.span(),
                    format!("listeners[{i}].listen: duplicate listener address {listen}"),
                );
            }
            if l.routes.is_empty() {
                check.error(
                    l_span.clone(),
                    format!("listeners[{i}]: no [[listeners.routes]]; add one with pool = \"NAME\""),
                );
            }
            let mut seen = HashSet::new();
            let mut routes = Vec::new();
            for (j, r) in l.routes.iter().enumerate() {
                let key = format!("listeners[{i}].routes[{j}]");
                let r_span = r.span();
                let r = r.get_ref();
                let host = match &r.host {
                    None => Some(HostMatch::Any),
                    Some(h) => parse_host(h.get_ref())
                        .map_err(|msg| check.error(h.span(), format!("{key}.host: {msg}")))
                        .ok(),
                };
                let path_prefix = match &r.path_prefix {
                    None => Some("/".to_owned()),
                    Some(p) if p.get_ref().starts_with('/') => Some(p.get_ref().clone()),
                    Some(p) => {
                        check.error(
                            p.span(),
                            format!("{key}.path_prefix: {:?} must start with '/'", p.get_ref()),
                        );
                        None
                    }
                };
                let pool = pool_names.iter().position(|n| *n == r.pool.get_ref());
                if pool.is_none() {
                    let known = if pool_names.is_empty() {
                        "no pools are defined".to_owned()
                    } else {
                        format!(
                            "defined pools: {}",
                            pool_names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    };
                    check.error(
                        r.pool.span(),
                        format!("{key}.pool: no pool named {:?} ({known})", r.pool.get_ref()),
                    );
                }
                if let (Some(host), Some(path_prefix), Some(pool)) = (host, path_prefix, pool) {
                    if !seen.insert((host.clone(), path_prefix.clone())) {
                        check.error(
                            r_span,
                            format!("{key}: duplicate route (same host and path_prefix as an earlier route)"),
                        );
                    }
                    routes.push(RouteConfig {
                        host,
                        path_prefix,
                        pool,
                    });
                }
            }
            let max_client_connections =
                l.max_client_connections
                    .as_ref()
                    .and_then(|m| match usize::try_from(*m.get_ref()) {
                        Ok(n) if n >= 1 => Some(n),
                        _ => {
                            check.error(
                                m.span(),
                                format!("listeners[{i}].max_client_connections: must be at least 1"),
                            );
                            None
                        }
                    });
            let access_log = l.access_log.as_ref().and_then(|a| {
                let a = a.get_ref();
                let format = match a.format.as_ref().map(|f| f.get_ref().as_str()) {
                    None | Some("combined") => AccessLogFormat::Combined,
                    Some("json") => AccessLogFormat::Json,
                    Some(other) => {
                        let span = a.format.as_ref().map_or(0..0, |f| f.span());
                        check.error(
                            span,
                            format!("listeners[{i}].access_log.format: {other:?} is not \"combined\" or \"json\""),
                        );
                        return None;
                    }
                };
                let path = a.path.get_ref();
                Some(AccessLogConfig {
                    path: (path != "-").then(|| PathBuf::from(path)),
                    format,
                })
            });
            listeners.push(ListenerConfig {
                name: l.name.clone().unwrap_or_else(|| listen.to_string()),
                listen,
                routes,
                max_client_connections,
                access_log,
                client: ClientSettings {
                    trust_request_id: l.trust_request_id.unwrap_or(true),
                    ..client::validate(&format!("listeners[{i}]"), &l.timeouts, &l.limits, check)
                },
            });
        }

        let admin = validate_admin(&raw.admin, check);
        Config {
            source: None,
            hash: 0,
            admin,
            listeners,
            pools,
            drain_timeout,
            workers,
        }
    }

    /// Builds quick mode's config: one listener, one catch-all route, one pool named `default`.
    pub fn quick(listen: SocketAddr, backends: Vec<BackendConfig>, algorithm: Algorithm, timeouts: Timeouts) -> Config {
        let hash_key = algorithm.hashes().then_some(HashKey::ClientIp);
        Config {
            source: None,
            hash: 0,
            admin: Some(AdminConfig::default()),
            listeners: vec![ListenerConfig {
                name: "default".into(),
                listen,
                routes: vec![RouteConfig {
                    host: HostMatch::Any,
                    path_prefix: "/".into(),
                    pool: 0,
                }],
                max_client_connections: None,
                access_log: None,
                client: ClientSettings::default(),
            }],
            pools: vec![PoolConfig {
                name: "default".into(),
                algorithm,
                backends,
                timeouts,
                hash_key,
                select: SelectOptions::default(),
                ewma_decay: DEFAULT_EWMA_DECAY,
                sticky: None,
                health_check: None,
                passive: PassiveConfig::default(),
                panic_threshold: resilience::DEFAULT_PANIC_THRESHOLD,
                retries: RetryConfig::default(),
                max_connections: None,
                queue_timeout: resilience::DEFAULT_QUEUE_TIMEOUT,
                slow_start: None,
                dns_refresh: DEFAULT_DNS_REFRESH,
            }],
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            workers: None,
        }
    }

    /// The original demo's setup: `127.0.0.1:8080` → `127.0.0.1:8081`, `127.0.0.1:8082`.
    pub fn original_demo() -> Config {
        let backend = |port| BackendConfig {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            dns_name: None,
        };
        Config::quick(
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            vec![backend(8081), backend(8082)],
            Algorithm::RoundRobin,
            Timeouts::default(),
        )
    }

    /// A one-line summary, e.g. for `steelyard check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let routes: usize = self.listeners.iter().map(|l| l.routes.len()).sum();
        format!(
            "{} listener(s), {} route(s), {} pool(s), {} backend(s)",
            self.listeners.len(),
            routes,
            self.pools.len(),
            backends
        )
    }
}

fn validate_pool(name: &str, section: &Spanned<PoolSection>, check: &mut Checker) -> PoolConfig {
    let p = section.get_ref();
    let key = format!("pools.{name}");
    let algorithm = match &p.algorithm {
        None => Algorithm::RoundRobin,
        Some(a) => Algorithm::from_name(a.get_ref()).unwrap_or_else(|| {
            check.error(
                a.span(),
                format!(
                    "{key}.algorithm: unknown algorithm {:?} (expected one of: {})",
                    a.get_ref(),
                    Algorithm::names()
                ),
            );
            Algorithm::RoundRobin
        }),
    };
    if p.backends.get_ref().is_empty() {
        check.error(
            p.backends.span(),
            format!("{key}.backends: a pool needs at least one backend"),
        );
    }
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (i, entry) in p.backends.get_ref().iter().enumerate() {
        let bkey = format!("{key}.backends[{i}]");
        for b in validate_backend(&bkey, entry, check) {
            match backends.iter().find(|o| o.address == b.address) {
                // Two names resolving to one address: that address is one backend.
                Some(o) if o.dns_name.is_some() || b.dns_name.is_some() => {}
                Some(_) => check.error(entry.span(), format!("{bkey}: duplicate backend {}", b.address)),
                None => backends.push(b),
            }
        }
    }
    let hash_key = match &p.hash_key {
        Some(k) if !algorithm.hashes() => {
            check.error(
                k.span(),
                format!("{key}.hash_key: only maglev and ring_hash hash a key; remove it or change the algorithm"),
            );
            None
        }
        Some(k) => HashKey::parse(k.get_ref())
            .map_err(|msg| check.error(k.span(), format!("{key}.hash_key: {msg}")))
            .ok(),
        None => algorithm.hashes().then_some(HashKey::ClientIp),
    };
    let mut select = SelectOptions::default();
    if let Some(size) = &p.maglev_table_size {
        let n = *size.get_ref();
        if algorithm != Algorithm::Maglev {
            check.error(
                size.span(),
                format!("{key}.maglev_table_size: only applies to algorithm = \"maglev\""),
            );
        } else if !(101..=16_777_259).contains(&n) || !is_prime(n as u64) {
            check.error(
                size.span(),
                format!("{key}.maglev_table_size: must be a prime from 101 to 16777259 (default 65537), got {n}"),
            );
        } else if (n as usize) < backends.len() {
            check.error(
                size.span(),
                format!("{key}.maglev_table_size: smaller than the number of backends"),
            );
        } else {
            select.maglev_table_size = n as usize;
        }
    }
    let mut ewma_decay = DEFAULT_EWMA_DECAY;
    if let Some(ewma) = &p.peak_ewma {
        ewma_decay = check.duration(&format!("{key}.peak_ewma.decay"), &ewma.decay, DEFAULT_EWMA_DECAY);
        select.ewma_default_rtt = check.duration(
            &format!("{key}.peak_ewma.default_rtt"),
            &ewma.default_rtt,
            select.ewma_default_rtt,
        );
        if ewma_decay.is_zero() {
            check.error(
                ewma.decay.as_ref().map_or(0..0, |d| d.span()),
                format!("{key}.peak_ewma.decay: must be greater than zero"),
            );
        }
    }
    let sticky = p.sticky.as_ref().and_then(|s| {
        let s = s.get_ref();
        let name = s.cookie.get_ref();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            check.error(
                s.cookie.span(),
                format!("{key}.sticky.cookie: {name:?} is not a valid cookie name"),
            );
        }
        let ttl = s
            .ttl
            .as_ref()
            .map(|t| check.duration(&format!("{key}.sticky.ttl"), &Some(t.clone()), Duration::ZERO));
        let secret = match &s.secret {
            Some(secret) if secret.get_ref().len() < 16 => {
                check.error(
                    secret.span(),
                    format!("{key}.sticky.secret: use at least 16 characters (a random string)"),
                );
                None
            }
            Some(secret) => Some(secret.get_ref().clone()),
            None => std::env::var(STICKY_SECRET_ENV).ok().filter(|s| !s.is_empty()),
        };
        valid.then(|| StickyConfig {
            cookie: name.clone(),
            ttl,
            secret,
        })
    });
    let health_check = p
        .health_check
        .as_ref()
        .map(|h| resilience::health_check(&key, h, check));
    let passive = resilience::passive(&key, &p.passive, check);
    let retries = resilience::retries(&key, &p.retries, check);
    let (max_connections, queue_timeout, panic_threshold) = resilience::limits(&key, p, check);
    let slow_start = resilience::slow_start(&key, p, check);
    let dns_refresh = check.duration(&format!("{key}.dns_refresh"), &p.dns_refresh, DEFAULT_DNS_REFRESH);
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&dns_refresh) {
        let span = p.dns_refresh.as_ref().map_or(0..0, |d| d.span());
        check.error(span, format!("{key}.dns_refresh: must be from 1s to 1h"));
    }
    PoolConfig {
        name: name.to_owned(),
        algorithm,
        backends,
        timeouts: validate_timeouts(&key, &p.timeouts, check),
        hash_key,
        select,
        ewma_decay,
        sticky,
        health_check,
        passive,
        panic_threshold,
        retries,
        max_connections,
        queue_timeout,
        slow_start,
        dns_refresh,
    }
}

fn validate_admin(section: &Option<Spanned<file::AdminSection>>, check: &mut Checker) -> Option<AdminConfig> {
    let Some(section) = section else {
        return Some(AdminConfig::default());
    };
    let a = section.get_ref();
    if a.enabled == Some(false) {
        return None;
    }
    let listen = match &a.listen {
        None => DEFAULT_ADMIN_LISTEN,
        Some(l) => match parse_listen_address(l.get_ref()) {
            Ok(addr) => addr,
            Err(msg) => {
                check.error(l.span(), format!("admin.listen: {msg}"));
                DEFAULT_ADMIN_LISTEN
            }
        },
    };
    let token = match (&a.token, &a.token_env) {
        (Some(t), None) if !t.get_ref().is_empty() => Some(t.get_ref().clone()),
        (Some(t), None) => {
            check.error(t.span(), "admin.token: must not be empty");
            None
        }
        (None, Some(var)) => match std::env::var(var.get_ref()) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                check.error(
                    var.span(),
                    format!("admin.token_env: environment variable {:?} is not set", var.get_ref()),
                );
                None
            }
        },
        (Some(t), Some(_)) => {
            check.error(t.span(), "admin: give token or token_env, not both");
            None
        }
        (None, None) => None,
    };
    if !listen.ip().is_loopback() && token.is_none() {
        let span = a.listen.as_ref().map_or(section.span(), |l| l.span());
        check.error(
            span,
            format!(
                "admin.listen: {listen} is reachable from other machines; set admin.token (or token_env) to protect it"
            ),
        );
    }
    let hosts = a.hosts.as_ref().map_or_else(Vec::new, |h| {
        for name in h.get_ref() {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                check.error(h.span(), format!("admin.hosts: {name:?} is not a host name"));
            }
        }
        h.get_ref().iter().map(|n| n.to_ascii_lowercase()).collect()
    });
    Some(AdminConfig {
        listen,
        token,
        explicit: a.listen.is_some(),
        hosts,
    })
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn validate_backend(key: &str, entry: &Spanned<BackendEntry>, check: &mut Checker) -> Vec<BackendConfig> {
    let e = entry.get_ref();
    // A bare string has an empty span of its own; use the entry's.
    let addr_span = if e.address.span().is_empty() {
        entry.span()
    } else {
        e.address.span()
    };
    let addresses = parse_backend_addresses(e.address.get_ref())
        .map_err(|msg| check.error(addr_span, format!("{key}.address: {msg}")))
        .ok();
    let weight = match &e.weight {
        None => Some(1),
        Some(w) => match u32::try_from(*w.get_ref()) {
            Ok(n) if (1..=MAX_WEIGHT).contains(&n) => Some(n),
            _ => {
                check.error(
                    w.span(),
                    format!("{key}.weight: must be from 1 to {MAX_WEIGHT}, got {}", w.get_ref()),
                );
                None
            }
        },
    };
    let (Some((addresses, dns_name)), Some(weight)) = (addresses, weight) else {
        return Vec::new();
    };
    addresses
        .into_iter()
        .map(|address| BackendConfig {
            address,
            weight,
            dns_name: dns_name.clone(),
        })
        .collect()
}

fn validate_timeouts(key: &str, t: &TimeoutsSection, check: &mut Checker) -> Timeouts {
    let timeouts = Timeouts {
        connect: check.duration(&format!("{key}.timeouts.connect"), &t.connect, DEFAULT_CONNECT_TIMEOUT),
        response_header: check.duration(
            &format!("{key}.timeouts.response_header"),
            &t.response_header,
            DEFAULT_RESPONSE_HEADER_TIMEOUT,
        ),
        idle: check.duration(&format!("{key}.timeouts.idle"), &t.idle, DEFAULT_IDLE_TIMEOUT),
        request: t.request.as_ref().map(|r| {
            check.duration(
                &format!("{key}.timeouts.request"),
                &Some(r.clone()),
                Duration::from_secs(1),
            )
        }),
    };
    for (name, value, span) in [
        ("connect", timeouts.connect, t.connect.as_ref().map(|s| s.span())),
        (
            "response_header",
            timeouts.response_header,
            t.response_header.as_ref().map(|s| s.span()),
        ),
        ("idle", timeouts.idle, t.idle.as_ref().map(|s| s.span())),
    ] {
        if value.is_zero() {
            check.error(
                span.unwrap_or(0..0),
                format!("{key}.timeouts.{name}: must be greater than zero"),
            );
        }
    }
    timeouts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text, "t.toml") {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
[[listeners]]
listen = "127.0.0.1:0"
  [[listeners.routes]]
  host = "*.example.com"
  path_prefix = "/api"
  pool = "api"
  [[listeners.routes]]
  pool = "web"

[pools.web]
backends = ["127.0.0.1:8081", { address = "http://127.0.0.1:8082", weight = 3 }]

[pools.api]
algorithm = "round_robin"
backends = ["127.0.0.1:9000"]
timeouts = { connect = "2s", response_header = "500ms", idle = "1m" }
"#;

    #[test]
    fn accepts_a_good_file() {
        let c = Config::from_toml(GOOD, "t.toml").expect("valid");
        assert_eq!(c.pools.len(), 2);
        let api = c.pools.iter().position(|p| p.name == "api").expect("api pool");
        assert_eq!(c.pools[api].timeouts.response_header, Duration::from_millis(500));
        assert_eq!(c.listeners[0].routes[0].host, HostMatch::Suffix(".example.com".into()));
        assert_eq!(c.listeners[0].routes[0].pool, api);
        let web = &c.pools[c.listeners[0].routes[1].pool];
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(web.backends[1].address, "127.0.0.1:8082".parse().expect("addr"));
    }

    #[test]
    fn unknown_key_is_located() {
        let text = "[[listeners]]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.toml:3:1: unknown field `lisen`"), "{e:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_position() {
        let text = r#"[[listeners]]
listen = "127.0.0.1:7000"
routes = [{ pool = "nope" }]

[[listeners]]
listen = "127.0.0.1:7000"
routes = [{ pool = "web" }]

[pools.web]
backends = ["localhost:notaport", { address = "127.0.0.1:1", weight = 0 }]
timeouts = { connect = "soon" }
"#;
        let e = errors(text);
        assert_eq!(
            e,
            vec![
                "t.toml:3:20: listeners[0].routes[0].pool: no pool named \"nope\" (defined pools: web)",
                "t.toml:6:10: listeners[1].listen: duplicate listener address 127.0.0.1:7000",
                "t.toml:10:13: pools.web.backends[0].address: invalid backend address \"localhost:notaport\": port \"notaport\" is not a number from 0 to 65535",
                "t.toml:10:71: pools.web.backends[1].weight: must be from 1 to 256, got 0",
                "t.toml:11:24: pools.web.timeouts.connect: invalid duration \"soon\" (expected number at 0); write it like \"500ms\", \"2s\" or \"1m\"",
            ]
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn backend_address_forms() {
        let a: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        assert_eq!(parse_backend_address("127.0.0.1:8081"), Ok(a));
        assert_eq!(parse_backend_address("http://127.0.0.1:8081/"), Ok(a));
        assert!(parse_backend_address("https://127.0.0.1:8081").is_err());
        assert!(parse_backend_address("127.0.0.1:8081/x").is_err());
        assert!(parse_backend_address("127.0.0.1").is_err());
        assert_eq!(parse_backend_address("[::1]:80"), Ok("[::1]:80".parse().expect("addr")));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("API.example.com"),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            parse_host("*.Example.com"),
            Ok(HostMatch::Suffix(".example.com".into()))
        );
        assert_eq!(parse_host("*"), Ok(HostMatch::Any));
        assert!(parse_host("a.*.com").is_err());
    }
}
