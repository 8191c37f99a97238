//! Peak-EWMA: power of two choices on latency times load (linkerd2-proxy, Finagle).
//!
//! Each backend's cost is its peak-EWMA response latency multiplied by (in-flight + 1); the
//! cheaper of two random backends wins. A backend that turns slow is avoided at once (the
//! "peak"), and forgiven as its estimate decays over the configured window. A backend with no
//! sample yet is assumed to have the configured default latency.

use std::sync::Arc;
use std::time::Duration;

use super::{two_choices, PickContext, Select};
use crate::upstream::Backend;

/// Power of two choices on peak-EWMA latency x (in-flight + 1).
#[derive(Debug)]
pub struct PeakEwma {
    default_rtt_nanos: f64,
    weights: Vec<u32>,
}

impl PeakEwma {
    /// A selector assuming `default_rtt` for backends never measured.
    pub fn new(default_rtt: Duration, weights: Vec<u32>) -> PeakEwma {
        PeakEwma {
            default_rtt_nanos: default_rtt.as_nanos() as f64,
            weights,
        }
    }

    fn cost(&self, b: &Backend, weight: u32) -> f64 {
        let latency = b.latency_ewma_nanos().unwrap_or(self.default_rtt_nanos);
        latency * (b.in_flight() as f64 + 1.0) / f64::from(weight.max(1))
    }
}

impl Select for PeakEwma {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let (a, b) = two_choices(backends.len(), ctx)?;
        let weight = |i: usize| self.weights.get(i).copied().unwrap_or(1);
        Some(
            if self.cost(&backends[a], weight(a)) <= self.cost(&backends[b], weight(b)) {
                a
            } else {
                b
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backends, histogram};
    use super::*;

    #[test]
    fn the_slow_backend_loses_every_comparison() {
        let backends = backends(&[1, 1]);
        let decay = Duration::from_secs(10);
        backends[0].observe_latency(Duration::from_millis(50), decay);
        backends[1].observe_latency(Duration::from_millis(5), decay);
        let s = PeakEwma::new(Duration::from_millis(30), vec![1, 1]);
        assert_eq!(histogram(&s, &backends, &PickContext::default(), 100), vec![0, 100]);
    }

    #[test]
    fn load_counts_too() {
        let backends = backends(&[1, 1]);
        let decay = Duration::from_secs(10);
        backends[0].observe_latency(Duration::from_millis(10), decay);
        backends[1].observe_latency(Duration::from_millis(5), decay);
        // 5ms x (2 + 1) in flight = 15 > 10ms x 1.
        let _held = [backends[1].start_request(0), backends[1].start_request(0)];
        let s = PeakEwma::new(Duration::from_millis(30), vec![1, 1]);
        assert_eq!(histogram(&s, &backends, &PickContext::default(), 100), vec![100, 0]);
    }

    #[test]
    fn unmeasured_backends_cost_the_default() {
        let backends = backends(&[1, 1]);
        backends[0].observe_latency(Duration::from_millis(50), Duration::from_secs(10));
        let s = PeakEwma::new(Duration::from_millis(30), vec![1, 1]);
        assert_eq!(histogram(&s, &backends, &PickContext::default(), 100), vec![0, 100]);
        let s = PeakEwma::new(Duration::from_millis(80), vec![1, 1]);
        assert_eq!(histogram(&s, &backends, &PickContext::default(), 100), vec![100, 0]);
    }
}
