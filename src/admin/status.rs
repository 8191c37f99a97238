//! `GET /api/status`: the live state as JSON.

use std::time::Instant;

use serde_json::{json, Value};

use super::sampler::{sample, History, Sampler, STEP};
use super::{AdminView, ReloadStats};
use crate::upstream::backend::clock_nanos;
use crate::upstream::Member;

/// A backend's state as operators read it.
pub fn backend_state(member: &Member) -> &'static str {
    let b = &member.backend;
    if b.is_drained() {
        if b.in_flight() > 0 {
            "draining"
        } else {
            "drained"
        }
    } else if b.is_ejected(clock_nanos()) {
        "ejected"
    } else if b.is_probed_down() {
        "unhealthy"
    } else {
        "healthy"
    }
}

/// The status document.
/// The status document; `events_since` leaves out events numbered up to it (0: all kept).
pub fn render(
    view: &AdminView,
    sampler: &Sampler,
    reloads: &ReloadStats,
    started: Instant,
    events_since: u64,
) -> Value {
    let pools: Vec<Value> = view
        .pools
        .iter()
        .map(|pool| {
            let mut pool_history = History::default();
            let active_checks = pool.config().health_check.is_some();
            let backends: Vec<Value> = pool
                .members()
                .iter()
                .map(|m| {
                    let b = &m.backend;
                    let now = sample(b);
                    let recent = sampler.recent(pool.name(), b.address(), &now);
                    let history = sampler.history(pool.name(), b.address());
                    add_history(&mut pool_history, &history);
                    let classes = b.responses();
                    let opened = m.connector.opened();
                    let requests = b.requests();
                    json!({
                        "address": b.address().to_string(),
                        "weight": b.weight(),
                        "state": backend_state(m),
                        "in_flight": b.in_flight(),
                        "requests": b.requests(),
                        "failures": b.failures(),
                        "responses": now.responses,
                        "rate": round(recent.rate),
                        "error_rate": round(recent.error_rate),
                        "latency_p50_ms": recent.p50.map(|s| round(s * 1000.0)),
                        "latency_p90_ms": recent.p90.map(|s| round(s * 1000.0)),
                        "latency_p99_ms": recent.p99.map(|s| round(s * 1000.0)),
                        "statuses": {
                            "1xx": classes[0], "2xx": classes[1], "3xx": classes[2], "4xx": classes[3], "5xx": classes[4],
                        },
                        "connections_opened": opened,
                        "new_connections_per_request": (requests > 0).then(|| (opened as f64 / requests as f64 * 1e6).round() / 1e6),
                        "health": {
                            "active": active_checks,
                            "transitions": b.health_transitions(),
                            "last_failure": b.last_probe_failure().map(|(unix_ms, reason)| json!({ "unix_ms": unix_ms, "reason": reason })),
                        },
                        "history": history_json(&history),
                    })
                })
                .collect();
            json!({
                "name": pool.name(),
                "algorithm": pool.algorithm().name(),
                "panic": pool.in_panic(),
                "eligible": pool.selection().len(),
                "retries": pool.retry_budget().retries(),
                "retries_refused": pool.retry_budget().refused(),
                "discovery": view.discovery.iter().find(|d| d.pool == pool.name()).map(|d| json!({
                    "source": d.source,
                    "up": d.up(),
                    "updates": d.updates(),
                    "failures": d.failures(),
                    "last_error": d.last_error(),
                })),
                "history": history_json(&pool_history),
                "backends": backends,
            })
        })
        .collect();
    let listeners: Vec<Value> = view
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": if l.named { l.name.clone() } else { l.address.to_string() },
                "address": l.address.to_string(),
                "mode": l.mode,
                "tls": l.tls,
                "routes": l.routes,
                "route_table": l.route_table.iter().map(|r| json!({
                    "host": r.host,
                    "path_prefix": r.path_prefix,
                    "pool": r.pool,
                })).collect::<Vec<_>>(),
                "connections": l.limit.open(),
                "requests": l.limit.requests(),
                "tunnels": l.limit.tunnels(),
            })
        })
        .collect();
    let events: Vec<Value> = crate::events::since(events_since)
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "unix_ms": e.unix_ms,
                "kind": e.kind.name(),
                "level": e.level.name(),
                "pool": e.pool,
                "backend": e.backend.map(|b| b.to_string()),
                "message": e.message,
            })
        })
        .collect();
    let file = view.config_file.as_ref().map(|p| p.display().to_string());
    let hash = format!("{:016x}", view.config_hash);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": started.elapsed().as_secs(),
        "config_file": file,
        "config_hash": hash,
        "config": {
            "file": file,
            "hash": hash,
            "summary": view.config_summary,
            "text": view.config_text.as_deref().map(redact),
        },
        "reloads": {
            "ok": reloads.succeeded.load(std::sync::atomic::Ordering::Relaxed),
            "failed": reloads.failed.load(std::sync::atomic::Ordering::Relaxed),
        },
        "history_step_seconds": STEP,
        "history_end_unix_ms": sampler.last_point_unix_ms(),
        "listeners": listeners,
        "pools": pools,
        "events": events,
        "events_last_seq": crate::events::last_seq(),
    })
}

/// Adds a backend's history to its pool's, aligned on the newest point.
fn add_history(pool: &mut History, backend: &History) {
    while pool.rate.len() < backend.rate.len() {
        pool.rate.push_front(0.0);
        pool.error_rate.push_front(0.0);
    }
    let offset = pool.rate.len() - backend.rate.len();
    for (i, (rate, errors)) in backend.rate.iter().zip(&backend.error_rate).enumerate() {
        // Error rates combine weighted by the traffic they describe.
        let total = pool.rate[offset + i] + rate;
        let bad = pool.rate[offset + i] * pool.error_rate[offset + i] + rate * errors;
        pool.rate[offset + i] = total;
        pool.error_rate[offset + i] = if total > 0.0 { bad / total } else { 0.0 };
    }
}

fn history_json(history: &History) -> Value {
    json!({
        "rate": history.rate.iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "error_rate": history.error_rate.iter().map(|e| (e * 1e6).round() / 1e6).collect::<Vec<_>>(),
    })
}

/// The config text with secrets replaced: values of keys that hold them, and the password of
/// a URL (`redis://user:secret@host`).
pub fn redact(text: &str) -> String {
    const SECRET_KEYS: [&str; 4] = ["token", "password", "secret", "key_password"];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
        let redacted = if line.contains('=') && SECRET_KEYS.contains(&key) {
            format!("{} = \"<redacted>\"", line.split('=').next().unwrap_or("").trim_end())
        } else if let Some(at) = line.find('@').filter(|_| line.contains("://")) {
            // Userinfo between "://" and "@": keep the user, hide the password.
            let scheme_end = line.find("://").map_or(0, |i| i + 3);
            match line[scheme_end..at].find(':') {
                Some(colon) if scheme_end < at => {
                    format!("{}:<redacted>{}", &line[..scheme_end + colon], &line[at..])
                }
                _ => line.to_owned(),
            }
        } else {
            line.to_owned()
        };
        out.push_str(&redacted);
        out.push('\n');
    }
    out
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let text = "[admin]\ntoken = \"s3cret\"\n[redis]\nurl = \"redis://app:hunter2@127.0.0.1:6379/0\"\n[pools.web]\nbackends = [\"127.0.0.1:1\"]\n";
        let shown = redact(text);
        assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("token = \"<redacted>\""), "{shown}");
        assert!(shown.contains("redis://app:<redacted>@127.0.0.1:6379/0"), "{shown}");
        assert!(shown.contains("backends = [\"127.0.0.1:1\"]"), "{shown}");
    }

    #[test]
    fn pool_history_sums_rates_and_weights_error_rates() {
        let a = History {
            rate: [10.0, 10.0].into(),
            error_rate: [0.0, 0.5].into(),
        };
        let b = History {
            rate: [30.0].into(),
            error_rate: [0.1].into(),
        };
        let mut pool = History::default();
        add_history(&mut pool, &a);
        add_history(&mut pool, &b);
        assert_eq!(pool.rate, [10.0, 40.0]);
        // (10 * 0.5 + 30 * 0.1) / 40
        assert!((pool.error_rate[1] - 0.2).abs() < 1e-12);
        assert_eq!(pool.error_rate[0], 0.0);
    }
}
