//! `[[listeners]]`: addresses to accept on, their routes, access logs and edge settings.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;

use super::address::parse_listen_address;
use super::client::{self, ClientSettings};
use super::file::ListenerSection;
use super::Checker;

/// Where and how a listener's access log is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessLogConfig {
    /// A file to append to, or `None` for standard output (`"-"`).
    pub path: Option<PathBuf>,
    /// Line format.
    pub format: AccessLogFormat,
}

/// Access log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessLogFormat {
    /// nginx/Apache "combined", plus request time, upstream and request id.
    Combined,
    /// One JSON object per line.
    Json,
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
    /// TLS termination, if on.
    pub tls: Option<TlsConfig>,
    /// What it proxies.
    pub mode: ListenerMode,
    /// The PROXY protocol header it expects in front of each connection.
    pub proxy_protocol: ProxyProtocol,
}

/// The PROXY protocol header a listener expects in front of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// None: connections start with their own protocol.
    #[default]
    Off,
    /// Version 1 (text), required.
    V1,
    /// Version 2 (binary), required.
    V2,
    /// Either version, or none.
    Optional,
}

/// What a listener proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerMode {
    /// HTTP requests, routed by host and path (the default).
    #[default]
    Http,
    /// TCP connections, each to one backend of the listener's pool (its only route), bytes
    /// copied both ways.
    Tcp,
    /// TLS connections passed through untouched, routed by the ClientHello's server name
    /// (the routes' `host`; a route without one is the default).
    TlsPassthrough,
}

impl ListenerMode {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            ListenerMode::Http => "http",
            ListenerMode::Tcp => "tcp",
            ListenerMode::TlsPassthrough => "tls-passthrough",
        }
    }
}

/// A listener's TLS settings: the files as configured (loaded and checked by `crate::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates chosen by SNI; the first is the default for clients without SNI or with
    /// a name no certificate covers.
    pub certificates: Vec<CertificateFiles>,
    /// Client certificates verified against these CAs, if set.
    pub client_auth: Option<ClientAuth>,
}

/// Client-certificate verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// False: clients without a certificate are served too (one they send is still verified).
    pub required: bool,
    /// Where `client_ca` is in the config file (`FILE:LINE:COL`).
    pub at: String,
}

/// One certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where the entry is in the config file (`FILE:LINE:COL`), for errors found on loading.
    pub at: String,
    /// Its key (`listeners[0].tls.certificates[1]`).
    pub key_name: String,
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

impl HostMatch {
    /// The host as a route names it (`example.com`, `*.example.com`); `None` for any.
    pub fn pattern(&self) -> Option<String> {
        match self {
            HostMatch::Any => None,
            HostMatch::Exact(h) => Some(h.clone()),
            HostMatch::Suffix(s) => Some(format!("*{s}")),
        }
    }
}

/// Parses a route host: `example.com`, `*.example.com`, or `*` (any).
pub(super) fn parse_host(s: &str) -> Result<HostMatch, String> {
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

/// Validates `listeners[i]` (`pool_names` in config order; `listen_addrs` collects addresses
/// to catch duplicates).
pub(super) fn validate(
    i: usize,
    l: &Spanned<ListenerSection>,
    pool_names: &[&String],
    listen_addrs: &mut HashSet<SocketAddr>,
    check: &mut Checker,
) -> Option<ListenerConfig> {
    let l_span = l.span();
    let l = l.get_ref();
    let listen = match parse_listen_address(l.listen.get_ref(), check.resolver) {
        Ok(a) => a,
        Err(msg) => {
            check.error(l.listen.span(), format!("listeners[{i}].listen: {msg}"));
            return None;
        }
    };
    if listen.port() != 0 && !listen_addrs.insert(listen) {
        check.error(
            l.listen.span(),
            format!("listeners[{i}].listen: duplicate listener address {listen}"),
        );
    }
    let mode = match l.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("http", _)) => ListenerMode::Http,
        Some(("tcp", _)) => ListenerMode::Tcp,
        Some(("tls-passthrough", _)) => ListenerMode::TlsPassthrough,
        Some((other, span)) => {
            check.error(
                span,
                format!("listeners[{i}].mode: {other:?} is not \"http\", \"tcp\" or \"tls-passthrough\""),
            );
            ListenerMode::Http
        }
    };
    let tcp_pool = match (mode, &l.pool) {
        (ListenerMode::Tcp, None) => {
            check.error(
                l_span.clone(),
                format!("listeners[{i}]: a tcp listener needs pool = \"NAME\""),
            );
            None
        }
        (ListenerMode::Http | ListenerMode::TlsPassthrough, Some(p)) => {
            check.error(
                p.span(),
                format!(
                    "listeners[{i}].pool: only tcp listeners take a pool; this one routes with [[listeners.routes]]"
                ),
            );
            None
        }
        (ListenerMode::Tcp, Some(p)) => match pool_names.iter().position(|n| *n == p.get_ref()) {
            Some(pool) => Some(pool),
            None => {
                check.error(
                    p.span(),
                    format!("listeners[{i}].pool: no pool named {:?}", p.get_ref()),
                );
                None
            }
        },
        (ListenerMode::Http | ListenerMode::TlsPassthrough, None) => None,
    };
    if mode != ListenerMode::Http {
        let routes_span = (mode == ListenerMode::Tcp)
            .then(|| l.routes.first().map(|r| r.span()))
            .flatten();
        let http_only = [
            ("routes", routes_span),
            ("tls", l.tls.as_ref().map(|t| t.span())),
            ("redirect_https", l.redirect_https.as_ref().map(|r| r.span())),
            ("limits", l.limits.as_ref().map(|a| a.span())),
        ];
        for (key, span) in http_only {
            if let Some(span) = span {
                check.error(
                    span,
                    format!(
                        "listeners[{i}].{key}: applies to http listeners only (this one has mode = \"{}\")",
                        mode.name()
                    ),
                );
            }
        }
    }
    if mode != ListenerMode::Tcp && l.routes.is_empty() {
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
            Some(p) if mode == ListenerMode::TlsPassthrough => {
                check.error(
                    p.span(),
                    format!("{key}.path_prefix: a tls-passthrough listener sees no paths; route by host only"),
                );
                None
            }
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
    if let Some(pool) = tcp_pool {
        routes.push(RouteConfig {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            pool,
        });
    }
    let max_client_connections = l
        .max_client_connections
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
    let tls = l.tls.as_ref().and_then(|t| {
        let key = format!("listeners[{i}].tls.certificates");
        if t.get_ref().certificates.is_empty() {
            check.error(t.span(), format!("{key}: give at least one {{ cert, key }}"));
            return None;
        }
        let certificates = t
            .get_ref()
            .certificates
            .iter()
            .enumerate()
            .map(|(j, c)| CertificateFiles {
                cert: check.path(c.get_ref().cert.get_ref()),
                key: check.path(c.get_ref().key.get_ref()),
                at: check.location(c.span()),
                key_name: format!("{key}[{j}]"),
            })
            .collect();
        let t = t.get_ref();
        let required = match t.client_auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
            None | Some(("required", _)) => true,
            Some(("optional", _)) => false,
            Some((other, span)) => {
                check.error(
                    span,
                    format!("listeners[{i}].tls.client_auth: {other:?} is not \"required\" or \"optional\""),
                );
                true
            }
        };
        if t.client_ca.is_none() {
            if let Some(a) = &t.client_auth {
                check.error(a.span(), format!("listeners[{i}].tls.client_auth: set client_ca too"));
            }
        }
        let client_auth = t.client_ca.as_ref().map(|ca| ClientAuth {
            ca: check.path(ca.get_ref()),
            required,
            at: check.location(ca.span()),
        });
        Some(TlsConfig {
            certificates,
            client_auth,
        })
    });
    let redirect_https = l.redirect_https.as_ref().map(|r| {
        if *r.get_ref() && l.tls.is_some() {
            check.error(
                r.span(),
                format!("listeners[{i}].redirect_https: this listener already terminates TLS"),
            );
        }
        *r.get_ref()
    });
    let proxy_protocol = match l.proxy_protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None => ProxyProtocol::Off,
        Some(("v1", _)) => ProxyProtocol::V1,
        Some(("v2", _)) => ProxyProtocol::V2,
        Some(("optional", _)) => ProxyProtocol::Optional,
        Some((other, span)) => {
            check.error(
                span,
                format!("listeners[{i}].proxy_protocol: {other:?} is not \"v1\", \"v2\" or \"optional\""),
            );
            ProxyProtocol::Off
        }
    };
    Some(ListenerConfig {
        proxy_protocol,
        mode,
        tls,
        name: l.name.clone().unwrap_or_else(|| listen.to_string()),
        listen,
        routes,
        max_client_connections,
        access_log,
        client: ClientSettings {
            trust_request_id: l.trust_request_id.unwrap_or(true),
            redirect_https: redirect_https.unwrap_or(false),
            ..client::validate(&format!("listeners[{i}]"), &l.timeouts, &l.limits, check)
        },
    })
}
