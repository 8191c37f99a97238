//! One HTTP/1 request's life on the engine: parse its head, answer locally or route it, pick
//! a backend, exchange with it (retrying where that is safe: `attempt.rs`), and hand the
//! connection back ready for the next request, or closed.

mod attempt;
mod to_h2;

use attempt::proxy;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::ClientIo;
use http::header::{HeaderName, HeaderValue, REFERER, USER_AGENT};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::access_log::{request_id_bytes, AccessRecord};
use crate::http1::buffer;
use crate::http1::connection::{Client, Shared};
use crate::http1::head::{self, Field, Framing, HeadError, HeadLimits, Method, RequestHead};
use crate::http1::io::Timer;
use crate::http1::write;
use crate::upstream::Headers;

/// What the connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for (or parse) the next request. Inside this module: the time the response
    /// ended; from [`serve`]: the deadline for the next request to start.
    KeepAlive(Instant),
    /// Close the connection.
    Close,
}

impl Next {
    /// What follows a response Steelyard wrote itself: the next request (its wait counted
    /// from now) when the connection is kept alive, else the close.
    fn after_local(keep_alive: bool) -> Next {
        if keep_alive {
            Next::KeepAlive(Instant::now())
        } else {
            Next::Close
        }
    }
}

/// Header tables and the head-writing vector, back to their pools when the request ends.
struct Scratch {
    fields: Vec<Field>,
    response_fields: Vec<Field>,
    out: Vec<u8>,
}

impl Scratch {
    fn take() -> Scratch {
        Scratch {
            fields: buffer::take_fields(),
            response_fields: buffer::take_fields(),
            out: buffer::take_scratch(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        buffer::give_fields(std::mem::take(&mut self.fields));
        buffer::give_fields(std::mem::take(&mut self.response_fields));
        buffer::give_scratch(std::mem::take(&mut self.out));
    }
}

/// Serves the request whose first bytes are in `conn`'s buffer; its whole head must arrive
/// within the head timeout from now.
pub async fn serve(conn: &mut Client, shared: &Shared) -> Next {
    let mut timer = conn.info.timer();
    let timer = &mut timer;
    let now = Instant::now();
    let router = shared.router.load_full();
    let settings = router.client_settings();
    let head_deadline = now + settings.head_timeout;
    let limits = HeadLimits {
        max_bytes: settings.max_header_bytes,
        max_fields: settings.max_header_count,
        max_uri: settings.max_uri_bytes,
    };
    let mut scratch = Scratch::take();
    conn.buf.compact();
    let mut req = loop {
        match head::parse_request(conn.buf.unread(), &limits, &mut scratch.fields) {
            Ok(Some(req)) => break req,
            Ok(None) => {}
            Err(e) => {
                shared.limit.count_request();
                tracing::debug!(client = %conn.info.peer, error = %e, "refused a request head");
                return refuse(conn, shared, &mut scratch.out, e).await;
            }
        }
        timer.require(head_deadline);
        let read = loop {
            tokio::select! {
                biased;
                r = conn.buf.read_from(&mut conn.stream, limits.max_bytes) => break r,
                () = timer.fired() => {
                    if Instant::now() >= head_deadline {
                        tracing::debug!(client = %conn.info.peer, "request head timeout");
                        shared.limit.local_responses().record(408);
                        local(conn, &mut scratch.out, 408, b"", false).await;
                        return Next::Close;
                    }
                    timer.set(head_deadline);
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    };
    shared.limit.count_request();
    if !settings.trust_request_id {
        req.request_id = None;
    }
    conn.buf.pin(req.len);
    let next = route(conn, shared, &router, settings, &req, now, timer, &mut scratch).await;
    conn.buf.unpin();
    match next {
        Next::KeepAlive(ended) => Next::KeepAlive(ended + settings.keep_alive_timeout),
        Next::Close => Next::Close,
    }
}

/// Answers a refused head and closes.
async fn refuse(conn: &mut Client, shared: &Shared, out: &mut Vec<u8>, e: HeadError) -> Next {
    shared.limit.local_responses().record(e.status());
    local(conn, out, e.status(), b"", false).await;
    Next::Close
}

/// Writes a response of the proxy's own: `{status} {reason}` as its body. Boxed (off the
/// fast path): its timers would otherwise enlarge every request's state.
fn local<'a>(
    conn: &'a mut Client,
    out: &'a mut Vec<u8>,
    status: u16,
    extra: &'a [u8],
    keep_alive: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + 'a>> {
    Box::pin(write_local(conn, out, status, extra, keep_alive))
}

/// Answers 429 with the limit's fields when `verdict` (or, if there is none yet, Redis's)
/// refuses the request; returns the body bytes written, or `None` when the request may go.
async fn refuse_if_limited(
    conn: &mut Client,
    out: &mut Vec<u8>,
    limiter: &crate::fleet::rate_limit::RateLimiter,
    key: u64,
    verdict: Option<crate::fleet::gcra_table::Verdict>,
    keep_alive: bool,
) -> Option<u64> {
    let verdict = match verdict {
        Some(v) => v,
        None => limiter.ask(key).await,
    };
    if verdict.allowed {
        return None;
    }
    let mut extra = Vec::with_capacity(128);
    limiter.refusal_fields(&verdict, &mut extra);
    Some(write_local(conn, out, 429, &extra, keep_alive).await)
}

async fn write_local(conn: &mut Client, out: &mut Vec<u8>, status: u16, extra: &[u8], keep_alive: bool) -> u64 {
    let mut body = [0u8; 64];
    let text = format_status_body(status, &mut body);
    let len = text.len() as u64;
    write::local_response(out, status, extra, text, keep_alive);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        conn.stream.write_all(out).await?;
        conn.stream.flush().await
    })
    .await;
    if !keep_alive {
        linger(&mut conn.stream).await;
    }
    len
}

/// Closes our side, then reads and discards what the client still sends for a moment, so
/// that closing with unread bytes does not reset the connection and destroy the response
/// in flight (nginx's lingering close).
async fn linger(stream: &mut ClientIo) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Longest lingering close.
const LINGER: Duration = Duration::from_secs(2);

fn format_status_body(status: u16, buf: &mut [u8; 64]) -> &[u8] {
    let mut n = 0;
    for part in [
        itoa::Buffer::new().format(status).as_bytes(),
        b" ",
        write::reason(status).as_bytes(),
        b"\n",
    ] {
        let take = part.len().min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&part[..take]);
        n += take;
    }
    &buf[..n]
}

/// The request's id: the client's `X-Request-Id`, or one of ours.
#[derive(Debug, Clone, Copy)]
enum RequestId {
    Client(head::Span),
    Ours([u8; 16]),
}

impl RequestId {
    fn get<'a>(&'a self, head: &'a [u8]) -> &'a [u8] {
        match self {
            RequestId::Client(span) => span.get(head),
            RequestId::Ours(id) => id,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn route(
    conn: &mut Client,
    shared: &Shared,
    router: &super::Router,
    settings: &crate::config::ClientSettings,
    req: &RequestHead,
    started: Instant,
    timer: &mut Timer,
    scratch: &mut Scratch,
) -> Next {
    // A body we do not forward must not be parsed as the next request: close after answering.
    let keep_alive = req.keep_alive && req.framing == Framing::Empty && !shared.stopping();
    if req.max_forwards == Some(0) {
        let extra: &[u8] = if req.method == Method::Options {
            b"Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n"
        } else {
            b""
        };
        shared.limit.local_responses().record(200);
        local(conn, &mut scratch.out, 200, extra, keep_alive).await;
        return Next::after_local(keep_alive);
    }
    if let (Some(max), Framing::Length(n)) = (settings.max_request_body, req.framing) {
        if n > max {
            shared.limit.local_responses().record(413);
            local(conn, &mut scratch.out, 413, b"", false).await;
            return Next::Close;
        }
    }
    if settings.redirect_https {
        return Box::pin(redirect_https(conn, shared, req, keep_alive, scratch)).await;
    }
    let head_bytes = conn.buf.prefix();
    let host = req.host.and_then(|h| std::str::from_utf8(h.get(head_bytes)).ok());
    let target = std::str::from_utf8(req.path(head_bytes)).unwrap_or("/");
    // `OPTIONS *` is about the server as a whole: it takes the routes of `/`.
    let path = if target == "*" {
        "/"
    } else {
        // A byte search: the target is ASCII (the parser refuses anything else), so the
        // position of `?` is a char boundary.
        target
            .as_bytes()
            .iter()
            .position(|&b| b == b'?')
            .map_or(target, |q| &target[..q])
    };
    let pool = router.route(host, path).cloned();
    let log = router.access_log().cloned();
    let id = match req.request_id {
        Some(span) => RequestId::Client(span),
        None => RequestId::Ours(request_id_bytes()),
    };
    // Boxed: built only when the listener logs, and large.
    let mut record = log
        .as_ref()
        .map(|_| Box::new(record_of(conn, req, head_bytes, &scratch.fields, id.get(head_bytes))));
    let (status, next, bytes) = match pool {
        None => {
            shared.limit.local_responses().record(404);
            let bytes = local(conn, &mut scratch.out, 404, b"", keep_alive).await;
            (404, Next::after_local(keep_alive), bytes)
        }
        Some(pool) => {
            if let Some(r) = record.as_mut() {
                r.pool = Some(Arc::from(pool.name()));
            }
            // Decided here without waiting, unless the limit refuses or must ask Redis.
            let limited = rate_limit_key(conn, &pool, head_bytes, &scratch.fields, target).and_then(
                |(limiter, key)| match limiter.check(key) {
                    Some(v) if v.allowed => None,
                    verdict => Some((limiter, key, verdict)),
                },
            );
            let refused = match limited {
                None => None,
                // Boxed: the rare path must take no room in every request's state.
                Some((limiter, key, verdict)) => {
                    Box::pin(refuse_if_limited(
                        conn,
                        &mut scratch.out,
                        limiter,
                        key,
                        verdict,
                        keep_alive,
                    ))
                    .await
                }
            };
            if let Some(bytes) = refused {
                pool.stats().local_responses.record(429);
                (429, Next::after_local(keep_alive), bytes)
            } else if pool.config().protocol.is_h2() {
                Box::pin(to_h2::proxy(
                    conn,
                    shared,
                    settings,
                    req,
                    &pool,
                    &id,
                    scratch,
                    record.as_deref_mut(),
                ))
                .await
            } else {
                proxy(
                    conn,
                    shared,
                    settings,
                    req,
                    &pool,
                    &id,
                    started,
                    timer,
                    scratch,
                    record.as_deref_mut(),
                )
                .await
            }
        }
    };
    if let (Some(mut record), Some(log)) = (record, log) {
        record.status = status;
        record.bytes = bytes;
        record.duration = started.elapsed();
        log.log(*record);
    }
    next
}

/// `pool`'s rate limiter and this request's key for it; `None` when the pool has no limit or
/// the request lacks the key (it is not limited).
fn rate_limit_key<'p>(
    conn: &Client,
    pool: &'p crate::upstream::Pool,
    head: &[u8],
    fields: &[Field],
    target: &str,
) -> Option<(&'p crate::fleet::rate_limit::RateLimiter, u64)> {
    let limiter = pool.rate_limiter()?;
    let view = crate::upstream::RequestView::of_raw(conn.info.peer.ip(), head, fields, target);
    Some((limiter, limiter.config().key.hash(&view)?))
}

/// A plain listener's answer to everything: 308 to the same URL over `https://` (400 without a
/// host to send the client to).
async fn redirect_https(
    conn: &mut Client,
    shared: &Shared,
    req: &RequestHead,
    keep_alive: bool,
    scratch: &mut Scratch,
) -> Next {
    let head = conn.buf.prefix();
    let Some(host) = req.host.map(|h| h.get(head)) else {
        shared.limit.local_responses().record(400);
        local(conn, &mut scratch.out, 400, b"", false).await;
        return Next::Close;
    };
    let mut extra = b"Location: ".to_vec();
    extra.extend_from_slice(&write::https_location(host, req.path(head)));
    extra.extend_from_slice(b"\r\n");
    shared.limit.local_responses().record(308);
    local(conn, &mut scratch.out, 308, &extra, keep_alive).await;
    Next::after_local(keep_alive)
}

fn record_of(conn: &Client, req: &RequestHead, head: &[u8], fields: &[Field], id: &[u8]) -> AccessRecord {
    let headers = Headers::Raw { head, fields };
    let value = |name: &HeaderName| headers.get(name).and_then(|v| HeaderValue::from_bytes(v).ok());
    let method = http::Method::from_bytes(req.method_span.get(head)).unwrap_or(http::Method::GET);
    let uri = http::Uri::try_from(req.target.get(head)).unwrap_or_default();
    let mut record = AccessRecord::start(
        conn.info.peer,
        &method,
        &uri,
        &http::HeaderMap::new(),
        HeaderValue::from_bytes(id).unwrap_or(HeaderValue::from_static("-")),
    );
    record.host = req.host.and_then(|h| HeaderValue::from_bytes(h.get(head)).ok());
    record.tls_client = conn.stream.client_subject();
    record.user_agent = value(&USER_AGENT);
    record.referer = value(&REFERER);
    record
}
