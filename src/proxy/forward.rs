//! The hot path: route, pick a backend, rewrite the request, forward it (retrying where that
//! is safe), stream the response.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, SET_COOKIE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use super::access_log::{new_request_id, AccessLog, AccessRecord, PendingLog};
use super::headers::{add_forwarding, strip_hop_by_hop, X_REQUEST_ID};
use super::retry;
use super::{ProxyBody, ProxyError, Router};
use crate::config::{Algorithm, RetryConfig};
use crate::stats::StatusCounts;
use crate::upstream::connect::ConnectError;
use crate::upstream::connection::{ClientBody, UpstreamBody, UpstreamError};
use crate::upstream::{Backend, Pool, RequestView};

/// What the hot path knows about the client connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP, pre-rendered for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// The worker thread serving it (whose idle upstream connections it uses).
    pub worker: usize,
    /// True when it arrived over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The subject of the client's verified TLS certificate, for the access log.
    pub tls_client: Option<String>,
    /// The server name the client sent over TLS (SNI).
    pub tls_sni: Option<String>,
    /// The address the client connected to.
    pub local: SocketAddr,
}

impl ConnInfo {
    /// Info for a connection from `peer`, served by worker `worker`, over TLS or not.
    pub fn new(peer: SocketAddr, worker: usize, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical();
        let client_ip = HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            client_ip,
            worker,
            tls,
            tls_client: None,
            tls_sni: None,
            local: peer,
        }
    }
}

/// Most attempts of one request: the first plus at most 10 retries (the config's limit).
const MAX_ATTEMPTS: usize = 11;

/// The request body, kept so the request can be sent again when a retry is allowed after
/// bytes went out, or streamed once otherwise.
enum Payload {
    /// Streamed: only a connect failure (nothing sent yet) can be retried.
    Once(Option<ClientBody>),
    /// Empty or held in memory: any failure the policy names can be retried.
    Replayable(Bytes),
}

/// Proxies one request. Never fails: every error becomes a response from [`ProxyError`],
/// counted in its pool's figures, or in `unrouted` when no pool took the request.
pub async fn forward(
    mut req: Request<Incoming>,
    router: &ArcSwap<Router>,
    conn: &ConnInfo,
    unrouted: &StatusCounts,
) -> Response<ProxyBody> {
    let started = Instant::now();
    // Keep the client's request id when it is one well-formed value (and the listener trusts
    // clients), or give the request one; it goes upstream and to the log.
    let trusted = {
        let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
        match (ids.next(), ids.next()) {
            (Some(id), None)
                if router.load().client_settings().trust_request_id
                    && crate::http1::head::acceptable_request_id(id.as_bytes()) =>
            {
                Some(id.clone())
            }
            _ => None,
        }
    };
    let request_id = match trusted {
        Some(id) => id,
        None => {
            let id = new_request_id();
            req.headers_mut().insert(&X_REQUEST_ID, id.clone());
            id
        }
    };
    // HTTP/2 requests carry the host in the URI rather than a Host header.
    let host = match req.headers().get(HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if router.load().client_settings().redirect_https {
        if let Some(host) = &host {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let location = crate::http1::write::https_location(host.as_bytes(), path.as_bytes());
            if let Ok(location) = HeaderValue::from_bytes(&location) {
                unrouted.record(308);
                let mut res = Response::new(ProxyBody::local("308 Permanent Redirect\n"));
                *res.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
                res.headers_mut().insert(http::header::LOCATION, location);
                return res;
            }
        }
    }
    let (pool, log) = {
        let router = router.load();
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        (
            router.route(host_str, req.uri().path()).cloned(),
            router.access_log().cloned(),
        )
    };
    let grpc = super::error::is_grpc(req.headers());
    let mut record = log.as_ref().map(|_| {
        let mut r = AccessRecord::start(conn.peer, req.method(), req.uri(), req.headers(), request_id);
        r.tls_client.clone_from(&conn.tls_client);
        r
    });
    let res = match pool {
        Some(pool) => {
            if let Some(r) = record.as_mut() {
                r.pool = Some(Arc::from(pool.name()));
            }
            let res = match rate_limited(&pool, conn, &req).await {
                Some(refusal) => refusal,
                None => proxy(req.map(ClientBody::Hyper), host, &pool, conn, record.as_mut()).await,
            };
            if matches!(res.body(), ProxyBody::Local(_)) {
                pool.stats().local_responses.record(res.status().as_u16());
            }
            res
        }
        None => {
            unrouted.record(ProxyError::NoRoute.status().as_u16());
            ProxyError::NoRoute.response()
        }
    };
    let res = finish(res, record, log, started);
    match res.extensions().get::<ProxyError>() {
        Some(e) if grpc => e.grpc_response(),
        _ => res,
    }
}

/// A 429 with its `Retry-After` and `RateLimit` fields when `pool`'s rate limit refuses
/// `req`; `None` lets it go.
async fn rate_limited<B>(pool: &Pool, conn: &ConnInfo, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let limiter = pool.rate_limiter()?;
    let key = limiter
        .config()
        .key
        .hash(&RequestView::of_map(conn.peer.ip(), req.headers(), req.uri()))?;
    let verdict = match limiter.check(key) {
        Some(v) => v,
        None => Box::pin(limiter.ask(key)).await,
    };
    if verdict.allowed {
        return None;
    }
    let mut res = ProxyError::RateLimited.response();
    for (name, value) in limiter.refusal_headers(&verdict) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, value);
        }
    }
    Some(res)
}

/// Attaches the access record to the response: written when the body ends, or at once for a
/// response Steelyard wrote itself.
fn finish(
    mut res: Response<ProxyBody>,
    record: Option<AccessRecord>,
    log: Option<AccessLog>,
    started: Instant,
) -> Response<ProxyBody> {
    let (Some(mut record), Some(log)) = (record, log) else {
        return res;
    };
    record.status = res.status().as_u16();
    match res.body_mut() {
        ProxyBody::Upstream { pending_log, .. } => {
            *pending_log = Some(Box::new(PendingLog {
                log,
                record: Some(record),
                started: started.into_std(),
            }));
        }
        ProxyBody::Local(data) => {
            record.bytes = data.as_ref().map_or(0, |d| d.len() as u64);
            record.duration = started.elapsed();
            log.log(record);
        }
    }
    res
}

/// Sends a routed request to its pool's backends. `host` is the request's host (its `Host`
/// field or its URI's authority).
pub(crate) async fn proxy(
    req: Request<ClientBody>,
    host: Option<HeaderValue>,
    pool: &Arc<Pool>,
    conn: &ConnInfo,
    mut record: Option<&mut AccessRecord>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(
        &mut parts.headers,
        parts.version,
        &conn.client_ip,
        host.as_ref(),
        conn.tls,
    );
    parts.uri = origin_form(std::mem::take(&mut parts.uri));
    parts.version = Version::HTTP_11;

    let config = pool.config();
    let h2_scheme = config
        .protocol
        .is_h2()
        .then_some(if config.tls.is_some() { "https" } else { "http" });
    pool.retry_budget().deposit();
    let proxy_header = config.send_proxy_protocol.map(|version| {
        let extras = super::proxy_protocol::Extras {
            authority: conn.tls_sni.as_deref(),
            alpn: conn.tls.then_some(&b"h2"[..]),
        };
        super::proxy_protocol::encode(version, conn.peer, conn.local, extras)
    });
    // A gRPC call's own deadline bounds it like `timeouts.request`, whichever ends first.
    let now = Instant::now();
    let grpc_deadline = super::error::is_grpc(&parts.headers)
        .then(|| super::error::grpc_timeout(&parts.headers))
        .flatten()
        .map(|d| now + d);
    let deadline = match (config.timeouts.request.map(|d| now + d), grpc_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut payload = match payload(&mut parts, body, &config.retries).await {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0usize;
    let mut last_failure = ProxyError::NoBackend;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return timed_out(pool, conn);
        }
        let view = RequestView::of_map(conn.peer.ip(), &parts.headers, &parts.uri);
        let Some(picked) = pool.pick(&view, &tried[..attempts]) else {
            return last_failure.response();
        };
        let (index, member, set_cookie) = (picked.index, picked.member, picked.set_cookie);
        tried[attempts] = index;
        attempts += 1;
        let backend = &member.backend;

        let slot = match &member.slots {
            None => None,
            Some(slots) => match tokio::time::timeout(config.queue_timeout, Arc::clone(slots).acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    tracing::warn!(pool = pool.name(), backend = %backend.address(), "no backend slot within queue_timeout");
                    return ProxyError::QueueTimeout.response();
                }
            },
        };
        let in_flight = backend.start_request_owned(conn.worker);
        let started = Instant::now();
        let mut attempt_deadline = started + config.timeouts.response_header;
        if let Some(d) = deadline {
            attempt_deadline = attempt_deadline.min(d);
        }

        // One timer covers connecting and the response headers. Connecting sends nothing, so
        // its failure can always be retried; after the request went out, only replayable
        // requests can be.
        let so_far = retry::Attempts {
            made: attempts,
            replayable: matches!(payload, Payload::Replayable(_)),
            body_consumed: false,
        };
        let mut request_sent = false;
        let exchange = tokio::time::timeout_at(attempt_deadline, async {
            let mut connection = match &proxy_header {
                Some(header) => member.connections.connect_private(conn.worker, header).await,
                None => member.connections.checkout(conn.worker).await,
            }
            .map_err(|e| (false, e))?;
            let Some(upstream_req) = next_request(&mut parts, &mut payload, backend, conn.worker, h2_scheme) else {
                return Ok(None);
            };
            request_sent = true;
            let res = connection.send(upstream_req).await.map_err(|e| (true, e))?;
            Ok(Some((res, connection)))
        })
        .await;
        let (failure, why, retry_wanted) = match exchange {
            Ok(Ok(Some((mut res, connection)))) => {
                let status = res.status().as_u16();
                let is_5xx = status >= 500;
                if is_5xx && config.passive.eject_on_5xx {
                    crate::health::passive::record_failure(pool, index);
                } else {
                    backend.record_success();
                }
                if retry::allows(&config.retries, retry::Failure::Status(status), so_far)
                    && pool.retry_budget().try_withdraw()
                {
                    tracing::debug!(pool = pool.name(), backend = %backend.address(), status, "retrying on status");
                    last_failure = ProxyError::BadGateway;
                    continue;
                }
                let latency = started.elapsed();
                if config.algorithm == Algorithm::PeakEwma {
                    backend.observe_latency(latency, config.ewma_decay);
                }
                backend.record_response(conn.worker, status, latency);
                if let Some(r) = record.as_deref_mut() {
                    r.upstream = Some(backend.address());
                    r.upstream_duration = Some(latency);
                    r.retries = attempts as u32 - 1;
                }
                strip_hop_by_hop(res.headers_mut());
                if let Some(cookie) = set_cookie {
                    res.headers_mut().append(SET_COOKIE, cookie);
                }
                return res.map(|body| ProxyBody::upstream(body, in_flight, connection, slot));
            }
            // The streamed body already went to a backend: it cannot be sent again.
            Ok(Ok(None)) => return last_failure.response(),
            Ok(Err((true, e))) if !e.before_processing() => (classify(&e), error_chain(&e), retry::Failure::Reset),
            Err(_) if request_sent => {
                let overall = deadline.is_some_and(|d| attempt_deadline >= d);
                if overall {
                    crate::health::passive::record_failure(pool, index);
                    return timed_out(pool, conn);
                }
                (
                    ProxyError::ResponseHeaderTimeout,
                    "no response headers within the response_header timeout".into(),
                    retry::Failure::Timeout,
                )
            }
            connect_failure => {
                let (failure, why) = match connect_failure {
                    Ok(Err((_, e))) => (classify(&e), error_chain(&e)),
                    _ => (
                        ProxyError::ConnectTimeout,
                        "no connection within the response_header timeout".into(),
                    ),
                };
                crate::health::passive::record_failure(pool, index);
                log_failure(pool, conn, backend.address(), failure, &why);
                last_failure = failure;
                if retry::allows(&config.retries, retry::Failure::Connect, so_far) && pool.retry_budget().try_withdraw()
                {
                    continue;
                }
                return failure.response();
            }
        };
        crate::health::passive::record_failure(pool, index);
        log_failure(pool, conn, backend.address(), failure, &why);
        last_failure = failure;
        if retry::allows(&config.retries, retry_wanted, so_far) && pool.retry_budget().try_withdraw() {
            continue;
        }
        return failure.response();
    }
}

/// Decides how the body travels: replayable (kept in memory) when the method is idempotent,
/// the policy could retry after bytes went out, and the body is empty or small enough.
async fn payload(parts: &mut Parts, body: ClientBody, policy: &RetryConfig) -> Result<Payload, ProxyError> {
    let after_send = policy.attempts > 0 && (policy.on_reset || policy.on_timeout || !policy.on_status.0.is_empty());
    if !after_send || !is_idempotent(&parts.method) {
        return Ok(Payload::Once(Some(body)));
    }
    if body.is_end_stream() {
        return Ok(Payload::Replayable(Bytes::new()));
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n <= policy.buffer_body_bytes => match body.collect().await {
            Ok(collected) => Ok(Payload::Replayable(collected.to_bytes())),
            Err(_) => Err(ProxyError::BadRequest),
        },
        _ => Ok(Payload::Once(Some(body))),
    }
}

/// RFC 9110 §9.2.2 idempotent methods: sending them twice does what sending once does.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request for the next attempt, or `None` when its streamed body was already sent.
/// A streamed request is sent once, so its head is moved rather than copied.
fn next_request(
    parts: &mut Parts,
    payload: &mut Payload,
    backend: &Arc<Backend>,
    worker: usize,
    h2_scheme: Option<&'static str>,
) -> Option<Request<UpstreamBody>> {
    let (body, headers, uri) = match payload {
        Payload::Once(body) => (
            UpstreamBody::Streaming(body.take()?, Arc::clone(backend), worker),
            std::mem::take(&mut parts.headers),
            std::mem::take(&mut parts.uri),
        ),
        Payload::Replayable(bytes) => (
            {
                backend.record_bytes_sent(worker, bytes.len() as u64);
                UpstreamBody::Buffered(Some(bytes.clone()))
            },
            parts.headers.clone(),
            parts.uri.clone(),
        ),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = headers;
    if !req.headers().contains_key(HOST) {
        // An HTTP/1.0 client sent no host at all: name the backend, as nginx does.
        if let Ok(h) = HeaderValue::from_str(backend.authority().as_str()) {
            req.headers_mut().insert(HOST, h);
        }
    }
    if let Some(scheme) = h2_scheme {
        to_h2_form(&mut req, scheme);
    }
    Some(req)
}

/// Rewrites a request for an HTTP/2 backend: the host moves into the URI (`:authority`), with
/// `scheme` (`:scheme`), and the version becomes HTTP/2.
fn to_h2_form(req: &mut Request<UpstreamBody>, scheme: &'static str) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut builder = Uri::builder().scheme(scheme).path_and_query(path);
    if let Some(authority) = authority {
        builder = builder.authority(authority);
    }
    if let Ok(uri) = builder.build() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

fn timed_out(pool: &Pool, conn: &ConnInfo) -> Response<ProxyBody> {
    tracing::warn!(pool = pool.name(), client = %conn.peer, "request timeout reached");
    ProxyError::RequestTimeout.response()
}

fn log_failure(pool: &Pool, conn: &ConnInfo, backend: SocketAddr, failure: ProxyError, why: &str) {
    tracing::warn!(
        backend = %backend,
        pool = pool.name(),
        client = %conn.peer,
        status = failure.status().as_u16(),
        error = %why,
        "backend request failed"
    );
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
        UpstreamError::Connect(ConnectError::TimedOut(_)) => ProxyError::ConnectTimeout,
        _ => ProxyError::BadGateway,
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
