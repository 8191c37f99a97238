//! Weighted random: each pick independent, with probability proportional to weight.

use std::sync::Arc;

use super::{PickContext, Select};
use crate::upstream::Backend;

/// Weighted random over a prefix-sum table (O(log n) per pick).
#[derive(Debug)]
pub struct WeightedRandom {
    /// `cumulative[i]` = sum of weights of backends `0..=i`.
    cumulative: Vec<u64>,
    weights: Vec<u32>,
}

impl WeightedRandom {
    /// A selector for backends with these weights.
    pub fn new(weights: &[u32]) -> WeightedRandom {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w.max(1));
                Some(*sum)
            })
            .collect();
        WeightedRandom {
            cumulative,
            weights: weights.to_vec(),
        }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let r = fastrand::u64(..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
    }
}

impl Select for WeightedRandom {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        for _ in 0..8 {
            let i = self.draw()?;
            if ctx.allows(i) {
                return Some(i);
            }
        }
        // Mostly excluded: draw among the allowed ones directly.
        let allowed: Vec<usize> = (0..backends.len()).filter(|&i| ctx.allows(i)).collect();
        let weight = |i: usize| u64::from(self.weights.get(i).copied().unwrap_or(1).max(1));
        let total: u64 = allowed.iter().map(|&i| weight(i)).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..total);
        for i in allowed {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backends, histogram, weights};
    use super::*;

    #[test]
    fn shares_follow_weights_within_one_percent() {
        let backends = backends(&[1, 2, 7]);
        let n = 100_000;
        let counts = histogram(
            &WeightedRandom::new(&weights(&backends)),
            &backends,
            &PickContext::default(),
            n,
        );
        for (count, weight) in counts.iter().zip([1.0, 2.0, 7.0]) {
            let share = *count as f64 / n as f64;
            // Expected share w/10 within 1 percentage point (over 6 standard deviations).
            assert!((share - weight / 10.0).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn excluded_heavy_backend_leaves_the_rest_by_weight() {
        let backends = backends(&[100, 1, 3]);
        let ctx = PickContext {
            hash: None,
            exclude: &[0],
        };
        let counts = histogram(&WeightedRandom::new(&weights(&backends)), &backends, &ctx, 40_000);
        assert_eq!(counts[0], 0);
        let share = counts[2] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{counts:?}");
    }
}
