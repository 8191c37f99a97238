//! Command-line interface: quick-mode flags and the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use steelyard::config::{
    self, AdminConfig, Algorithm, BackendConfig, CertificateFiles, CheckKind, Config, HealthCheckConfig, StatusSet,
    Timeouts, TlsConfig, MAX_WEIGHT,
};
use steelyard::server::dns::System;
use steelyard::upstream::HashKey;

/// Steelyard: a fast HTTP load balancer and reverse proxy.
///
/// With no arguments it runs the classic demo setup: it listens on 127.0.0.1:8080 and forwards
/// to 127.0.0.1:8081 and 127.0.0.1:8082 in turn. Give --config for a config file, or --listen and
/// --backend for quick mode.
#[derive(Debug, Clone, Parser)]
#[command(name = "steelyard", version, about, long_about)]
pub struct Cli {
    /// Config file (TOML; see steelyard.example.toml), or the etcd key holding it:
    /// etcd://HOST:PORT[,HOST:PORT...]/KEY.
    #[arg(short, long, global = true, value_name = "FILE", env = "STEELYARD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Quick mode: address to listen on.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,

    /// Quick mode: a backend as host:port or http://host:port, optionally ",weight=N". Repeat it.
    #[arg(short, long = "backend", value_name = "BACKEND", value_parser = parse_backend)]
    pub backends: Vec<BackendConfig>,

    /// Load-balancing algorithm: round_robin, least_connections, least_request, peak_ewma,
    /// random, maglev or ring_hash.
    #[arg(long, value_name = "NAME", default_value = "round_robin", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,

    /// Quick mode: what maglev and ring_hash hash: client_ip (default), header:NAME,
    /// cookie:NAME, path or query:NAME.
    #[arg(long, value_name = "KEY", value_parser = parse_hash_key)]
    pub hash_key: Option<HashKey>,

    /// Quick mode: time allowed to connect to a backend (e.g. "2s").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Quick mode: time allowed for a backend's response headers (e.g. "30s").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub response_header_timeout: Option<Duration>,

    /// Quick mode: how long an unused upstream connection stays pooled (e.g. "60s").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Quick mode: time for a whole request until response headers, retries included.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Quick mode: probe every backend with GET PATH (every 5s; 2 passes up, 3 failures down).
    #[arg(long, value_name = "PATH")]
    pub health_check: Option<String>,

    /// Quick mode: terminate TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Quick mode: the PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// On SIGINT/SIGTERM, how long in-flight requests get to finish (overrides the config file).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Admin API and dashboard address, or "off" (default 127.0.0.1:9901; overrides [admin]).
    #[arg(long, global = true, value_name = "ADDR|off", value_parser = parse_admin)]
    pub admin: Option<AdminFlag>,

    /// Worker threads (default: one per core; overrides the config file).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Reload the config when its file, or a certificate, key or CA file it names, changes
    /// (checked twice a second). SIGHUP always reloads it.
    #[arg(long)]
    pub watch: bool,

    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "steelyard=debug" (RUST_LOG syntax; RUST_LOG is read too).
    #[arg(long, value_name = "FILTER", global = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; none means "run".
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Validate a config file without starting: exit 0 with a summary, or 1 with every problem.
    Check,
    /// Start three demo origins on loopback and the balancer in front of them.
    Demo {
        /// Where the demo balancer listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
        listen: SocketAddr,
        /// How many demo origins to start.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
        origins: u8,
        /// Also serve HTTPS here, with a certificate made at start (e.g. 127.0.0.1:8443).
        #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
        https: Option<SocketAddr>,
    },
    /// Compare every load-balancing algorithm on a workload in simulated time: p50, p99 and
    /// p99.9 latency, errors and each backend's share, per algorithm.
    Simulate {
        /// A built-in profile (uniform, one-slow, bimodal, outage) or a profile file (TOML).
        /// Without it, every built-in profile runs.
        #[arg(long, value_name = "NAME|FILE")]
        profile: Option<String>,
        /// With --config: the pool whose backends (number and weights), algorithm settings,
        /// passive health and retries are simulated (default: the first pool).
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
        /// Simulated time, instead of the profile's (e.g. "10s").
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Also draw the latencies as SVG: this file for one profile, or this directory
        /// (one NAME.svg each) when every built-in profile runs.
        #[arg(long, value_name = "PATH")]
        svg: Option<PathBuf>,
    },
    /// Print the man page (roff), for packages: steelyard man > steelyard.1
    Man,
    /// Print a shell completion script: steelyard completions bash > /etc/bash_completion.d/steelyard
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// True when any quick-mode flag was given.
    pub fn has_quick_flags(&self) -> bool {
        self.listen.is_some()
            || !self.backends.is_empty()
            || self.connect_timeout.is_some()
            || self.response_header_timeout.is_some()
            || self.idle_timeout.is_some()
            || self.hash_key.is_some()
            || self.request_timeout.is_some()
            || self.health_check.is_some()
            || self.tls_cert.is_some()
    }

    /// The config to run: the file, quick mode, or the classic demo setup.
    pub fn run_config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => {
                if self.has_quick_flags() {
                    return Err(
                        "--config cannot be combined with --listen, --backend, --tls-cert or the timeout flags".into(),
                    );
                }
                Config::load(path, &System).map_err(|e| e.to_string())?
            }
            None if !self.has_quick_flags() => {
                let mut c = Config::original_demo();
                c.pools[0].algorithm = self.algorithm;
                c.pools[0].hash_key = self.algorithm.hashes().then_some(HashKey::ClientIp);
                c
            }
            None => {
                let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
                if self.backends.is_empty() {
                    return Err("quick mode needs at least one --backend HOST:PORT".into());
                }
                let defaults = Timeouts::default();
                let timeouts = Timeouts {
                    connect: self.connect_timeout.unwrap_or(defaults.connect),
                    response_header: self.response_header_timeout.unwrap_or(defaults.response_header),
                    idle: self.idle_timeout.unwrap_or(defaults.idle),
                    request: self.request_timeout,
                };
                let mut config = Config::quick(listen, self.backends.clone(), self.algorithm, timeouts);
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    config.listeners[0].tls = Some(TlsConfig {
                        certificates: vec![CertificateFiles {
                            cert: cert.clone(),
                            key: key.clone(),
                            at: "--tls-cert".into(),
                            key_name: "tls".into(),
                        }],
                        client_auth: None,
                    });
                }
                if let Some(key) = &self.hash_key {
                    if !self.algorithm.hashes() {
                        return Err("--hash-key applies only to --algorithm maglev or ring_hash".into());
                    }
                    config.pools[0].hash_key = Some(key.clone());
                }
                if let Some(path) = &self.health_check {
                    if !path.starts_with('/') {
                        return Err(format!("--health-check {path:?}: the path must start with '/'"));
                    }
                    config.pools[0].health_check = Some(HealthCheckConfig {
                        kind: CheckKind::Http {
                            method: http::Method::GET,
                            path: path.clone(),
                            host: None,
                            expect_status: StatusSet::default(),
                            expect_body: None,
                        },
                        interval: Duration::from_secs(5),
                        timeout: Duration::from_secs(2),
                        healthy_threshold: 2,
                        unhealthy_threshold: 3,
                        start_unhealthy: false,
                    });
                }
                config
            }
        };
        self.overrides(&mut config)?;
        Ok(config)
    }

    /// Applies the flags that override a config, whatever its source (`--drain-timeout`,
    /// `--admin`, `--workers`).
    pub fn overrides(&self, config: &mut Config) -> Result<(), String> {
        if let Some(d) = self.drain_timeout {
            config.drain_timeout = d;
        }
        self.apply_admin(config)?;
        if let Some(w) = self.workers {
            config.workers = Some(usize::from(w));
        }
        Ok(())
    }
}

impl Cli {
    /// Applies `--admin` (an address or `off`) over whatever the config says.
    pub fn apply_admin(&self, config: &mut Config) -> Result<(), String> {
        match &self.admin {
            Some(AdminFlag::Off) => config.admin = None,
            Some(AdminFlag::At(addr)) => {
                let token = config.admin.as_ref().and_then(|a| a.token.clone());
                if !addr.ip().is_loopback() && token.is_none() {
                    return Err(format!(
                        "--admin {addr}: reachable from other machines; set [admin] token in a config file first"
                    ));
                }
                let hosts = config.admin.as_ref().map(|a| a.hosts.clone()).unwrap_or_default();
                config.admin = Some(AdminConfig {
                    listen: *addr,
                    token,
                    explicit: true,
                    hosts,
                });
            }
            None => {}
        }
        Ok(())
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    config::parse_listen_address(s, &System)
}

/// `--admin`: an address, or off.
#[derive(Debug, Clone, Copy)]
pub enum AdminFlag {
    /// No admin listener.
    Off,
    /// Admin listener here.
    At(SocketAddr),
}

fn parse_admin(s: &str) -> Result<AdminFlag, String> {
    if s == "off" {
        return Ok(AdminFlag::Off);
    }
    config::parse_listen_address(s, &System).map(AdminFlag::At)
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    HashKey::parse(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
        format!("unknown algorithm {s:?} (expected one of: {})", names.join(", "))
    })
}

/// `host:port`, `http://host:port`, optionally followed by `,weight=N`.
fn parse_backend(s: &str) -> Result<BackendConfig, String> {
    let (addr, options) = match s.split_once(',') {
        Some((a, o)) => (a, Some(o)),
        None => (s, None),
    };
    if config::backend_scheme_is_tls(addr) == Some(true) {
        return Err(format!(
            "{addr:?}: TLS to backends needs a config file (a pool with https:// backends and its tls table)"
        ));
    }
    let (addresses, dns_name) = config::parse_backend_addresses(addr, &System)?;
    let address = addresses[0];
    let mut weight = 1;
    if let Some(options) = options {
        for opt in options.split(',') {
            match opt.split_once('=') {
                Some(("weight", w)) => {
                    weight = w
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| format!("weight must be a number from 1 to {MAX_WEIGHT}, got {w:?}"))?;
                }
                _ => return Err(format!("unknown backend option {opt:?} (expected weight=N)")),
            }
        }
    }
    Ok(BackendConfig {
        address,
        weight,
        dns_name,
        backup: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs() {
        let b = parse_backend("127.0.0.1:8083,weight=3").expect("valid");
        assert_eq!(b.address, "127.0.0.1:8083".parse::<SocketAddr>().expect("addr"));
        assert_eq!(b.weight, 3);
        assert_eq!(parse_backend("http://127.0.0.1:8082").expect("valid").weight, 1);
        assert!(parse_backend("127.0.0.1:8083,weight=0").is_err());
        assert!(parse_backend("127.0.0.1:8083,wieght=2").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
