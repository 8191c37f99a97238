//! Attempts at backends for one request: the retry loop, one exchange on a pooled or new
//! connection (the request body going up while the response comes down), and the tunnel
//! after a 101.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{local, Next, RequestId, Scratch};
use crate::config::Algorithm;
use crate::http1::buffer::{self, Buffer};
use crate::http1::connection::{Client, Shared};
use crate::http1::exchange::{self, DownloadError, Downloaded, Progress, ResponsePlan, UploadError, Uploaded};
use crate::http1::head::{Framing, RequestHead};
use crate::http1::io::{write_all_vectored, Timer};
use crate::http1::write::{self, Forwarding};
use crate::proxy::access_log::AccessRecord;
use crate::proxy::retry;
use crate::proxy::ProxyError;
use crate::stream::UpstreamIo;
use crate::upstream::backend::nanos_at;
use crate::upstream::connect::ConnectError;
use crate::upstream::{Pool, RequestView};

/// Most attempts of one request: the first plus at most 10 retries (the config's limit).
const MAX_ATTEMPTS: usize = 11;

/// What one attempt at a backend works from.
#[derive(Clone, Copy)]
struct AttemptPlan<'a> {
    settings: &'a crate::config::ClientSettings,
    req: &'a RequestHead,
    member: &'a crate::upstream::Member,
    request_id: &'a RequestId,
    /// Response headers must arrive by then.
    deadline: Instant,
    started: Instant,
    /// A sticky-session cookie for the response.
    set_cookie: Option<&'a [u8]>,
    /// Whether a final status is one to retry on (and the budget allows it).
    retry_status: &'a (dyn Fn(u16) -> bool + Sync),
    /// The PROXY protocol header the pool sends: its connections then each carry one
    /// client's requests, and are neither taken from nor given back to the shared pool.
    proxy_header: Option<&'a [u8]>,
}

/// How one exchange with a backend ended, for the retry loop.
enum Attempt {
    /// The response went to the client (whole, or as far as it could); the client
    /// connection can carry another request when `keep_alive`.
    Done { status: u16, keep_alive: bool, bytes: u64 },
    /// The backend failed before anything went to the client; maybe retried.
    Failed {
        error: ProxyError,
        why: &'static str,
        retry: RetryKind,
    },
    /// The final status is one to retry on.
    RetryStatus { status: u16 },
    /// Stop: the client is gone or was answered by the engine itself.
    Abort { status: u16 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RetryKind {
    /// Nothing reached the backend: always safe.
    Connect,
    /// After the request went out: needs a replayable request and the policy.
    Reset,
    Timeout,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn proxy(
    conn: &mut Client,
    shared: &Shared,
    settings: &crate::config::ClientSettings,
    req: &RequestHead,
    pool: &Arc<Pool>,
    request_id: &RequestId,
    started: Instant,
    timer: &mut Timer,
    scratch: &mut Scratch,
    mut record: Option<&mut AccessRecord>,
) -> (u16, Next, u64) {
    let config = pool.config();
    let policy = &config.retries;
    pool.retry_budget().deposit();
    let deadline = config.timeouts.request.map(|d| started + d);
    let after_send = policy.attempts > 0 && (policy.on_reset || policy.on_timeout || !policy.on_status.0.is_empty());
    // A replayable body is held whole in the buffer so that every attempt can send it.
    let mut replay = match req.framing {
        Framing::Empty => Some(0usize),
        Framing::Length(n)
            if after_send && req.method.is_idempotent() && n <= policy.buffer_body_bytes && !req.expect_continue =>
        {
            let n = n as usize;
            if !Box::pin(read_body(conn, n, settings.body_idle_timeout, timer)).await {
                return (400, Next::Close, 0);
            }
            Some(n)
        }
        _ => None,
    };
    let replayable = replay.is_some();
    // Built only for pools that send the PROXY protocol.
    let proxy_header = config
        .send_proxy_protocol
        .map(|version| proxy_header_for(conn, version));
    let client_keeps = req.keep_alive && !shared.stopping();
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut attempts = 0usize;
    let mut last_failure = ProxyError::NoBackend;
    let mut body_touched = false;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(pool = pool.name(), client = %conn.info.peer, "request timeout reached");
            return answer(
                pool,
                conn,
                scratch,
                ProxyError::RequestTimeout,
                body_touched || req.framing != Framing::Empty,
            )
            .await;
        }
        if body_touched && !replayable {
            // The streamed body already went to a backend: it cannot be sent again.
            return answer(pool, conn, scratch, last_failure, true).await;
        }
        let picked = {
            let head_bytes = conn.buf.prefix();
            let target = std::str::from_utf8(req.path(head_bytes)).unwrap_or("/");
            let view = RequestView::of_raw(conn.info.peer.ip(), head_bytes, &scratch.fields, target);
            pool.pick(&view, &tried[..attempts]).map(|p| (p.index, p.set_cookie))
        };
        let Some((index, set_cookie)) = picked else {
            return answer(
                pool,
                conn,
                scratch,
                last_failure,
                req.framing != Framing::Empty || !client_keeps,
            )
            .await;
        };
        let member = &pool.members()[index];
        tried[attempts] = index;
        attempts += 1;
        let so_far = retry::Attempts {
            made: attempts,
            replayable,
            body_consumed: body_touched,
        };
        let backend = &member.backend;
        let _slot = match &member.slots {
            None => None,
            Some(slots) => match Box::pin(tokio::time::timeout(
                config.queue_timeout,
                Arc::clone(slots).acquire_owned(),
            ))
            .await
            {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    tracing::warn!(pool = pool.name(), backend = %backend.address(), "no backend slot within queue_timeout");
                    return answer(
                        pool,
                        conn,
                        scratch,
                        ProxyError::QueueTimeout,
                        req.framing != Framing::Empty || !client_keeps,
                    )
                    .await;
                }
            },
        };
        let worker = conn.info.worker as usize;
        let in_flight = backend.start_request(worker);
        let attempt_started = if attempts == 1 { started } else { Instant::now() };
        let mut attempt_deadline = attempt_started + config.timeouts.response_header;
        if let Some(d) = deadline {
            attempt_deadline = attempt_deadline.min(d);
        }
        let retry_status = |status: u16| {
            retry::allows(policy, retry::Failure::Status(status), so_far) && pool.retry_budget().try_withdraw()
        };
        let plan = AttemptPlan {
            settings,
            req,
            member,
            request_id,
            deadline: attempt_deadline,
            started: attempt_started,
            set_cookie: set_cookie.as_ref().map(|c| c.as_bytes()),
            retry_status: &retry_status,
            proxy_header: proxy_header.as_deref(),
        };
        let (outcome, reusable) = attempt(conn, shared, &plan, &mut replay, &mut body_touched, timer, scratch).await;
        let ended = Instant::now();
        let latency = ended - attempt_started;
        if let Some(upstream) = reusable.filter(|_| proxy_header.is_none()) {
            member
                .idle
                .checkin(conn.info.worker as usize, upstream, nanos_at(ended.into_std()));
        }
        match outcome {
            Attempt::Done {
                status,
                keep_alive,
                bytes,
            } => {
                if status >= 500 && config.passive.eject_on_5xx {
                    crate::health::passive::record_failure(pool, index);
                } else {
                    backend.record_success();
                }
                if config.algorithm == Algorithm::PeakEwma {
                    backend.observe_latency_at(latency, config.ewma_decay, nanos_at(ended.into_std()));
                }
                backend.record_response(worker, status, latency);
                if let Some(r) = record.as_deref_mut() {
                    r.upstream = Some(backend.address());
                    r.upstream_duration = Some(latency);
                    r.retries = attempts as u32 - 1;
                }
                drop(in_flight);
                let next = if keep_alive {
                    Next::KeepAlive(ended)
                } else {
                    Next::Close
                };
                return (status, next, bytes);
            }
            Attempt::Abort { status } => {
                if status != 0 {
                    pool.stats().local_responses.record(status);
                }
                return (status, Next::Close, 0);
            }
            Attempt::RetryStatus { status } => {
                if config.passive.eject_on_5xx && status >= 500 {
                    crate::health::passive::record_failure(pool, index);
                }
                tracing::debug!(pool = pool.name(), backend = %backend.address(), status, "retrying on status");
                last_failure = ProxyError::BadGateway;
                continue;
            }
            Attempt::Failed { error, why, retry } => {
                crate::health::passive::record_failure(pool, index);
                tracing::warn!(
                    backend = %backend.address(),
                    pool = pool.name(),
                    client = %conn.info.peer,
                    status = error.status().as_u16(),
                    error = why,
                    "backend request failed"
                );
                last_failure = error;
                let failure = match retry {
                    RetryKind::Connect => retry::Failure::Connect,
                    RetryKind::Reset => retry::Failure::Reset,
                    RetryKind::Timeout => retry::Failure::Timeout,
                };
                let so_far = retry::Attempts {
                    body_consumed: body_touched,
                    ..so_far
                };
                if retry::allows(policy, failure, so_far) && pool.retry_budget().try_withdraw() {
                    continue;
                }
                return answer(
                    pool,
                    conn,
                    scratch,
                    error,
                    body_touched || req.framing != Framing::Empty || !client_keeps,
                )
                .await;
            }
        }
    }
}

/// Answers with a failure status; closes when the request body was not (all) read.
async fn answer(
    pool: &Pool,
    conn: &mut Client,
    scratch: &mut Scratch,
    error: ProxyError,
    close: bool,
) -> (u16, Next, u64) {
    let status = error.status().as_u16();
    pool.stats().local_responses.record(status);
    let extra: &[u8] = if matches!(error, ProxyError::NoBackend | ProxyError::QueueTimeout) {
        b"Retry-After: 1\r\n"
    } else {
        b""
    };
    let bytes = local(conn, &mut scratch.out, status, extra, !close).await;
    (
        status,
        if close {
            Next::Close
        } else {
            Next::KeepAlive(Instant::now())
        },
        bytes,
    )
}

/// Reads until `n` body bytes are unread in the buffer (a replayable body). False when the
/// client went away or stalled past `idle`.
async fn read_body(conn: &mut Client, n: usize, idle: Duration, timer: &mut Timer) -> bool {
    while conn.buf.unread().len() < n {
        let limit = conn.buf.prefix().len() + n.max(buffer::BUF_SIZE);
        let deadline = Instant::now() + idle;
        timer.require(deadline);
        let read = loop {
            tokio::select! {
                biased;
                r = conn.buf.read_from(&mut conn.stream, limit) => break r,
                () = timer.fired() => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    timer.set(deadline);
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// One exchange with `member`'s backend, on a pooled connection or a new one; a pooled one
/// that turns out closed before any response byte is replaced once by a new one when the
/// request can be sent again. Returns the connection too when it can carry another request.
async fn attempt(
    conn: &mut Client,
    shared: &Shared,
    plan: &AttemptPlan<'_>,
    replay: &mut Option<usize>,
    body_touched: &mut bool,
    timer: &mut Timer,
    scratch: &mut Scratch,
) -> (Attempt, Option<UpstreamIo>) {
    let member = plan.member;
    let mut pooled = match plan.proxy_header {
        Some(_) => None,
        None => member
            .idle
            .checkout(conn.info.worker as usize, nanos_at(plan.started.into_std())),
    };
    loop {
        let reused = pooled.is_some();
        let mut upstream = match pooled.take() {
            Some(s) => s,
            None => {
                let wait = member.idle.connect_timeout();
                let connect_deadline = (Instant::now() + wait).min(plan.deadline);
                // Boxed: a new connection is rare on the keep-alive path, and its future large.
                match Box::pin(tokio::time::timeout_at(
                    connect_deadline,
                    member.connector.connect_with(plan.proxy_header),
                ))
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e @ (ConnectError::Tls(_) | ConnectError::Alpn(_)))) => {
                        tracing::warn!(backend = %member.backend.address(), error = %e, "cannot open a connection to the backend");
                        let failed = Attempt::Failed {
                            error: ProxyError::BadGateway,
                            why: "TLS handshake with the backend failed",
                            retry: RetryKind::Connect,
                        };
                        return (failed, None);
                    }
                    Ok(Err(ConnectError::Failed(_))) => {
                        let failed = Attempt::Failed {
                            error: ProxyError::BadGateway,
                            why: "connect failed",
                            retry: RetryKind::Connect,
                        };
                        return (failed, None);
                    }
                    Ok(Err(ConnectError::TimedOut(_))) | Err(_) => {
                        let failed = Attempt::Failed {
                            error: ProxyError::ConnectTimeout,
                            why: "connect timed out",
                            retry: RetryKind::Connect,
                        };
                        return (failed, None);
                    }
                }
            }
        };
        let touched_before = *body_touched;
        let result = exchange(conn, shared, plan, &mut upstream, replay, body_touched, timer, scratch).await;
        match result {
            Exchanged::Stale if reused && (!touched_before || replay.is_some()) => {
                // The backend closed the pooled connection just as it was reused.
                continue;
            }
            Exchanged::Stale => {
                let failed = Attempt::Failed {
                    error: ProxyError::BadGateway,
                    why: "backend closed the connection",
                    retry: RetryKind::Reset,
                };
                return (failed, None);
            }
            Exchanged::Attempt(a) => return (a, None),
            Exchanged::Reusable(a) => return (a, Some(upstream)),
        }
    }
}

enum Exchanged {
    /// The backend closed or reset before any response byte.
    Stale,
    /// Finished; the backend connection is spent.
    Attempt(Attempt),
    /// Finished; the backend connection can carry another request.
    Reusable(Attempt),
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    conn: &mut Client,
    shared: &Shared,
    plan: &AttemptPlan<'_>,
    upstream: &mut UpstreamIo,
    replay: &mut Option<usize>,
    body_touched: &mut bool,
    timer: &mut Timer,
    scratch: &mut Scratch,
) -> Exchanged {
    let AttemptPlan {
        settings,
        req,
        member,
        request_id,
        deadline: attempt_deadline,
        started: attempt_started,
        set_cookie,
        retry_status,
        ..
    } = *plan;
    let backend = &member.backend;
    let mut ip_text = [0u8; 48];
    let client_ip = render_ip(conn.info.peer.ip(), &mut ip_text);
    let (head_bytes, unread) = conn.buf.prefix_and_unread();
    write::request_head(
        &mut scratch.out,
        head_bytes,
        req,
        &scratch.fields,
        &Forwarding {
            client_ip,
            proto: if conn.stream.is_tls() { b"https" } else { b"http" },
            backend_authority: backend.authority().as_str().as_bytes(),
            request_id: request_id.get(head_bytes),
        },
    );
    // The head and the body bytes already here go out in one write.
    let (prefix_len, remaining) = match (req.framing, *replay) {
        (_, Some(n)) => (n, 0),
        (Framing::Length(n), None) => {
            let k = unread.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            (k, n - k as u64)
        }
        _ => (0, 0),
    };
    {
        let mut slices = [IoSlice::new(&scratch.out), IoSlice::new(&unread[..prefix_len])];
        if write_all_vectored(upstream, &mut slices).await.is_err() || upstream.flush().await.is_err() {
            return Exchanged::Stale;
        }
    }
    backend.record_bytes_sent(conn.info.worker as usize, prefix_len as u64);
    if replay.is_none() && prefix_len > 0 {
        conn.buf.consume(prefix_len);
        *body_touched = true;
    }
    let upload_framing = if replay.is_some() { Framing::Empty } else { req.framing };
    if upload_framing == Framing::Chunked || remaining > 0 {
        *body_touched = true;
    }
    let progress = Progress::default();
    let keep_alive = req.keep_alive && !shared.stopping();
    let plan = ResponsePlan {
        method: req.method,
        client_minor: req.minor,
        upgrade: req.upgrade.is_some(),
        keep_alive,
        stopping: shared.stopping_flag(),
        set_cookie,
    };
    let mut ubuf = Buffer::default();
    let (uploaded, downloaded, timed_out) = {
        let Client { stream, buf, .. } = conn;
        let (mut crd, mut cwr) = stream.split();
        let (mut urd, mut uwr) = upstream.split();
        let up = exchange::upload(
            &mut crd,
            buf,
            &mut uwr,
            upload_framing,
            remaining,
            settings.max_request_body,
            &progress,
        );
        let down = exchange::download(
            &mut urd,
            &mut ubuf,
            &mut cwr,
            &mut scratch.out,
            &mut scratch.response_fields,
            &plan,
            retry_status,
            &progress,
        );
        tokio::pin!(up);
        tokio::pin!(down);
        let mut up_result: Option<Result<Uploaded, UploadError>> = None;
        let mut down_result = None;
        let mut timed_out = None;
        let (mut seen_any, mut seen_up) = (0u64, 0u64);
        let (mut since_any, mut since_up) = (attempt_started, attempt_started);
        timer.require(attempt_deadline.min(attempt_started + settings.body_idle_timeout));
        loop {
            tokio::select! {
                biased;
                r = &mut down, if down_result.is_none() => down_result = Some(r),
                r = &mut up, if up_result.is_none() => up_result = Some(r),
                () = timer.fired() => {
                    let now = Instant::now();
                    let any = progress.any.load(Ordering::Relaxed);
                    if any != seen_any {
                        (seen_any, since_any) = (any, now);
                    }
                    let upstream_reads = progress.upstream.load(Ordering::Relaxed);
                    if upstream_reads != seen_up {
                        (seen_up, since_up) = (upstream_reads, now);
                    }
                    let head = progress.head_received.load(Ordering::Relaxed);
                    if !head && now >= attempt_deadline {
                        timed_out = Some(true);
                        break;
                    }
                    if now >= since_any + settings.body_idle_timeout
                        || (head && now >= since_up + settings.response_body_idle_timeout)
                    {
                        timed_out = Some(false);
                        break;
                    }
                    let mut next = since_any + settings.body_idle_timeout;
                    if head {
                        next = next.min(since_up + settings.response_body_idle_timeout);
                    } else {
                        next = next.min(attempt_deadline);
                    }
                    timer.set(next);
                }
            }
            if down_result.is_some() || matches!(up_result, Some(Err(_))) {
                break;
            }
        }
        (up_result, down_result, timed_out)
    };
    let sent = progress.body_sent.load(Ordering::Relaxed);
    backend.record_bytes_sent(conn.info.worker as usize, sent);
    backend.record_bytes(
        conn.info.worker as usize,
        progress.body_received.load(Ordering::Relaxed),
    );
    let client_written = progress.client_written.load(Ordering::Relaxed);
    let upload_done = upload_framing == Framing::Empty
        || remaining == 0 && upload_framing != Framing::Chunked
        || matches!(uploaded, Some(Ok(Uploaded::Done)));
    if let Some(header_timeout) = timed_out {
        if header_timeout && !client_written {
            return Exchanged::Attempt(Attempt::Failed {
                error: ProxyError::ResponseHeaderTimeout,
                why: "no response headers within the response_header timeout",
                retry: RetryKind::Timeout,
            });
        }
        tracing::debug!(client = %conn.info.peer, "body idle timeout");
        return Exchanged::Attempt(Attempt::Abort { status: 0 });
    }
    match (uploaded, downloaded) {
        (Some(Err(e)), _) => {
            tracing::debug!(client = %conn.info.peer, error = %e, "request body failed");
            if client_written {
                return Exchanged::Attempt(Attempt::Abort { status: 0 });
            }
            let status = match e {
                UploadError::ClientGone => return Exchanged::Attempt(Attempt::Abort { status: 0 }),
                UploadError::Malformed(_) => 400,
                UploadError::TooLarge => 413,
            };
            local(conn, &mut scratch.out, status, b"", false).await;
            Exchanged::Attempt(Attempt::Abort { status })
        }
        (
            _,
            Some(Ok(Downloaded::Complete {
                status,
                reusable,
                keep_alive,
            })),
        ) => {
            *replay = None;
            let done = Attempt::Done {
                status,
                keep_alive: keep_alive && upload_done,
                bytes: progress.body_received.load(Ordering::Relaxed),
            };
            if reusable && upload_done {
                Exchanged::Reusable(done)
            } else {
                Exchanged::Attempt(done)
            }
        }
        (_, Some(Ok(Downloaded::Retry { status }))) => Exchanged::Attempt(Attempt::RetryStatus { status }),
        (_, Some(Ok(Downloaded::Upgraded))) => {
            // Boxed: only upgraded connections need its state.
            Box::pin(tunnel(
                conn,
                shared,
                upstream,
                &mut ubuf,
                settings.tunnel_idle_timeout,
                timer,
            ))
            .await;
            Exchanged::Attempt(Attempt::Done {
                status: 101,
                keep_alive: false,
                bytes: 0,
            })
        }
        (_, Some(Err(DownloadError::Upstream(e)))) if !client_written => {
            // A reset says nothing more than a close; a TLS alert does (InvalidData carries
            // rustls's reason, e.g. a client certificate the backend requires or refuses).
            if let Some(e) = e.filter(|e| e.kind() == std::io::ErrorKind::InvalidData) {
                tracing::warn!(backend = %backend.address(), error = %e, "the backend ended the TLS session");
            }
            Exchanged::Stale
        }
        (_, Some(Err(DownloadError::MalformedHead(e)))) if !client_written => {
            tracing::warn!(backend = %backend.address(), error = %e, "malformed response head");
            Exchanged::Attempt(Attempt::Failed {
                error: ProxyError::BadGateway,
                why: "malformed response head",
                retry: RetryKind::Reset,
            })
        }
        (_, Some(Err(e))) => {
            tracing::debug!(backend = %backend.address(), error = %e, "response ended early");
            Exchanged::Attempt(Attempt::Abort { status: 0 })
        }
        (_, None) => Exchanged::Attempt(Attempt::Abort { status: 0 }),
    }
}

/// Relays bytes both ways after a 101 until both sides close or nothing moves for `idle`.
async fn tunnel(
    conn: &mut Client,
    shared: &Shared,
    upstream: &mut UpstreamIo,
    ubuf: &mut Buffer,
    idle: Duration,
    timer: &mut Timer,
) {
    shared.limit.tunnel_opened();
    let opened = Instant::now();
    let progress = Progress::default();
    {
        let Client { stream, buf, .. } = conn;
        let (mut crd, mut cwr) = stream.split();
        let (mut urd, mut uwr) = upstream.split();
        let up = exchange::pipe(&mut crd, &mut uwr, buf, &progress);
        let down = exchange::pipe(&mut urd, &mut cwr, ubuf, &progress);
        tokio::pin!(up);
        tokio::pin!(down);
        let (mut up_done, mut down_done) = (false, false);
        let mut seen = 0u64;
        let mut deadline = Instant::now() + idle;
        timer.require(deadline);
        while !(up_done && down_done) {
            tokio::select! {
                r = &mut up, if !up_done => { up_done = true; if r.is_err() { break; } }
                r = &mut down, if !down_done => { down_done = true; if r.is_err() { break; } }
                () = timer.fired() => {
                    let any = progress.any.load(Ordering::Relaxed);
                    let now = Instant::now();
                    if any == seen && now >= deadline {
                        break;
                    }
                    if any != seen {
                        seen = any;
                        deadline = now + idle;
                    }
                    timer.set(deadline);
                }
            }
        }
    }
    shared.limit.tunnel_closed(opened.elapsed());
}

/// The PROXY protocol header naming this request's client, for a pool that sends one.
fn proxy_header_for(conn: &Client, version: crate::config::ProxyVersion) -> Vec<u8> {
    let local = conn.stream.local_addr().unwrap_or(conn.info.peer);
    let session = conn.stream.session();
    let extras = crate::proxy::proxy_protocol::Extras {
        authority: session.as_ref().and_then(|s| s.get_ref().1.server_name()),
        alpn: session.as_ref().and_then(|s| s.get_ref().1.alpn_protocol()),
    };
    crate::proxy::proxy_protocol::encode(version, conn.info.peer, local, extras)
}

/// The client's IP as text (IPv4-mapped IPv6 as IPv4), written into `buf` without allocating.
fn render_ip(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write as _;
    if let std::net::IpAddr::V4(v4) = ip.to_canonical() {
        let mut n = 0;
        for (i, octet) in v4.octets().iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            let mut text = itoa::Buffer::new();
            let digits = text.format(*octet).as_bytes();
            buf[n..n + digits.len()].copy_from_slice(digits);
            n += digits.len();
        }
        return &buf[..n];
    }
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{}", ip.to_canonical());
    let n = cursor.position() as usize;
    &buf[..n]
}
