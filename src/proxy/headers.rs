//! Header rewriting: hop-by-hop removal (RFC 9110 §7.6.1), `X-Forwarded-*` and `Via`.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, Version};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static VIA_HTTP10: HeaderValue = HeaderValue::from_static("1.0 steelyard");
static VIA_HTTP11: HeaderValue = HeaderValue::from_static("1.1 steelyard");
static VIA_HTTP2: HeaderValue = HeaderValue::from_static("2.0 steelyard");
static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Removes hop-by-hop headers: `Connection`, every header it names, and the fixed list.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        // Usually just "keep-alive" or "close", which name no other header: no allocation then.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Appends `value` to the comma-separated list header `name` (or sets it): one allocation
/// only when a list is already there.
fn append_to_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.get(name) {
        Some(existing) => {
            let mut chain = Vec::with_capacity(existing.len() + 2 + value.len());
            chain.extend_from_slice(existing.as_bytes());
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&chain) {
                headers.insert(name, v);
            }
        }
        None => {
            headers.insert(name, value.clone());
        }
    }
}

/// Adds what the backend needs to know about the original request.
///
/// `client_ip` is pre-rendered per connection; `host` is the request's original host, which
/// the `Host` header keeps (HTTP/2 requests carry it in the URI and get a `Host` header here).
pub fn add_forwarding(
    headers: &mut HeaderMap,
    version: Version,
    client_ip: &HeaderValue,
    host: Option<&HeaderValue>,
    tls: bool,
) {
    append_to_list(headers, &X_FORWARDED_FOR, client_ip);
    let proto = if tls { &PROTO_HTTPS } else { &PROTO_HTTP };
    headers.insert(&X_FORWARDED_PROTO, proto.clone());
    if let Some(host) = host {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    let via = match version {
        Version::HTTP_10 => &VIA_HTTP10,
        Version::HTTP_2 => &VIA_HTTP2,
        _ => &VIA_HTTP11,
    };
    append_to_list(headers, &VIA, via);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRAILER, HeaderValue::from_static("x-checksum"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn appends_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.insert(VIA, HeaderValue::from_static("1.1 edge"));
        let host = HeaderValue::from_static("app.test");
        add_forwarding(
            &mut h,
            Version::HTTP_2,
            &HeaderValue::from_static("127.0.0.1"),
            Some(&host),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.test");
        assert_eq!(h[HOST], "app.test");
        assert_eq!(h[VIA], "1.1 edge, 2.0 steelyard");
    }
}
