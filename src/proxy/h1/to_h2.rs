//! HTTP/1 clients of a pool that speaks HTTP/2 to its backends (`protocol = "h2"` or `"h2c"`).
//!
//! The request is handed to the same code that proxies requests arriving over HTTP/2
//! (hyper's client, one multiplexed connection per backend and worker, retries, timeouts,
//! metrics): its head is turned into a `Request` and its body, decoded from
//! `Content-Length` or chunked framing, streams through a small channel while the response
//! comes back. The response is written as HTTP/1.1 (or 1.0) with `Content-Length` when its
//! size is known, else chunked (with trailers) for HTTP/1.1 clients, else delimited by the
//! close. Upgrades are not forwarded to HTTP/2 backends, and the request's own trailers are
//! dropped.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{local, Next, RequestId, Scratch};
use crate::http1::buffer::{Buffer, BUF_SIZE};
use crate::http1::chunked::{self, Decoder, Event};
use crate::http1::connection::{Client, Shared};
use crate::http1::head::{Framing, Kind, RequestHead};
use crate::http1::write;
use crate::proxy::access_log::AccessRecord;
use crate::proxy::forward::{self, ConnInfo};
use crate::proxy::ProxyBody;
use crate::upstream::connection::{ClientBody, RelayError};
use crate::upstream::Pool;

/// Request body frames buffered between the client and the backend's stream.
const RELAY_FRAMES: usize = 4;

/// Proxies one request to `pool`, whose backends speak HTTP/2. Returns the status sent, what
/// the connection does next, and the response body bytes written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn proxy(
    conn: &mut Client,
    shared: &Shared,
    settings: &crate::config::ClientSettings,
    req: &RequestHead,
    pool: &std::sync::Arc<Pool>,
    request_id: &RequestId,
    scratch: &mut Scratch,
    record: Option<&mut AccessRecord>,
) -> (u16, Next, u64) {
    let keep_alive = req.keep_alive && !shared.stopping();
    let Some((mut request, host)) = request_of(conn.buf.prefix(), req, &scratch.fields, request_id) else {
        shared.limit.local_responses().record(400);
        local(conn, &mut scratch.out, 400, b"", false).await;
        return (400, Next::Close, 0);
    };
    let (sender, body) = match req.framing {
        Framing::Empty | Framing::Close => (None, None),
        _ => {
            let (tx, rx) = Channel::new(RELAY_FRAMES);
            (Some(tx), Some(rx))
        }
    };
    if let Some(body) = body {
        *request.body_mut() = ClientBody::Relayed(body);
    }
    if req.expect_continue && sender.is_some() {
        // The body is read as soon as it comes: no reason to make the client wait.
        let _ = conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        let _ = conn.stream.flush().await;
    }
    let info = ConnInfo::new(conn.info.peer, conn.info.worker as usize, conn.stream.is_tls());
    let Client { stream, buf, .. } = conn;
    let (mut crd, mut cwr) = stream.split();
    let upload = async {
        match sender {
            Some(tx) => relay(&mut crd, buf, req.framing, tx, settings).await,
            None => Ok(()),
        }
    };
    let download = async {
        let res = forward::proxy(request, host, pool, &info, record).await;
        if matches!(res.body(), ProxyBody::Local(_)) {
            pool.stats().local_responses.record(res.status().as_u16());
        }
        write_response(
            &mut cwr,
            res,
            req,
            keep_alive,
            &mut scratch.out,
            settings.body_idle_timeout,
        )
        .await
    };
    let (uploaded, (status, written, complete)) = tokio::join!(upload, download);
    let next = if complete && keep_alive && uploaded.is_ok() {
        Next::KeepAlive(Instant::now())
    } else {
        Next::Close
    };
    (status, next, written)
}

/// The request as hyper's client takes it, and its host; `None` when a field is not valid for
/// the `http` crate (which HTTP/1 parsing already makes very unlikely).
fn request_of(
    head: &[u8],
    req: &RequestHead,
    fields: &[crate::http1::head::Field],
    request_id: &RequestId,
) -> Option<(Request<ClientBody>, Option<HeaderValue>)> {
    let method = Method::from_bytes(req.method_span.get(head)).ok()?;
    let uri = Uri::try_from(req.path(head)).ok()?;
    let mut headers = HeaderMap::with_capacity(fields.len() + 1);
    for f in fields {
        match f.kind {
            // Framing is the channel's now; the host travels as `:authority`; the id is ours.
            Kind::ContentLength if req.framing != Framing::Empty => {}
            Kind::TransferEncoding | Kind::Host | Kind::XRequestId => {}
            _ => {
                let name = HeaderName::from_bytes(f.name.get(head)).ok()?;
                let value = HeaderValue::from_bytes(f.value.get(head)).ok()?;
                headers.append(name, value);
            }
        }
    }
    if let Framing::Length(n) = req.framing {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let host = match req.host {
        Some(span) => Some(HeaderValue::from_bytes(span.get(head)).ok()?),
        None => None,
    };
    if let Some(h) = &host {
        headers.insert(http::header::HOST, h.clone());
    }
    headers.insert(
        &crate::proxy::headers::X_REQUEST_ID,
        HeaderValue::from_bytes(request_id.get(head)).ok()?,
    );
    let mut request = Request::new(ClientBody::Relayed(ended_channel()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some((request, host))
}

/// A channel body that has already ended.
fn ended_channel() -> Channel<Bytes, RelayError> {
    let (tx, rx) = Channel::new(1);
    drop(tx);
    rx
}

/// Streams the request body from the client into `tx`, decoding its framing. On any failure
/// the channel is aborted, so that the backend sees a reset stream rather than a body that
/// merely looks shorter.
async fn relay<R: AsyncRead + Unpin>(
    crd: &mut R,
    cbuf: &mut Buffer,
    framing: Framing,
    mut tx: Sender<Bytes, RelayError>,
    settings: &crate::config::ClientSettings,
) -> Result<(), RelayError> {
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut decoder = Decoder::new();
    let mut total = 0u64;
    let result: Result<(), RelayError> = async {
        loop {
            let unread = cbuf.unread();
            if !unread.is_empty() {
                match framing {
                    Framing::Length(_) => {
                        let n = unread.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        let data = Bytes::copy_from_slice(&unread[..n]);
                        cbuf.consume(n);
                        remaining -= n as u64;
                        tx.send_data(data)
                            .await
                            .map_err(|_| RelayError("the backend stream ended"))?;
                    }
                    _ => {
                        let (used, event) = decoder.decode(unread).map_err(|_| RelayError("malformed chunk"))?;
                        let data = match event {
                            Some(Event::Data { start, len }) => {
                                Some(Bytes::copy_from_slice(&unread[start..start + len]))
                            }
                            Some(Event::End { .. }) => {
                                cbuf.consume(used);
                                return Ok(());
                            }
                            None => None,
                        };
                        cbuf.consume(used);
                        if let Some(data) = data {
                            total += data.len() as u64;
                            if settings.max_request_body.is_some_and(|m| total > m) {
                                return Err(RelayError("request body too large"));
                            }
                            tx.send_data(data)
                                .await
                                .map_err(|_| RelayError("the backend stream ended"))?;
                        }
                        if event.is_some() {
                            continue;
                        }
                    }
                }
            }
            if matches!(framing, Framing::Length(_)) && remaining == 0 {
                return Ok(());
            }
            let limit = cbuf.prefix().len() + BUF_SIZE + chunked::MAX_TRAILERS;
            cbuf.room(limit).ok_or(RelayError("chunk line too long"))?;
            match tokio::time::timeout(settings.body_idle_timeout, cbuf.read_from(crd, limit)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(RelayError("the client went away")),
                Err(_) => return Err(RelayError("the client went silent")),
                Ok(Ok(_)) => {}
            }
        }
    }
    .await;
    if let Err(e) = &result {
        tx.abort(RelayError(e.0));
    }
    result
}

/// Writes `res` to an HTTP/1 client. Returns the status, the body bytes written and whether
/// the response went out whole (the connection can then carry another request).
async fn write_response<W: AsyncWrite + Unpin>(
    cwr: &mut W,
    res: http::Response<ProxyBody>,
    req: &RequestHead,
    keep_alive: bool,
    out: &mut Vec<u8>,
    idle: Duration,
) -> (u16, u64, bool) {
    let (parts, mut body) = res.into_parts();
    let status = parts.status.as_u16();
    let bodiless = req.method == crate::http1::head::Method::Head || status == 204 || status == 304;
    let length = body.size_hint().exact();
    let chunked = !bodiless && length.is_none() && req.minor == 1;
    let close_delimited = !bodiless && length.is_none() && !chunked;
    let keep_alive = keep_alive && !close_delimited;
    out.clear();
    out.extend_from_slice(if req.minor == 1 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or(write::reason(status))
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match (bodiless, length, chunked) {
        (true, _, _) => {
            if let Some(v) = parts.headers.get(http::header::CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        (false, Some(n), _) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (false, None, true) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (false, None, false) => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if req.minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if cwr.write_all(out).await.is_err() {
        return (status, 0, false);
    }
    let mut written = 0u64;
    let mut trailers_sent = false;
    if !bodiless {
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => break,
                // The backend failed mid-body or went silent: the client sees a cut response.
                Ok(Some(Err(_))) | Err(_) => return (status, written, false),
            };
            let sent = match frame.into_data() {
                Ok(data) => {
                    written += data.len() as u64;
                    if chunked {
                        let mut size = [0u8; 18];
                        let n = chunked::size_line(data.len(), &mut size);
                        cwr.write_all(&size[..n])
                            .await
                            .and(cwr.write_all(&data).await)
                            .and(cwr.write_all(b"\r\n").await)
                    } else {
                        cwr.write_all(&data).await
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) if chunked => {
                        trailers_sent = true;
                        cwr.write_all(&trailer_block(&trailers)).await
                    }
                    _ => Ok(()),
                },
            };
            if sent.is_err() {
                return (status, written, false);
            }
        }
        if chunked && !trailers_sent && cwr.write_all(b"0\r\n\r\n").await.is_err() {
            return (status, written, false);
        }
    }
    if cwr.flush().await.is_err() {
        return (status, written, false);
    }
    (status, written, keep_alive)
}

/// The last chunk with `trailers` as its trailer section.
fn trailer_block(trailers: &HeaderMap) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
