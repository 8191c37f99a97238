//! One backend server and its live load figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::stats::StatusCounts;

/// A server that receives traffic, with atomics the hot path updates without locking.
#[derive(Debug)]
pub struct Backend {
    address: SocketAddr,
    /// Set from the config; a reload may change it.
    weight: AtomicU32,
    /// `address` pre-rendered as a URI authority, so requests need no formatting.
    authority: Authority,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Peak-EWMA of response-header latency in nanoseconds, as `f64` bits; 0 = no sample yet.
    latency_ewma: AtomicU64,
    /// When `latency_ewma` was last updated, in nanoseconds since [`clock_nanos`]'s epoch.
    latency_updated: AtomicU64,
    /// Active health checks say it is down.
    probed_down: AtomicBool,
    /// Ejected by passive health until this [`clock_nanos`] time; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Times it has been ejected (sets the length of the next ejection).
    ejections: AtomicU32,
    /// Failed requests in a row.
    consecutive_failures: AtomicU32,
    /// Times active checks changed its state.
    health_transitions: AtomicU64,
    /// When it last became eligible ([`clock_nanos`]), for slow start; 0: long ago.
    ready_since: AtomicU64,
    /// An operator drained it: no new requests.
    drained: AtomicBool,
    /// Its responses by status class.
    responses: StatusCounts,
    /// Response-header latency histogram: counts per [`LATENCY_BUCKETS`] bound, then +Inf.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observed latencies, in microseconds.
    latency_sum_micros: AtomicU64,
    /// Response body bytes received from it.
    bytes_received: AtomicU64,
    /// Request body bytes sent to it.
    bytes_sent: AtomicU64,
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Nanoseconds since the first call in this process: a cheap monotonic clock for atomics.
pub fn clock_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// [`clock_nanos`] at `t`, for callers that already read the clock.
pub fn nanos_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

impl Backend {
    /// A backend at `address` with relative `weight`.
    pub fn new(address: SocketAddr, weight: u32) -> Backend {
        let authority =
            Authority::try_from(address.to_string()).unwrap_or_else(|_| Authority::from_static("invalid.invalid"));
        Backend {
            address,
            weight: AtomicU32::new(weight),
            authority,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_ewma: AtomicU64::new(0),
            latency_updated: AtomicU64::new(0),
            probed_down: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            health_transitions: AtomicU64::new(0),
            ready_since: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            responses: StatusCounts::default(),
            latency_buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes its weight (on reload; selectors built afterwards use it).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// `ip:port` as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Requests sent to it and not yet finished (response body included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests ever sent to it.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that failed at this backend (connect error, reset, timeout).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a failed request; returns how many failed in a row now.
    pub fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a successful request, ending any run of failures.
    pub fn record_success(&self) {
        // Read first: a healthy backend's counter is already 0, and skipping the write keeps
        // its cache line shared between cores.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// True when active health checks have marked it down.
    pub fn is_probed_down(&self) -> bool {
        self.probed_down.load(Ordering::Relaxed)
    }

    /// Marks it up or down as active health checks decide; returns the previous state.
    pub fn set_probed_down(&self, down: bool) -> bool {
        let was = self.probed_down.swap(down, Ordering::Relaxed);
        if was != down {
            self.health_transitions.fetch_add(1, Ordering::Relaxed);
        }
        was
    }

    /// Times its health state changed.
    pub fn health_transitions(&self) -> u64 {
        self.health_transitions.load(Ordering::Relaxed)
    }

    /// Times passive health ejected it.
    pub fn ejection_count(&self) -> u64 {
        u64::from(self.ejections.load(Ordering::Relaxed))
    }

    /// True while passive health keeps it ejected at [`clock_nanos`] time `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// When the current ejection ends, if it is ejected at `now`.
    pub fn ejected_until(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// Ejects it at `now` for `base` times the number of its ejections so far (capped at
    /// `max_multiplier`), and starts a new count of failures. Returns the ejection length.
    pub fn eject(&self, now: u64, base: Duration, max_multiplier: u32) -> Duration {
        let n = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
            .min(max_multiplier);
        let length = base.saturating_mul(n);
        let until = now.saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        length
    }

    /// Ends an ejection early (it passed active health checks).
    pub fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }

    /// Notes that it became eligible at `now` (starts its slow-start ramp).
    pub fn mark_ready(&self, now: u64) {
        self.ready_since.store(now.max(1), Ordering::Relaxed);
    }

    /// How long it has been eligible at `now`, if it became so since the process started.
    pub fn ready_for(&self, now: u64) -> Option<Duration> {
        let since = self.ready_since.load(Ordering::Relaxed);
        (since != 0).then(|| Duration::from_nanos(now.saturating_sub(since)))
    }

    /// True when it may receive new requests at `now`: not drained, not probed down, not
    /// ejected.
    pub fn is_eligible(&self, now: u64) -> bool {
        !self.is_drained() && !self.is_probed_down() && !self.is_ejected(now)
    }

    /// True when an operator drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains it (no new requests) or enables it again; returns the previous setting.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    /// Counts a response with `status` whose headers took `latency`.
    pub fn record_response(&self, status: u16, latency: Duration) {
        self.responses.record(status);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts response body bytes received.
    pub fn record_bytes(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Responses by status class (1xx..5xx).
    pub fn responses(&self) -> [u64; 5] {
        self.responses.get()
    }

    /// Latency histogram counts per bucket (not cumulative; the last is +Inf) and the sum in
    /// seconds.
    pub fn latency_histogram(&self) -> (Vec<u64>, f64) {
        let counts = self.latency_buckets.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }

    /// Counts request body bytes sent.
    pub fn record_bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Request body bytes sent.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Response body bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Peak-EWMA latency in nanoseconds, or `None` before the first response.
    pub fn latency_ewma_nanos(&self) -> Option<f64> {
        let v = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// Folds one response latency into the peak-EWMA: a sample above the estimate replaces it
    /// at once (the "peak"), a lower one pulls it down with weight `1 - e^(-elapsed/decay)`, so
    /// a backend that turns slow is avoided immediately and forgiven over about `decay`.
    ///
    /// Two racing updates may lose one sample; the estimate stays sound, which is all a
    /// load-balancing heuristic needs, and no lock is taken.
    pub fn observe_latency(&self, rtt: Duration, decay: Duration) {
        self.observe_latency_at(rtt, decay, clock_nanos());
    }

    /// [`Backend::observe_latency`] at a given [`clock_nanos`] time.
    pub fn observe_latency_at(&self, rtt: Duration, decay: Duration, now: u64) {
        let sample = (rtt.as_nanos() as f64).max(1.0);
        let prev = f64::from_bits(self.latency_ewma.load(Ordering::Relaxed));
        let next = if prev <= 0.0 || sample > prev {
            sample
        } else {
            let elapsed = now.saturating_sub(self.latency_updated.load(Ordering::Relaxed)) as f64;
            let keep = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            prev * keep + sample * (1.0 - keep)
        };
        self.latency_ewma.store(next.to_bits(), Ordering::Relaxed);
        self.latency_updated.store(now, Ordering::Relaxed);
    }

    /// Counts a request as started; it stays in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Keeps one request counted in its backend's in-flight figure until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_grow_with_each_one_up_to_the_cap() {
        let b = Backend::new(([127, 0, 0, 1], 1).into(), 1);
        let base = Duration::from_secs(30);
        assert_eq!(b.eject(0, base, 3), Duration::from_secs(30));
        assert!(b.is_ejected(29_999_999_999) && !b.is_ejected(30_000_000_000));
        assert_eq!(b.eject(0, base, 3), Duration::from_secs(60));
        assert_eq!(b.eject(0, base, 3), Duration::from_secs(90));
        assert_eq!(b.eject(0, base, 3), Duration::from_secs(90));
        assert_eq!(b.record_failure(), 1, "an ejection starts a new run of failures");
        b.record_success();
        assert_eq!(b.record_failure(), 1);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let b = Backend::new(([127, 0, 0, 1], 1).into(), 1);
        let decay = Duration::from_secs(10);
        assert_eq!(b.latency_ewma_nanos(), None);
        let t0 = 1_000_000_000;
        b.observe_latency_at(Duration::from_millis(10), decay, t0);
        assert_eq!(b.latency_ewma_nanos(), Some(10e6));
        b.observe_latency_at(Duration::from_millis(100), decay, t0);
        assert_eq!(b.latency_ewma_nanos(), Some(100e6), "a peak is taken at once");
        // One decay period later the old estimate keeps weight 1/e.
        b.observe_latency_at(Duration::from_millis(10), decay, t0 + 10_000_000_000);
        let v = b.latency_ewma_nanos().expect("estimate");
        let expected = 100e6 / std::f64::consts::E + 10e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((v - expected).abs() / expected < 0.01, "{v} vs {expected}");
    }
}
