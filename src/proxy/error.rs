//! Every failure a client can see, mapped to one status in one place.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::ProxyBody;

/// Why a request got a response Steelyard wrote itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No route of the listener matches the request.
    #[error("no route matches")]
    NoRoute,
    /// The pool has no backend to send to.
    #[error("no backend available")]
    NoBackend,
    /// Every backend slot stayed taken (`max_connections`) for the whole queue timeout.
    #[error("queue timeout")]
    QueueTimeout,
    /// The request body could not be read from the client.
    #[error("bad request body")]
    BadRequest,
    /// The overall request timeout passed.
    #[error("request timed out")]
    RequestTimeout,
    /// The backend refused or dropped the connection, or broke the response.
    #[error("backend failed")]
    BadGateway,
    /// Connecting to the backend took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The backend did not send response headers within the response-header timeout.
    #[error("response header timed out")]
    ResponseHeaderTimeout,
    /// The pool's rate limit refused the request.
    #[error("rate limited")]
    RateLimited,
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::ResponseHeaderTimeout | ProxyError::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// A short plain-text response that names no internals.
    pub fn response(self) -> Response<ProxyBody> {
        let body = match self {
            ProxyError::NoRoute => "404 Not Found\n",
            ProxyError::NoBackend | ProxyError::QueueTimeout => "503 Service Unavailable\n",
            ProxyError::BadRequest => "400 Bad Request\n",
            ProxyError::RateLimited => "429 Too Many Requests\n",
            ProxyError::BadGateway => "502 Bad Gateway\n",
            ProxyError::ConnectTimeout | ProxyError::ResponseHeaderTimeout | ProxyError::RequestTimeout => {
                "504 Gateway Timeout\n"
            }
        };
        let mut res = Response::new(ProxyBody::local(body));
        *res.status_mut() = self.status();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if matches!(self, ProxyError::NoBackend | ProxyError::QueueTimeout) {
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // Kept so that a gRPC request's answer can be rewritten in gRPC's terms.
        res.extensions_mut().insert(self);
        res
    }

    /// The gRPC status code a gRPC client should see for this failure (gRPC's own mapping of
    /// HTTP statuses, with timeouts as `DEADLINE_EXCEEDED`).
    pub fn grpc_status(self) -> u8 {
        match self {
            ProxyError::NoRoute => 12,                                           // UNIMPLEMENTED
            ProxyError::BadRequest => 13,                                        // INTERNAL
            ProxyError::RequestTimeout | ProxyError::ResponseHeaderTimeout => 4, // DEADLINE_EXCEEDED
            ProxyError::RateLimited => 8,                                        // RESOURCE_EXHAUSTED
            ProxyError::NoBackend | ProxyError::QueueTimeout | ProxyError::BadGateway | ProxyError::ConnectTimeout => {
                14
            } // UNAVAILABLE
        }
    }

    /// The failure as gRPC clients read it: they look only at `grpc-status`, so an HTML-ish
    /// 502 would surface as a protocol error. A "trailers-only" response: HTTP 200, no body,
    /// `grpc-status` and `grpc-message` in the headers.
    pub fn grpc_response(self) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::Local(None));
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(self.grpc_status())));
        let message = match self {
            ProxyError::NoRoute => "steelyard: no route matches",
            ProxyError::NoBackend => "steelyard: no backend available",
            ProxyError::QueueTimeout => "steelyard: no backend slot within the queue timeout",
            ProxyError::BadRequest => "steelyard: the request body could not be read",
            ProxyError::RateLimited => "steelyard: rate limited",
            ProxyError::RequestTimeout => "steelyard: deadline exceeded",
            ProxyError::ResponseHeaderTimeout => "steelyard: the backend did not answer in time",
            ProxyError::BadGateway => "steelyard: the backend failed",
            ProxyError::ConnectTimeout => "steelyard: connecting to the backend timed out",
        };
        // Percent-encoding is only needed for bytes these messages do not contain.
        h.insert("grpc-message", HeaderValue::from_static(message));
        res.extensions_mut().insert(self);
        res
    }
}

/// True when `headers` belong to a gRPC request (`content-type: application/grpc[+proto...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-timeout` of a gRPC request (`1-8 digits` then `H`, `M`, `S`, `m`, `u` or `n`).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit_and_nothing_else() {
        let t = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).expect("value"));
            grpc_timeout(&h)
        };
        use std::time::Duration;
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("10S"), Some(Duration::from_secs(10)));
        assert_eq!(t("200m"), Some(Duration::from_millis(200)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_follow_the_design_table() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(ProxyError::BadGateway.status(), 502);
        assert_eq!(ProxyError::ConnectTimeout.status(), 504);
        assert_eq!(ProxyError::ResponseHeaderTimeout.status(), 504);
        assert!(ProxyError::NoBackend.response().headers().contains_key(RETRY_AFTER));
    }
}
