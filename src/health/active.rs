//! Active health checks: probe every backend on an interval, mark it down after
//! `unhealthy_threshold` failed probes in a row and up after `healthy_threshold` passing ones.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::{CheckKind, HealthCheckConfig};
use crate::events::{self, Kind, Level};
use crate::upstream::connect::Connector;
use crate::upstream::hash::hash64;
use crate::upstream::Pool;

/// Rise/fall counting: the state flips only after enough results in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    healthy: bool,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl RiseFall {
    /// Starts `healthy` or not, flipping after `rise` passes or `fall` failures in a row.
    pub fn new(healthy: bool, rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            healthy,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Whether it is healthy now.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Forces the state (e.g. passive health ejected the backend), restarting the count.
    pub fn set(&mut self, healthy: bool) {
        if self.healthy != healthy {
            self.healthy = healthy;
            self.streak = 0;
        }
    }

    /// Counts one probe result; returns the new state when it flips.
    pub fn observe(&mut self, passed: bool) -> Option<bool> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if passed { self.rise } else { self.fall };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

/// The probe schedule of one backend: a fixed offset of up to 10% of the interval, derived
/// from the address, so that many backends and pools are not probed all at the same moment.
pub fn jitter(address: SocketAddr, interval: Duration) -> Duration {
    let tenth = interval.as_nanos() / 10;
    if tenth == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((u128::from(hash64(address.to_string().as_bytes())) % tenth) as u64)
}

/// Probes every `interval` (after `offset`), counts results with `state`, and calls
/// `on_change(healthy, reason)` on each flip. `sync` is asked before each probe for a state
/// forced from outside (passive ejection). Ends when `on_change` or `sync` return `None`
/// (the pool is gone).
pub async fn run_checks<P, Fut, S, C>(
    interval: Duration,
    offset: Duration,
    mut state: RiseFall,
    mut probe: P,
    mut sync: S,
    mut on_change: C,
) where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
    S: FnMut() -> Option<bool>,
    C: FnMut(bool, &str) -> Option<()>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(healthy_now) = sync() else { return };
        state.set(healthy_now);
        let result = probe().await;
        let reason = match &result {
            Ok(()) => "probe passed".to_owned(),
            Err(why) => why.clone(),
        };
        if let Some(healthy) = state.observe(result.is_ok()) {
            if on_change(healthy, &reason).is_none() {
                return;
            }
        }
    }
}

/// Starts the checks of member `index` of `pool`.
pub fn spawn(pool: Weak<Pool>, index: usize, config: HealthCheckConfig) {
    let Some((connector, start_healthy, name)) = pool.upgrade().and_then(|p| {
        let m = p.members().get(index)?;
        Some((
            Arc::clone(&m.connector),
            !m.backend.is_probed_down(),
            p.name().to_owned(),
        ))
    }) else {
        return;
    };
    let address = connector.address();
    let state = RiseFall::new(start_healthy, config.healthy_threshold, config.unhealthy_threshold);
    let offset = jitter(address, config.interval);
    let config = Arc::new(config);
    let sync_pool = pool.clone();
    let probe_pool = pool.clone();
    tokio::spawn(run_checks(
        config.interval,
        offset,
        state,
        move || {
            let config = Arc::clone(&config);
            let connector = Arc::clone(&connector);
            let pool = probe_pool.clone();
            async move {
                let result = probe(&connector, &config).await;
                if let (Err(why), Some(pool)) = (&result, pool.upgrade()) {
                    if let Some(m) = pool.members().get(index) {
                        m.backend.record_probe_failure(why);
                    }
                }
                result
            }
        },
        move || {
            let pool = sync_pool.upgrade()?;
            Some(!pool.members().get(index)?.backend.is_probed_down())
        },
        move |healthy, reason| {
            let pool = pool.upgrade()?;
            let backend = &pool.members().get(index)?.backend;
            backend.set_probed_down(!healthy);
            if healthy {
                // Passing active checks also ends a passive ejection (Envoy's default).
                backend.clear_ejection();
                tracing::info!(pool = %name, backend = %address, reason, "backend healthy (was unhealthy)");
                events::record_backend(
                    Kind::Health,
                    Level::Info,
                    &name,
                    address,
                    format!("{address} in {name} is up: {reason}"),
                );
            } else {
                tracing::warn!(pool = %name, backend = %address, reason, "backend unhealthy (was healthy)");
                events::record_backend(
                    Kind::Health,
                    Level::Warn,
                    &name,
                    address,
                    format!("{address} in {name} is down: {reason}"),
                );
            }
            pool.rebuild();
            Some(())
        },
    ));
}

/// One probe of the backend `connector` reaches, over the protocol and TLS its pool uses;
/// `Err` says why it failed.
pub async fn probe(connector: &Connector, config: &HealthCheckConfig) -> Result<(), String> {
    match tokio::time::timeout(config.timeout, probe_once(connector, &config.kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {:?}", config.timeout)),
    }
}

async fn probe_once(connector: &Connector, kind: &CheckKind) -> Result<(), String> {
    let stream = connector.connect().await.map_err(|e| e.to_string())?;
    let CheckKind::Http {
        method,
        path,
        host,
        expect_status,
        expect_body,
    } = kind
    else {
        return Ok(());
    };
    let io = TokioIo::new(stream);
    let (mut sender, connection) = if connector.protocol().is_h2() {
        let (sender, connection) =
            hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        (
            Sender::H2(sender),
            tokio::spawn(async move { connection.await.map(drop) }),
        )
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        (
            Sender::H1(sender),
            tokio::spawn(async move { connection.await.map(drop) }),
        )
    };
    let host = host.clone().unwrap_or_else(|| connector.address().to_string());
    let request = Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header(
            HOST,
            HeaderValue::from_str(&host).map_err(|_| format!("invalid host {host:?}"))?,
        )
        .header(USER_AGENT, "steelyard-health-check")
        .body(Empty::new())
        .map_err(|e| format!("invalid health check request: {e}"))?;
    let result = async {
        let response = match &mut sender {
            Sender::H1(s) => s.send_request(request).await,
            Sender::H2(s) => s.send_request(request).await,
        }
        .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        if !expect_status.contains(status) {
            return Err(format!("unexpected status {status}"));
        }
        if let Some(needle) = expect_body {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body failed: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
                return Err(format!("body lacks {needle:?}"));
            }
        }
        Ok(())
    }
    .await;
    connection.abort();
    result
}

/// A probe's request sender, by protocol.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    #[test]
    fn rise_and_fall_need_results_in_a_row() {
        let mut s = RiseFall::new(true, 2, 3);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(true), None, "a pass resets the failure streak");
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(true));
        assert!(s.is_healthy());
    }

    #[test]
    fn jitter_is_stable_and_under_a_tenth() {
        let a: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        let interval = Duration::from_secs(5);
        assert_eq!(jitter(a, interval), jitter(a, interval));
        assert!(jitter(a, interval) < Duration::from_millis(500));
    }

    /// Drives the check loop in paused time with scripted probe results and returns the
    /// (virtual seconds since start, new state) of each flip.
    async fn flips(results: Vec<bool>, rise: u32, fall: u32) -> Vec<(f64, bool)> {
        let start = Instant::now();
        let script = Arc::new(Mutex::new(results.into_iter()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = Arc::clone(&seen);
        let remaining = Arc::clone(&script);
        run_checks(
            Duration::from_secs(2),
            Duration::from_millis(500),
            RiseFall::new(true, rise, fall),
            move || {
                let next = script.lock().expect("lock").next();
                async move {
                    if next.unwrap_or(true) {
                        Ok(())
                    } else {
                        Err("failed".to_owned())
                    }
                }
            },
            move || {
                (remaining.lock().expect("lock").len() > 0)
                    .then_some(true)
                    .map(|_| true)
            },
            move |healthy, _| {
                seen_in
                    .lock()
                    .expect("lock")
                    .push((start.elapsed().as_secs_f64(), healthy));
                Some(())
            },
        )
        .await;
        let v = seen.lock().expect("lock").clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn flips_happen_on_the_probe_that_completes_the_streak() {
        // Probes at 0.5s, 2.5s, 4.5s, ...: three failures flip at the third (4.5s); the state
        // is then forced back by `sync` (which always reports healthy here), so later
        // failures must again count three.
        let got = flips(vec![false, false, false, true, false, false, false], 2, 3).await;
        assert_eq!(got, vec![(4.5, false), (12.5, false)]);
    }
}
