//! Recent figures for the status API: every second, a snapshot of each backend's counters;
//! rates and percentiles come from the difference over the last ten seconds.

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

/// The last ten seconds of snapshots.
#[derive(Debug, Default)]
pub struct Sampler {
    snapshots: Mutex<VecDeque<Snapshot>>,
}

/// What a backend did recently.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Responses per second.
    pub rate: f64,
    /// Share of responses that were 5xx, 0 to 1.
    pub error_rate: f64,
    /// Median response-header latency, seconds (bucket upper bound).
    pub p50: Option<f64>,
    /// 99th percentile, seconds (bucket upper bound).
    pub p99: Option<f64>,
}

impl Sampler {
    fn record(&self, at: Instant, samples: HashMap<(String, SocketAddr), Sample>) {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        snapshots.push_back((at, samples));
        while snapshots.len() > 11 {
            snapshots.pop_front();
        }
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
            p99: quantile(&delta, 0.99),
        }
    }
}

/// The upper bound of the bucket holding quantile `q`; `None` without observations.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= target {
            return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    None
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

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let mut counts = vec![0u64; LATENCY_BUCKETS.len() + 1];
        counts[2] = 90; // <= 5ms
        counts[6] = 10; // <= 100ms
        assert_eq!(quantile(&counts, 0.5), Some(0.005));
        assert_eq!(quantile(&counts, 0.99), Some(0.1));
        assert_eq!(quantile(&[0; 13], 0.5), None);
    }
}
