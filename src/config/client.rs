//! What a listener allows its clients: edge timeouts and limits on requests.

use std::time::Duration;

use toml::Spanned;

use super::file::{ListenerLimitsSection, ListenerTimeoutsSection};
use super::Checker;

/// A listener's edge timeouts and request limits. Every one has a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Time to receive a whole request head, from its first byte (or the connection's start).
    pub head_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub keep_alive_timeout: Duration,
    /// Longest time without a byte moving in either direction while a body is transferred.
    pub body_idle_timeout: Duration,
    /// Longest time without a byte from the backend while its response body streams.
    pub response_body_idle_timeout: Duration,
    /// Longest time without a byte either way on an upgraded (WebSocket) connection.
    pub tunnel_idle_timeout: Duration,
    /// Most bytes in a request head (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 past it).
    pub max_header_count: usize,
    /// Longest request target (414 past it).
    pub max_uri_bytes: usize,
    /// Largest request body (413 past it); `None`: unlimited.
    pub max_request_body: Option<u64>,
    /// Keep a client's `X-Request-Id` when it is well-formed (short, printable); when false,
    /// every request gets an id of ours.
    pub trust_request_id: bool,
    /// Answer every request with a 308 to the same URL over `https://` (plain listeners).
    pub redirect_https: bool,
}

impl Default for ClientSettings {
    fn default() -> ClientSettings {
        ClientSettings {
            head_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(60),
            response_body_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_uri_bytes: 8 * 1024,
            max_request_body: None,
            trust_request_id: true,
            redirect_https: false,
        }
    }
}

/// Most header fields a limit may allow (the parser's own bound).
const MAX_HEADER_COUNT: i64 = 500;

/// Validates `timeouts = {...}` and `limits = {...}` of `listeners[i]`.
pub(super) fn validate(
    key: &str,
    timeouts: &Option<Spanned<ListenerTimeoutsSection>>,
    limits: &Option<Spanned<ListenerLimitsSection>>,
    check: &mut Checker,
) -> ClientSettings {
    let mut s = ClientSettings::default();
    if let Some(t) = timeouts {
        let t = t.get_ref();
        s.head_timeout = check.duration(&format!("{key}.timeouts.head"), &t.head, s.head_timeout);
        s.keep_alive_timeout = check.duration(
            &format!("{key}.timeouts.keep_alive"),
            &t.keep_alive,
            s.keep_alive_timeout,
        );
        s.body_idle_timeout = check.duration(&format!("{key}.timeouts.body_idle"), &t.body_idle, s.body_idle_timeout);
        s.response_body_idle_timeout = check.duration(
            &format!("{key}.timeouts.response_body_idle"),
            &t.response_body_idle,
            s.response_body_idle_timeout,
        );
        s.tunnel_idle_timeout = check.duration(
            &format!("{key}.timeouts.tunnel_idle"),
            &t.tunnel_idle,
            s.tunnel_idle_timeout,
        );
        for (name, value, d) in [
            ("head", &t.head, s.head_timeout),
            ("keep_alive", &t.keep_alive, s.keep_alive_timeout),
            ("body_idle", &t.body_idle, s.body_idle_timeout),
            (
                "response_body_idle",
                &t.response_body_idle,
                s.response_body_idle_timeout,
            ),
            ("tunnel_idle", &t.tunnel_idle, s.tunnel_idle_timeout),
        ] {
            if let Some(v) = value {
                if d.is_zero() {
                    check.error(v.span(), format!("{key}.timeouts.{name}: must be more than 0"));
                }
            }
        }
    }
    if let Some(l) = limits {
        let l = l.get_ref();
        let mut size =
            |name: &str, v: &Option<Spanned<i64>>, range: std::ops::RangeInclusive<i64>, default: usize| match v {
                None => default,
                Some(n) if range.contains(n.get_ref()) => *n.get_ref() as usize,
                Some(n) => {
                    check.error(
                        n.span(),
                        format!(
                            "{key}.limits.{name}: must be from {} to {}, got {}",
                            range.start(),
                            range.end(),
                            n.get_ref()
                        ),
                    );
                    default
                }
            };
        s.max_header_bytes = size("header_bytes", &l.header_bytes, 1024..=1024 * 1024, s.max_header_bytes);
        s.max_header_count = size(
            "header_count",
            &l.header_count,
            1..=MAX_HEADER_COUNT,
            s.max_header_count,
        );
        s.max_uri_bytes = size("uri_bytes", &l.uri_bytes, 16..=1024 * 1024, s.max_uri_bytes);
        s.max_request_body = l
            .request_body
            .as_ref()
            .map(|n| size("request_body", &Some(n.clone()), 0..=i64::MAX, 0) as u64);
        if s.max_uri_bytes > s.max_header_bytes {
            s.max_uri_bytes = s.max_header_bytes;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    fn listener(extra: &str) -> Result<super::ClientSettings, String> {
        let text = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n{extra}\nroutes = [{{ pool = \"p\" }}]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n"
        );
        Config::from_toml(&text, "t.toml", &crate::config::LiteralsOnly)
            .map(|c| c.listeners[0].client)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let d = listener("").expect("valid");
        assert_eq!(d, super::ClientSettings::default());
        assert_eq!(d.head_timeout, Duration::from_secs(10));
        assert_eq!(d.max_request_body, None);
        let s = listener(
            "timeouts = { head = \"2s\", tunnel_idle = \"5m\" }\nlimits = { header_count = 50, request_body = 1024 }",
        )
        .expect("valid");
        assert_eq!(s.head_timeout, Duration::from_secs(2));
        assert_eq!(s.tunnel_idle_timeout, Duration::from_secs(300));
        assert_eq!(s.keep_alive_timeout, Duration::from_secs(60));
        assert_eq!(s.max_header_count, 50);
        assert_eq!(s.max_request_body, Some(1024));
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = listener("timeouts = { keep_alive = \"0s\" }").expect_err("zero");
        assert!(
            e.contains("t.toml:3:") && e.contains("listeners[0].timeouts.keep_alive: must be more than 0"),
            "{e}"
        );
        let e = listener("limits = { uri_bytes = 1 }").expect_err("too small");
        assert!(e.contains("listeners[0].limits.uri_bytes: must be from 16"), "{e}");
    }
}
