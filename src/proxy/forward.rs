//! The hot path: route, pick a backend, rewrite the request, forward it, stream the response.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, HOST, SET_COOKIE};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::headers::{add_forwarding, strip_hop_by_hop};
use super::{ProxyBody, ProxyError, Router};
use crate::upstream::connection::UpstreamError;
use crate::upstream::RequestView;

/// What the hot path knows about the client connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP, pre-rendered for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
}

impl ConnInfo {
    /// Info for a connection from `peer`.
    pub fn new(peer: SocketAddr) -> ConnInfo {
        let ip = peer.ip().to_canonical();
        let client_ip = HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, client_ip }
    }
}

/// Proxies one request. Never fails: every error becomes a response from [`ProxyError`].
pub async fn forward(req: Request<Incoming>, router: &ArcSwap<Router>, conn: &ConnInfo) -> Response<ProxyBody> {
    // HTTP/2 requests carry the host in the URI rather than a Host header.
    let host = match req.headers().get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let pool = {
        let router = router.load();
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        match router.route(host_str, req.uri().path()) {
            Some(pool) => Arc::clone(pool),
            None => return ProxyError::NoRoute.response(),
        }
    };
    let (mut parts, body) = req.into_parts();
    let view = RequestView {
        client_ip: conn.peer.ip(),
        headers: &parts.headers,
        uri: &parts.uri,
    };
    let Some(picked) = pool.pick(&view, &[]) else {
        return ProxyError::NoBackend.response();
    };
    let (backend, set_cookie) = (picked.backend, picked.set_cookie);

    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(&mut parts.headers, parts.version, &conn.client_ip, host.as_ref());
    parts.uri = origin_form(std::mem::take(&mut parts.uri));
    if !parts.headers.contains_key(HOST) {
        // An HTTP/1.0 client sent no host at all: name the backend, as nginx does.
        if let Ok(h) = HeaderValue::from_str(backend.authority().as_str()) {
            parts.headers.insert(HOST, h);
        }
    }
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);

    let in_flight = backend.start_request();
    let started = Instant::now();
    let Some(connections) = pool.connections(picked.index) else {
        return ProxyError::NoBackend.response();
    };
    let exchange = async {
        let mut connection = connections.checkout().await?;
        let res = connection.send(upstream_req).await?;
        Ok::<_, UpstreamError>((res, connection))
    };
    let sent = tokio::time::timeout(pool.timeouts().response_header, exchange).await;
    let failure = match sent {
        Ok(Ok((mut res, connection))) => {
            backend.observe_latency(started.elapsed(), pool.ewma_decay());
            strip_hop_by_hop(res.headers_mut());
            if let Some(cookie) = set_cookie {
                res.headers_mut().append(SET_COOKIE, cookie.clone());
            }
            return res.map(|body| ProxyBody::upstream(body, in_flight, connection));
        }
        Ok(Err(e)) => (classify(&e), error_chain(&e)),
        Err(_) => (
            ProxyError::ResponseHeaderTimeout,
            "no response headers within the response_header timeout".into(),
        ),
    };
    backend.record_failure();
    tracing::warn!(
        backend = %backend.address(),
        pool = pool.name(),
        client = %conn.peer,
        status = failure.0.status().as_u16(),
        error = %failure.1,
        "backend request failed"
    );
    failure.0.response()
}

/// The origin-form request target (`/path?query`) that HTTP/1.1 sends to a backend, whatever
/// form the client used (HTTP/2 and absolute-form requests carry scheme and authority).
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    )
}

/// Connect timeouts are 504; every other upstream failure (refused, reset, broken response) 502.
fn classify(e: &UpstreamError) -> ProxyError {
    match e {
        UpstreamError::ConnectTimeout(_) => ProxyError::ConnectTimeout,
        UpstreamError::Connect(_) | UpstreamError::Http(_) => ProxyError::BadGateway,
    }
}

/// `outer: inner: innermost`, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let _ = write!(out, ": {err}");
        source = err.source();
    }
    out
}
