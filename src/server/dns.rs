//! Re-resolving backends given by host name.
//!
//! Each name is looked up again every `dns_refresh` of its pool (the system resolver does not
//! report record TTLs, so the interval is the pool's setting, from 1s to 1h). Every address
//! of a name is a backend with the entry's weight. When a name's addresses change, the
//! config is re-applied through the reload path: backends kept keep their state, new ones
//! join (with slow start, if set), removed ones drain. A failed lookup keeps the old addresses.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::{order_addresses, BackendConfig, Config, Resolve};

/// The system's resolver (`getaddrinfo`), as config validation's [`Resolve`]. It blocks: call
/// it from the control thread or `steelyard check`, never from a worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Resolve for System {
    fn resolve(&self, host_port: &str) -> Result<Vec<SocketAddr>, String> {
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        host_port
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| format!("cannot resolve host {host:?}: {e}"))
    }
}

/// The distinct host names in `config`, with the shortest refresh interval among their pools.
pub fn names(config: &Config) -> (Vec<String>, Option<Duration>) {
    let mut names: Vec<String> = Vec::new();
    let mut refresh: Option<Duration> = None;
    for pool in &config.pools {
        for name in pool.backends.iter().filter_map(|b| b.dns_name.as_ref()) {
            if !names.contains(name) {
                names.push(name.clone());
            }
            refresh = Some(refresh.map_or(pool.dns_refresh, |r| r.min(pool.dns_refresh)));
        }
    }
    (names, refresh)
}

/// `config` with every named backend replaced by one backend per address in `lookups`
/// (names missing there keep their addresses), or `None` when nothing changed.
pub fn with_resolved(config: &Config, lookups: &HashMap<String, Vec<SocketAddr>>) -> Option<Config> {
    let mut changed = false;
    let mut new = config.clone();
    for pool in &mut new.pools {
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut done: Vec<&str> = Vec::new();
        for b in &pool.backends {
            let Some(name) = b.dns_name.as_deref() else {
                backends.push(b.clone());
                continue;
            };
            let Some(addresses) = lookups.get(name).filter(|a| !a.is_empty()) else {
                backends.push(b.clone());
                continue;
            };
            if done.contains(&name) {
                continue;
            }
            done.push(name);
            for &address in addresses {
                if !backends.iter().any(|o| o.address == address) {
                    backends.push(BackendConfig {
                        address,
                        weight: b.weight,
                        dns_name: Some(name.to_owned()),
                        backup: b.backup,
                    });
                }
            }
        }
        // Answers are compared as sets: a resolver rotating its records changes nothing.
        let key = |b: &BackendConfig| (b.address, b.weight, b.dns_name.clone(), b.backup);
        let mut before: Vec<_> = pool.backends.iter().map(key).collect();
        let mut after: Vec<_> = backends.iter().map(key).collect();
        before.sort();
        after.sort();
        if before != after {
            changed = true;
            pool.backends = backends;
        }
    }
    changed.then_some(new)
}

/// Looks every name up; names that fail (or time out) are left out and keep their addresses.
pub async fn lookup(names: &[String]) -> HashMap<String, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for name in names {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(name.as_str())).await {
            Ok(Ok(found)) => {
                out.insert(name.clone(), order_addresses(found.collect()));
            }
            Ok(Err(e)) => tracing::warn!(name, error = %e, "DNS lookup failed; keeping the previous addresses"),
            Err(_) => tracing::warn!(name, "DNS lookup timed out; keeping the previous addresses"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[[listeners]]
listen = "127.0.0.1:0"
routes = [{ pool = "p" }]
[pools.p]
dns_refresh = "5s"
backends = ["127.0.0.1:9000", { address = "localhost:9100", weight = 3 }]
"#;
        Config::from_toml(text, "t.toml", &System).expect("valid")
    }

    #[test]
    fn names_and_their_refresh() {
        let (names, refresh) = names(&config());
        assert_eq!(names, vec!["localhost:9100".to_owned()]);
        assert_eq!(refresh, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_changed_name_becomes_one_backend_per_address_with_its_weight() {
        let c = config();
        let new_addrs: Vec<SocketAddr> = vec![
            "127.0.0.2:9100".parse().expect("a"),
            "127.0.0.3:9100".parse().expect("a"),
        ];
        let lookups = HashMap::from([("localhost:9100".to_owned(), new_addrs.clone())]);
        let new = with_resolved(&c, &lookups).expect("changed");
        let got: Vec<(SocketAddr, u32)> = new.pools[0].backends.iter().map(|b| (b.address, b.weight)).collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:9000".parse().expect("a"), 1),
                (new_addrs[0], 3),
                (new_addrs[1], 3)
            ]
        );
        assert!(
            with_resolved(&new, &lookups).is_none(),
            "the same answer changes nothing"
        );
        assert!(
            with_resolved(&c, &HashMap::new()).is_none(),
            "a failed lookup keeps the old addresses"
        );
        let rotated = HashMap::from([("localhost:9100".to_owned(), vec![new_addrs[1], new_addrs[0]])]);
        assert!(
            with_resolved(&new, &rotated).is_none(),
            "the same addresses in another order change nothing"
        );
    }
}
