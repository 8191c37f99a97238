//! The admin listener: `/healthz`, Prometheus `/metrics`, the JSON API and the dashboard.
//!
//! It runs beside the proxy listeners on its own (loopback by default) address and reads the
//! same live state the proxy uses, through an [`AdminView`] that the server republishes on
//! every reload. With a token configured, every request needs `Authorization: Bearer TOKEN`.

mod metrics;
mod sampler;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    /// Listeners: name, bound address, open-connection counter.
    pub listeners: Vec<(String, SocketAddr, Arc<ConnectionLimit>)>,
    /// Pools being served.
    pub pools: Vec<Arc<Pool>>,
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

/// State shared by the admin handlers and the server.
#[derive(Debug)]
pub struct AdminState {
    /// The current view, swapped on reload.
    pub view: ArcSwap<AdminView>,
    /// Reload counters.
    pub reloads: ReloadStats,
    started: Instant,
    token: Option<String>,
    reload: ReloadHandle,
    sampler: Sampler,
}

impl AdminState {
    /// Fresh state for a server.
    pub fn new(token: Option<String>, reload: ReloadHandle) -> Arc<AdminState> {
        let reloads = ReloadStats::default();
        reloads.last_success_unix.store(unix_now(), Ordering::Relaxed);
        Arc::new(AdminState {
            view: ArcSwap::from_pointee(AdminView::default()),
            reloads,
            started: Instant::now(),
            token,
            reload,
            sampler: Sampler::default(),
        })
    }
}

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(sampler::run(Arc::downgrade(&state)));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
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
    if !open && !authorized(&req, &state.token) {
        let mut res = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        res.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
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
        (&Method::GET, ["api", "status"]) => json(
            StatusCode::OK,
            &status::render(&state.view.load(), &state.sampler, state.started),
        ),
        (&Method::POST, ["api", "reload"]) => match state.reload.reload().await {
            Ok(summary) => json(StatusCode::OK, &serde_json::json!({ "reloaded": summary.config })),
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
