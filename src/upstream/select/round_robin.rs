//! Smooth weighted round robin, lock-free.
//!
//! nginx's algorithm spreads a heavy backend's turns out instead of bunching them (weights 5,1,1
//! give `a a b a c a a`, not `a a a a a b c`). nginx updates per-backend scores under a lock on
//! every pick; here one whole cycle (sum of weights / their gcd picks) is computed when the
//! selector is built, and a pick is one atomic increment indexing into it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{PickContext, Select};
use crate::upstream::Backend;

/// Smooth weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub struct RoundRobin {
    cycle: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A selector for backends with these weights.
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin {
            cycle: smooth_weighted_cycle(weights),
            next: AtomicUsize::new(0),
        }
    }
}

impl Select for RoundRobin {
    fn position(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    fn resume_at(&self, position: usize) {
        self.next.store(position, Ordering::Relaxed);
    }

    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if self.cycle.is_empty() || backends.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let first = self.cycle[turn % self.cycle.len()] as usize;
        if ctx.allows(first) {
            return Some(first);
        }
        // Excluded: take the next turns of the cycle, without advancing the shared counter.
        (1..self.cycle.len())
            .map(|k| self.cycle[(turn + k) % self.cycle.len()] as usize)
            .find(|&i| ctx.allows(i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of nginx's smooth weighted round robin: each pick adds every backend's weight
/// to its running score, takes the highest score (first on ties) and subtracts the total from it.
/// Weights are divided by their gcd first, so equal weights give a cycle of one pick each.
pub fn smooth_weighted_cycle(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut score = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            score[i] += weights[i];
            if score[i] > score[best] {
                best = i;
            }
        }
        score[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backends, weights};
    use super::*;

    fn letters(cycle: &[u32]) -> String {
        cycle.iter().map(|&i| (b'a' + i as u8) as char).collect()
    }

    #[test]
    fn nginx_sequence_for_5_1_1() {
        assert_eq!(letters(&smooth_weighted_cycle(&[5, 1, 1])), "aabacaa");
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(letters(&smooth_weighted_cycle(&[1, 1, 1])), "abc");
        assert_eq!(letters(&smooth_weighted_cycle(&[4, 4])), "ab");
    }

    #[test]
    fn shares_follow_weights() {
        let cycle = smooth_weighted_cycle(&[2, 3, 5]);
        assert_eq!(cycle.len(), 10);
        for (i, w) in [2, 3, 5].into_iter().enumerate() {
            assert_eq!(cycle.iter().filter(|&&c| c as usize == i).count(), w);
        }
    }

    #[test]
    fn picks_repeat_the_cycle() {
        let backends = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&weights(&backends));
        let picks: Vec<u32> = (0..14)
            .map(|_| rr.pick(&backends, &PickContext::default()).expect("pick") as u32)
            .collect();
        assert_eq!(letters(&picks), "aabacaaaabacaa");
    }

    #[test]
    fn exclusion_takes_the_next_turn() {
        let backends = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&weights(&backends));
        let ctx = PickContext {
            hash: None,
            exclude: &[1],
        };
        let picks: Vec<u32> = (0..6).map(|_| rr.pick(&backends, &ctx).expect("pick") as u32).collect();
        assert_eq!(letters(&picks), "accacc");
    }

    #[test]
    fn a_rebuilt_selector_resumes_the_rotation() {
        let backends = backends(&[1, 1, 1]);
        let old = RoundRobin::new(&weights(&backends));
        let first: Vec<u32> = (0..2)
            .map(|_| old.pick(&backends, &PickContext::default()).expect("pick") as u32)
            .collect();
        let new = RoundRobin::new(&weights(&backends));
        new.resume_at(old.position());
        let next = new.pick(&backends, &PickContext::default()).expect("pick") as u32;
        assert_eq!(letters(&first), "ab");
        assert_eq!(letters(&[next]), "c", "not back to a");
    }

    #[test]
    fn concurrent_picks_are_exactly_fair() {
        let backends = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&weights(&backends));
        let counts: Vec<[usize; 3]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut c = [0usize; 3];
                        for _ in 0..30_000 {
                            c[rr.pick(&backends, &PickContext::default()).expect("pick")] += 1;
                        }
                        c
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let total = counts.iter().fold([0usize; 3], |mut acc, c| {
            for i in 0..3 {
                acc[i] += c[i];
            }
            acc
        });
        assert_eq!(total, [40_000, 40_000, 40_000]);
    }
}
