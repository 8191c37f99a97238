//! Least connections: the backend with the fewest in-flight requests relative to its weight.
//!
//! Like nginx `least_conn` and HAProxy `leastconn`, it scans every backend: O(n) per pick.
//! Backends tied for the least load take turns, so equal idle backends share traffic evenly
//! instead of the first one taking it all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{PickContext, Select};
use crate::upstream::Backend;

/// Fewest in-flight requests per unit of weight.
#[derive(Debug, Default)]
pub struct LeastConnections {
    rotation: AtomicUsize,
    weights: Vec<u32>,
}

impl LeastConnections {
    /// A selector for backends with these weights.
    pub fn new(weights: Vec<u32>) -> LeastConnections {
        LeastConnections {
            rotation: AtomicUsize::new(0),
            weights,
        }
    }
}

impl Select for LeastConnections {
    fn position(&self) -> usize {
        self.rotation.load(Ordering::Relaxed)
    }

    fn resume_at(&self, position: usize) {
        self.rotation.store(position, Ordering::Relaxed);
    }

    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        // Load of backend i as a fraction in_flight / weight, compared without division.
        let load = |i: usize| {
            let weight = self.weights.get(i).copied().unwrap_or(1).max(1);
            (backends[i].in_flight() as u64, u64::from(weight))
        };
        // First pass: the least load and how many backends share it.
        let mut least: Option<(u64, u64)> = None;
        let mut ties = 0usize;
        for i in (0..backends.len()).filter(|&i| ctx.allows(i)) {
            let (l, w) = load(i);
            match least {
                Some((ll, lw)) if l * lw > ll * w => {}
                Some((ll, lw)) if l * lw == ll * w => ties += 1,
                _ => {
                    least = Some((l, w));
                    ties = 1;
                }
            }
        }
        let (ll, lw) = least?;
        // Second pass: the tied backends take turns.
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed) % ties;
        (0..backends.len())
            .filter(|&i| ctx.allows(i))
            .filter(|&i| {
                let (l, w) = load(i);
                l * lw == ll * w
            })
            .nth(turn)
            // In-flight counts may move between the passes; any allowed backend is then fine.
            .or_else(|| (0..backends.len()).find(|&i| ctx.allows(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backends, histogram, weights};
    use super::*;

    #[test]
    fn idle_backends_share_by_rotation() {
        let backends = backends(&[1, 1, 1]);
        let lc = LeastConnections::new(weights(&backends));
        assert_eq!(
            histogram(&lc, &backends, &PickContext::default(), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn busy_backends_are_avoided() {
        let backends = backends(&[1, 1, 1]);
        let _held = [
            backends[0].start_request(0),
            backends[0].start_request(0),
            backends[2].start_request(0),
        ];
        let lc = LeastConnections::new(weights(&backends));
        assert_eq!(histogram(&lc, &backends, &PickContext::default(), 50), vec![0, 50, 0]);
    }

    #[test]
    fn tied_backends_take_turns_around_a_busy_one() {
        let backends = backends(&[1, 1, 1]);
        let _held = backends[0].start_request(0);
        let lc = LeastConnections::new(weights(&backends));
        assert_eq!(histogram(&lc, &backends, &PickContext::default(), 40), vec![0, 20, 20]);
    }

    #[test]
    fn load_is_relative_to_weight() {
        let backends = backends(&[3, 1]);
        // 2 in flight on weight 3 (0.67 each) beats 1 in flight on weight 1.
        let _held = [
            backends[0].start_request(0),
            backends[0].start_request(0),
            backends[1].start_request(0),
        ];
        let lc = LeastConnections::new(weights(&backends));
        assert_eq!(histogram(&lc, &backends, &PickContext::default(), 10), vec![10, 0]);
    }
}
