//! Addresses in the config: backends (`host:port`, `http://host:port`) and listen addresses.
//!
//! Host names are turned into addresses by a [`Resolve`] the caller hands in: the config
//! itself never touches the network. The server passes the system's resolver
//! ([`crate::server::dns::System`]); fuzzing and other offline uses pass [`LiteralsOnly`].

use std::net::SocketAddr;

/// Turns `host:port` (already checked for shape) into addresses.
pub trait Resolve {
    /// Every address of `host_port`, or why there is none.
    fn resolve(&self, host_port: &str) -> Result<Vec<SocketAddr>, String>;
}

/// A resolver that knows no names: IP literals only.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiteralsOnly;

impl Resolve for LiteralsOnly {
    fn resolve(&self, host_port: &str) -> Result<Vec<SocketAddr>, String> {
        Err(format!(
            "{host_port:?} is a host name; only IP addresses are accepted here"
        ))
    }
}

/// Parses a backend address: `host:port` or `http://host:port` (trailing `/` allowed).
///
/// A host name is resolved by `resolver`; the first IPv4 address wins over IPv6 ones. See
/// [`parse_backend_addresses`] for all of them.
pub fn parse_backend_address(s: &str, resolver: &dyn Resolve) -> Result<SocketAddr, String> {
    parse_backend_addresses(s, resolver).map(|(addrs, _)| addrs[0])
}

/// Parses a backend address into every address it resolves to (IPv4 first, at least one),
/// with the `host:port` name when it was not an IP literal.
pub fn parse_backend_addresses(s: &str, resolver: &dyn Resolve) -> Result<(Vec<SocketAddr>, Option<String>), String> {
    let rest = if let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) {
        rest
    } else if s.contains("://") {
        return Err(format!(
            "invalid backend address {s:?}: only http:// and https:// are supported"
        ));
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
    resolve_all(hostport, resolver)
        .map(|addrs| (addrs, Some(hostport.to_owned())))
        .map_err(|why| format!("invalid backend address {s:?}: {why}"))
}

/// The scheme a backend address was written with: `Some(true)` for `https://`, `Some(false)`
/// for `http://`, `None` for a bare `host:port`.
pub fn backend_scheme_is_tls(s: &str) -> Option<bool> {
    if s.starts_with("https://") {
        Some(true)
    } else if s.starts_with("http://") {
        Some(false)
    } else {
        None
    }
}

/// Parses a listen address `ip:port` (or `host:port`, resolved once).
pub fn parse_listen_address(s: &str, resolver: &dyn Resolve) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    resolve_all(s, resolver)
        .map(|addrs| addrs[0])
        .map_err(|why| format!("invalid listen address {s:?}: {why}"))
}

/// Every address of `host:port`, IPv4 ones first, without duplicates; never empty.
pub fn resolve_all(hostport: &str, resolver: &dyn Resolve) -> Result<Vec<SocketAddr>, String> {
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if host.is_empty() {
        return Err("missing host before ':'".into());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("port {port:?} is not a number from 0 to 65535"));
    }
    let addrs = order_addresses(resolver.resolve(hostport)?);
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

/// Splits `etcd://HOST:PORT[,HOST:PORT...]/PATH` into the endpoints (as written) and `/PATH`;
/// `None` when it is not that (no `etcd://`, an empty endpoint, no path).
pub fn split_etcd_url(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("etcd://")?;
    let slash = rest.find('/')?;
    let (endpoints, path) = rest.split_at(slash);
    // HOST:PORT with a port number, and no scheme: `http://10.0.0.1:2379` (as etcdctl takes
    // it) must not pass for the endpoint "http:" and a key "//10.0.0.1:2379".
    let valid = |e: &str| {
        e.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(['/', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
        })
    };
    (endpoints.split(',').all(valid) && path.len() > 1).then_some((endpoints, path))
}

#[cfg(test)]
mod etcd_url_tests {
    use super::split_etcd_url;

    #[test]
    fn etcd_urls_split() {
        assert_eq!(
            split_etcd_url("etcd://10.0.0.1:2379,10.0.0.2:2379/steelyard/config"),
            Some(("10.0.0.1:2379,10.0.0.2:2379", "/steelyard/config"))
        );
        assert_eq!(split_etcd_url("etcd://127.0.0.1:2379/"), None);
        assert_eq!(split_etcd_url("etcd://127.0.0.1:2379,/k"), None);
        assert_eq!(split_etcd_url("etcd://localhost/k"), None);
        assert_eq!(split_etcd_url("etcd://http://10.0.0.1:2379/k"), None);
        assert_eq!(split_etcd_url("etcd://:2379/k"), None);
        assert_eq!(split_etcd_url("etcd://h:abc/k"), None);
        assert_eq!(split_etcd_url("etcd://[::1]:2379/k"), Some(("[::1]:2379", "/k")));
        assert_eq!(split_etcd_url("http://127.0.0.1:2379/k"), None);
    }
}
