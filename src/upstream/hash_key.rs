//! What a hashing pool hashes: the client IP, a header, a cookie, the path or a query parameter.

use std::net::IpAddr;

use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, Uri};

use super::hash::hash64;
use crate::http1::head::Field;

/// The parts of a request a load-balancing decision may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The client's IP.
    pub client_ip: IpAddr,
    /// Request headers.
    pub headers: Headers<'a>,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
}

/// Request headers as either side of the proxy holds them.
#[derive(Debug, Clone, Copy)]
pub enum Headers<'a> {
    /// A header map (HTTP/2 requests).
    Map(&'a HeaderMap),
    /// Fields parsed by the HTTP/1 engine, as offsets into the head's bytes.
    Raw {
        /// The head's bytes.
        head: &'a [u8],
        /// Its fields.
        fields: &'a [Field],
    },
}

impl<'a> Headers<'a> {
    /// The first value of field `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&'a [u8]> {
        match *self {
            Headers::Map(map) => map.get(name).map(|v| v.as_bytes()),
            Headers::Raw { head, fields } => fields
                .iter()
                .find(|f| f.name.get(head).eq_ignore_ascii_case(name.as_str().as_bytes()))
                .map(|f| f.value.get(head)),
        }
    }

    /// Calls `each` with every value of `name` until it returns `Some`.
    fn find_map<T>(&self, name: &HeaderName, mut each: impl FnMut(&'a [u8]) -> Option<T>) -> Option<T> {
        match *self {
            Headers::Map(map) => map.get_all(name).iter().find_map(|v| each(v.as_bytes())),
            Headers::Raw { head, fields } => fields
                .iter()
                .filter(|f| f.name.get(head).eq_ignore_ascii_case(name.as_str().as_bytes()))
                .find_map(|f| each(f.value.get(head))),
        }
    }
}

impl<'a> RequestView<'a> {
    /// A view of an HTTP/2 (or hyper) request.
    pub fn of_map(client_ip: IpAddr, headers: &'a HeaderMap, uri: &'a Uri) -> RequestView<'a> {
        RequestView {
            client_ip,
            headers: Headers::Map(headers),
            path: uri.path(),
            query: uri.query(),
        }
    }

    /// A view of a request parsed by the HTTP/1 engine; `target` is its origin-form target.
    pub fn of_raw(client_ip: IpAddr, head: &'a [u8], fields: &'a [Field], target: &'a str) -> RequestView<'a> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        RequestView {
            client_ip,
            headers: Headers::Raw { head, fields },
            path,
            query,
        }
    }
}

pub use crate::config::HashKey;

impl HashKey {
    /// The hash of this key in `req`, or `None` when the request lacks it.
    pub fn hash(&self, req: &RequestView) -> Option<u64> {
        match self {
            HashKey::ClientIp => Some(match req.client_ip.to_canonical() {
                IpAddr::V4(ip) => hash64(&ip.octets()),
                IpAddr::V6(ip) => hash64(&ip.octets()),
            }),
            HashKey::Header(name) => req.headers.get(name).map(hash64),
            HashKey::Cookie(name) => cookie(&req.headers, name).map(|v| hash64(v.as_bytes())),
            HashKey::Path => Some(hash64(req.path.as_bytes())),
            HashKey::Query(name) => query_param(req.query, name).map(|v| hash64(v.as_bytes())),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &Headers<'h>, name: &str) -> Option<&'h str> {
    headers.find_map(&COOKIE, |v| {
        std::str::from_utf8(v)
            .ok()?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    })
}

/// The raw (not percent-decoded) value of query parameter `name`.
fn query_param<'u>(query: Option<&'u str>, name: &str) -> Option<&'u str> {
    query?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> RequestView<'a> {
        RequestView::of_map("10.0.0.1".parse().expect("ip"), headers, uri)
    }

    #[test]
    fn extracts_each_kind_of_key() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "u1".parse().expect("value"));
        headers.insert(COOKIE, "a=1; session=\"abc\"; b=2".parse().expect("value"));
        let uri: Uri = "/p/q?x=1&user=bob&y".parse().expect("uri");
        let req = view(&headers, &uri);
        let h = |k: &str| HashKey::parse(k).expect("key").hash(&req);
        assert_eq!(h("header:X-User"), Some(hash64(b"u1")));
        assert_eq!(h("cookie:session"), Some(hash64(b"abc")));
        assert_eq!(h("query:user"), Some(hash64(b"bob")));
        assert_eq!(h("query:y"), Some(hash64(b"")));
        assert_eq!(h("path"), Some(hash64(b"/p/q")));
        assert_eq!(h("client_ip"), Some(hash64(&[10, 0, 0, 1])));
        assert_eq!(h("header:x-missing"), None);
        assert_eq!(h("cookie:nope"), None);
        assert_eq!(h("query:nope"), None);
    }

    #[test]
    fn rejects_bad_keys() {
        for bad in ["", "ip", "header:", "cookie:", "query:", "header:bad name"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }
}
