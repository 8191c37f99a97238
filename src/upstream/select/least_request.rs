//! Least request: power of two random choices on in-flight requests (Envoy `LEAST_REQUEST`).
//!
//! Two distinct backends are drawn at random and the less loaded one wins, where load is
//! in-flight requests over weight (Envoy's `weight / (active + 1)`). O(1) per pick, and close to
//! least-connections in practice without its full scan or its herd behaviour.

use std::sync::Arc;

use super::{two_choices, PickContext, Select};
use crate::upstream::Backend;

/// Power of two choices on weighted in-flight requests.
#[derive(Debug, Default)]
pub struct LeastRequest {
    weights: Vec<u32>,
}

impl LeastRequest {
    /// A selector for backends with these weights.
    pub fn new(weights: Vec<u32>) -> LeastRequest {
        LeastRequest { weights }
    }
}

impl Select for LeastRequest {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        let (a, b) = two_choices(backends.len(), ctx)?;
        let score = |i: usize| {
            let weight = self.weights.get(i).copied().unwrap_or(1).max(1);
            (backends[i].in_flight() as u64 + 1, u64::from(weight))
        };
        let ((la, wa), (lb, wb)) = (score(a), score(b));
        // (la / wa) <= (lb / wb): a wins ties, and a is the random one of the pair.
        Some(if la * wb <= lb * wa { a } else { b })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backends, histogram, weights};
    use super::*;

    #[test]
    fn never_picks_the_single_busiest_of_three() {
        let backends = backends(&[1, 1, 1]);
        let _held = backends[1].start_request(0);
        let counts = histogram(
            &LeastRequest::new(weights(&backends)),
            &backends,
            &PickContext::default(),
            3000,
        );
        assert_eq!(counts[1], 0);
        // The other two share the rest evenly (each ~1500; 6 sigma is about 165).
        assert!(counts[0].abs_diff(1500) < 200, "{counts:?}");
    }

    #[test]
    fn idle_weighted_backends_follow_weights() {
        let backends = backends(&[1, 3]);
        // Two backends: both are always drawn, so the heavier one wins every idle comparison.
        let counts = histogram(
            &LeastRequest::new(weights(&backends)),
            &backends,
            &PickContext::default(),
            100,
        );
        assert_eq!(counts, vec![0, 100]);
    }
}
