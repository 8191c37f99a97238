//! One backend server and its live load figures.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::stats::StatusCounts;

/// A server that receives traffic, with atomics the hot path updates without locking.
///
/// The figures every request bumps live in one [`Shard`] per worker thread, each on cache
/// lines of its own, so workers serving the same backend never write to the same line; readers
/// sum the shards. Aligned so that the `Arc`'s reference counts sit on a line apart from the
/// read-mostly fields below.
#[derive(Debug)]
#[repr(align(128))]
pub struct Backend {
    address: SocketAddr,
    /// Set from the config; a reload may change it.
    weight: AtomicU32,
    /// `address` pre-rendered as a URI authority, so requests need no formatting.
    authority: Authority,
    failures: AtomicU64,
    /// Written on every response of a peak-EWMA pool: on a line of its own.
    ewma: Ewma,
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
    /// When its last failed health probe ran (Unix milliseconds) and why it failed. Written
    /// by the health checker, read by the admin API; never on the request path.
    last_probe_failure: std::sync::Mutex<Option<(u64, String)>>,
    /// Per-worker request figures.
    shards: Box<[Shard]>,
}

/// Peak-EWMA of response-header latency.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Ewma {
    /// In nanoseconds, as `f64` bits; 0 = no sample yet.
    value: AtomicU64,
    /// When `value` was last updated, in nanoseconds since [`clock_nanos`]'s epoch.
    updated: AtomicU64,
}

/// The figures one worker thread updates for a backend on every request.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Responses by status class.
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
/// Starts at 100 µs: a proxied request to a nearby backend usually answers within a
/// millisecond, and percentiles are interpolated within these buckets.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Nanoseconds since a day before the first call in this process: a cheap monotonic clock
/// for atomics.
pub fn clock_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// How far before the first reading [`clock_nanos`] counts from: a day, so that times a
/// predecessor process hands over ("eligible for the last 20 s") are still after the epoch.
const EPOCH_LEAD: Duration = Duration::from_secs(24 * 3600);

/// [`clock_nanos`] at `t`, for callers that already read the clock.
pub fn nanos_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(EPOCH_LEAD).unwrap_or(now)
    });
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

impl Backend {
    /// A backend at `address` with relative `weight`, for one worker thread.
    pub fn new(address: SocketAddr, weight: u32) -> Backend {
        Backend::for_workers(address, weight, 1)
    }

    /// A backend at `address` with relative `weight`, with figures kept per worker for
    /// `workers` worker threads.
    pub fn for_workers(address: SocketAddr, weight: u32, workers: usize) -> Backend {
        let authority =
            Authority::try_from(address.to_string()).unwrap_or_else(|_| Authority::from_static("invalid.invalid"));
        Backend {
            address,
            weight: AtomicU32::new(weight),
            authority,
            failures: AtomicU64::new(0),
            ewma: Ewma::default(),
            probed_down: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            health_transitions: AtomicU64::new(0),
            ready_since: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            last_probe_failure: std::sync::Mutex::new(None),
            shards: (0..workers.max(1)).map(|_| Shard::default()).collect(),
        }
    }

    /// The shard of worker `worker`.
    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    /// The sum of one figure over every worker's shard.
    fn sum(&self, figure: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(figure).sum()
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
        self.shards.iter().map(|s| s.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Requests ever sent to it.
    pub fn requests(&self) -> u64 {
        self.sum(|s| s.requests.load(Ordering::Relaxed))
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

    /// Remembers a failed health probe and why it failed.
    pub fn record_probe_failure(&self, reason: &str) {
        let mut last = self.last_probe_failure.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some((crate::events::unix_ms(), reason.to_owned()));
    }

    /// The last failed health probe: when (Unix milliseconds) and why.
    pub fn last_probe_failure(&self) -> Option<(u64, String)> {
        self.last_probe_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Counts a response with `status` whose headers took `latency`, on worker `worker`.
    pub fn record_response(&self, worker: usize, status: u16, latency: Duration) {
        let shard = self.shard(worker);
        shard.responses.record(status);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        shard.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.latency_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts response body bytes received, on worker `worker`.
    pub fn record_bytes(&self, worker: usize, n: u64) {
        if n > 0 {
            self.shard(worker).bytes_received.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Responses by status class (1xx..5xx).
    pub fn responses(&self) -> [u64; 5] {
        self.shards.iter().fold([0; 5], |mut total, s| {
            for (t, n) in total.iter_mut().zip(s.responses.get()) {
                *t += n;
            }
            total
        })
    }

    /// Latency histogram counts per bucket (not cumulative; the last is +Inf) and the sum in
    /// seconds.
    pub fn latency_histogram(&self) -> (Vec<u64>, f64) {
        let counts = (0..=LATENCY_BUCKETS.len())
            .map(|b| self.sum(|s| s.latency_buckets[b].load(Ordering::Relaxed)))
            .collect();
        let sum = self.sum(|s| s.latency_sum_micros.load(Ordering::Relaxed));
        (counts, sum as f64 / 1e6)
    }

    /// Counts request body bytes sent, on worker `worker`.
    pub fn record_bytes_sent(&self, worker: usize, n: u64) {
        if n > 0 {
            self.shard(worker).bytes_sent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Request body bytes sent.
    pub fn bytes_sent(&self) -> u64 {
        self.sum(|s| s.bytes_sent.load(Ordering::Relaxed))
    }

    /// Response body bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.sum(|s| s.bytes_received.load(Ordering::Relaxed))
    }

    /// Peak-EWMA latency in nanoseconds, or `None` before the first response.
    pub fn latency_ewma_nanos(&self) -> Option<f64> {
        let v = f64::from_bits(self.ewma.value.load(Ordering::Relaxed));
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
        let prev = f64::from_bits(self.ewma.value.load(Ordering::Relaxed));
        let next = if prev <= 0.0 || sample > prev {
            sample
        } else {
            let elapsed = now.saturating_sub(self.ewma.updated.load(Ordering::Relaxed)) as f64;
            let keep = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            prev * keep + sample * (1.0 - keep)
        };
        self.ewma.value.store(next.to_bits(), Ordering::Relaxed);
        self.ewma.updated.store(now, Ordering::Relaxed);
    }

    /// Counts a request as started on worker `worker`; it stays in flight until the returned
    /// guard drops.
    pub fn start_request(&self, worker: usize) -> InFlight<&Backend> {
        InFlight::start(self, worker)
    }

    /// [`Backend::start_request`] with a guard that owns a reference, for bodies streamed
    /// after the request's own future has returned.
    pub fn start_request_owned(self: &Arc<Self>, worker: usize) -> InFlight<Arc<Backend>> {
        InFlight::start(Arc::clone(self), worker)
    }
}

/// A backend's state and figures in a form another process can read: what a binary upgrade
/// carries to the new process so that health, ejections, slow start and counters go on
/// where they were. Times are relative ("for so long"), since clocks differ by process.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BackendSnapshot {
    /// Active health checks had it down.
    pub probed_down: bool,
    /// An operator had drained it.
    pub drained: bool,
    /// What was left of its ejection, in milliseconds (0: not ejected).
    pub ejected_for_ms: u64,
    /// Times it was ejected.
    pub ejections: u32,
    /// How long it had been eligible, in milliseconds, if it became so recently enough to
    /// be in a slow-start ramp.
    pub ready_for_ms: Option<u64>,
    /// Peak-EWMA latency in nanoseconds, if measured.
    pub ewma_nanos: Option<f64>,
    /// Counters.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Times active checks changed its state.
    pub health_transitions: u64,
    /// Responses by status class, 1xx first.
    pub responses: [u64; 5],
    /// Latency histogram counts per [`LATENCY_BUCKETS`] bound, then +Inf.
    pub latency_buckets: Vec<u64>,
    /// Sum of latencies, in microseconds.
    pub latency_sum_micros: u64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
}

impl Backend {
    /// Its state and figures at [`clock_nanos`] time `now`, for a successor process.
    pub fn snapshot(&self, now: u64) -> BackendSnapshot {
        let ms = |nanos: u64| nanos / 1_000_000;
        BackendSnapshot {
            probed_down: self.is_probed_down(),
            drained: self.is_drained(),
            ejected_for_ms: self.ejected_until(now).map_or(0, |until| ms(until - now).max(1)),
            ejections: self.ejections.load(Ordering::Relaxed),
            ready_for_ms: self
                .ready_for(now)
                .map(|d| ms(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))),
            ewma_nanos: self.latency_ewma_nanos(),
            requests: self.requests(),
            failures: self.failures(),
            health_transitions: self.health_transitions(),
            responses: self.responses(),
            latency_buckets: self.latency_histogram().0,
            latency_sum_micros: self.sum(|s| s.latency_sum_micros.load(Ordering::Relaxed)),
            bytes_sent: self.bytes_sent(),
            bytes_received: self.bytes_received(),
        }
    }

    /// Takes on a predecessor's `snapshot` at [`clock_nanos`] time `now`: its state replaces
    /// this one's, its counters are added to this one's.
    pub fn restore(&self, snapshot: &BackendSnapshot, now: u64) {
        let nanos = |ms: u64| ms.saturating_mul(1_000_000);
        self.probed_down.store(snapshot.probed_down, Ordering::Relaxed);
        self.drained.store(snapshot.drained, Ordering::Relaxed);
        let until = if snapshot.ejected_for_ms == 0 {
            0
        } else {
            now.saturating_add(nanos(snapshot.ejected_for_ms))
        };
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.store(snapshot.ejections, Ordering::Relaxed);
        if let Some(ready) = snapshot.ready_for_ms {
            self.ready_since
                .store(now.saturating_sub(nanos(ready)).max(1), Ordering::Relaxed);
        }
        if let Some(ewma) = snapshot.ewma_nanos.filter(|v| v.is_finite() && *v > 0.0) {
            self.ewma.value.store(ewma.to_bits(), Ordering::Relaxed);
            self.ewma.updated.store(now, Ordering::Relaxed);
        }
        self.failures.fetch_add(snapshot.failures, Ordering::Relaxed);
        self.health_transitions
            .fetch_add(snapshot.health_transitions, Ordering::Relaxed);
        let shard = self.shard(0);
        shard.requests.fetch_add(snapshot.requests, Ordering::Relaxed);
        shard.responses.add(snapshot.responses);
        for (bucket, n) in shard.latency_buckets.iter().zip(&snapshot.latency_buckets) {
            bucket.fetch_add(*n, Ordering::Relaxed);
        }
        shard
            .latency_sum_micros
            .fetch_add(snapshot.latency_sum_micros, Ordering::Relaxed);
        shard.bytes_sent.fetch_add(snapshot.bytes_sent, Ordering::Relaxed);
        shard
            .bytes_received
            .fetch_add(snapshot.bytes_received, Ordering::Relaxed);
    }
}

/// Keeps one request counted in its backend's in-flight figure until dropped.
///
/// `B` is how the guard holds the backend: a borrow on the HTTP/1 path (no reference count
/// touched per request), an `Arc` where the response outlives the code that sent it.
#[derive(Debug)]
pub struct InFlight<B: Deref<Target = Backend>> {
    backend: B,
    worker: usize,
}

impl<B: Deref<Target = Backend>> InFlight<B> {
    fn start(backend: B, worker: usize) -> InFlight<B> {
        let shard = backend.shard(worker);
        shard.in_flight.fetch_add(1, Ordering::Relaxed);
        shard.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { backend, worker }
    }

    /// The backend this request went to.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The worker thread that counted it.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl<B: Deref<Target = Backend>> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.backend
            .shard(self.worker)
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_carries_state_and_counters_to_another_clock() {
        let old = Backend::for_workers(([127, 0, 0, 1], 1).into(), 1, 2);
        let t0 = 50_000_000_000; // 50 s on the old process's clock
        old.eject(t0, Duration::from_secs(30), 10);
        old.mark_ready(t0 - 4_000_000_000);
        old.set_probed_down(true);
        old.set_drained(true);
        old.observe_latency_at(Duration::from_millis(7), Duration::from_secs(10), t0);
        for worker in 0..2 {
            drop(old.start_request(worker));
            old.record_response(worker, 200, Duration::from_millis(3));
            old.record_bytes(worker, 100);
            old.record_bytes_sent(worker, 10);
        }
        old.record_response(1, 503, Duration::from_secs(20));
        old.record_failure();
        // 10 s later the snapshot is taken: 20 s of ejection left, ready for 14 s.
        let snapshot = old.snapshot(t0 + 10_000_000_000);
        assert_eq!(snapshot.ejected_for_ms, 20_000);
        assert_eq!(snapshot.ready_for_ms, Some(14_000));

        let new = Backend::for_workers(([127, 0, 0, 1], 1).into(), 1, 4);
        drop(new.start_request(3));
        let t1 = 100_000_000_000; // the new process's clock reads differently
        new.restore(&snapshot, t1);
        assert!(new.is_probed_down() && new.is_drained());
        assert_eq!(new.ejected_until(t1), Some(t1 + 20_000_000_000));
        assert_eq!(new.ejection_count(), 1);
        assert_eq!(new.ready_for(t1), Some(Duration::from_secs(14)));
        assert_eq!(new.latency_ewma_nanos(), Some(7_000_000.0));
        assert_eq!(new.requests(), 3, "two carried, one of its own");
        assert_eq!(new.responses(), [0, 2, 0, 0, 1]);
        assert_eq!(new.latency_histogram(), old.latency_histogram());
        assert_eq!((new.bytes_received(), new.bytes_sent(), new.failures()), (200, 20, 1));
        assert_eq!(new.health_transitions(), 1);
        assert_eq!(new.in_flight(), 0);
    }

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
    fn figures_from_every_worker_add_up() {
        let b = Backend::for_workers(([127, 0, 0, 1], 1).into(), 1, 3);
        let held = [b.start_request(0), b.start_request(1), b.start_request(5)];
        assert_eq!(b.in_flight(), 3);
        assert_eq!(held.iter().map(InFlight::worker).collect::<Vec<_>>(), [0, 1, 5]);
        drop(held);
        assert_eq!((b.in_flight(), b.requests()), (0, 3));
        b.record_response(0, 200, Duration::from_micros(500));
        b.record_response(2, 503, Duration::from_millis(30));
        b.record_bytes(1, 10);
        b.record_bytes(2, 5);
        b.record_bytes_sent(0, 7);
        assert_eq!(b.responses(), [0, 1, 0, 0, 1]);
        let (buckets, sum) = b.latency_histogram();
        // 500 µs is at most the 0.5 ms bound; 30 ms falls in (25 ms, 50 ms].
        let bucket = |bound: f64| LATENCY_BUCKETS.iter().position(|&b| b == bound).expect("a bound");
        assert_eq!(
            (
                buckets[bucket(0.0005)],
                buckets[bucket(0.05)],
                buckets.iter().sum::<u64>()
            ),
            (1, 1, 2)
        );
        assert!((sum - 0.0305).abs() < 1e-9);
        assert_eq!((b.bytes_received(), b.bytes_sent()), (15, 7));
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
