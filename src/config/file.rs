//! The TOML file as serde types, mirroring the file one to one.
//!
//! Nothing here is validated beyond its TOML type: addresses are still strings, durations are
//! still `"2s"`. Every value that validation may reject is [`Spanned`] so the error can name the
//! line and column it came from. [`super::Config`] is built from these types.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[admin]`: the admin API, metrics and dashboard.
    pub admin: Option<Spanned<AdminSection>>,
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// `[[listeners]]`: addresses to accept on, each with its routes.
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerSection>>,
    /// `[pools.NAME]`: named groups of backends.
    #[serde(default)]
    pub pools: BTreeMap<String, Spanned<PoolSection>>,
    /// `[redis]`: where `scope = "global"` rate limits are counted.
    pub redis: Option<Spanned<RedisSection>>,
}

/// `[redis]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port[/db]`.
    pub url: Spanned<String>,
    /// Longest a request waits for Redis.
    pub timeout: Option<Spanned<String>>,
}

/// `discover = { srv | a, nameserver, min_ttl, max_ttl }` of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverSection {
    /// An SRV name: each record is a backend (target, port, weight; priority groups).
    pub srv: Option<Spanned<String>>,
    /// `NAME:PORT`: each A/AAAA record of NAME is a backend on PORT.
    pub a: Option<Spanned<String>>,
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX/`: each key `PREFIX/IP:PORT` is a backend (its
    /// value, if any, the weight).
    pub etcd: Option<Spanned<String>>,
    /// `IP:PORT` of the DNS server to ask; the system's (`/etc/resolv.conf`) by default.
    pub nameserver: Option<Spanned<String>>,
    /// Shortest time between lookups, whatever the records' TTL.
    pub min_ttl: Option<Spanned<String>>,
    /// Longest time between lookups, whatever the records' TTL.
    pub max_ttl: Option<Spanned<String>>,
}

/// `rate_limit = { key, rate, burst, scope, on_redis_error }` of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// What tells clients apart: `client_ip` (default), `header:NAME`, `cookie:NAME`, `path`,
    /// `query:NAME`.
    pub key: Option<Spanned<String>>,
    /// `"100/s"`, `"600/m"`, `"10000/h"`.
    pub rate: Spanned<String>,
    /// Requests allowed at once; the rate's count by default.
    pub burst: Option<Spanned<i64>>,
    /// `"local"` (default) or `"global"` (shared through `[redis]`).
    pub scope: Option<Spanned<String>>,
    /// `"allow"` (default) or `"deny"` when Redis cannot answer in time.
    pub on_redis_error: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `false` turns the admin listener off.
    pub enabled: Option<bool>,
    /// Address of the admin listener.
    pub listen: Option<Spanned<String>>,
    /// Bearer token every admin request must carry.
    pub token: Option<Spanned<String>>,
    /// Name of an environment variable holding the token.
    pub token_env: Option<Spanned<String>>,
    /// Host names (besides IP literals and `localhost`) that admin requests may carry in
    /// `Host`.
    pub hosts: Option<Spanned<Vec<String>>>,
}

/// `[server]`: settings of the process as a whole.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub drain_timeout: Option<Spanned<String>>,
    /// Worker threads; default is one per core.
    pub workers: Option<Spanned<i64>>,
    /// The user to run as once the listeners are bound (when started as root).
    pub user: Option<Spanned<String>>,
    /// The group to run as; default: the user's primary group.
    pub group: Option<Spanned<String>>,
}

/// One `[[listeners]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// A name for logs; defaults to the listen address.
    pub name: Option<String>,
    /// `"ip:port"` to accept on.
    pub listen: Spanned<String>,
    /// `[[listeners.routes]]`: which pool gets which request.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSection>>,
    /// Most client connections open at once; more are answered 503 and closed.
    pub max_client_connections: Option<Spanned<i64>>,
    /// `access_log = { path, format }`.
    pub access_log: Option<Spanned<AccessLogSection>>,
    /// `timeouts = { head, keep_alive, body_idle, response_body_idle, tunnel_idle }`.
    pub timeouts: Option<Spanned<ListenerTimeoutsSection>>,
    /// `limits = { header_bytes, header_count, uri_bytes, request_body }`.
    pub limits: Option<Spanned<ListenerLimitsSection>>,
    /// `false`: replace every client's `X-Request-Id` with one of ours.
    pub trust_request_id: Option<bool>,
    /// `tls = { certificates = [...] }`: terminate TLS on this listener.
    pub tls: Option<Spanned<TlsSection>>,
    /// `true`: answer every request with a 308 to its `https://` URL.
    pub redirect_https: Option<Spanned<bool>>,
    /// `"http"` (default) or `"tcp"`.
    pub mode: Option<Spanned<String>>,
    /// `mode = "tcp"`: the pool every connection goes to.
    pub pool: Option<Spanned<String>>,
    /// `"v1"`, `"v2"` or `"optional"`: accept the PROXY protocol from a balancer in front.
    pub proxy_protocol: Option<Spanned<String>>,
}

/// A listener's `timeouts = {...}`: how long clients may take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTimeoutsSection {
    /// Time to receive a whole request head.
    pub head: Option<Spanned<String>>,
    /// How long a keep-alive connection may wait for its next request.
    pub keep_alive: Option<Spanned<String>>,
    /// Longest time without a byte either way while a body moves.
    pub body_idle: Option<Spanned<String>>,
    /// Longest time without a byte from the backend while its response body streams.
    pub response_body_idle: Option<Spanned<String>>,
    /// Longest time without a byte either way on an upgraded connection.
    pub tunnel_idle: Option<Spanned<String>>,
}

/// A listener's `limits = {...}` on requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimitsSection {
    /// Most bytes in a request head.
    pub header_bytes: Option<Spanned<i64>>,
    /// Most header fields in a request.
    pub header_count: Option<Spanned<i64>>,
    /// Longest request target.
    pub uri_bytes: Option<Spanned<i64>>,
    /// Largest request body.
    pub request_body: Option<Spanned<i64>>,
}

/// `tls = { certificates = [{ cert = "site.pem", key = "site.key" }, ...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificates to serve, chosen by SNI; the first is the default.
    pub certificates: Vec<Spanned<CertificateSection>>,
    /// PEM CA certificates that client certificates must chain to.
    pub client_ca: Option<Spanned<String>>,
    /// `"required"` (default with `client_ca`) or `"optional"`.
    pub client_auth: Option<Spanned<String>>,
}

/// One certificate chain and its key, PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// The chain, leaf first.
    pub cert: Spanned<String>,
    /// The private key.
    pub key: Spanned<String>,
}

/// `access_log = { path = "-" | "/var/log/...", format = "combined" | "json" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// A file, or `-` for standard output.
    pub path: Spanned<String>,
    /// `combined` (default) or `json`.
    pub format: Option<Spanned<String>>,
}

/// One `[[listeners.routes]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`); absent matches any host.
    pub host: Option<Spanned<String>>,
    /// Path prefix; default `/`.
    pub path_prefix: Option<Spanned<String>>,
    /// Name of the pool the request goes to.
    pub pool: Spanned<String>,
}

/// One `[pools.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// How a backend is chosen; default `round_robin`.
    pub algorithm: Option<Spanned<String>>,
    /// The backends: `"host:port"` or `{ address = "host:port", weight = N }`.
    /// Absent when `discover` finds them.
    pub backends: Option<Spanned<Vec<Spanned<BackendEntry>>>>,
    /// Backends found in DNS: `{ srv = "_http._tcp.NAME" }` or `{ a = "NAME:PORT" }`.
    pub discover: Option<Spanned<DiscoverSection>>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// What `maglev` and `ring_hash` hash: `client_ip`, `header:NAME`, `cookie:NAME`, `path`,
    /// `query:NAME`.
    pub hash_key: Option<Spanned<String>>,
    /// Maglev lookup table size (a prime).
    pub maglev_table_size: Option<Spanned<i64>>,
    /// Bounded loads for maglev and ring_hash: at most this times the mean in-flight load.
    pub balance_factor: Option<Spanned<f64>>,
    /// `peak_ewma` settings.
    pub peak_ewma: Option<PeakEwmaSection>,
    /// Sticky sessions by cookie.
    pub sticky: Option<Spanned<StickySection>>,
    /// `[pools.NAME.health_check]`: active probes.
    pub health_check: Option<Spanned<HealthCheckSection>>,
    /// Outlier detection from real traffic.
    pub passive: Option<Spanned<PassiveSection>>,
    /// Percentage of healthy backends below which the pool routes to all of them.
    pub panic_threshold: Option<Spanned<i64>>,
    /// Retry policy.
    pub retries: Option<Spanned<RetriesSection>>,
    /// Most concurrent requests per backend; the rest wait in a queue.
    pub max_connections: Option<Spanned<i64>>,
    /// How long a request may wait for a backend under `max_connections`.
    pub queue_timeout: Option<Spanned<String>>,
    /// Ramp a new or recovered backend's weight up over this window.
    pub slow_start: Option<Spanned<String>>,
    /// Slow start curve: 1.0 is linear, higher ramps faster at first.
    pub slow_start_aggression: Option<Spanned<f64>>,
    /// Slow start: the weight a backend starts at, in percent of its own.
    pub slow_start_min_weight_percent: Option<Spanned<i64>>,
    /// How often backends given by host name are resolved again.
    pub dns_refresh: Option<Spanned<String>>,
    /// `"http1"` (default), `"h2"` (over TLS, by ALPN) or `"h2c"` (cleartext, prior knowledge).
    pub protocol: Option<Spanned<String>>,
    /// TLS to the backends.
    pub tls: Option<Spanned<UpstreamTlsSection>>,
    /// `"v1"` or `"v2"`: send a PROXY protocol header on every connection to a backend.
    pub send_proxy_protocol: Option<Spanned<String>>,
    /// Requests per client (or other key) and period.
    pub rate_limit: Option<Spanned<RateLimitSection>>,
}

/// `[pools.NAME.tls]`: how to verify the backends' certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// The name to send as SNI and to verify, instead of the backend's host name.
    pub server_name: Option<Spanned<String>>,
    /// PEM CA certificates the backends' certificates must chain to (instead of the system's).
    pub ca: Option<Spanned<String>>,
    /// `false` accepts any certificate (`check` warns).
    pub verify: Option<Spanned<bool>>,
    /// PEM certificate chain presented to backends that ask for one (mutual TLS).
    pub cert: Option<Spanned<String>>,
    /// The private key of `cert`.
    pub key: Option<Spanned<String>>,
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `http` or `tcp`.
    pub kind: Option<Spanned<String>>,
    /// HTTP: request path.
    pub path: Option<Spanned<String>>,
    /// HTTP: `GET` or `HEAD`.
    pub method: Option<Spanned<String>>,
    /// HTTP: `Host` header to send.
    pub host: Option<Spanned<String>>,
    /// HTTP: accepted statuses, `"200-399"`, `"200"` or `[200, 204]`.
    pub expect_status: Option<Spanned<StatusSpec>>,
    /// HTTP: a substring the body must contain.
    pub expect_body: Option<Spanned<String>>,
    /// Time between probes.
    pub interval: Option<Spanned<String>>,
    /// Time a probe may take.
    pub timeout: Option<Spanned<String>>,
    /// Passing probes in a row to become healthy.
    pub healthy_threshold: Option<Spanned<i64>>,
    /// Failing probes in a row to become unhealthy.
    pub unhealthy_threshold: Option<Spanned<i64>>,
    /// Start backends unhealthy until they pass.
    pub start_unhealthy: Option<bool>,
}

/// Accepted statuses as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    /// `"200-399"` or `"200"`.
    Text(String),
    /// `[200, 204]`.
    Codes(Vec<i64>),
    /// `200`.
    Code(i64),
}

/// `passive = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveSection {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: Option<Spanned<i64>>,
    /// Ejection time, multiplied by the number of ejections so far.
    pub base_ejection_time: Option<Spanned<String>>,
    /// Most backends ejected at once, as a percentage.
    pub max_ejection_percent: Option<Spanned<i64>>,
    /// Count 5xx responses as failures.
    pub eject_on_5xx: Option<bool>,
}

/// `retries = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesSection {
    /// Retries after the first attempt.
    pub attempts: Option<Spanned<i64>>,
    /// Conditions: `connect-failure`, `reset`, `timeout`, `5xx`, or a status like `"503"`.
    pub on: Option<Vec<Spanned<String>>>,
    /// Retries as a percentage of recent requests, at most.
    pub budget_percent: Option<Spanned<i64>>,
    /// Largest request body kept in memory so that it can be sent again.
    pub buffer_body_bytes: Option<Spanned<i64>>,
}

/// `peak_ewma = { decay, default_rtt }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakEwmaSection {
    /// Time over which a latency estimate decays toward new samples.
    pub decay: Option<Spanned<String>>,
    /// Latency assumed for a backend with no sample yet.
    pub default_rtt: Option<Spanned<String>>,
}

/// `sticky = { cookie, ttl, secret }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySection {
    /// Name of the cookie naming the backend.
    pub cookie: Spanned<String>,
    /// Cookie lifetime (`Max-Age`); absent means a session cookie.
    pub ttl: Option<Spanned<String>>,
    /// Key of the hash that turns a backend's address into its cookie value.
    pub secret: Option<Spanned<String>>,
}

/// `timeouts = { connect, response_header, idle }`, each a duration like `"2s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// Time allowed to open a TCP connection to a backend.
    pub connect: Option<Spanned<String>>,
    /// Time allowed between sending the request and receiving the response headers.
    pub response_header: Option<Spanned<String>>,
    /// How long an unused pooled upstream connection is kept open.
    pub idle: Option<Spanned<String>>,
    /// Time allowed for the whole request until response headers, retries included.
    pub request: Option<Spanned<String>>,
}

/// A backend as written: a bare address string or a table with a weight.
#[derive(Debug)]
pub struct BackendEntry {
    /// `"host:port"` or `"http://host:port"`.
    pub address: Spanned<String>,
    /// Relative share of traffic; absent means 1.
    pub weight: Option<Spanned<i64>>,
    /// Used only while no other backend of the pool can be.
    pub backup: Option<bool>,
}

impl<'de> Deserialize<'de> for BackendEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BackendEntryVisitor)
    }
}

struct BackendEntryVisitor;

impl<'de> Visitor<'de> for BackendEntryVisitor {
    type Value = BackendEntry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a backend: "host:port" or { address = "host:port", weight = N, backup = true }"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendEntry, E> {
        // A bare string carries no span of its own here; the caller's Spanned wrapper has it.
        Ok(BackendEntry {
            address: Spanned::new(0..0, v.to_owned()),
            weight: None,
            backup: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BackendEntry, A::Error> {
        let mut address = None;
        let mut weight = None;
        let mut backup = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "address" => address = Some(map.next_value()?),
                "weight" => weight = Some(map.next_value()?),
                "backup" => backup = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, &["address", "weight", "backup"])),
            }
        }
        let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
        Ok(BackendEntry {
            address,
            weight,
            backup,
        })
    }
}
