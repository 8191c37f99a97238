//! `[pools.NAME]`: backends, algorithm, timeouts, stickiness and resilience of one pool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use super::address::{backend_scheme_is_tls, parse_backend_addresses, split_etcd_url};
use super::file::{BackendEntry, DiscoverSection, PoolSection, TimeoutsSection};
use super::resilience::{self, HealthCheckConfig, PassiveConfig, RetryConfig, SlowStart};
use super::{CertificateFiles, Checker};

/// The part of a request that hashing algorithms (maglev, ring_hash) hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The path, without the query.
    Path,
    /// The raw value of a query parameter.
    Query(String),
}

impl HashKey {
    /// Parses `client_ip`, `header:NAME`, `cookie:NAME`, `path` or `query:NAME`.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let expected = "expected client_ip, header:NAME, cookie:NAME, path or query:NAME";
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "path" => Ok(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("invalid hash_key {s:?}: {name:?} is not a header name")),
            Some(("cookie", name)) if !name.trim().is_empty() => Ok(HashKey::Cookie(name.trim().to_owned())),
            Some(("query", name)) if !name.trim().is_empty() => Ok(HashKey::Query(name.trim().to_owned())),
            _ => Err(format!("invalid hash_key {s:?} ({expected})")),
        }
    }
}

/// Maglev's default lookup table size: a prime, about 650 slots per backend at 100 backends.
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65537;

/// Algorithm settings beyond the name, from the pool's config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectOptions {
    /// Maglev lookup table size (a prime).
    pub maglev_table_size: usize,
    /// Peak-EWMA: the assumed latency of a backend with no sample yet.
    pub ewma_default_rtt: Duration,
    /// Maglev and ring hash: no backend takes a request while it holds more than this times
    /// the mean in-flight load (consistent hashing with bounded loads); `None` is unbounded.
    pub balance_factor: Option<f64>,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            ewma_default_rtt: Duration::from_millis(30),
            balance_factor: None,
        }
    }
}

/// Largest accepted backend weight (HAProxy's limit too); keeps the weighted schedule small.
pub const MAX_WEIGHT: u32 = 256;

/// Default time allowed to connect to a backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time allowed for a backend's response headers after the request was sent.
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Default lifetime of an unused pooled upstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The protocol spoken to the backends.
    pub protocol: UpstreamProtocol,
    /// TLS to the backends, if on.
    pub tls: Option<UpstreamTlsConfig>,
    /// The PROXY protocol version sent on each connection to a backend, if any.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// Requests per key and period; `None` is unlimited.
    pub rate_limit: Option<super::RateLimitConfig>,
    /// Backends found in DNS instead of `backends`.
    pub discover: Option<DiscoverConfig>,
}

/// A PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text line.
    V1,
    /// The binary header, with TLVs.
    V2,
}

/// The protocol a pool speaks to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over TLS, agreed by ALPN.
    H2,
    /// HTTP/2 over cleartext TCP, by prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    /// True for both HTTP/2 forms.
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// TLS from Steelyard to a pool's backends: the files as configured (loaded and checked by
/// `crate::tls`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTlsConfig {
    /// Sent as SNI and verified instead of each backend's host name (or IP address).
    pub server_name: Option<String>,
    /// PEM CA certificates to verify against instead of the system's trusted roots.
    pub ca: Option<PathBuf>,
    /// False accepts any certificate (`check` warns).
    pub verify: bool,
    /// The client certificate presented to backends that ask for one (mutual TLS).
    pub client_certificate: Option<CertificateFiles>,
    /// `FILE:LINE:COL` of the setting, for errors found when the files are loaded.
    pub at: String,
    /// Its key, e.g. `pools.api.tls`.
    pub key_name: String,
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
    /// Used only while no other (non-backup) backend of the pool is eligible: HAProxy's
    /// `backup`, nginx's `backup`, and DNS SRV records of a higher priority value.
    pub backup: bool,
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

pub(super) fn validate(name: &str, section: &Spanned<PoolSection>, has_redis: bool, check: &mut Checker) -> PoolConfig {
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
    let discover = p.discover.as_ref().and_then(|d| discover(&key, d, check));
    match (&p.backends, &p.discover) {
        (Some(b), Some(_)) => check.error(
            b.span(),
            format!("{key}.backends: a pool with discover takes its backends from DNS or etcd; remove backends"),
        ),
        (Some(b), None) if b.get_ref().is_empty() => {
            check.error(b.span(), format!("{key}.backends: a pool needs at least one backend"))
        }
        (None, None) => check.error(
            section.span(),
            format!("{key}: no backends; add backends = [\"HOST:PORT\"] or discover = {{ srv = \"NAME\" }}"),
        ),
        _ => {}
    }
    let entries: &[Spanned<BackendEntry>] = p.backends.as_ref().map_or(&[], |b| b.get_ref());
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
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
    if let Some(f) = &p.balance_factor {
        let v = *f.get_ref();
        if !algorithm.hashes() {
            check.error(
                f.span(),
                format!("{key}.balance_factor: only applies to algorithm = \"maglev\" or \"ring_hash\""),
            );
        } else if !(v > 1.0 && v <= 10.0) {
            check.error(
                f.span(),
                format!("{key}.balance_factor: must be more than 1.0 and at most 10, got {v}"),
            );
        } else {
            select.balance_factor = Some(v);
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
    let (protocol, tls) = upstream_protocol(&key, p, check);
    let send_proxy_protocol = match p.send_proxy_protocol.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None => None,
        Some((_, span)) if protocol.is_h2() => {
            check.error(
                span,
                format!("{key}.send_proxy_protocol: an HTTP/2 connection carries many clients' requests; a PROXY header names one"),
            );
            None
        }
        Some(("v1", _)) => Some(ProxyVersion::V1),
        Some(("v2", _)) => Some(ProxyVersion::V2),
        Some((other, span)) => {
            check.error(
                span,
                format!("{key}.send_proxy_protocol: {other:?} is not \"v1\" or \"v2\""),
            );
            None
        }
    };
    let rate_limit = super::rate_limit::rate_limit(&key, &p.rate_limit, has_redis, check);
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
        protocol,
        tls,
        send_proxy_protocol,
        rate_limit,
        discover,
    }
}

/// Validates `{key}.discover`.
fn discover(key: &str, d: &Spanned<DiscoverSection>, check: &mut Checker) -> Option<DiscoverConfig> {
    let s = d.get_ref();
    let key = format!("{key}.discover");
    let name = match (&s.srv, &s.a, &s.etcd) {
        (Some(srv), None, None) => {
            let n = srv.get_ref().trim().trim_end_matches('.');
            if n.is_empty() || n.contains(':') || n.contains(' ') {
                check.error(
                    srv.span(),
                    format!(
                        "{key}.srv: {:?} is not a DNS name like \"_http._tcp.app.internal\"",
                        srv.get_ref()
                    ),
                );
                return None;
            }
            DiscoverName::Srv(format!("{n}."))
        }
        (None, Some(a), None) => match a
            .get_ref()
            .rsplit_once(':')
            .map(|(h, p)| (h.trim().trim_end_matches('.'), p.parse::<u16>()))
        {
            Some((host, Ok(port))) if !host.is_empty() && port > 0 => DiscoverName::A {
                host: format!("{host}."),
                port,
            },
            _ => {
                check.error(a.span(), format!("{key}.a: {:?} is not NAME:PORT", a.get_ref()));
                return None;
            }
        },
        (None, None, Some(etcd)) => {
            let parsed = split_etcd_url(etcd.get_ref()).filter(|(_, prefix)| !prefix.trim_matches('/').is_empty());
            let Some((endpoint, prefix)) = parsed else {
                check.error(
                    etcd.span(),
                    format!(
                        "{key}.etcd: {:?} is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX/ (keys PREFIX/IP:PORT are the backends)",
                        etcd.get_ref()
                    ),
                );
                return None;
            };
            for (set, name) in [
                (s.nameserver.as_ref().map(Spanned::span), "nameserver"),
                (s.min_ttl.as_ref().map(Spanned::span), "min_ttl"),
                (s.max_ttl.as_ref().map(Spanned::span), "max_ttl"),
            ] {
                if let Some(span) = set {
                    check.error(
                        span,
                        format!("{key}.{name}: applies to DNS discovery; etcd pushes every change as it happens"),
                    );
                }
            }
            // A key is PREFIX + address: "/web/" must not also take "/web2/...".
            DiscoverName::Etcd {
                endpoint: endpoint.to_owned(),
                prefix: format!("/{}/", prefix.trim_matches('/')),
            }
        }
        _ => {
            check.error(
                d.span(),
                format!(
                    "{key}: give exactly one of srv = \"NAME\", a = \"NAME:PORT\" or etcd = \"etcd://HOST:PORT[,HOST:PORT...]/PREFIX/\""
                ),
            );
            return None;
        }
    };
    let nameserver = match &s.nameserver {
        None => None,
        Some(ns) => match ns.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                check.error(
                    ns.span(),
                    format!("{key}.nameserver: {:?} is not IP:PORT", ns.get_ref()),
                );
                None
            }
        },
    };
    let min_ttl = check.duration(&format!("{key}.min_ttl"), &s.min_ttl, DEFAULT_DISCOVER_MIN_TTL);
    let max_ttl = check.duration(&format!("{key}.max_ttl"), &s.max_ttl, DEFAULT_DISCOVER_MAX_TTL);
    if min_ttl < Duration::from_millis(100) || max_ttl < min_ttl || max_ttl > Duration::from_secs(86_400) {
        check.error(
            d.span(),
            format!("{key}: min_ttl must be at least 100ms and max_ttl from min_ttl to 24h"),
        );
    }
    Some(DiscoverConfig {
        name,
        nameserver,
        min_ttl,
        max_ttl,
    })
}

/// Default shortest time between discovery lookups.
pub const DEFAULT_DISCOVER_MIN_TTL: Duration = Duration::from_secs(1);
/// Default longest time between discovery lookups.
pub const DEFAULT_DISCOVER_MAX_TTL: Duration = Duration::from_secs(300);

/// A pool's backends found in DNS or registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// What to look up.
    pub name: DiscoverName,
    /// The DNS server to ask; the system's when `None`.
    pub nameserver: Option<SocketAddr>,
    /// Shortest time between lookups.
    pub min_ttl: Duration,
    /// Longest time between lookups.
    pub max_ttl: Duration,
}

/// Where a pool's backends come from: a DNS name (fully qualified, ending in a dot) or an
/// etcd key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverName {
    /// SRV records: target, port, weight; the lowest priority value serves, the others are
    /// backups (RFC 2782).
    Srv(String),
    /// A and AAAA records of `host`, each a backend on `port`.
    A {
        /// The name.
        host: String,
        /// The backends' port.
        port: u16,
    },
    /// Keys under `prefix` in etcd, each `PREFIX` + `IP:PORT` a backend, its value (if not
    /// empty) the weight; they come and go with their writers' leases.
    Etcd {
        /// `HOST:PORT` of the etcd cluster's client endpoints, comma-separated.
        endpoint: String,
        /// The key prefix, starting and ending with `/`.
        prefix: String,
    },
}

/// The pool's protocol and TLS settings: TLS is on when a backend is written `https://` or
/// the pool has a `tls` table, and then for every backend of the pool.
fn upstream_protocol(key: &str, p: &PoolSection, check: &mut Checker) -> (UpstreamProtocol, Option<UpstreamTlsConfig>) {
    let entries: &[Spanned<BackendEntry>] = p.backends.as_ref().map_or(&[], |b| b.get_ref());
    let schemes: Vec<(Option<bool>, std::ops::Range<usize>)> = entries
        .iter()
        .map(|e| (backend_scheme_is_tls(e.get_ref().address.get_ref()), e.span()))
        .collect();
    let https = schemes.iter().find(|(s, _)| *s == Some(true));
    let tls_on = https.is_some() || p.tls.is_some();
    if tls_on {
        if let Some((_, span)) = schemes.iter().find(|(s, _)| *s == Some(false)) {
            check.error(
                span.clone(),
                format!("{key}.backends: http:// in a pool that uses TLS (https:// backends or a tls table); a pool's backends share one scheme"),
            );
        }
    }
    let protocol = match p.protocol.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("h2", span)) => {
            if !tls_on {
                check.error(
                    span,
                    format!("{key}.protocol: \"h2\" is HTTP/2 over TLS: write the backends https:// (or use \"h2c\" for cleartext)"),
                );
            }
            UpstreamProtocol::H2
        }
        Some(("h2c", span)) => {
            if tls_on {
                check.error(
                    span,
                    format!("{key}.protocol: \"h2c\" is cleartext HTTP/2; over TLS use \"h2\""),
                );
            }
            UpstreamProtocol::H2c
        }
        Some((other, span)) => {
            check.error(
                span,
                format!("{key}.protocol: {other:?} is not \"http1\", \"h2\" or \"h2c\""),
            );
            UpstreamProtocol::Http1
        }
    };
    if !tls_on {
        return (protocol, None);
    }
    let section = p.tls.as_ref();
    let at_span = section.map_or_else(|| https.map_or(0..0, |(_, s)| s.clone()), |t| t.span());
    let t = section.map(|t| t.get_ref());
    let server_name = t.and_then(|t| t.server_name.as_ref()).and_then(|n| {
        let name = n.get_ref();
        if rustls_pki_name_is_valid(name) {
            Some(name.clone())
        } else {
            check.error(
                n.span(),
                format!("{key}.tls.server_name: {name:?} is not a DNS name or IP address"),
            );
            None
        }
    });
    let client_certificate = match (t.and_then(|t| t.cert.as_ref()), t.and_then(|t| t.key.as_ref())) {
        (Some(cert), Some(k)) => Some(CertificateFiles {
            cert: check.path(cert.get_ref()),
            key: check.path(k.get_ref()),
            at: check.location(cert.span()),
            key_name: format!("{key}.tls.cert"),
        }),
        (Some(cert), None) => {
            check.error(
                cert.span(),
                format!("{key}.tls.cert: set key too (the client certificate's private key)"),
            );
            None
        }
        (None, Some(k)) => {
            check.error(
                k.span(),
                format!("{key}.tls.key: set cert too (the client certificate it belongs to)"),
            );
            None
        }
        (None, None) => None,
    };
    let config = UpstreamTlsConfig {
        server_name,
        ca: t.and_then(|t| t.ca.as_ref()).map(|c| check.path(c.get_ref())),
        verify: t.and_then(|t| t.verify.as_ref()).is_none_or(|v| *v.get_ref()),
        client_certificate,
        at: check.location(at_span),
        key_name: format!("{key}.tls"),
    };
    (protocol, Some(config))
}

/// True when `name` can be sent as SNI and verified: a DNS name or an IP address.
fn rustls_pki_name_is_valid(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name).is_ok()
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
    let addresses = parse_backend_addresses(e.address.get_ref(), check.resolver)
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
            backup: e.backup.unwrap_or(false),
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
