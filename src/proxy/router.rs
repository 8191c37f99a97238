//! Routing: which pool a request goes to, by host and path prefix.

use std::fmt::Write as _;
use std::sync::Arc;

use super::access_log::AccessLog;
use crate::config::{ClientSettings, HostMatch, ListenerConfig, ListenerMode, ProxyProtocol};
use crate::upstream::Pool;

/// A listener's routes, sorted so that the first match is the most specific one.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    access_log: Option<AccessLog>,
    client: ClientSettings,
    /// The TLS config new connections handshake with, when the listener terminates TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// A TCP listener's pool (its only route).
    tcp: Option<Arc<Pool>>,
    /// What the listener proxies.
    mode: ListenerMode,
    /// The PROXY protocol header it expects.
    proxy_protocol: ProxyProtocol,
}

#[derive(Debug)]
struct Route {
    host: HostMatch,
    path_prefix: String,
    pool: Arc<Pool>,
}

impl Route {
    /// Exact hosts beat wildcards, longer wildcards beat shorter ones, any host comes last;
    /// within the same host match, the longest path prefix wins.
    fn specificity(&self) -> (u8, usize, usize) {
        let (rank, len) = match &self.host {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        };
        (rank, len, self.path_prefix.len())
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        };
        host_ok && path.starts_with(self.path_prefix.as_str())
    }
}

impl Router {
    /// Builds the router of `listener`; `pools` is indexed by [`crate::config::RouteConfig::pool`].
    pub fn new(listener: &ListenerConfig, pools: &[Arc<Pool>]) -> Router {
        let mut routes: Vec<Route> = listener
            .routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    pool: Arc::clone(pools.get(r.pool)?),
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        let tcp = match listener.mode {
            ListenerMode::Tcp => routes.first().map(|r| Arc::clone(&r.pool)),
            ListenerMode::Http | ListenerMode::TlsPassthrough => None,
        };
        Router {
            routes,
            access_log: None,
            client: listener.client,
            tls: None,
            tcp,
            mode: listener.mode,
            proxy_protocol: listener.proxy_protocol,
        }
    }

    /// What the listener proxies.
    pub fn mode(&self) -> ListenerMode {
        self.mode
    }

    /// The PROXY protocol header the listener expects in front of each connection.
    pub fn proxy_protocol(&self) -> ProxyProtocol {
        self.proxy_protocol
    }

    /// The pool of a TCP listener: every connection goes to one of its backends.
    pub fn tcp_pool(&self) -> Option<&Arc<Pool>> {
        self.tcp.as_ref()
    }

    /// Terminates TLS with `config` on this listener's new connections.
    pub fn with_tls(mut self, config: Option<Arc<rustls::ServerConfig>>) -> Router {
        self.tls = config;
        self
    }

    /// The TLS config for new connections, if the listener terminates TLS.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// Writes this listener's requests to `log`.
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Router {
        self.access_log = log;
        self
    }

    /// The listener's edge timeouts and request limits.
    pub fn client_settings(&self) -> &ClientSettings {
        &self.client
    }

    /// The listener's access log, if it has one.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The pool for a request to `host` (may carry a port; `None` when absent) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Pool>> {
        let host = host.map(strip_port).unwrap_or("");
        self.routes.iter().find(|r| r.matches(host, path)).map(|r| &r.pool)
    }

    /// Each route as (host it matches, or `None` for any; path prefix; pool name), in the
    /// order they are tried.
    pub fn table(&self) -> impl Iterator<Item = (Option<String>, &str, &str)> {
        self.routes
            .iter()
            .map(|r| (r.host.pattern(), r.path_prefix.as_str(), r.pool.name()))
    }

    /// One line describing where traffic goes, for the startup log.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.routes.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            if let Some(host) = r.host.pattern() {
                out.push_str(&host);
            }
            let backends: Vec<String> = r.pool.backends().map(|b| b.address().to_string()).collect();
            let _ = write!(
                out,
                "{} -> pool {} [{}] ({})",
                r.path_prefix,
                r.pool.name(),
                backends.join(", "),
                r.pool.algorithm().name()
            );
        }
        out
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i + 1..].is_empty()
                && host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !host[..i].ends_with(':') =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RouteConfig};

    fn router(routes: &[(HostMatch, &str, usize)]) -> Router {
        let pools: Vec<Arc<Pool>> = (0..4)
            .map(|i| {
                let mut config = Config::original_demo().pools.remove(0);
                config.name = format!("p{i}");
                Arc::new(Pool::new(&config))
            })
            .collect();
        let mut listener = Config::original_demo().listeners.remove(0);
        listener.routes = routes
            .iter()
            .map(|(host, prefix, pool)| RouteConfig {
                host: host.clone(),
                path_prefix: (*prefix).into(),
                pool: *pool,
            })
            .collect();
        Router::new(&listener, &pools)
    }

    fn pool_of(r: &Router, host: Option<&str>, path: &str) -> Option<String> {
        r.route(host, path).map(|p| p.name().to_owned())
    }

    #[tokio::test]
    async fn most_specific_route_wins() {
        let r = router(&[
            (HostMatch::Any, "/", 0),
            (HostMatch::Any, "/api", 1),
            (HostMatch::Suffix(".example.com".into()), "/", 2),
            (HostMatch::Exact("api.example.com".into()), "/v2", 3),
        ]);
        assert_eq!(pool_of(&r, None, "/x").as_deref(), Some("p0"));
        assert_eq!(pool_of(&r, Some("other.test"), "/api/users").as_deref(), Some("p1"));
        assert_eq!(pool_of(&r, Some("www.Example.com:8080"), "/api").as_deref(), Some("p2"));
        assert_eq!(pool_of(&r, Some("example.com"), "/api").as_deref(), Some("p1"));
        assert_eq!(pool_of(&r, Some("API.example.com"), "/v2/x").as_deref(), Some("p3"));
        assert_eq!(pool_of(&r, Some("api.example.com"), "/v1").as_deref(), Some("p2"));
    }

    #[tokio::test]
    async fn no_match_is_none() {
        let r = router(&[(HostMatch::Exact("a.test".into()), "/", 0)]);
        assert_eq!(pool_of(&r, Some("b.test"), "/"), None);
        assert_eq!(pool_of(&r, None, "/"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.test:80"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
