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
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
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
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
