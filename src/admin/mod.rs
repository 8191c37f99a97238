//! The admin listener: `/healthz`, Prometheus `/metrics`, the JSON API and the dashboard.
//!
//! It runs beside the proxy listeners on its own (loopback by default) address and reads the
//! same live state the proxy uses, through an [`AdminView`] that the server republishes on
//! every reload. With a token configured, every request needs `Authorization: Bearer TOKEN`.
//!
//! A browser is the threat even on loopback: any page the operator opens could send requests
//! here. So every request must name this server in `Host` (an IP literal, `localhost`, or a
//! name from `[admin] hosts`: a DNS-rebinding page carries its own name), and a request that
//! changes state must not come from another origin (`Origin`, `Sec-Fetch-Site`) and must carry
//! something a cross-site form cannot send without a CORS preflight we never grant: the
//! `X-Steelyard-Admin` header, a JSON content type, or the bearer token.

mod metrics;
mod sampler;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::AdminConfig;
use crate::server::listener::ConnectionLimit;
use crate::server::ReloadHandle;
use crate::upstream::Pool;
pub use sampler::Sampler;

/// What the admin API shows: the state of the config being served.
#[derive(Debug, Default)]
pub struct AdminView {
    /// The config file, if any.
    pub config_file: Option<PathBuf>,
    /// Hash of the config file's text.
    pub config_hash: u64,
    /// The config file's text, if it came from one (secrets are redacted when shown).
    pub config_text: Option<Arc<str>>,
    /// The config's one-line summary.
    pub config_summary: String,
    /// Listeners being served.
    pub listeners: Vec<ListenerView>,
    /// Pools being served.
    pub pools: Vec<Arc<Pool>>,
    /// The discovering pools' discovery (DNS or etcd).
    pub discovery: Vec<Arc<crate::fleet::discovery_status::DiscoveryStatus>>,
}

/// One listener, as the admin API shows it.
#[derive(Debug)]
pub struct ListenerView {
    /// Its name (`listen` address unless named).
    pub name: String,
    /// Whether the config named it (else `name` is the configured address, which on port 0
    /// is not the bound one: the status API shows `address` instead).
    pub named: bool,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// `"http"`, `"tcp"` or `"tls-passthrough"`.
    pub mode: &'static str,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// Its routes in a line, or a TCP listener's pool.
    pub routes: String,
    /// Its routes one by one, in the order they are matched.
    pub route_table: Vec<RouteView>,
    /// Its open-connection and request counters.
    pub limit: Arc<ConnectionLimit>,
}

/// One route of a listener, as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    /// The host it matches (`example.com`, `*.example.com`), `None` for any.
    pub host: Option<String>,
    /// The path prefix it matches.
    pub path_prefix: String,
    /// The pool it sends to.
    pub pool: String,
}

/// Reload counters.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied.
    pub succeeded: AtomicU64,
    /// Reloads refused (invalid config, bind failure).
    pub failed: AtomicU64,
    /// Unix time of the last successful reload (or the start), in seconds.
    pub last_success_unix: AtomicU64,
}

impl ReloadStats {
    /// Records the outcome of a reload.
    pub fn record(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            self.last_success_unix.store(unix_now(), Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Who may use the admin API: the part of `[admin]` a reload can change in place.
#[derive(Debug, Default)]
pub struct Access {
    /// The bearer token every request except `/` and `/healthz` must carry, if set.
    pub token: Option<String>,
    /// Names accepted in `Host` besides IP literals and `localhost` (lowercase).
    pub hosts: Vec<String>,
}

impl Access {
    /// The access rules of `config`.
    pub fn of(config: &AdminConfig) -> Access {
        Access {
            token: config.token.clone(),
            hosts: config.hosts.clone(),
        }
    }
}

/// State shared by the admin handlers and the server.
#[derive(Debug)]
pub struct AdminState {
    /// The current view, swapped on reload.
    pub view: ArcSwap<AdminView>,
    /// Reload counters.
    pub reloads: ReloadStats,
    /// Token and host names, swapped on reload (rotating the token needs no restart).
    pub access: ArcSwap<Access>,
    started: Instant,
    reload: ReloadHandle,
    sampler: Sampler,
}

impl AdminState {
    /// Fresh state for a server.
    pub fn new(access: Access, reload: ReloadHandle) -> Arc<AdminState> {
        let reloads = ReloadStats::default();
        reloads.last_success_unix.store(unix_now(), Ordering::Relaxed);
        Arc::new(AdminState {
            view: ArcSwap::from_pointee(AdminView::default()),
            reloads,
            access: ArcSwap::from_pointee(access),
            started: Instant::now(),
            reload,
            sampler: Sampler::default(),
        })
    }
}

/// Samples every backend's counters once a second for the dashboard's rates and charts, until
/// `state` is dropped.
pub fn sample_rates(state: &Arc<AdminState>) {
    tokio::spawn(sampler::run(Arc::downgrade(state)));
}

/// Time a client gets to send a complete request head, on a new or a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most admin connections open at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the admin API on `listener` until `stop` turns true. The dashboard's rates come from
/// [`sample_rates`], started once per state.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin on the error.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            // hyper's timer starts once it knows the protocol; a client that sends nothing at
            // all is timed here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(16)
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .keep_alive_interval(HEADER_TIMEOUT)
                .keep_alive_timeout(HEADER_TIMEOUT);
            // An idle or silent connection ends after the header timeout; a whole exchange,
            // however slow, after a minute.
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                builder.serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    respond(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "error": message }))
}

/// True when `Host` names this server: an IP literal (DNS rebinding needs a name),
/// `localhost` (or a name under it), or one of `hosts`.
fn host_allowed(req: &Request<Incoming>, hosts: &[String]) -> bool {
    let host = match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        // HTTP/2 carries the authority in the URI instead.
        None => match req.uri().authority() {
            Some(a) => a.as_str(),
            None => return false,
        },
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || hosts.contains(&name)
}

/// Why a state-changing request is refused as possibly forged by another site, if it is.
fn cross_site(req: &Request<Incoming>, bearer: bool) -> Option<&'static str> {
    let headers = req.headers();
    if headers.get("sec-fetch-site").is_some_and(|v| {
        v.as_bytes().eq_ignore_ascii_case(b"cross-site") || v.as_bytes().eq_ignore_ascii_case(b"same-site")
    }) {
        return Some("cross-site request refused (Sec-Fetch-Site)");
    }
    if let Some(origin) = headers.get(ORIGIN) {
        // The admin's own origin is `http://` plus the Host the request was sent to.
        let own = headers.get(HOST).map(|h| h.as_bytes());
        let same = origin
            .as_bytes()
            .strip_prefix(b"http://")
            .is_some_and(|o| Some(o) == own);
        if !same {
            return Some("cross-origin request refused (Origin)");
        }
    }
    let json = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(bearer || json || headers.contains_key("x-steelyard-admin")) {
        return Some("send the X-Steelyard-Admin header (any value) with requests that change state");
    }
    None
}

fn authorized(req: &Request<Incoming>, token: &Option<String>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // Constant-time comparison: do not leak the token's prefix through timing.
    let given = given.strip_prefix("Bearer ").unwrap_or("").as_bytes();
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(req: Request<Incoming>, state: &AdminState) -> AdminResponse {
    let path = req.uri().path().to_owned();
    // The page itself and the balancer's own health check carry no data worth protecting;
    // everything else needs the token when one is set.
    let open = matches!(path.as_str(), "/" | "/healthz");
    let access = state.access.load();
    if !host_allowed(&req, &access.hosts) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "Host is not this admin server (add the name to [admin] hosts)",
        );
    }
    if !open && !authorized(&req, &access.token) {
        let mut res = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(why) = cross_site(&req, access.token.is_some()) {
            return error(StatusCode::FORBIDDEN, why);
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        (&Method::GET, ["healthz"]) => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (&Method::GET, ["metrics"]) => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&state.view.load(), &state.reloads, state.started),
        ),
        (&Method::GET, ["api", "status"]) => {
            // `?events_since=N`: only the events numbered above N (a dashboard that has
            // them already asks for the new ones).
            let since = req
                .uri()
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("events_since="))
                .map(str::parse::<u64>);
            match since {
                Some(Err(_)) => error(StatusCode::BAD_REQUEST, "events_since: give an event number"),
                since => json(
                    StatusCode::OK,
                    &status::render(
                        &state.view.load(),
                        &state.sampler,
                        &state.reloads,
                        state.started,
                        since.and_then(Result::ok).unwrap_or(0),
                    ),
                ),
            }
        }
        (&Method::POST, ["api", "reload"]) => match state.reload.reload().await {
            Ok(summary) => json(
                StatusCode::OK,
                &serde_json::json!({ "reloaded": summary.config, "restart_needed": summary.restart_needed }),
            ),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "error": "reload failed; the previous config keeps serving", "details": e.to_string().lines().collect::<Vec<_>>() }),
            ),
        },
        (&Method::POST, ["api", "pools", pool, "backends", address, action @ ("drain" | "enable")]) => {
            set_drained(state, pool, address, *action == "drain")
        }
        (_, ["api", ..]) | (_, ["metrics"]) | (_, ["healthz"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Decodes `%XX` escapes (a browser escapes the `:` of `ip:port` in a path segment).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn set_drained(state: &AdminState, pool: &str, address: &str, drained: bool) -> AdminResponse {
    let (pool, address) = (percent_decode(pool), percent_decode(address));
    let (pool, address) = (pool.as_str(), address.as_str());
    let view = state.view.load();
    let Some(pool) = view.pools.iter().find(|p| p.name() == pool) else {
        return error(StatusCode::NOT_FOUND, "no such pool");
    };
    let Some(member) = pool
        .members()
        .iter()
        .find(|m| m.backend.address().to_string() == address)
    else {
        return error(StatusCode::NOT_FOUND, "no such backend in this pool");
    };
    let was = member.backend.set_drained(drained);
    if was != drained {
        tracing::info!(
            pool = pool.name(),
            backend = address,
            "backend {} by the admin API",
            if drained { "drained" } else { "enabled" }
        );
        crate::events::record_backend(
            crate::events::Kind::Drain,
            crate::events::Level::Info,
            pool.name(),
            member.backend.address(),
            format!(
                "{address} in {} {} by the admin API",
                pool.name(),
                if drained { "drained" } else { "enabled again" }
            ),
        );
        pool.rebuild();
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "pool": pool.name(), "backend": address, "state": status::backend_state(member) }),
    )
}

/// The dashboard: one self-contained page, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("127.0.0.1%3A8081"), "127.0.0.1:8081");
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A80"), "[::1]:80");
        assert_eq!(percent_decode("plain%zz"), "plain%zz");
    }
}
