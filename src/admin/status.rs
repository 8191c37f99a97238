//! `GET /api/status`: the live state as JSON.

use std::time::Instant;

use serde_json::{json, Value};

use super::sampler::{sample, Sampler};
use super::AdminView;
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
pub fn render(view: &AdminView, sampler: &Sampler, started: Instant) -> Value {
    let pools: Vec<Value> = view
        .pools
        .iter()
        .map(|pool| {
            let backends: Vec<Value> = pool
                .members()
                .iter()
                .map(|m| {
                    let b = &m.backend;
                    let now = sample(b);
                    let recent = sampler.recent(pool.name(), b.address(), &now);
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
                        "latency_p99_ms": recent.p99.map(|s| round(s * 1000.0)),
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
                "backends": backends,
            })
        })
        .collect();
    let listeners: Vec<Value> = view
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "address": l.address.to_string(),
                "mode": l.mode,
                "tls": l.tls,
                "routes": l.routes,
                "connections": l.limit.open(),
                "requests": l.limit.requests(),
                "tunnels": l.limit.tunnels(),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": started.elapsed().as_secs(),
        "config_file": view.config_file.as_ref().map(|p| p.display().to_string()),
        "config_hash": format!("{:016x}", view.config_hash),
        "listeners": listeners,
        "pools": pools,
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
