//! One attempt's I/O with a backend: the request body going up and the response coming down,
//! driven side by side on the client's task (a backend may answer, or echo, before the
//! request body ends), then an upgraded connection's tunnel.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::buffer::{Buffer, BUF_SIZE};
use super::chunked::{self, ChunkError, Decoder, Event};
use super::head::{self, Field, Framing, HeadError, Method, ResponseHead};
use super::io::write_all_vectored;
use super::write::{self, ClientFraming};

/// Largest response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What both halves of an exchange report as they go, for timeouts and the outcome.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bumped on every read or write, either side.
    pub any: AtomicU64,
    /// Bumped on every read from the backend.
    pub upstream: AtomicU64,
    /// Set once a final response head arrived.
    pub head_received: AtomicBool,
    /// Set once response bytes went to the client (nothing can be retried or replaced then).
    pub client_written: AtomicBool,
    /// Request body bytes sent to the backend.
    pub body_sent: AtomicU64,
    /// Response body bytes sent to the client.
    pub body_received: AtomicU64,
}

impl Progress {
    fn tick(&self) {
        self.any.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the upload half ended without a client-side failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The whole body went up.
    Done,
    /// Writing to the backend failed; the body did not all go up.
    UpstreamGone,
}

/// Why the upload half failed on the client's side.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The client closed or reset the connection mid-body.
    #[error("client went away mid-body")]
    ClientGone,
    /// The client's chunked body is malformed.
    #[error(transparent)]
    Malformed(#[from] ChunkError),
    /// The body is larger than the listener allows.
    #[error("request body too large")]
    TooLarge,
}

/// Streams the rest of the request body (framed by `framing`, `remaining` bytes left for a
/// length) from the client to the backend, re-encoding chunks. Leaves any bytes after the body
/// (a pipelined request) unread in `cbuf`.
pub async fn upload<R, W>(
    crd: &mut R,
    cbuf: &mut Buffer,
    uwr: &mut W,
    framing: Framing,
    mut remaining: u64,
    max_body: Option<u64>,
    progress: &Progress,
) -> Result<Uploaded, UploadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut upstream_ok = true;
    let mut total = 0u64;
    let mut decoder = Decoder::new();
    loop {
        match framing {
            Framing::Empty | Framing::Close => return Ok(Uploaded::Done),
            Framing::Length(_) => {
                if remaining == 0 {
                    if upstream_ok && uwr.flush().await.is_err() {
                        upstream_ok = false;
                    }
                    return Ok(if upstream_ok {
                        Uploaded::Done
                    } else {
                        Uploaded::UpstreamGone
                    });
                }
                let unread = cbuf.unread();
                if !unread.is_empty() {
                    let n = unread.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if upstream_ok {
                        if uwr.write_all(&unread[..n]).await.is_ok() {
                            progress.body_sent.fetch_add(n as u64, Ordering::Relaxed);
                        } else {
                            upstream_ok = false;
                        }
                    }
                    progress.tick();
                    cbuf.consume(n);
                    remaining -= n as u64;
                    continue;
                }
            }
            Framing::Chunked => {
                let unread = cbuf.unread();
                if !unread.is_empty() {
                    let (used, event) = decoder.decode(unread)?;
                    let mut done = false;
                    match event {
                        Some(Event::Data { start, len }) => {
                            total += len as u64;
                            if max_body.is_some_and(|m| total > m) {
                                return Err(UploadError::TooLarge);
                            }
                            if upstream_ok {
                                if write_chunk(uwr, &unread[start..start + len]).await.is_ok() {
                                    progress.body_sent.fetch_add(len as u64, Ordering::Relaxed);
                                } else {
                                    upstream_ok = false;
                                }
                            }
                        }
                        Some(Event::End { start, len }) => {
                            if upstream_ok && write_last_chunk(uwr, &unread[start..start + len]).await.is_err() {
                                upstream_ok = false;
                            }
                            done = true;
                        }
                        None => {}
                    }
                    progress.tick();
                    cbuf.consume(used);
                    if done {
                        if upstream_ok && uwr.flush().await.is_err() {
                            upstream_ok = false;
                        }
                        return Ok(if upstream_ok {
                            Uploaded::Done
                        } else {
                            Uploaded::UpstreamGone
                        });
                    }
                    if event.is_some() {
                        continue;
                    }
                }
            }
        }
        // Room for more after what is unread (an incomplete chunk line or trailers).
        let limit = cbuf.prefix().len() + BUF_SIZE + chunked::MAX_TRAILERS;
        if cbuf.room(limit).is_none() {
            return Err(UploadError::Malformed(ChunkError("chunk line too long")));
        }
        // What went up may sit in a TLS session's buffer: send it before waiting for more.
        if upstream_ok && uwr.flush().await.is_err() {
            upstream_ok = false;
        }
        match cbuf.read_from(crd, limit).await {
            Ok(0) | Err(_) => return Err(UploadError::ClientGone),
            Ok(_) => progress.tick(),
        }
    }
}

/// What the download half needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct ResponsePlan<'a> {
    /// The request's method (HEAD: no body).
    pub method: Method,
    /// The client's HTTP minor version.
    pub client_minor: u8,
    /// The request asked to upgrade: a 101 opens a tunnel.
    pub upgrade: bool,
    /// The client connection may stay open after this response...
    pub keep_alive: bool,
    /// ...unless this turns true (shutdown) before the response head is written.
    pub stopping: &'a AtomicBool,
    /// A sticky-session cookie to set on the response.
    pub set_cookie: Option<&'a [u8]>,
}

/// How the download half ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downloaded {
    /// The response went to the client whole.
    Complete {
        /// Its status.
        status: u16,
        /// The backend connection can carry another request.
        reusable: bool,
        /// The client connection can carry another request.
        keep_alive: bool,
    },
    /// A 101 went to the client: the connection is now a tunnel.
    Upgraded,
    /// The final status is one to retry elsewhere; nothing went to the client.
    Retry {
        /// The status.
        status: u16,
    },
}

/// Why the download half failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The backend closed the connection (`None`) or reading from it failed before a whole
    /// response head: a reset, or the TLS session ended by an alert (a client certificate
    /// refused, for one).
    #[error("backend connection failed before the response: {}", .0.as_ref().map_or_else(|| "closed".to_owned(), ToString::to_string))]
    Upstream(Option<std::io::Error>),
    /// The backend's response head is malformed.
    #[error("malformed response head: {0}")]
    MalformedHead(HeadError),
    /// The backend failed mid-body (the client gets a truncated response).
    #[error("backend failed mid-response: {0}")]
    Body(&'static str),
    /// Writing to the client failed.
    #[error("client went away")]
    Client,
}

/// Reads the backend's response (relaying 100 and 103 to HTTP/1.1 clients), writes its head to
/// the client rewritten, and streams its body, re-framed when needed.
#[allow(clippy::too_many_arguments)]
pub async fn download<R, W>(
    urd: &mut R,
    ubuf: &mut Buffer,
    cwr: &mut W,
    out: &mut Vec<u8>,
    fields: &mut Vec<Field>,
    plan: &ResponsePlan<'_>,
    retry_on: impl Fn(u16) -> bool,
    progress: &Progress,
) -> Result<Downloaded, DownloadError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let res: ResponseHead = loop {
        let res = loop {
            match head::parse_response(ubuf.unread(), MAX_RESPONSE_HEAD, fields) {
                Ok(Some(res)) => break res,
                Ok(None) => {}
                Err(e) => return Err(DownloadError::MalformedHead(e)),
            }
            match ubuf.read_from(urd, MAX_RESPONSE_HEAD).await {
                Ok(0) => return Err(DownloadError::Upstream(None)),
                Err(e) => return Err(DownloadError::Upstream(Some(e))),
                Ok(_) => {
                    progress.upstream.fetch_add(1, Ordering::Relaxed);
                    progress.tick();
                }
            }
        };
        if res.status == 101 {
            if !plan.upgrade {
                return Err(DownloadError::MalformedHead(HeadError::Malformed(
                    "101 without an upgrade request",
                )));
            }
            write::response_head(out, ubuf.unread(), &res, fields, ClientFraming::Empty, true, 1, None);
            progress.client_written.store(true, Ordering::Relaxed);
            cwr.write_all(out).await.map_err(|_| DownloadError::Client)?;
            cwr.flush().await.map_err(|_| DownloadError::Client)?;
            ubuf.consume(res.len);
            return Ok(Downloaded::Upgraded);
        }
        if res.status < 200 {
            // 1xx: relayed to HTTP/1.1 clients (never to 1.0 ones), then the next head.
            if plan.client_minor == 1 {
                write::response_head(out, ubuf.unread(), &res, fields, ClientFraming::Empty, true, 1, None);
                cwr.write_all(out).await.map_err(|_| DownloadError::Client)?;
                cwr.flush().await.map_err(|_| DownloadError::Client)?;
            }
            ubuf.consume(res.len);
            continue;
        }
        break res;
    };
    progress.head_received.store(true, Ordering::Relaxed);
    if retry_on(res.status) {
        return Ok(Downloaded::Retry { status: res.status });
    }
    let framing = write::client_framing(&res, plan.method, plan.client_minor);
    let has_body = !(plan.method == Method::Head || res.status == 204 || res.status == 304);
    let upstream_framing = if has_body { res.framing } else { Framing::Empty };
    let keep_alive = plan.keep_alive && framing != ClientFraming::Close && !plan.stopping.load(Ordering::Relaxed);
    write::response_head(
        out,
        ubuf.unread(),
        &res,
        fields,
        framing,
        keep_alive,
        plan.client_minor,
        plan.set_cookie,
    );
    ubuf.consume(res.len);
    progress.client_written.store(true, Ordering::Relaxed);

    // The head and whatever of a sized body already arrived go out in one write.
    let mut remaining = match upstream_framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    {
        let prefix = match upstream_framing {
            Framing::Length(n) => {
                let u = ubuf.unread();
                &u[..u.len().min(usize::try_from(n).unwrap_or(usize::MAX))]
            }
            _ => &[],
        };
        let sent = prefix.len();
        let mut slices = [IoSlice::new(out), IoSlice::new(prefix)];
        write_all_vectored(cwr, &mut slices)
            .await
            .map_err(|_| DownloadError::Client)?;
        progress.tick();
        remaining -= sent as u64;
        progress.body_received.fetch_add(sent as u64, Ordering::Relaxed);
        ubuf.consume(sent);
    }
    let mut decoder = Decoder::new();
    let chunked_out = framing == ClientFraming::Chunked;
    loop {
        match upstream_framing {
            Framing::Empty => break,
            Framing::Length(_) => {
                if remaining == 0 {
                    break;
                }
                let u = ubuf.unread();
                if !u.is_empty() {
                    let n = u.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    cwr.write_all(&u[..n]).await.map_err(|_| DownloadError::Client)?;
                    progress.body_received.fetch_add(n as u64, Ordering::Relaxed);
                    progress.tick();
                    ubuf.consume(n);
                    remaining -= n as u64;
                    continue;
                }
            }
            Framing::Chunked => {
                let u = ubuf.unread();
                if !u.is_empty() {
                    let (used, event) = decoder.decode(u).map_err(|e| DownloadError::Body(e.0))?;
                    let mut done = false;
                    match event {
                        Some(Event::Data { start, len }) => {
                            write_body(cwr, &u[start..start + len], chunked_out).await?;
                            progress.body_received.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        Some(Event::End { start, len }) => {
                            if chunked_out {
                                write_last_chunk(cwr, &u[start..start + len])
                                    .await
                                    .map_err(|_| DownloadError::Client)?;
                            }
                            done = true;
                        }
                        None => {}
                    }
                    progress.tick();
                    ubuf.consume(used);
                    if done {
                        break;
                    }
                    if event.is_some() {
                        continue;
                    }
                }
            }
            Framing::Close => {
                let u = ubuf.unread();
                if !u.is_empty() {
                    let n = u.len();
                    write_body(cwr, u, chunked_out).await?;
                    progress.body_received.fetch_add(n as u64, Ordering::Relaxed);
                    progress.tick();
                    ubuf.consume(n);
                    continue;
                }
            }
        }
        if ubuf.room(BUF_SIZE + chunked::MAX_TRAILERS).is_none() {
            return Err(DownloadError::Body("chunk line too long"));
        }
        // What was written may still sit in a TLS session: send it before waiting.
        cwr.flush().await.map_err(|_| DownloadError::Client)?;
        match ubuf.read_from(urd, BUF_SIZE + chunked::MAX_TRAILERS).await {
            Ok(0) if upstream_framing == Framing::Close => {
                if chunked_out {
                    write_last_chunk(cwr, b"").await.map_err(|_| DownloadError::Client)?;
                }
                break;
            }
            Ok(0) => return Err(DownloadError::Body("connection closed mid-body")),
            Err(_) => return Err(DownloadError::Body("connection reset mid-body")),
            Ok(_) => {
                progress.upstream.fetch_add(1, Ordering::Relaxed);
                progress.tick();
            }
        }
    }
    cwr.flush().await.map_err(|_| DownloadError::Client)?;
    let reusable = res.keep_alive && upstream_framing != Framing::Close && ubuf.is_empty();
    Ok(Downloaded::Complete {
        status: res.status,
        reusable,
        keep_alive,
    })
}

/// Writes `data` as one chunk (`{hex size}\r\n{data}\r\n`); nothing for empty data, which
/// would end the body.
async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut size = [0u8; 18];
    let s = chunked::size_line(data.len(), &mut size);
    let mut slices = [IoSlice::new(&size[..s]), IoSlice::new(data), IoSlice::new(b"\r\n")];
    write_all_vectored(w, &mut slices).await
}

/// Ends a chunked body: the last chunk, `trailers` (field lines, each CRLF-terminated; may be
/// empty), and the final empty line.
async fn write_last_chunk<W: AsyncWrite + Unpin>(w: &mut W, trailers: &[u8]) -> std::io::Result<()> {
    let mut slices = [IoSlice::new(b"0\r\n"), IoSlice::new(trailers), IoSlice::new(b"\r\n")];
    write_all_vectored(w, &mut slices).await
}

/// Writes response body bytes to the client, as a chunk when the client gets chunks.
async fn write_body<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], chunked: bool) -> Result<(), DownloadError> {
    if chunked {
        write_chunk(w, data).await
    } else {
        w.write_all(data).await
    }
    .map_err(|_| DownloadError::Client)
}

/// Copies bytes one way until EOF, then half-closes the other side. `buf` starts with bytes
/// already read (sent first).
pub async fn pipe<R, W>(from: &mut R, to: &mut W, buf: &mut Buffer, progress: &Progress) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    loop {
        let u = buf.unread();
        if !u.is_empty() {
            let n = u.len();
            to.write_all(u).await?;
            to.flush().await?;
            buf.consume(n);
            total += n as u64;
            progress.tick();
        }
        let n = buf.read_from(from, BUF_SIZE).await?;
        if n == 0 {
            buf.release_if_empty();
            let _ = to.shutdown().await;
            return Ok(total);
        }
        progress.tick();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A chunked body of `data` cut into chunks of random sizes, with an extension now and
    /// then, and a trailer.
    fn chunked(data: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(40_000));
            out.extend_from_slice(format!("{n:x}").as_bytes());
            if rng.bool() {
                out.extend_from_slice(b";ext=1");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\nX-Sum: 1\r\n\r\n");
        out
    }

    /// Decodes a chunked body, strictly enough for a test.
    fn dechunk(mut body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            let line_end = body.windows(2).position(|w| w == b"\r\n").expect("size line");
            let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).expect("ascii"), 16).expect("hex");
            body = &body[line_end + 2..];
            if size == 0 {
                return (data, body.to_vec());
            }
            data.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n");
            body = &body[size + 2..];
        }
    }

    /// Random bodies, fed in random pieces, come out re-encoded with the same data, and the
    /// bytes after the body (a pipelined request) stay unread, whatever the buffer did.
    #[tokio::test]
    async fn upload_reencodes_any_split_and_leaves_what_follows() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..30 {
            let data: Vec<u8> = (0..rng.usize(0..100_000)).map(|_| rng.u8(..)).collect();
            let mut input = chunked(&data, &mut rng);
            input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let (mut client, mut client_side) = tokio::io::duplex(1 << 20);
            let (mut upstream_side, mut upstream) = tokio::io::duplex(1 << 20);
            let pieces = input.clone();
            let mut prng = fastrand::Rng::with_seed(round);
            let feeder = tokio::spawn(async move {
                let mut rest = &pieces[..];
                while !rest.is_empty() {
                    let n = prng.usize(1..=rest.len().min(5000));
                    client.write_all(&rest[..n]).await.expect("feed");
                    rest = &rest[n..];
                    tokio::task::yield_now().await;
                }
                client
            });
            let mut buf = Buffer::default();
            let progress = Progress::default();
            let done = upload(
                &mut client_side,
                &mut buf,
                &mut upstream_side,
                Framing::Chunked,
                0,
                None,
                &progress,
            )
            .await
            .expect("valid body");
            assert_eq!(done, Uploaded::Done);
            drop(upstream_side);
            let mut sent = Vec::new();
            upstream.read_to_end(&mut sent).await.expect("read");
            let (decoded, trailers) = dechunk(&sent);
            assert_eq!(decoded, data, "round {round}");
            assert_eq!(trailers, b"X-Sum: 1\r\n\r\n");
            // What follows the body is still there: in the buffer, or not read yet.
            let _client = feeder.await.expect("feeder");
            let mut next = buf.unread().to_vec();
            while next.len() < 22 {
                let mut more = [0u8; 64];
                let n = client_side.read(&mut more).await.expect("read");
                next.extend_from_slice(&more[..n]);
            }
            assert_eq!(next, b"GET /next HTTP/1.1\r\n\r\n", "round {round}");
        }
    }

    /// A response arriving in random pieces reaches the client with its head rewritten and
    /// its body re-framed for HTTP/1.1 (close-delimited and chunked) or kept (length).
    #[tokio::test]
    async fn download_reframes_any_split() {
        let mut rng = fastrand::Rng::with_seed(11);
        for round in 0..30u64 {
            let data: Vec<u8> = (0..rng.usize(1..60_000)).map(|_| rng.u8(..)).collect();
            let kind = round % 3;
            let mut response = match kind {
                0 => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-A: 1\r\n\r\n", data.len()).into_bytes(),
                1 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n".to_vec(),
                _ => b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\n".to_vec(),
            };
            match kind {
                1 => response.extend_from_slice(&chunked(&data, &mut rng)),
                _ => response.extend_from_slice(&data),
            }
            let (mut origin, mut upstream_side) = tokio::io::duplex(1 << 20);
            let (mut client_side, mut client) = tokio::io::duplex(1 << 20);
            let mut prng = fastrand::Rng::with_seed(round);
            let feeder = tokio::spawn(async move {
                let mut rest = &response[..];
                while !rest.is_empty() {
                    let n = prng.usize(1..=rest.len().min(7000));
                    origin.write_all(&rest[..n]).await.expect("feed");
                    rest = &rest[n..];
                    tokio::task::yield_now().await;
                }
                // Close-delimited bodies end with the connection.
            });
            let mut ubuf = Buffer::default();
            let (mut out, mut fields) = (Vec::new(), Vec::new());
            let stopping = AtomicBool::new(false);
            let plan = ResponsePlan {
                method: Method::Get,
                client_minor: 1,
                upgrade: false,
                keep_alive: true,
                stopping: &stopping,
                set_cookie: None,
            };
            let progress = Progress::default();
            let outcome = download(
                &mut upstream_side,
                &mut ubuf,
                &mut client_side,
                &mut out,
                &mut fields,
                &plan,
                |_| false,
                &progress,
            )
            .await
            .expect("valid response");
            feeder.await.expect("feeder");
            drop(client_side);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
            let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
            let body = &got[head_end..];
            assert!(
                head.starts_with("HTTP/1.1 200 OK\r\nX-A: 1\r\n") || head.contains("\r\nX-A: 1\r\n"),
                "{head}"
            );
            match kind {
                0 => {
                    assert_eq!(body, &data[..], "round {round}");
                    assert!(matches!(outcome, Downloaded::Complete { reusable: true, .. }));
                }
                _ => {
                    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
                    assert_eq!(dechunk(body).0, data, "round {round}");
                }
            }
        }
    }
}
