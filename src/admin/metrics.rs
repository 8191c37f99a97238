//! `GET /metrics`: Prometheus text exposition, rendered from the live atomics at scrape time
//! (the hot path only increments counters; nothing here is on it).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::status::backend_state;
use super::{AdminView, ListenerView, ReloadStats};
use crate::fleet::discovery_status::DiscoveryStatus;
use crate::upstream::backend::LATENCY_BUCKETS;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(view: &AdminView, reloads: &ReloadStats, started: Instant) -> String {
    let mut out = String::with_capacity(8192);
    header(
        &mut out,
        "steelyard_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    let _ = writeln!(out, "steelyard_uptime_seconds {}", started.elapsed().as_secs_f64());

    header(
        &mut out,
        "steelyard_client_connections",
        "gauge",
        "Open client connections per listener.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        let _ = writeln!(
            out,
            "steelyard_client_connections{{listener=\"{}\"}} {}",
            esc(name),
            limit.open()
        );
    }

    header(
        &mut out,
        "steelyard_listener_requests_total",
        "counter",
        "Requests received per listener.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        let _ = writeln!(
            out,
            "steelyard_listener_requests_total{{listener=\"{}\"}} {}",
            esc(name),
            limit.requests()
        );
    }

    header(
        &mut out,
        "steelyard_upgraded_connections",
        "gauge",
        "Client connections tunnelled to a backend now, per listener: upgraded (WebSocket) ones, and every connection of a TCP listener.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        let _ = writeln!(
            out,
            "steelyard_upgraded_connections{{listener=\"{}\"}} {}",
            esc(name),
            limit.tunnels()
        );
    }

    header(
        &mut out,
        "steelyard_upgraded_connections_total",
        "counter",
        "Client connections tunnelled so far, per listener: upgraded after a 101 from a backend, or connected by a TCP listener.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        let _ = writeln!(
            out,
            "steelyard_upgraded_connections_total{{listener=\"{}\"}} {}",
            esc(name),
            limit.tunnels_total()
        );
    }

    header(
        &mut out,
        "steelyard_tunnel_duration_seconds",
        "histogram",
        "How long tunnelled connections lasted, per listener: TCP listeners' connections and upgraded (WebSocket) ones.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        let (counts, sum) = limit.tunnel_durations();
        histogram_with(
            &mut out,
            "steelyard_tunnel_duration_seconds",
            &format!("listener=\"{}\"", esc(name)),
            &crate::server::listener::TUNNEL_BUCKETS,
            &counts,
            sum,
        );
    }

    header(
        &mut out,
        "steelyard_requests_total",
        "counter",
        "Responses sent to clients by status class: from a backend (backend=\"ADDRESS\"), or written by Steelyard itself (backend=\"\"; pool=\"\" when no pool took the request). The sum over all series is every response sent.",
    );
    let class_series = |out: &mut String, pool: &str, backend: &str, counts: [u64; 5]| {
        for (i, n) in counts.iter().enumerate() {
            let _ = writeln!(
                out,
                "steelyard_requests_total{{pool=\"{}\",backend=\"{backend}\",code=\"{}xx\"}} {n}",
                esc(pool),
                i + 1
            );
        }
    };
    for pool in &view.pools {
        for m in pool.members() {
            class_series(
                &mut out,
                pool.name(),
                &m.backend.address().to_string(),
                m.backend.responses(),
            );
        }
        class_series(&mut out, pool.name(), "", pool.stats().local_responses.get());
    }
    let mut unrouted = [0u64; 5];
    for ListenerView { limit, .. } in &view.listeners {
        for (total, n) in unrouted.iter_mut().zip(limit.local_responses().get()) {
            *total += n;
        }
    }
    class_series(&mut out, "", "", unrouted);

    header(
        &mut out,
        "steelyard_listener_local_responses_total",
        "counter",
        "Responses Steelyard wrote itself for requests no pool took (400, 404, 408, 413, 414, 431, 503 over the connection limit), per listener and status class.",
    );
    for ListenerView { name, limit, .. } in &view.listeners {
        for (i, n) in limit.local_responses().get().iter().enumerate() {
            let _ = writeln!(
                out,
                "steelyard_listener_local_responses_total{{listener=\"{}\",code=\"{}xx\"}} {n}",
                esc(name),
                i + 1
            );
        }
    }

    header(
        &mut out,
        "steelyard_request_duration_seconds",
        "histogram",
        "Time from sending a request to a backend until its response headers, per backend.",
    );
    let mut pools = Vec::with_capacity(view.pools.len());
    for pool in &view.pools {
        let mut pool_counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
        let mut pool_sum = 0.0;
        for m in pool.members() {
            let (counts, sum) = m.backend.latency_histogram();
            for (p, c) in pool_counts.iter_mut().zip(&counts) {
                *p += c;
            }
            pool_sum += sum;
            let labels = format!("pool=\"{}\",backend=\"{}\"", esc(pool.name()), m.backend.address());
            histogram(&mut out, "steelyard_request_duration_seconds", &labels, &counts, sum);
        }
        pools.push((pool.name(), pool_counts, pool_sum));
    }
    header(
        &mut out,
        "steelyard_pool_request_duration_seconds",
        "histogram",
        "The same latency summed over each pool's backends (its own family, so sums over the per-backend family count each request once).",
    );
    for (name, counts, sum) in pools {
        histogram(
            &mut out,
            "steelyard_pool_request_duration_seconds",
            &format!("pool=\"{}\"", esc(name)),
            &counts,
            sum,
        );
    }

    // Every per-backend series: (name, type, help, value).
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::upstream::Member) -> u64,
    );
    let series: [Series; 8] = [
        (
            "steelyard_in_flight_requests",
            "gauge",
            "Requests sent to a backend and not yet finished.",
            |m| m.backend.in_flight() as u64,
        ),
        (
            "steelyard_upstream_idle_connections",
            "gauge",
            "Idle keep-alive connections to a backend.",
            |m| (m.connections.idle_count() + m.idle.idle_count()) as u64,
        ),
        (
            "steelyard_backend_healthy",
            "gauge",
            "1 when the backend receives new requests, else 0.",
            |m| u64::from(backend_state(m) == "healthy"),
        ),
        (
            "steelyard_upstream_bytes_received_total",
            "counter",
            "Response body bytes received from a backend (for TCP listeners, every byte it sent).",
            |m| m.backend.bytes_received(),
        ),
        (
            "steelyard_upstream_bytes_sent_total",
            "counter",
            "Request body bytes sent to a backend (for TCP listeners, every byte the clients sent).",
            |m| m.backend.bytes_sent(),
        ),
        (
            "steelyard_backend_failures_total",
            "counter",
            "Failed attempts at a backend (connect errors, resets, timeouts).",
            |m| m.backend.failures(),
        ),
        (
            "steelyard_health_transitions_total",
            "counter",
            "Times active checks changed a backend's state.",
            |m| m.backend.health_transitions(),
        ),
        (
            "steelyard_ejections_total",
            "counter",
            "Times passive health ejected a backend.",
            |m| m.backend.ejection_count(),
        ),
    ];
    for (name, kind, help, value) in series {
        header(&mut out, name, kind, help);
        for pool in &view.pools {
            for m in pool.members() {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",backend=\"{}\"}} {}",
                    esc(pool.name()),
                    m.backend.address(),
                    value(m)
                );
            }
        }
    }

    type PoolFigure = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::upstream::Pool) -> u64,
    );
    let pool_figures: [PoolFigure; 3] = [
        (
            "steelyard_retries_total",
            "counter",
            "Retries sent to another backend.",
            |p| p.retry_budget().retries(),
        ),
        (
            "steelyard_retries_refused_total",
            "counter",
            "Retries not sent because the retry budget was spent.",
            |p| p.retry_budget().refused(),
        ),
        (
            "steelyard_pool_panic",
            "gauge",
            "1 while the pool routes to all backends because too few are healthy.",
            |p| u64::from(p.in_panic()),
        ),
    ];
    for (name, kind, help, value) in pool_figures {
        header(&mut out, name, kind, help);
        for pool in &view.pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", esc(pool.name()), value(pool));
        }
    }
    // Only pools with a rate limit have these series; the Redis ones only global limits.
    type LimitFigure = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::fleet::rate_limit::RateLimiter) -> Option<u64>,
    );
    let limit_figures: [LimitFigure; 3] = [
        (
            "steelyard_rate_limited_total",
            "counter",
            "Requests refused with 429 by the pool's rate limit.",
            |l| Some(l.refused()),
        ),
        (
            "steelyard_rate_limit_redis_errors_total",
            "counter",
            "Global rate-limit checks Redis did not answer in time (on_redis_error applied).",
            |l| l.redis_state().map(|(errors, _)| errors),
        ),
        (
            "steelyard_rate_limit_redis_up",
            "gauge",
            "1 while Redis answers a pool's global rate-limit checks in time.",
            |l| l.redis_state().map(|(_, up)| u64::from(up)),
        ),
    ];
    for (name, kind, help, value) in limit_figures {
        header(&mut out, name, kind, help);
        for pool in &view.pools {
            if let Some(v) = pool.rate_limiter().and_then(value) {
                let _ = writeln!(out, "{name}{{pool=\"{}\"}} {v}", esc(pool.name()));
            }
        }
    }
    type DiscoveryFigure = (&'static str, &'static str, &'static str, fn(&DiscoveryStatus) -> u64);
    let discovery_figures: [DiscoveryFigure; 3] = [
        (
            "steelyard_discovery_up",
            "gauge",
            "1 while the source of a pool's backends (DNS or etcd) answers.",
            |d| u64::from(d.up()),
        ),
        (
            "steelyard_discovery_updates_total",
            "counter",
            "Changed sets of discovered backends applied to a pool.",
            DiscoveryStatus::updates,
        ),
        (
            "steelyard_discovery_failures_total",
            "counter",
            "Failed attempts to ask a pool's discovery source (the backends found before stay).",
            DiscoveryStatus::failures,
        ),
    ];
    for (name, kind, help, value) in discovery_figures {
        header(&mut out, name, kind, help);
        for d in &view.discovery {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", esc(&d.pool), value(d));
        }
    }
    header(
        &mut out,
        "steelyard_config_reloads_total",
        "counter",
        "Config reloads by outcome.",
    );
    let _ = writeln!(
        out,
        "steelyard_config_reloads_total{{result=\"success\"}} {}",
        reloads.succeeded.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "steelyard_config_reloads_total{{result=\"failure\"}} {}",
        reloads.failed.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "steelyard_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful (re)load.",
    );
    let _ = writeln!(
        out,
        "steelyard_config_last_reload_success_timestamp_seconds {}",
        reloads.last_success_unix.load(Ordering::Relaxed)
    );
    out
}

fn histogram(out: &mut String, name: &str, labels: &str, counts: &[u64], sum: f64) {
    histogram_with(out, name, labels, &LATENCY_BUCKETS, counts, sum);
}

/// A histogram with these bucket `bounds` (`counts` has one more, for +Inf).
fn histogram_with(out: &mut String, name: &str, labels: &str, bounds: &[f64], counts: &[u64], sum: f64) {
    let mut cumulative = 0;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
