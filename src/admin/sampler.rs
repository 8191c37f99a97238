//! Recent figures for the status API: every second, a snapshot of each backend's counters;
//! rates and percentiles come from the difference over the last ten seconds, and every
//! [`STEP`] a point of request and error rate joins a history of [`HISTORY_POINTS`] points
//! (15 minutes) for the dashboard's charts.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use super::AdminState;
use crate::upstream::backend::LATENCY_BUCKETS;

/// Counters of one backend at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Responses of every class.
    pub responses: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Latency histogram counts per bucket.
    pub buckets: Vec<u64>,
}

type Snapshot = (Instant, HashMap<(String, SocketAddr), Sample>);

/// Seconds between two points of history.
pub const STEP: u64 = 5;
/// Points of history kept: 15 minutes.
pub const HISTORY_POINTS: usize = 180;

/// A backend's request and error rates, one point per [`STEP`], oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Responses per second.
    pub rate: VecDeque<f64>,
    /// Share of responses that were 5xx, 0 to 1.
    pub error_rate: VecDeque<f64>,
}

/// The last ten seconds of snapshots, and fifteen minutes of history.
#[derive(Debug, Default)]
pub struct Sampler {
    snapshots: Mutex<VecDeque<Snapshot>>,
    history: Mutex<HashMap<(String, SocketAddr), History>>,
    ticks: std::sync::atomic::AtomicU64,
    /// When the newest history point was taken, in Unix milliseconds (0: none yet).
    last_point_unix_ms: std::sync::atomic::AtomicU64,
}

/// What a backend did recently.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Responses per second.
    pub rate: f64,
    /// Share of responses that were 5xx, 0 to 1.
    pub error_rate: f64,
    /// Median response-header latency, seconds (interpolated within its bucket).
    pub p50: Option<f64>,
    /// 90th percentile, seconds.
    pub p90: Option<f64>,
    /// 99th percentile, seconds.
    pub p99: Option<f64>,
}

impl Sampler {
    fn record(&self, at: Instant, samples: HashMap<(String, SocketAddr), Sample>) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let tick = self.ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        // Every STEP seconds, one point per backend from the snapshot STEP seconds back.
        if tick.is_multiple_of(STEP) {
            self.last_point_unix_ms
                .store(crate::events::unix_ms(), std::sync::atomic::Ordering::Relaxed);
            // STEP seconds back, or the oldest there is just after start.
            let back = snapshots.get(snapshots.len().saturating_sub(STEP as usize));
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            history.retain(|key, _| samples.contains_key(key));
            for (key, now) in &samples {
                let (rate, error_rate) = match back.and_then(|(then, old)| Some((then, old.get(key)?))) {
                    Some((then, old)) => {
                        let elapsed = at.duration_since(*then).as_secs_f64();
                        let responses = now.responses.saturating_sub(old.responses);
                        let errors = now.errors.saturating_sub(old.errors);
                        (
                            if elapsed > 0.0 { responses as f64 / elapsed } else { 0.0 },
                            if responses > 0 {
                                errors as f64 / responses as f64
                            } else {
                                0.0
                            },
                        )
                    }
                    None => (0.0, 0.0),
                };
                let series = history.entry(key.clone()).or_default();
                series.rate.push_back(rate);
                series.error_rate.push_back(error_rate);
                while series.rate.len() > HISTORY_POINTS {
                    series.rate.pop_front();
                    series.error_rate.pop_front();
                }
            }
        }
        snapshots.push_back((at, samples));
        while snapshots.len() > 11 {
            snapshots.pop_front();
        }
    }

    /// When the newest history point was taken, in Unix milliseconds; `None` before the
    /// first. Point `i` of a history of `n` points is `(n - 1 - i) * STEP` seconds older.
    pub fn last_point_unix_ms(&self) -> Option<u64> {
        let ms = self.last_point_unix_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms != 0).then_some(ms)
    }

    /// The history of `pool`/`address` (empty before the first point).
    pub fn history(&self, pool: &str, address: SocketAddr) -> History {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.get(&(pool.to_owned(), address)).cloned().unwrap_or_default()
    }

    /// Recent figures of `pool`/`address`, given its counters now.
    pub fn recent(&self, pool: &str, address: SocketAddr, now: &Sample) -> Recent {
        let snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (pool.to_owned(), address);
        let Some((at, old)) = snapshots.iter().find_map(|(at, s)| s.get(&key).map(|old| (at, old))) else {
            return Recent::default();
        };
        let elapsed = at.elapsed().as_secs_f64();
        let responses = now.responses.saturating_sub(old.responses);
        let errors = now.errors.saturating_sub(old.errors);
        let delta: Vec<u64> = now
            .buckets
            .iter()
            .zip(old.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(n, o)| n.saturating_sub(*o))
            .collect();
        Recent {
            rate: if elapsed > 0.0 { responses as f64 / elapsed } else { 0.0 },
            error_rate: if responses > 0 {
                errors as f64 / responses as f64
            } else {
                0.0
            },
            p50: quantile(&delta, 0.5),
            p90: quantile(&delta, 0.9),
            p99: quantile(&delta, 0.99),
        }
    }
}

/// Quantile `q` of a latency histogram (counts per [`LATENCY_BUCKETS`] bound, then +Inf),
/// interpolated linearly within the bucket that holds it, as Prometheus'
/// `histogram_quantile` does; in the +Inf bucket, the largest finite bound. `None` without
/// observations.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (seen + c) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return LATENCY_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += c;
    }
    LATENCY_BUCKETS.last().copied()
}

/// Takes a snapshot every second until the admin state is gone.
pub async fn run(state: Weak<AdminState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let view = state.view.load();
        let mut samples = HashMap::new();
        for pool in &view.pools {
            for m in pool.members() {
                samples.insert((pool.name().to_owned(), m.backend.address()), sample(&m.backend));
            }
        }
        state.sampler.record(Instant::now(), samples);
    }
}

/// The counters of `backend` now.
pub fn sample(backend: &crate::upstream::Backend) -> Sample {
    let classes = backend.responses();
    Sample {
        responses: classes.iter().sum(),
        errors: classes[4],
        buckets: backend.latency_histogram().0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn quantiles_are_interpolated_within_their_bucket() {
        let bucket = |bound: f64| LATENCY_BUCKETS.iter().position(|&b| b == bound).expect("a bound");
        let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
        counts[bucket(0.005)] = 90; // (2.5ms, 5ms]
        counts[bucket(0.1)] = 10; // (50ms, 100ms]
                                  // The median is the 50th of 90 in (2.5, 5]: 2.5 + 2.5 * 50/90 ms.
        assert!(close(quantile(&counts, 0.5), 0.0025 + 0.0025 * 50.0 / 90.0));
        // The 99th is the 9th of 10 in (50, 100]: 50 + 50 * 9/10 ms.
        assert!(close(quantile(&counts, 0.99), 0.05 + 0.05 * 0.9));
        assert!(close(quantile(&counts, 0.9), 0.005));
        assert_eq!(quantile(&[0; LATENCY_BUCKETS.len() + 1], 0.5), None);
        // In the first bucket, from zero; past the last bound, the last bound.
        let mut first = vec![0u64; LATENCY_BUCKETS.len() + 1];
        first[0] = 4;
        assert!(close(quantile(&first, 0.5), LATENCY_BUCKETS[0] / 2.0));
        let mut overflow = vec![0u64; LATENCY_BUCKETS.len() + 1];
        overflow[LATENCY_BUCKETS.len()] = 3;
        assert!(close(quantile(&overflow, 0.99), 10.0));
    }

    #[test]
    fn history_gets_a_point_every_step_and_keeps_fifteen_minutes() {
        let sampler = Sampler::default();
        let key = ("web".to_owned(), "127.0.0.1:1".parse().expect("addr"));
        let start = Instant::now();
        assert_eq!(sampler.last_point_unix_ms(), None);
        let before = crate::events::unix_ms();
        // 10 responses a second, every 10th a 5xx.
        for second in 0..(HISTORY_POINTS as u64 * STEP + 20) {
            let sample = Sample {
                responses: second * 10,
                errors: second,
                buckets: vec![0; LATENCY_BUCKETS.len() + 1],
            };
            sampler.record(
                start + Duration::from_secs(second),
                HashMap::from([(key.clone(), sample)]),
            );
        }
        let h = sampler.history(&key.0, key.1);
        assert_eq!(h.rate.len(), HISTORY_POINTS);
        assert_eq!(h.error_rate.len(), HISTORY_POINTS);
        assert!(h.rate.iter().all(|r| (r - 10.0).abs() < 1e-9), "{:?}", h.rate);
        assert!(h.error_rate.iter().all(|e| (e - 0.1).abs() < 1e-9));
        // The newest point is dated (by the wall clock when it was taken).
        let end = sampler.last_point_unix_ms().expect("dated");
        assert!(end >= before && end <= crate::events::unix_ms());
    }
}
