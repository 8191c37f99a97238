//! Access logs, written off the hot path.
//!
//! HTTP listeners log one line per request ([`AccessRecord`]); TCP and TLS-passthrough
//! listeners one line per client connection ([`TunnelRecord`]). A request builds a small record (cheap clones of what it already holds) and hands it to a
//! dedicated writer thread through a bounded channel; the thread formats and writes, flushing
//! whenever it has caught up. A request never waits for the disk: when the channel is full the
//! record is dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderValue, REFERER, USER_AGENT};
use http::{HeaderMap, Method, Uri};

pub use crate::config::{AccessLogConfig, AccessLogFormat};

/// One finished request.
#[derive(Debug)]
pub struct AccessRecord {
    /// When it arrived.
    pub time: SystemTime,
    /// The client.
    pub client: SocketAddr,
    /// Method.
    pub method: Method,
    /// Host header.
    pub host: Option<HeaderValue>,
    /// Target as received.
    pub uri: Uri,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `Referer`.
    pub referer: Option<HeaderValue>,
    /// Response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// From arrival to the end of the response body.
    pub duration: Duration,
    /// The backend that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// Time from sending to that backend until its response headers.
    pub upstream_duration: Option<Duration>,
    /// The pool that served it.
    pub pool: Option<Arc<str>>,
    /// Retries it took.
    pub retries: u32,
    /// Its `X-Request-Id`.
    pub request_id: HeaderValue,
    /// The subject of the client's verified TLS certificate, if it sent one.
    pub tls_client: Option<String>,
}

impl AccessRecord {
    /// A record of a request with these headers, filled in as it proceeds.
    pub fn start(
        client: SocketAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        request_id: HeaderValue,
    ) -> AccessRecord {
        AccessRecord {
            time: SystemTime::now(),
            client,
            method: method.clone(),
            host: headers.get(http::header::HOST).cloned(),
            uri: uri.clone(),
            user_agent: headers.get(USER_AGENT).cloned(),
            referer: headers.get(REFERER).cloned(),
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
            upstream: None,
            upstream_duration: None,
            pool: None,
            retries: 0,
            request_id,
            tls_client: None,
        }
    }
}

/// One finished connection of a TCP or TLS-passthrough listener.
///
/// `status` follows nginx's `stream` module: 200 relayed, 400 the client sent something that
/// could not be read (a ClientHello), 502 no backend could be connected to, 503 no backend
/// (or, for passthrough, no route) to send it to.
#[derive(Debug)]
pub struct TunnelRecord {
    /// When the connection was accepted.
    pub time: SystemTime,
    /// The client (as its PROXY header named it, when the listener reads one).
    pub client: SocketAddr,
    /// `"tcp"` or `"tls-passthrough"`.
    pub mode: &'static str,
    /// The server name of a passed-through ClientHello, if it sent one.
    pub server_name: Option<String>,
    /// 200, 400, 502 or 503, as above.
    pub status: u16,
    /// Bytes from the client, relayed to the backend.
    pub from_client: u64,
    /// Bytes from the backend, relayed to the client.
    pub to_client: u64,
    /// From accept to close.
    pub duration: Duration,
    /// The backend it was relayed to, if any.
    pub upstream: Option<SocketAddr>,
    /// The pool that served it, if one was chosen.
    pub pool: Option<Arc<str>>,
    /// Connect attempts after the first.
    pub retries: u32,
    /// Why it ended: `"closed"` (both sides finished), `"idle"` (`tunnel_idle` passed),
    /// `"error"` (a read or write failed), `"connect-failed"`, `"no-backend"`, `"no-route"`,
    /// `"bad-client-hello"`.
    pub end: &'static str,
}

impl TunnelRecord {
    /// A record of a connection accepted now, filled in as it proceeds.
    pub fn start(client: SocketAddr, mode: &'static str) -> TunnelRecord {
        TunnelRecord {
            time: SystemTime::now(),
            client,
            mode,
            server_name: None,
            status: 0,
            from_client: 0,
            to_client: 0,
            duration: Duration::ZERO,
            upstream: None,
            pool: None,
            retries: 0,
            end: "closed",
        }
    }
}

/// What the writer thread is handed. Unboxed: the bounded channel's slots are allocated once,
/// and boxing the request record would cost an allocation per logged request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Entry {
    Request(AccessRecord),
    Tunnel(TunnelRecord),
}

/// A handle to a listener's access log writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
    /// Set to make the writer reopen its file (after logrotate moved it).
    reopen: Arc<AtomicBool>,
}

/// Records waiting for the writer, at most.
const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Opens the log and starts its writer thread.
    pub fn open(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let out = open_output(config)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            config: config.clone(),
            out: std::io::BufWriter::new(out),
            reopen: Arc::clone(&reopen),
        };
        std::thread::Builder::new()
            .name("steelyard-access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen,
        })
    }

    /// Asks the writer to close and reopen its file (by path) before its next line, and within
    /// [`REOPEN_WITHIN`] even when no line comes: what logrotate needs after moving the file.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Queues a record; drops it (and counts it) rather than wait when the writer is behind.
    pub fn log(&self, record: AccessRecord) {
        self.send(Entry::Request(record));
    }

    /// Queues a TCP or passthrough connection's record, like [`AccessLog::log`].
    pub fn log_tunnel(&self, record: TunnelRecord) {
        self.send(Entry::Tunnel(record));
    }

    fn send(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A record that is written when its response body ends (or is abandoned).
#[derive(Debug)]
pub struct PendingLog {
    /// Where it goes.
    pub log: AccessLog,
    /// The record so far (taken when written).
    pub record: Option<AccessRecord>,
    /// When the request arrived.
    pub started: Instant,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration = self.started.elapsed();
            self.log.log(record);
        }
    }
}

/// Longest time between a reopen request and the file being reopened, when no line is due.
pub const REOPEN_WITHIN: Duration = Duration::from_millis(250);

fn open_output(config: &AccessLogConfig) -> std::io::Result<Box<dyn std::io::Write + Send>> {
    Ok(match &config.path {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
    })
}

/// The writer thread's state.
struct Writer {
    config: AccessLogConfig,
    out: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut line = String::with_capacity(512);
        loop {
            let record = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => {
                    let _ = self.out.flush();
                    match rx.recv_timeout(REOPEN_WITHIN) {
                        Ok(r) => Some(r),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.reopen_file();
            }
            let Some(record) = record else { continue };
            line.clear();
            match (self.config.format, &record) {
                (AccessLogFormat::Combined, Entry::Request(r)) => combined(&mut line, r),
                (AccessLogFormat::Json, Entry::Request(r)) => json(&mut line, r),
                (AccessLogFormat::Combined, Entry::Tunnel(r)) => tunnel_combined(&mut line, r),
                (AccessLogFormat::Json, Entry::Tunnel(r)) => tunnel_json(&mut line, r),
            }
            line.push('\n');
            if self.out.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        let _ = self.out.flush();
    }

    /// Swaps in a freshly opened file; keeps the old one when that fails.
    fn reopen_file(&mut self) {
        let Some(path) = &self.config.path else { return };
        match open_output(&self.config) {
            Ok(out) => {
                let _ = self.out.flush();
                self.out = std::io::BufWriter::new(out);
                tracing::info!(file = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
            }
        }
    }
}

fn text(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn combined(out: &mut String, r: &AccessRecord) {
    let _ = write!(
        out,
        "{} - - [{}] \"{} {} HTTP/1.1\" {} {} \"{}\" \"{}\" {:.3} {} {} {}",
        r.client.ip(),
        rfc3339(r.time),
        r.method,
        r.uri,
        r.status,
        r.bytes,
        text(&r.referer).replace('"', "'"),
        text(&r.user_agent).replace('"', "'"),
        r.duration.as_secs_f64(),
        r.upstream.map_or("-".to_owned(), |u| u.to_string()),
        r.pool.as_deref().unwrap_or("-"),
        r.request_id.to_str().unwrap_or("-"),
    );
}

fn json(out: &mut String, r: &AccessRecord) {
    let value = serde_json::json!({
        "time": rfc3339(r.time),
        "client": r.client.ip().to_string(),
        "method": r.method.as_str(),
        "host": r.host.as_ref().and_then(|h| h.to_str().ok()),
        "path": r.uri.to_string(),
        "status": r.status,
        "bytes": r.bytes,
        "duration_ms": (r.duration.as_secs_f64() * 1e6).round() / 1e3,
        "upstream": r.upstream.map(|u| u.to_string()),
        "upstream_duration_ms": r.upstream_duration.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
        "pool": r.pool.as_deref(),
        "retries": r.retries,
        "request_id": r.request_id.to_str().ok(),
        "tls_client": r.tls_client.as_deref(),
    });
    let _ = write!(out, "{value}");
}

/// A connection in the combined layout's shape: the request line becomes the mode and the
/// server name, and the byte count is followed by the bytes the client sent, the duration,
/// the backend, the pool, the retries and why it ended.
fn tunnel_combined(out: &mut String, r: &TunnelRecord) {
    let mode = if r.mode == "tcp" { "TCP" } else { "TLS" };
    let _ = write!(
        out,
        "{} - - [{}] \"{mode} {}\" {} {} {} {:.3} {} {} {} {}",
        r.client.ip(),
        rfc3339(r.time),
        r.server_name.as_deref().unwrap_or("-").replace(['"', ' '], "_"),
        r.status,
        r.to_client,
        r.from_client,
        r.duration.as_secs_f64(),
        r.upstream.map_or("-".to_owned(), |u| u.to_string()),
        r.pool.as_deref().unwrap_or("-"),
        r.retries,
        r.end,
    );
}

fn tunnel_json(out: &mut String, r: &TunnelRecord) {
    let value = serde_json::json!({
        "time": rfc3339(r.time),
        "client": r.client.ip().to_string(),
        "mode": r.mode,
        "server_name": r.server_name.as_deref(),
        "status": r.status,
        "bytes_sent": r.to_client,
        "bytes_received": r.from_client,
        "duration_ms": (r.duration.as_secs_f64() * 1e6).round() / 1e3,
        "upstream": r.upstream.map(|u| u.to_string()),
        "pool": r.pool.as_deref(),
        "retries": r.retries,
        "end": r.end,
    });
    let _ = write!(out, "{value}");
}

/// A new request id: 16 random hex digits.
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A new request id as bytes, for writing straight into a head: 16 random hex digits.
pub fn request_id_bytes() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u64(..);
    let mut id = [0u8; 16];
    for b in id.iter_mut() {
        *b = HEX[(n & 15) as usize];
        n >>= 4;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn request_ids_are_16_hex_digits() {
        let id = new_request_id();
        assert_eq!(id.len(), 16);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(new_request_id(), new_request_id());
    }
}
