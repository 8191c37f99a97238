//! Validated configuration: what the rest of Steelyard runs on.
//!
//! [`Config::from_toml`] turns the raw file ([`file::FileConfig`]) into a [`Config`] whose every
//! address is parsed, every duration converted and every pool reference resolved, or into a list
//! of [`ConfigError`]s that each name the file, line, column and key. Quick mode
//! ([`Config::quick`]) builds the same model from command-line flags.
//!
//! It is pure data and validation: one module per part of the file it validates
//! ([`listener`], [`pool`], [`admin`], [`client`], [`resilience`], [`address`]), and nothing
//! here reads the network or knows the data path. Host names are resolved by the
//! [`Resolve`] the caller hands in.

pub mod address;
pub mod admin;
pub mod client;
pub mod file;
pub mod listener;
pub mod pool;
pub mod rate_limit;
pub mod resilience;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use address::{
    backend_scheme_is_tls, order_addresses, parse_backend_address, parse_backend_addresses, parse_listen_address,
    LiteralsOnly, Resolve,
};
pub use admin::{AdminConfig, DEFAULT_ADMIN_LISTEN};
pub use client::ClientSettings;
pub use listener::{
    AccessLogConfig, AccessLogFormat, CertificateFiles, ClientAuth, HostMatch, ListenerConfig, ListenerMode,
    ProxyProtocol, RouteConfig, TlsConfig,
};
pub use pool::{
    Algorithm, BackendConfig, DiscoverConfig, DiscoverName, HashKey, PoolConfig, ProxyVersion, SelectOptions,
    StickyConfig, Timeouts, UpstreamProtocol, UpstreamTlsConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DNS_REFRESH,
    DEFAULT_EWMA_DECAY, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_RESPONSE_HEADER_TIMEOUT, MAX_WEIGHT,
    STICKY_SECRET_ENV,
};
pub use rate_limit::{OnRedisError, RateLimitConfig, RateScope, RedisConfig, DEFAULT_REDIS_TIMEOUT};
pub use resilience::{CheckKind, HealthCheckConfig, PassiveConfig, RetryConfig, SlowStart, StatusSet};

use toml::Spanned;

use file::FileConfig;

/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime configuration, fully validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (quick mode has none).
    pub source: Option<PathBuf>,
    /// A hash of the file's text (0 for quick mode), to tell versions apart.
    pub hash: u64,
    /// The file's text (`None` in quick mode), for the dashboard's view of the config in force.
    pub text: Option<std::sync::Arc<str>>,
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
    /// Who to run as once the listeners are bound; `None`: stay who started it.
    pub run_as: Option<RunAs>,
    /// The Redis that `scope = "global"` rate limits share.
    pub redis: Option<RedisConfig>,
}

/// `[server] user` and `group`: the unprivileged identity a process started as root takes
/// once it has bound its listeners (nginx's and HAProxy's `user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// A user name.
    pub user: String,
    /// A group name; `None`: the user's primary group.
    pub group: Option<String>,
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
    /// Turns host names into addresses.
    resolver: &'a dyn Resolve,
}

impl Checker<'_> {
    /// `FILE:LINE:COL` of a span, for errors found later (a certificate that does not load).
    fn location(&self, span: Range<usize>) -> String {
        let (line, column) = line_col(self.text, span.start);
        format!("{}:{line}:{column}", self.file)
    }

    /// A path from the file, relative to the file's directory unless absolute.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        match Path::new(self.file).parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_owned(),
        }
    }

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

impl Config {
    /// Reads and validates a config file, resolving host names with `resolver`.
    pub fn load(path: &Path, resolver: &dyn Resolve) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string(), resolver)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Validates config text; `file` is the name errors carry, `resolver` turns host names
    /// into addresses.
    pub fn from_toml(text: &str, file: &str, resolver: &dyn Resolve) -> Result<Config, ConfigErrors> {
        let mut check = Checker {
            file,
            text,
            errors: Vec::new(),
            resolver,
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
        config.text = Some(text.into());
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

        let name = |key: &str, v: &Option<Spanned<String>>, check: &mut Checker| {
            let v = v.as_ref()?;
            let text = v.get_ref().trim();
            if text.is_empty() || text.contains('\0') || text.contains(':') {
                check.error(v.span(), format!("server.{key}: give a {key} name, e.g. \"steelyard\""));
                return None;
            }
            Some(text.to_owned())
        };
        let user = name("user", &raw.server.user, check);
        let group = name("group", &raw.server.group, check);
        if let (None, Some(g)) = (&raw.server.user, &raw.server.group) {
            check.error(
                g.span(),
                "server.group: set server.user too (group alone changes nothing)",
            );
        }
        let run_as = user.map(|user| RunAs { user, group });

        let redis = rate_limit::redis(&raw.redis, check);
        let pool_names: Vec<&String> = raw.pools.keys().collect();
        let pools: Vec<PoolConfig> = raw
            .pools
            .iter()
            .map(|(name, section)| pool::validate(name, section, redis.is_some(), check))
            .collect();

        if raw.listeners.is_empty() {
            check.error(0..0, "no [[listeners]]: at least one listener is required");
        }
        let mut listen_addrs = HashSet::new();
        let listeners = raw
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| listener::validate(i, l, &pool_names, &mut listen_addrs, check))
            .collect();

        let admin = admin::validate(&raw.admin, check);
        Config {
            source: None,
            hash: 0,
            text: None,
            admin,
            listeners,
            pools,
            drain_timeout,
            workers,
            run_as,
            redis,
        }
    }

    /// Builds quick mode's config: one listener, one catch-all route, one pool named `default`.
    pub fn quick(listen: SocketAddr, backends: Vec<BackendConfig>, algorithm: Algorithm, timeouts: Timeouts) -> Config {
        let hash_key = algorithm.hashes().then_some(HashKey::ClientIp);
        Config {
            source: None,
            hash: 0,
            text: None,
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
                tls: None,
                mode: ListenerMode::Http,
                proxy_protocol: ProxyProtocol::Off,
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
                protocol: UpstreamProtocol::Http1,
                tls: None,
                send_proxy_protocol: None,
                rate_limit: None,
                discover: None,
            }],
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            workers: None,
            run_as: None,
            redis: None,
        }
    }

    /// The original demo's setup: `127.0.0.1:8080` → `127.0.0.1:8081`, `127.0.0.1:8082`.
    pub fn original_demo() -> Config {
        let backend = |port| BackendConfig {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            dns_name: None,
            backup: false,
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

#[cfg(test)]
mod tests {
    use super::listener::parse_host;
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text, "t.toml", &LiteralsOnly) {
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
        let c = Config::from_toml(GOOD, "t.toml", &LiteralsOnly).expect("valid");
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
    fn server_user_and_group() {
        let with = |server: &str| format!("[server]\n{server}\n{GOOD}");
        let c = Config::from_toml(&with("user = \"steelyard\""), "t.toml", &LiteralsOnly).expect("valid");
        assert_eq!(
            c.run_as,
            Some(RunAs {
                user: "steelyard".into(),
                group: None
            })
        );
        let c = Config::from_toml(&with("user = \"www\"\ngroup = \"web\""), "t.toml", &LiteralsOnly).expect("valid");
        assert_eq!(c.run_as.and_then(|r| r.group).as_deref(), Some("web"));
        assert_eq!(
            errors(&with("group = \"web\"")),
            ["t.toml:2:9: server.group: set server.user too (group alone changes nothing)"]
        );
        assert_eq!(
            errors(&with("user = \"\"")),
            ["t.toml:2:8: server.user: give a user name, e.g. \"steelyard\""]
        );
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
        assert_eq!(parse_backend_address("127.0.0.1:8081", &LiteralsOnly), Ok(a));
        assert_eq!(parse_backend_address("http://127.0.0.1:8081/", &LiteralsOnly), Ok(a));
        assert_eq!(parse_backend_address("https://127.0.0.1:8081", &LiteralsOnly), Ok(a));
        assert_eq!(backend_scheme_is_tls("https://127.0.0.1:8081"), Some(true));
        assert_eq!(backend_scheme_is_tls("http://127.0.0.1:8081"), Some(false));
        assert_eq!(backend_scheme_is_tls("127.0.0.1:8081"), None);
        assert!(parse_backend_address("ftp://127.0.0.1:8081", &LiteralsOnly).is_err());
        assert!(parse_backend_address("127.0.0.1:8081/x", &LiteralsOnly).is_err());
        assert!(parse_backend_address("127.0.0.1", &LiteralsOnly).is_err());
        assert_eq!(
            parse_backend_address("[::1]:80", &LiteralsOnly),
            Ok("[::1]:80".parse().expect("addr"))
        );
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
